"""The ``Target`` interface: a diffusion model seen through its noise schedule and a noise predictor.

Notation (docs/architecture.md, "The schedule"): z0 is the clean latent (the image itself for pixel
models), z_t = a z0 + b eps at a level of the model's ``schedule`` (``models/schedule.py``), eps_theta(z_t, l, c)
the model's noise prediction. Everything works on batches shaped (B, C, H, W) and keeps images independent
of each other; the operations built on it are in ``models/primitives.py``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch

from cdi_audit.access import Access
from cdi_audit.inputs.conditions import Conditioning
from cdi_audit.models.condition import Condition
from cdi_audit.models.prediction import PREDICTION_TYPES, to_noise
from cdi_audit.models.schedule import Level, NoiseSchedule
from cdi_audit.results.schema import ModelInfo


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
        schedule: NoiseSchedule,
        prediction_type: str,
        channels: int,
        device: torch.device,
        description: ModelInfo,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.channels = channels
        self.device = device
        self.description = description
        self.forward_rows = 0
        self.network_calls = 0  # invocations of the network, each of one or more rows
        # Forward passes run under autocast in this dtype (None: plain float32); see ``precision``.
        self.forward_dtype: torch.dtype | None = None
        self._full_precision = False
        self.notes: list[str] = []  # warnings for the report about the model itself (set by its family)

    @property
    def sample_size(self) -> int:
        return self.description.sample_size

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

    def encode_condition(self, records: list) -> Condition | None:
        """The model's condition for the records (their class ids, captions, sizes); None if unconditional."""
        return None

    def condition_for(self, captions: list[str | None], labels: list[int | None]) -> Condition | None:
        """The condition of images at the model's resolution with these captions and class ids (one each, None
        where absent): what an image-to-image request carries."""
        return None

    def null_condition(self, condition: Condition) -> Condition:
        """``condition`` with what it is conditioned on removed, as the pipeline builds its unconditional
        branch (the empty caption, the null class); what is not content (SDXL's sizes) stays."""
        raise NotImplementedError(f"{type(self).__name__} has no conditions")

    def predict_noise(self, z_t: torch.Tensor, level: Level | torch.Tensor, condition: Condition | None = None
                      ) -> torch.Tensor:
        """eps_theta(z_t, l, c) in fp32, (B, C, H, W), whatever the model's output parameterisation.

        ``level``: one level of ``schedule`` for all rows, or one per row (a (B,) tensor), so that requests
        at different levels share one network call (``features/fused.py``).
        ``condition``: rows aligned with ``z_t`` (from ``encode_condition``), or None.
        """
        levels = level if isinstance(level, torch.Tensor) else self.schedule.level_rows(level, z_t.shape[0])
        half = self.forward_dtype is not None and not self._full_precision
        with torch.autocast(self.device.type, dtype=self.forward_dtype, enabled=half):
            output = self._forward(z_t, self.schedule.model_time(levels).to(z_t.device), condition).float()
        self.forward_rows += z_t.shape[0]
        self.network_calls += 1
        if output.shape[1] == 2 * self.channels:
            output = output[:, : self.channels]  # learned variance: keep the noise half
        if self.prediction_type == "epsilon":
            return output
        a, b = (value.to(output.device, torch.float32).view(-1, 1, 1, 1)
                for value in self.schedule.row_coefficients(levels))
        return to_noise(output, z_t, a, b, self.prediction_type)

    def _forward(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        """The network call; ``compile_network`` swaps in a compiled version of it."""
        return self._model_output(z_t, time, condition)

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
        """Read weights that are still on disk (they are read on first use otherwise; see models/deferred.py)."""

    @abc.abstractmethod
    def _model_output(self, z_t: torch.Tensor, time: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        """The network's raw output for a batch at its time input ``time`` (B,), with its condition rows."""
