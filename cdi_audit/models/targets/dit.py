"""The Target of a DiT: conditioned on one class id per image."""

from __future__ import annotations

import torch

from cdi_audit.errors import InputProblem
from cdi_audit.inputs.images import ImageRecord
from cdi_audit.models.condition import Condition
from cdi_audit.models.latent import LatentTarget
from cdi_audit.models.target import Conditioning


class DiTTarget(LatentTarget):
    """Conditioned on a class id per image; the id ``num_classes`` is the null (unconditional) class."""

    conditioning: Conditioning = "class"

    @property
    def num_classes(self) -> int:
        return int(self.denoiser.config.num_embeds_ada_norm)

    def encode_condition(self, records: list[ImageRecord]) -> Condition:
        missing = [str(record.path) for record in records if record.label is None]
        if missing:
            raise InputProblem(
                f"This class-conditional model needs a class id for every image, and {missing[0]} has none; "
                "give labels in a labels.csv (file,label) or put images in one sub-folder per class id."
            )
        outside = [r for r in records if not 0 <= r.label < self.num_classes]
        if outside:
            raise InputProblem(f"{outside[0].path} has class id {outside[0].label}; this model knows "
                               f"ids 0 to {self.num_classes - 1}.")
        return self.condition_for([None] * len(records), [record.label for record in records])

    def condition_for(self, captions: list[str | None], labels: list[int | None]) -> Condition:
        return Condition({"class_labels": torch.tensor(labels, dtype=torch.long, device=self.device)})

    def null_condition(self, condition: Condition) -> Condition:
        return condition.replaced(class_labels=torch.full_like(condition["class_labels"], self.num_classes))

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        return self.denoiser(z_t, timestep=time, class_labels=condition["class_labels"]).sample
