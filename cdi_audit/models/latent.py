"""Latent diffusion: a denoiser working in an autoencoder's latent space (LDM, DiT, Stable Diffusion, SDXL).

Images are encoded once per batch by the posterior mean (not a sample), scaled as
z0 = scaling_factor * (mean - shift_factor), always in float32 (SDXL's VAE overflows
in float16), and a latent that is not finite stops the audit rather than becoming a feature value. This
class is unconditional (LDM); the conditional families' Targets subclass it (``models/targets/``).
"""

from __future__ import annotations

import torch

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.condition import Condition
from cdi_audit.models.deferred import load_now
from cdi_audit.models.schedule import NoiseSchedule
from cdi_audit.models.target import Target
from cdi_audit.results.schema import ModelInfo


class LatentTarget(Target):
    def __init__(self, denoiser: torch.nn.Module, autoencoder: torch.nn.Module, schedule: NoiseSchedule,
                 prediction_type: str, device: torch.device, description: ModelInfo) -> None:
        # The latents' channels are the autoencoder's; a denoiser may take them repacked (Flux: 4 x C).
        super().__init__(schedule, prediction_type, autoencoder.config.latent_channels, device, description)
        self.denoiser = self._prepared(denoiser)
        self.autoencoder = self._prepared(autoencoder)
        config = self.autoencoder.config
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)

    def _prepared(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` on the target's device, in evaluation mode, frozen (weights may still be on disk)."""
        return module.to(self.device).eval().requires_grad_(False)

    @staticmethod
    def _kept_on_cpu(module: torch.nn.Module) -> torch.nn.Module:
        """A large text encoder (T5-XXL, 4.7 B parameters) frozen on the CPU: it runs once per batch of
        captions, and the accelerator's memory is left to the denoiser (docs/flow-models.md, "Memory")."""
        return module.to("cpu").eval().requires_grad_(False)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        encoded = self.autoencoder.encode(pixels)
        mean = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        latents = self.scaling_factor * (mean.float() - self.shift_factor)
        if not torch.isfinite(latents).all():
            raise ModelUnavailable(
                "The autoencoder encoded the images to non-finite latents (it overflowed, in float32); its "
                "weights are broken, so no audit can be run on this model.")
        return latents

    @property
    def has_decoder(self) -> bool:
        return True

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (B, 3, H, W); the inverse of ``encode`` up to the autoencoder's error."""
        return self.autoencoder.decode(z0 / self.scaling_factor + self.shift_factor).sample.float()

    def load_weights(self) -> None:
        load_now(self.denoiser, self.autoencoder)

    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        return self.denoiser(z_t, time).sample
