"""Pixel-space diffusion models: a diffusers ``UNet2DModel`` that denoises images directly (DDPM, DDIM)."""

from __future__ import annotations

import torch

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.condition import Condition
from cdi_audit.models.deferred import load_now
from cdi_audit.models.families import register
from cdi_audit.models.family import RGB, Component, Family, LoadedParts, PipelineIndex
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


def check_unet_side(family: Family, loaded: LoadedParts) -> None:
    """A UNet2DModel halves the side in every down block but the last and doubles it back without fitting it to
    the skip connections' (as UNet2DConditionModel does), so the side must stay whole through every halving."""
    blocks = loaded.denoiser.config.get("down_block_types")
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ModelUnavailable(f"{loaded.config_file(loaded.roles['denoiser'])}: down_block_types is {blocks!r}, not "
                               "a list of the UNet's down blocks; correct it to the one the weights were saved with.")
    halvings = len(blocks) - 1
    times = {1: "once", 2: "twice"}.get(halvings, f"{halvings} times")
    family.check_side(loaded, 2**halvings, f"the UNet halves it {times}")


@register
class PixelDiffusion(Family):
    name = "pixel"
    label = "pixel UNet2DModel"

    def recognises(self, index: PipelineIndex) -> bool:
        return index.has("unet", "UNet2DModel") and not any(index.has(part) for part in ("vae", "vqvae"))

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("unet", frozenset({"UNet2DModel"}), role="denoiser"),)

    def check(self, loaded: LoadedParts) -> None:
        """Images are fed as RGB: a UNet on other channels (grayscale, RGBA) would fail at its first step."""
        channels = loaded.denoiser.config.get("in_channels")
        if channels != RGB:
            raise ModelUnavailable(f"{loaded.config_file(loaded.roles['denoiser'])}: in_channels is {channels!r}, but "
                                   f"the audit feeds images as RGB ({RGB} channels); a pixel model on other channels "
                                   "(grayscale, RGBA) is not audited by this version.")
        check_unet_side(self, loaded)

    def build(self, loaded: LoadedParts) -> PixelTarget:
        return PixelTarget(loaded.denoiser, loaded.schedule, loaded.prediction_type, loaded.device,
                           loaded.description)
