"""Noise optimisation (CDI, Dubinski et al. CVPR 2025): how far the noisy input must move to be denoised exactly."""

from __future__ import annotations

import torch

from cdi_audit.features.base import Extractor, LatentBatch, NoiseSource, nominal_timestep_label
from cdi_audit.features.lbfgs import minimise
from cdi_audit.models.condition import select_condition
from cdi_audit.models.primitives import add_noise, per_image_norm
from cdi_audit.models.target import Target


class NoiseOptimisation(Extractor):
    """At t with one eps, find delta minimising ||eps_theta(z_t + delta, t) - eps||.

    L-BFGS from delta = 0, at most ``max_iterations`` iterations. Columns: the
    final loss, ||delta||, and the norm of the loss's gradient at delta = 0. A
    model that fitted an image needs a smaller correction and reaches a lower loss.

    Each image is its own optimisation problem (``lbfgs.minimise``): the CDI
    reference code optimises a whole batch as one vector with one line
    search, so an image's result there depends on its neighbours; we optimise
    each image alone (docs/method.md). The problems advance in
    lockstep, so the model still sees batches. Cost: about 6-15 forward and
    backward passes per image.

    What the reference's batch-coupled ||delta|| measures (issue 22, benchmarks/RESULTS.md): with one step
    size and one curvature estimate for the whole batch, each image moves by about a common multiple of its
    own gradient, so ||delta|| ranks images by their gradient. On the weak-signal benchmark it separates members
    at AUC 0.563, whether its batches hold members only (as the reference forms them) or a mix (0.563 both), and
    our per-image ||delta|| at 0.526. The gradient column restores it per image. With per-image noise, the norm
    of the gradient of ||eps_theta - eps|| gave 0.525, and that of the squared loss (2 x loss x the former,
    which the scoring model can form from the logged columns) 0.566; with the noise shared by all images this
    column alone gives 0.543.
    """

    name = "noise_optim"
    version = 3  # 1: scipy L-BFGS-B one image at a time; 2: no gradient column

    def __init__(self, timestep: int = 100, max_iterations: int = 5) -> None:
        self.timestep = timestep
        self.max_iterations = max_iterations

    @property
    def columns(self) -> tuple[str, ...]:
        label = nominal_timestep_label(self.timestep)
        return (f"noise_optim_loss_{label}", f"noise_optim_delta_{label}", f"noise_optim_gradient_{label}")

    def params(self) -> dict:
        return {"timestep": self.timestep, "max_iterations": self.max_iterations}

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        t = target.schedule.level(self.timestep)
        eps = noise.draw(batch, self.name, f"t{self.timestep}")
        z_t = add_noise(target.schedule, batch.z0, eps, t).detach()
        initial: list[torch.Tensor] = []  # the gradients of the first evaluation: every image at delta = 0

        def loss_and_gradient(deltas: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            on_device = rows.to(z_t.device)
            delta = deltas.to(z_t.device, z_t.dtype).view(-1, *z_t.shape[1:]).requires_grad_(True)
            condition = select_condition(batch.condition, on_device)
            losses = per_image_norm(target.predict_noise(z_t[on_device] + delta, t, condition) - eps[on_device])
            (gradient,) = torch.autograd.grad(losses.sum(), delta)
            gradient = gradient.detach().double().cpu().flatten(1)
            if not initial:
                initial.append(gradient.norm(dim=1))
            return losses.detach().double().cpu(), gradient

        start = torch.zeros(len(batch.hashes), z_t[0].numel(), dtype=torch.float64)
        deltas, losses = minimise(loss_and_gradient, start, self.max_iterations)
        return torch.stack([losses, deltas.norm(dim=1), initial[0]], dim=1)
