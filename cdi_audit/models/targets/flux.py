"""The Target of Flux.1 (dev, schnell and their fine-tunes): a ``FluxTransformer2DModel`` on packed 16-channel KL
latents.

As ``FluxPipeline`` runs it (docs/flow-models.md): the latents (B, C, H, W) travel as a sequence of 2 x 2
patches (B, H/2 * W/2, 4C), each with position ids (0, row, column); the text is the T5 encoder's states
(512 tokens, the pipeline's ``max_sequence_length``) with zero ids, plus CLIP's pooled output; the time input
is sigma itself (the transformer multiplies it by 1000). A guidance-distilled transformer (``guidance_embeds``,
Flux-dev) also takes a guidance value, 1.0 unless the user gives another (``--guidance``), recorded in the
report; Flux-schnell takes none. The null condition is the encoded empty caption, as the pipeline's true
classifier-free guidance encodes its negative prompt. The prediction is the velocity eps - z0.
"""

from __future__ import annotations

import torch

from cdi_audit.models.condition import Condition, Tokens
from cdi_audit.models.deferred import load_now
from cdi_audit.models.family import LoadedParts
from cdi_audit.models.targets.sd import StableDiffusionTarget, clip_tokens
from cdi_audit.models.targets.sd3 import t5_tokens

FLUX_T5_TOKENS = 512  # FluxPipeline's default max_sequence_length


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): each 2 x 2 patch one token, its channels ordered (C, row, column)."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of ``pack`` for latents of ``height`` x ``width``."""
    batch, _, features = tokens.shape
    patches = tokens.reshape(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def image_ids(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids of the packed tokens: (0, row, column), row-major."""
    rows, columns = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3).to(device, torch.float32)


class FluxTarget(StableDiffusionTarget):
    def __init__(self, loaded: LoadedParts) -> None:
        super().__init__(loaded)
        self.text_encoder_2 = self._kept_on_cpu(loaded.parts["text_encoder_2"])
        self.tokenizer_2 = loaded.parts["tokenizer_2"]
        self.guidance = loaded.guidance

    def tokenize(self, captions: list[str]) -> dict[str, Tokens]:
        return {"text": clip_tokens(self.tokenizer, captions),
                "text_2": t5_tokens(self.tokenizer_2, captions, FLUX_T5_TOKENS)}

    def encode_tokens(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """T5 states (B, 512, width) and CLIP's pooled output (B, width_clip)."""
        pooled = self.text_encoder(ids["text"].to(self.device)).pooler_output
        states = self.text_encoder_2(ids["text_2"].cpu())[0]
        return {"encoder_hidden_states": states.to(self.device, torch.float32), "pooled_projections": pooled.float()}

    def load_weights(self) -> None:
        super().load_weights()
        load_now(self.text_encoder_2)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        height, width = z_t.shape[-2:]
        states = condition["encoder_hidden_states"]
        guidance = None if self.guidance is None else torch.full((len(z_t),), self.guidance, device=z_t.device)
        output = self.denoiser(hidden_states=pack(z_t), timestep=time, guidance=guidance,
                               encoder_hidden_states=states, pooled_projections=condition["pooled_projections"],
                               txt_ids=states.new_zeros(states.shape[1], 3),
                               img_ids=image_ids(height, width, z_t.device)).sample
        return unpack(output, height, width)
