"""Pixel-space diffusion models: a diffusers ``UNet2DModel`` that denoises images directly (DDPM, DDIM)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.families import register
from cdi_audit.models.family import RGB, Component, Family, LoadedParts, PipelineIndex

if TYPE_CHECKING:
    from cdi_audit.models.targets.pixel import PixelTarget


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
    display_name = "pixel DDPM/DDIM"
    pipeline_words = "a pixel DDPM/DDIM pipeline (UNet2DModel)"
    published = "2020-06"  # DDPM

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
        from cdi_audit.models.targets.pixel import PixelTarget

        return PixelTarget(loaded.denoiser, loaded.schedule, loaded.prediction_type, loaded.device,
                           loaded.description)
