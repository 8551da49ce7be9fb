"""Latent diffusion (LDM): an unconditional ``UNet2DModel`` on the latents of a VQ or KL autoencoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.models.families import register
from cdi_audit.models.families.pixel import check_unet_side
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex

if TYPE_CHECKING:
    from cdi_audit.models.latent import LatentTarget

AUTOENCODERS = frozenset({"VQModel", "AutoencoderKL"})


@register
class LatentDiffusion(Family):
    name = "ldm"
    label = "latent UNet2DModel (LDM)"
    display_name = "LDM"
    pipeline_words = "an LDMPipeline"
    published = "2021-12"

    def recognises(self, index: PipelineIndex) -> bool:
        return (index.has("unet", "UNet2DModel") and any(index.has(part) for part in ("vae", "vqvae"))
                and not index.has("text_encoder"))

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        autoencoder = "vae" if index.has("vae") else "vqvae"
        return (Component("unet", frozenset({"UNet2DModel"}), role="denoiser"),
                Component(autoencoder, AUTOENCODERS, role="autoencoder"))

    def check(self, loaded: LoadedParts) -> None:
        check_unet_side(self, loaded)

    def build(self, loaded: LoadedParts) -> LatentTarget:
        from cdi_audit.models.latent import LatentTarget

        return LatentTarget(loaded.denoiser, loaded.autoencoder, loaded.schedule, loaded.prediction_type,
                            loaded.device, loaded.description)
