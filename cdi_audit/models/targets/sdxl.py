"""The Target of SDXL: a ``UNet2DConditionModel`` with ``text_time`` micro-conditioning, two CLIP text encoders,
KL latents.

The condition is built as ``StableDiffusionXLPipeline.encode_prompt`` and ``_get_add_time_ids`` build it
(docs/inputs.md, "Models"): the penultimate states of both encoders concatenated, the pooled projection of the
second, and six ``time_ids`` per image, (original height, original width, crop top, crop left, target
height, target width), from the image's real size and the offset of the centre crop that preprocessing
applied, as the SDXL training scripts pass them. The null condition is zeros when the pipeline's
``force_zeros_for_empty_prompt`` is set (its default), else the encoded empty caption.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cdi_audit.inputs.images import sdxl_crop_geometry
from cdi_audit.models.condition import Condition, Tokens
from cdi_audit.models.deferred import load_now
from cdi_audit.models.family import LoadedParts
from cdi_audit.models.targets.sd import StableDiffusionTarget, clip_tokens


class SDXLTarget(StableDiffusionTarget):
    def __init__(self, loaded: LoadedParts) -> None:
        super().__init__(loaded)
        self.text_encoder_2 = self._prepared(loaded.parts["text_encoder_2"])
        self.tokenizer_2 = loaded.parts["tokenizer_2"]
        self.force_zeros_for_empty_prompt = bool(loaded.pipeline_config.get("force_zeros_for_empty_prompt", True))

    def condition_for(self, captions: list[str | None], labels: list[int | None],
                      paths: list[Path] | None = None) -> Condition:
        """Text parts from the captions; time ids from each image file's size (``paths``), or, without
        paths, for images that are already square at the model's resolution (an image-to-image request)."""
        condition = super().condition_for(captions, labels)
        return condition.replaced(time_ids=self.time_ids(paths, len(captions)))

    def time_ids(self, paths: list[Path] | None, count: int) -> torch.Tensor:
        """(B, 6) float32: original (height, width), crop (top, left), target (height, width)."""
        size = self.sample_size
        geometries = ([sdxl_crop_geometry(path, size) for path in paths] if paths is not None
                      else [(size, size, 0, 0)] * count)
        return torch.tensor([[*geometry, size, size] for geometry in geometries], dtype=torch.float32,
                            device=self.device)

    def null_condition(self, condition: Condition) -> Condition:
        if not self.force_zeros_for_empty_prompt:
            return super().null_condition(condition)
        return condition.replaced(encoder_hidden_states=torch.zeros_like(condition["encoder_hidden_states"]),
                                  text_embeds=torch.zeros_like(condition["text_embeds"]))

    def tokenize(self, captions: list[str]) -> dict[str, Tokens]:
        return {"text": clip_tokens(self.tokenizer, captions), "text_2": clip_tokens(self.tokenizer_2, captions)}

    def encode_tokens(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Both encoders' penultimate states (B, tokens, width_1 + width_2) and the second's pooled
        projection (B, projection_dim)."""
        first = self.text_encoder(ids["text"].to(self.device), output_hidden_states=True)
        second = self.text_encoder_2(ids["text_2"].to(self.device), output_hidden_states=True)
        states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return {"encoder_hidden_states": states.float(), "text_embeds": second.text_embeds.float()}

    def load_weights(self) -> None:
        super().load_weights()
        load_now(self.text_encoder_2)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        added = {"text_embeds": condition["text_embeds"], "time_ids": condition["time_ids"]}
        return self.denoiser(z_t, time, encoder_hidden_states=condition["encoder_hidden_states"],
                             added_cond_kwargs=added).sample
