"""The settings of a run and the one rule book that checks them.

``check``, ``extract``, ``evaluate``, the entries of a batch file and the Python entry points all build these
objects, and every range is checked here, when the object is made, before any work: the command line and the
batch reader only parse text into values. A value out of range raises ``InvalidSetting`` naming the field;
each way in renames it (``--alpha`` on the command line, ``alpha`` in a batch file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cdi_audit.cache import require_writable_cache
from cdi_audit.errors import InvalidSetting
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.rules import check_count, is_number, require
from cdi_audit.statistics.power import DEFAULT_CURVE_RESAMPLES
from cdi_audit.statistics.testing import AnyTestName, TestName
from cdi_audit.verdict.controls import DEFAULT_SHIFT_ALPHA

if TYPE_CHECKING:
    from cdi_audit.blackbox.endpoints import EndpointSettings

# sklearn and numpy take seeds below 2**32; a larger one would fail deep inside the statistics.
MAX_SEED = 2**32 - 1
TESTS: tuple[TestName, ...] = ("permutation", "split")
ACCESS_CHOICES = ("auto", "blackbox")
SHIFT_ALPHA_RANGE = (0.001, 0.5)


def check_level(value: object, field_name: str, low: float = 0.0, high: float = 0.5, inclusive: bool = False) -> None:
    """A significance level: a finite number inside (low, high), or [low, high] when ``inclusive``."""
    inside = is_number(value) and math.isfinite(value) and (
        low <= value <= high if inclusive else low < value < high)
    bounds = f"from {low:g} to {high:g}" if inclusive else f"between {low:g} and {high:g}"
    require(inside, field_name, f"must be a number {bounds} (e.g. 0.01), not {value!r}.")


def check_reachable(permutations: int, threshold: float, what: str) -> None:
    """A permutation p-value is at least 1/(B+1): a B that could never go below ``threshold`` is refused."""
    require(1 / (permutations + 1) < threshold, "permutations",
            f"must be at least {math.ceil(1 / threshold)} for {what} = {threshold:g}: with {permutations} the "
            f"smallest p-value is 1/{permutations + 1}, which cannot go below it.")


def check_features(features: object) -> None:
    from cdi_audit.features.registry import resolve_extractors

    require(isinstance(features, str), "features", f"must be a preset or comma-separated names, not {features!r}.")
    try:
        resolve_extractors(features)
    except ValueError as error:
        raise InvalidSetting("features", f"cannot be {features!r}: {error}") from None


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """How features are computed: shared by ``check``, ``extract`` and ``evaluate``."""

    model: ModelSpec | None = None  # None when the model is reached through ``endpoint``
    machine: Machine = field(default_factory=Machine)  # where the network runs: device, dtype, torch.compile
    access: str = "auto"  # "auto": all a local model gives; "blackbox": use it through variations only
    endpoint: EndpointSettings | None = None
    features: str = "auto"
    seed: int = 0
    batch_size: int = 32
    max_batch_grad: int = 16
    caption: str | None = None  # one caption for every image (text-to-image models)
    cache_dir: Path | None = None
    use_cache: bool = True
    strict: bool = False
    n_jobs: int = 1
    # With adapters: score the features and how much the adapters changed each (adapted minus base, per image).
    calibration: bool = True

    def __post_init__(self) -> None:
        require((self.model is None) != (self.endpoint is None), "model",
                "must be given either as a local model or as an endpoint, not both and not neither.")
        require(self.access in ACCESS_CHOICES, "access", f"must be 'auto' or 'blackbox', not {self.access!r}.")
        require(self.access == "auto" or self.model is not None, "access",
                "'blackbox' is for a local model; an endpoint gives black-box access anyway.")
        check_features(self.features)
        check_count(self.seed, "seed", least=0, most=MAX_SEED)
        check_count(self.batch_size, "batch_size")
        check_count(self.max_batch_grad, "max_batch_grad")
        check_count(self.n_jobs, "n_jobs")
        require(self.caption is None or isinstance(self.caption, str), "caption",
                f"must be text, not {self.caption!r}.")
        require(self.calibration or (self.model is not None and bool(self.model.adapters)), "calibration",
                "against the base applies to audits with adapters only.")
        if self.use_cache:
            require_writable_cache(self.store_root, given=self.cache_dir is not None)

    @property
    def calibrated(self) -> bool:
        """Whether features are the adapters' per-image change against their base."""
        return self.calibration and self.model is not None and bool(self.model.adapters)

    @property
    def store_root(self) -> Path | None:
        """Where features (and completed endpoint calls) are kept; None without the cache."""
        if not self.use_cache:
            return None
        from cdi_audit.cache import default_cache_dir

        return Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()


@dataclass(frozen=True, kw_only=True)
class AuditSettings(ModelSettings):
    suspect_dir: Path
    reference_dir: Path
    alpha: float = 0.01
    test: TestName = "permutation"
    permutations: int = 1000
    curve_resamples: int = DEFAULT_CURVE_RESAMPLES  # 0: no sample-size curve
    shift_alpha: float = DEFAULT_SHIFT_ALPHA
    # A model known not to have seen the suspect images (for a fine-tune, its base model). An adapted model's
    # control is its base, never another model.
    control: ModelSpec | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_level(self.alpha, "alpha")
        require(self.test in TESTS, "test", f"must be 'permutation' or 'split', not {self.test!r}.")
        check_count(self.permutations, "permutations")
        if self.test == "permutation":
            check_reachable(self.permutations, self.alpha, "alpha")
        check_level(self.shift_alpha, "shift_alpha", *SHIFT_ALPHA_RANGE, inclusive=True)
        # The shift check is a permutation test whatever the audit's own test is.
        check_reachable(self.permutations, self.shift_alpha, "shift_alpha")
        check_count(self.curve_resamples, "curve_resamples", least=0)
        require(self.control is None or self.model is None or not self.model.adapters, "control",
                "must be left out with adapters: the base model is then the control.")

    @property
    def control_is_base(self) -> bool:
        """Whether the audit's control is an adapted model's base (no control model was given)."""
        return self.control is None and self.model is not None and bool(self.model.adapters)

    @property
    def control_model(self) -> ModelSpec | None:
        """The model the audit is compared with: the control given, or an adapted model's base."""
        return self.model.base if self.control_is_base else self.control

    @property
    def control_label(self) -> str:
        return "Base model" if self.control_is_base else "Control model"


def check_evaluation(alpha: float, repeats: int, permutations: int, tests: tuple[AnyTestName, ...],
                     needed_p: float) -> None:
    """The rules of ``evaluate``'s own settings (its model settings are ``ModelSettings``')."""
    check_level(alpha, "alpha")
    check_count(repeats, "repeats")
    check_count(permutations, "permutations")
    known = ("permutation", "split", "cdi-reference")
    require(bool(tests) and all(test in known for test in tests), "tests",
            f"must be one or more of {', '.join(known)}, not {tests!r}.")
    if "permutation" in tests:
        check_reachable(permutations, needed_p, "the 'images needed' threshold")
