"""The ``Target`` interface and the primitives every feature extractor is built from.

Notation (``../shared/spec/methods.md`` section 0): z0 is the clean latent (the
image itself for pixel models), a_t = ``alphas_cumprod[t]`` read from the
model's own scheduler, eps_theta(z_t, t) the model's noise prediction. All
primitives work on batches shaped (B, C, H, W) and keep images independent of
each other.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator
from typing import ClassVar, Literal

import torch

from cdi_audit.result import ModelInfo

Access = Literal["black", "grey", "white"]
# What a model is conditioned on: nothing, a class id (DiT), or a caption (Stable Diffusion).
Conditioning = Literal["none", "class", "text"]
# From least to most: an image-to-image endpoint, noise predictions, weights and gradients.
ACCESS_LEVELS: tuple[Access, ...] = ("black", "grey", "white")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Feature timesteps in the spec are written for 1000-step schedules.
NOMINAL_TRAIN_STEPS = 1000


class Target(abc.ABC):
    """A diffusion model seen through a noise schedule and a noise predictor.

    Subclasses implement ``_model_output`` (and ``encode`` for latent models).
    ``predict_noise`` converts every parameterisation to epsilon and counts the
    rows it evaluates, so tests and benchmarks can see how many model calls an
    audit made (a fully cached audit makes none). ``access``: what the target
    can serve; a model held locally gives its weights, hence gradients.
    """

    access: ClassVar[Access] = "white"
    conditioning: Conditioning = "none"  # set per model by targets that take conditions

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        channels: int,
        device: torch.device,
        description: ModelInfo,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.prediction_type = prediction_type
        self.channels = channels
        self.device = device
        self.description = description
        self.forward_rows = 0
        self.network_calls = 0  # invocations of the network, each of one or more rows
        # Forward passes run under autocast in this dtype (None: plain float32); see ``precision``.
        self.forward_dtype: torch.dtype | None = None
        self._full_precision = False

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sample_size(self) -> int:
        return self.description.sample_size

    def model_timestep(self, nominal: int) -> int:
        """A spec timestep (for 1000-step schedules) on this model's schedule: round(t * T / 1000)."""
        return min(round(nominal * self.num_train_timesteps / NOMINAL_TRAIN_STEPS), self.num_train_timesteps - 1)

    def alpha_bar(self, t: int) -> float:
        return float(self.alphas_cumprod[t])

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> clean latents z0. Identity for pixel models."""
        return pixels

    @property
    def has_decoder(self) -> bool:
        """Whether latents go through an autoencoder (``decode``) to become images."""
        return False

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]. Identity for pixel models."""
        return z0

    def encode_condition(self, records: list) -> torch.Tensor | None:
        """The model's input for the records' conditions (class ids or text embeddings); None if unconditional."""
        return None

    def reduced_conditions(self, batch) -> dict[str, torch.Tensor]:
        """Weakened versions of a batch's conditions, by name (CLiD); none for unconditional models."""
        return {}

    def predict_noise(self, z_t: torch.Tensor, t: int | torch.Tensor, condition: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """eps_theta(z_t, t, c) in fp32, (B, C, H, W), whatever the model's output parameterisation.

        ``t``: one timestep for all rows, or one per row (a (B,) integer tensor), so that requests at
        different timesteps share one network call (``features/fused.py``).
        ``condition``: rows aligned with ``z_t`` (from ``encode_condition``), or None.
        """
        if isinstance(t, torch.Tensor):
            timesteps = t.to(device=z_t.device, dtype=torch.long)
            a_t = self.alphas_cumprod[t.cpu().long()].view(-1, 1, 1, 1)  # float64, converted when used
        else:
            timesteps = torch.full((z_t.shape[0],), t, dtype=torch.long, device=z_t.device)
            a_t = torch.tensor(self.alpha_bar(t), dtype=torch.float64)
        half = self.forward_dtype is not None and not self._full_precision
        with torch.autocast(self.device.type, dtype=self.forward_dtype, enabled=half):
            output = self._forward(z_t, timesteps, condition).float()
        self.forward_rows += z_t.shape[0]
        self.network_calls += 1
        if output.shape[1] == 2 * self.channels:
            output = output[:, : self.channels]  # learned variance: keep the noise half
        if self.prediction_type == "epsilon":
            return output
        root_a, root_rest = (value.to(output.device, torch.float32) for value in (a_t.sqrt(), (1.0 - a_t).sqrt()))
        if self.prediction_type == "v_prediction":
            return root_a * output + root_rest * z_t
        return (z_t - root_a * output) / root_rest

    def _forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """The network call; ``compile_network`` swaps in a compiled version of it."""
        return self._model_output(z_t, timesteps, condition)

    def compile_network(self) -> None:
        """Forward passes through ``torch.compile`` from now on: faster after a warm-up of a minute or less,
        equal to the eager network up to float rounding (fused kernels sum in another order)."""
        self.load_weights()  # compiled code must not trace the loading
        self._forward = torch.compile(self._model_output, dynamic=True)

    @contextlib.contextmanager
    def precision(self, full: bool) -> Iterator[None]:
        """Within this block, forward passes run in float32 if ``full`` (DDIM inversions, whose
        errors compound step by step), else in ``forward_dtype``."""
        previous, self._full_precision = self._full_precision, full
        try:
            yield
        finally:
            self._full_precision = previous

    def load_weights(self) -> None:  # noqa: B027 (most targets hold their weights already)
        """Read weights that are still on disk (they are read on first use otherwise; see targets/deferred.py)."""

    @abc.abstractmethod
    def _model_output(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None
                      ) -> torch.Tensor:
        """The network's raw output for a batch at integer timesteps (B,), with its condition rows."""


def add_noise(z0: torch.Tensor, noise: torch.Tensor, a_t: float) -> torch.Tensor:
    """Forward diffusion in closed form: z_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise."""
    return math.sqrt(a_t) * z0 + math.sqrt(1.0 - a_t) * noise


def ddim_step(target: Target, z: torch.Tensor, s: int, s_next: int, condition: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Deterministic DDIM step Phi(z; s -> s_next); s_next > s inverts, s_next < s denoises.

    Written here rather than taken from a diffusers pipeline because the
    extractors need exact integer timesteps and the intermediate states. The
    clean image is state 0, with a_0 taken from the schedule.
    """
    return ddim_update(target, z, target.predict_noise(z, s, condition), s, s_next)


def ddim_update(target: Target, z: torch.Tensor, eps: torch.Tensor, s: int, s_next: int) -> torch.Tensor:
    """The DDIM step from state s to s_next given the model's noise prediction ``eps`` at (z, s)."""
    a_s, a_next = target.alpha_bar(s), target.alpha_bar(s_next)
    x0_hat = (z - math.sqrt(1.0 - a_s) * eps) / math.sqrt(a_s)
    return math.sqrt(a_next) * x0_hat + math.sqrt(1.0 - a_next) * eps


def per_image_norm(values: torch.Tensor, order: float = 2.0) -> torch.Tensor:
    """The L_p norm over all C*H*W entries of each image (not squared, not averaged): (B,)."""
    return torch.linalg.vector_norm(values.flatten(1), ord=order, dim=1)
