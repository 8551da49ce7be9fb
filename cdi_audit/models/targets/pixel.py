"""The Target of a pixel-space model: its UNet denoises images in [-1, 1] directly."""

from __future__ import annotations

import torch

from cdi_audit.models.condition import Condition
from cdi_audit.models.deferred import load_now
from cdi_audit.models.schedule import NoiseSchedule
from cdi_audit.models.target import Target
from cdi_audit.results.schema import ModelInfo


class PixelTarget(Target):
    """A UNet on images in [-1, 1]: the clean latent is the image itself."""

    def __init__(self, unet: torch.nn.Module, schedule: NoiseSchedule, prediction_type: str,
                 device: torch.device, description: ModelInfo) -> None:
        super().__init__(schedule, prediction_type, unet.config.in_channels, device, description)
        self.unet = unet.to(device).eval()
        self.unet.requires_grad_(False)
        if device.type == "cpu":
            # oneDNN's convolutions run ~1.25x faster on channels-last activations (benchmarks/RESULTS.md);
            # the values change only by float rounding.
            self.unet.to(memory_format=torch.channels_last)

    def load_weights(self) -> None:
        load_now(self.unet)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        return self.unet(z_t, time).sample
