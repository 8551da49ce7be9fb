"""Stable Diffusion 3 and 3.5: an ``SD3Transformer2DModel`` on 16-channel KL latents, trained by rectified flow.

The condition is built as ``StableDiffusion3Pipeline.encode_prompt`` builds it (docs/flow-models.md):
both CLIP encoders' penultimate states side by side, zero-padded to the transformer's ``joint_attention_dim``,
followed along the tokens by the T5 encoder's states (256 tokens, the pipeline's ``max_sequence_length``),
or by zeros of that shape when the pipeline was saved without T5 (they still enter attention); the pooled
projection is both CLIP projections side by side. The null condition is the encoded empty caption. The
transformer takes sigma x 1000 as its time input and predicts the velocity eps - z0.
"""

from __future__ import annotations

import torch

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.condition import Tokens
from cdi_audit.models.deferred import load_now
from cdi_audit.models.families import register
from cdi_audit.models.families.sd import TOKENIZERS, StableDiffusionTarget, check_clip_lengths, clip_tokens
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex, config_integer

T5_TOKENIZERS = frozenset({"T5Tokenizer", "T5TokenizerFast"})
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


@register
class StableDiffusion3(Family):
    name = "sd3"
    label = "text-to-image SD3"
    lora_loader = "SD3LoraLoaderMixin"
    flow_time_scale = 1000.0
    single_file_pipeline = "StableDiffusion3Pipeline"
    # Stability's files: the MMDiT under model.diffusion_model., with or without the VAE, both CLIPs and T5.
    single_file_parts = {"vae": ("first_stage_model.",), "text_encoder": ("text_encoders.clip_l.",),
                         "text_encoder_2": ("text_encoders.clip_g.",), "text_encoder_3": ("text_encoders.t5xxl.",)}

    def recognises(self, index: PipelineIndex) -> bool:
        return index.has("transformer", "SD3Transformer2DModel")

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        clip = frozenset({"CLIPTextModelWithProjection"})
        t5 = ((Component("text_encoder_3", frozenset({"T5EncoderModel"}), "text_encoder"),
               Component("tokenizer_3", T5_TOKENIZERS, "tokenizer")) if index.has("text_encoder_3") else ())
        return (Component("transformer", frozenset({"SD3Transformer2DModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"),
                Component("text_encoder", clip, "text_encoder"), Component("text_encoder_2", clip, "text_encoder"),
                Component("tokenizer", TOKENIZERS, "tokenizer"), Component("tokenizer_2", TOKENIZERS, "tokenizer"),
                *t5)

    def check(self, loaded: LoadedParts) -> None:
        """The latent side must split into whole patches, no more a side than the position embedding holds
        (the transformer finds out only when first run); the T5 states' width is the transformer's; the CLIP
        tokenizers' lengths fit their encoders."""
        check_clip_lengths(loaded)
        denoiser = loaded.roles["denoiser"]
        config_integer(loaded, denoiser, "joint_attention_dim")
        patch = config_integer(loaded, denoiser, "patch_size")
        self.check_side(loaded, patch, f"the transformer cuts latents into {patch} x {patch} patches")
        if loaded.denoiser.config.get("pos_embed_max_size") is None:
            return
        most = config_integer(loaded, denoiser, "pos_embed_max_size")
        patches = self.fed_side(loaded) // patch
        if patches > most:
            raise ModelUnavailable(f"{loaded.config_file(denoiser)}: sample_size gives {patches} patches a side, more "
                                   f"than pos_embed_max_size {most}, the side of the transformer's position embedding; "
                                   "correct sample_size to the model's resolution.")

    def build(self, loaded: LoadedParts) -> SD3Target:
        return SD3Target(loaded)
