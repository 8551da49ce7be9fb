"""The Target of Stable Diffusion 3 and 3.5: an ``SD3Transformer2DModel`` on 16-channel KL latents, trained by
rectified flow.

The condition is built as ``StableDiffusion3Pipeline.encode_prompt`` builds it (docs/flow-models.md):
both CLIP encoders' penultimate states side by side, zero-padded to the transformer's ``joint_attention_dim``,
followed along the tokens by the T5 encoder's states (256 tokens, the pipeline's ``max_sequence_length``),
or by zeros of that shape when the pipeline was saved without T5 (they still enter attention); the pooled
projection is both CLIP projections side by side. The null condition is the encoded empty caption. The
transformer takes sigma x 1000 as its time input and predicts the velocity eps - z0.
"""

from __future__ import annotations

import torch

from cdi_audit.models.condition import Tokens
from cdi_audit.models.deferred import load_now
from cdi_audit.models.family import LoadedParts
from cdi_audit.models.targets.sd import StableDiffusionTarget, clip_tokens

SD3_T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length


class SD3Target(StableDiffusionTarget):
    def __init__(self, loaded: LoadedParts) -> None:
        super().__init__(loaded)
        self.text_encoder_2 = self._prepared(loaded.parts["text_encoder_2"])
        self.tokenizer_2 = loaded.parts["tokenizer_2"]
        t5 = loaded.parts.get("text_encoder_3")
        self.text_encoder_3 = None if t5 is None else self._kept_on_cpu(t5)
        self.tokenizer_3 = loaded.parts.get("tokenizer_3")
        self.joint_width = loaded.denoiser.config["joint_attention_dim"]  # checked by StableDiffusion3.check

    def tokenize(self, captions: list[str]) -> dict[str, Tokens]:
        tokens = {"text": clip_tokens(self.tokenizer, captions), "text_2": clip_tokens(self.tokenizer_2, captions)}
        if self.tokenizer_3 is not None:
            tokens["text_3"] = t5_tokens(self.tokenizer_3, captions, SD3_T5_TOKENS)
        return tokens

    def encode_tokens(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B, CLIP tokens + 256, joint_attention_dim) states and (B, projection_1 + projection_2) pooled
        projections."""
        first = self.text_encoder(ids["text"].to(self.device), output_hidden_states=True)
        second = self.text_encoder_2(ids["text_2"].to(self.device), output_hidden_states=True)
        clip_states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1).float()
        if self.text_encoder_3 is None:
            t5_states = clip_states.new_zeros(len(clip_states), SD3_T5_TOKENS, self.joint_width)
        else:
            t5_states = self.text_encoder_3(ids["text_3"].cpu())[0].to(self.device, torch.float32)
        clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
        pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1)
        return {"encoder_hidden_states": torch.cat([clip_states, t5_states], dim=-2),
                "pooled_projections": pooled.float()}

    def load_weights(self) -> None:
        super().load_weights()
        load_now(self.text_encoder_2, self.text_encoder_3)

    def _model_output(self, z_t, time, condition):
        return self.denoiser(hidden_states=z_t, timestep=time, encoder_hidden_states=condition["encoder_hidden_states"],
                             pooled_projections=condition["pooled_projections"]).sample


def t5_tokens(tokenizer, captions: list[str], length: int) -> Tokens:
    """A T5 tokenizer's ids for ``captions``: the caption, EOS, padding to ``length`` (cut there), as the SD3
    and Flux pipelines tokenize them."""
    ids = tokenizer(captions, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                    return_tensors="pt").input_ids
    return Tokens(ids, tokenizer.eos_token_id, tokenizer.pad_token_id, start=0)
