"""Noise optimisation (CDI, Dubinski et al. CVPR 2025): how far the noisy input must move to be denoised exactly."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource, nominal_timestep_label
from cdi_audit.targets.base import Target, add_noise, per_image_norm


class NoiseOptimisation(Extractor):
    """At t with one eps, find delta minimising ||eps_theta(z_t + delta, t) - eps||.

    L-BFGS (scipy's L-BFGS-B, at most ``max_iterations`` iterations, from
    delta = 0). Columns: the final loss and ||delta||. A model that fitted an
    image needs a smaller correction and reaches a lower loss.

    Each image is optimised on its own. The CDI reference code optimises a
    whole batch as one vector with one line search, so an image's result there
    depends on its neighbours; methods.md asks for per-image optimisation and
    so do we. Cost: about 6-15 forward and backward passes per image, at batch 1.
    """

    name = "noise_optim"
    access = "white"

    def __init__(self, timestep: int = 100, max_iterations: int = 5) -> None:
        self.timestep = timestep
        self.max_iterations = max_iterations

    @property
    def columns(self) -> tuple[str, ...]:
        label = nominal_timestep_label(self.timestep)
        return (f"noise_optim_loss_{label}", f"noise_optim_delta_{label}")

    def params(self) -> dict:
        return {"timestep": self.timestep, "max_iterations": self.max_iterations, "optimiser": "scipy-L-BFGS-B"}

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        t = target.model_timestep(self.timestep)
        eps = noise.draw(batch, self.name, f"t{self.timestep}")
        z_t = add_noise(batch.z0, eps, target.alpha_bar(t)).detach()
        rows = [self._optimise_one(target, z_t[i : i + 1], eps[i : i + 1], t) for i in range(len(batch.hashes))]
        return torch.tensor(rows, dtype=torch.float64)

    def _optimise_one(self, target: Target, z_t: torch.Tensor, eps: torch.Tensor, t: int) -> tuple[float, float]:
        def loss_and_gradient(flat_delta: np.ndarray) -> tuple[float, np.ndarray]:
            delta = torch.from_numpy(flat_delta).to(z_t.device, z_t.dtype).view_as(z_t).requires_grad_(True)
            loss = per_image_norm(target.predict_noise(z_t + delta, t) - eps).sum()
            (gradient,) = torch.autograd.grad(loss, delta)
            return float(loss.detach()), gradient.double().cpu().numpy().ravel()

        result = minimize(loss_and_gradient, np.zeros(z_t.numel()), jac=True, method="L-BFGS-B",
                          options={"maxiter": self.max_iterations})
        return float(result.fun), float(np.linalg.norm(result.x))
