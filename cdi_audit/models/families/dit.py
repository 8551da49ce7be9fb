"""DiT: a class-conditional ``DiTTransformer2DModel`` on KL latents (learned variance: 2C output channels)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.models.families import register
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex, config_integer

if TYPE_CHECKING:
    from cdi_audit.models.targets.dit import DiTTarget


@register
class DiT(Family):
    name = "dit"
    label = "class-conditional DiT"
    display_name = "DiT"
    pipeline_words = "a DiTPipeline"
    published = "2022-12"

    def recognises(self, index: PipelineIndex) -> bool:
        return index.has("transformer", "DiTTransformer2DModel") and index.has("vae")

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("transformer", frozenset({"DiTTransformer2DModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"))

    def check(self, loaded: LoadedParts) -> None:
        """The class count is the null class's id; the latent side must split into whole patches."""
        denoiser = loaded.roles["denoiser"]
        config_integer(loaded, denoiser, "num_embeds_ada_norm")
        patch = config_integer(loaded, denoiser, "patch_size")
        self.check_side(loaded, patch, f"the transformer cuts latents into {patch} x {patch} patches")

    def build(self, loaded: LoadedParts) -> DiTTarget:
        from cdi_audit.models.targets.dit import DiTTarget

        return DiTTarget(loaded.denoiser, loaded.autoencoder, loaded.schedule, loaded.prediction_type,
                         loaded.device, loaded.description)
