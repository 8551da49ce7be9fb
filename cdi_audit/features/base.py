"""What every extractor is and receives: its contract, its batch, and its noise.

An extractor is configured in ``__init__`` (timesteps, draws) and applied with
``extract``; it never thresholds or decides anything. Its result for an image
depends only on the image, the model and the audit seed: noise comes from a
generator seeded by (seed, extractor, purpose, draw), the same for every image,
never from global random state or from the image's position in a batch.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import ClassVar

import torch

from cdi_audit.access import Access
from cdi_audit.features.catalogue import CATALOGUE
from cdi_audit.models.condition import Condition, select_condition
from cdi_audit.models.schedule import Level
from cdi_audit.models.target import Target


@dataclass(frozen=True)
class LatentBatch:
    """Clean latents of a batch of images, (B, C, H, W) fp32 on the target's device, their sha256 (which
    identifies them; it seeds only the per-image requests of black-box variations, never the features' shared
    noise), the model's condition rows for them (None if unconditional), and
    the images themselves (for features that compare reconstructions with them)."""

    z0: torch.Tensor
    hashes: tuple[str, ...]
    condition: Condition | None = None
    images: torch.Tensor | None = None  # the preprocessed images in [-1, 1], (B, 3, H, W)
    captions: tuple[str, ...] | None = None  # text-conditioned models only

    def select(self, rows: slice | list[int]) -> LatentBatch:
        """The sub-batch of ``rows`` (a slice or a list of positions)."""
        def pick(values):
            if values is None:
                return None
            return tuple(values[i] for i in rows) if isinstance(rows, list) else values[rows]

        return LatentBatch(self.z0[rows], pick(self.hashes), select_condition(self.condition, rows),
                           None if self.images is None else self.images[rows], pick(self.captions))


# What stands for the image in the seed of noise every image shares.
SHARED = "shared"
# How noise is drawn, in every cache key: features drawn another way are never mixed with these.
NOISE_SCHEME = "shared-by-all-images"


@dataclass(frozen=True)
class NoiseSource:
    """Gaussian noise that is a pure function of (audit seed, extractor, purpose, draw): every image of an audit
    gets the same draw (common random numbers; docs/method.md).

    With shared noise the part of a feature's noise that is common to all images (how hard that particular
    draw is to denoise) is the same for P and U and cancels in their comparison; each image's features still
    depend on the image alone, so the permutation test stays exact. Measured on the weak-signal benchmark
    (benchmarks/RESULTS.md, "Detection power, issue 22"): see there for the before/after numbers.
    ``generator_seed`` with an image's hash gives per-image seeds (black-box variation requests).
    """

    seed: int

    def generator_seed(self, image_hash: str, extractor: str, purpose: str, draw: int) -> int:
        key = f"{self.seed}|{image_hash}|{extractor}|{purpose}|{draw}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)

    def draw(self, batch: LatentBatch, extractor: str, purpose: str, draw: int = 0) -> torch.Tensor:
        """Standard normal noise shaped like ``batch.z0``, the same for every row, drawn on the CPU then moved to
        its device."""
        generator = torch.Generator().manual_seed(self.generator_seed(SHARED, extractor, purpose, draw))
        shared = torch.randn(batch.z0.shape[1:], generator=generator)
        return shared.expand(len(batch.hashes), *shared.shape).contiguous().to(batch.z0.device)


@dataclass(frozen=True)
class Forward:
    """One request for the model's noise prediction: rows ``z`` at level ``t`` of the model's schedule with
    their condition rows."""

    z: torch.Tensor
    t: Level
    condition: Condition | None = None


# A feature written as a plan: it yields lists of independent requests, receives their noise predictions
# (one tensor per request, in order) and finally returns the (B, k) values. Who runs the plan decides how
# requests become network calls: one call each (``run_alone``) or many plans' requests fused into few calls.
Plan = Generator[list[Forward], list[torch.Tensor], torch.Tensor]


class Extractor(abc.ABC):
    """One membership-inference method: ``extract(target, batch, noise) -> (B, len(columns))``.

    ``version`` changes whenever the values an extractor computes change, so
    cached features from an older version are never mixed with new ones.
    ``log_scaled``: the columns are norms (heavy-tailed, positive) and are fed
    to the scoring model as log(value + 1e-12) (docs/method.md, "Choices per feature").
    """

    name: ClassVar[str]  # its entry in the catalogue (``features/catalogue.py``), which says what it needs
    version: ClassVar[int] = 1
    log_scaled: ClassVar[bool] = True
    # DDIM inversions run in float32 even when other forward passes use half precision (docs/method.md).
    full_precision: ClassVar[bool] = False

    @property
    def access(self) -> Access:
        """What it needs of the model, as the catalogue says."""
        return CATALOGUE[self.name].access

    @property
    @abc.abstractmethod
    def columns(self) -> tuple[str, ...]:
        """Names of the feature columns, in the order ``extract`` returns them."""

    @property
    def log_columns(self) -> tuple[str, ...]:
        """The columns fed to the scoring model as log(value + 1e-12): all of them when ``log_scaled``."""
        return self.columns if self.log_scaled else ()

    @classmethod
    def for_target(cls, target: Target) -> Extractor:
        """This extractor configured for ``target`` (most need nothing from it)."""
        return cls()

    def not_applicable(self, target: Target) -> str | None:
        """Why this extractor cannot run on ``target`` (one clause), or None when it can."""
        return None

    @abc.abstractmethod
    def params(self) -> dict:
        """The configuration that changes the values (part of the cache key)."""

    @property
    def planned(self) -> bool:
        """Whether the feature is written as a ``plan`` (forward passes only), so its requests can be fused."""
        return type(self).plan is not Extractor.plan

    def plan(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> Plan:
        """The feature as requests for noise predictions (see ``Plan``); features that need gradients or
        another kind of model call override ``extract`` instead."""
        raise NotImplementedError(f"{self.name} is not written as a plan")

    def extract(self, target: Target, batch: LatentBatch, noise: NoiseSource) -> torch.Tensor:
        """Feature values for each image of ``batch``: (B, len(columns)), float64 on the CPU.

        By default the plan's requests run one network call each, in order (as the reference code does).
        """
        return run_alone(self.plan(target, batch, noise), target)


def run_alone(plan: Plan, target: Target) -> torch.Tensor:
    """The plan's values with one network call per request, in the order it asks (the reference structure);
    ``features/fused.py`` runs many plans together instead."""
    try:
        requests = next(plan)
        while True:
            requests = plan.send([target.predict_noise(r.z, r.t, r.condition) for r in requests])
    except StopIteration as finished:
        return finished.value


def nominal_timestep_label(t: int) -> str:
    """Column-name suffix for a timestep on the 1000-step scale, e.g. 100 -> 't100', 0 -> 't000'."""
    return f"t{t:03d}"
