"""Extractors by name, and the presets users choose from."""

from __future__ import annotations

from cdi_audit.errors import AccessInsufficient
from cdi_audit.features.base import Extractor
from cdi_audit.features.clid import CLiD
from cdi_audit.features.gradient_masking import GradientMasking
from cdi_audit.features.loss import DenoisingLoss
from cdi_audit.features.multi_loss import MultiTimestepLoss
from cdi_audit.features.neighbour_loss import NeighbourLoss
from cdi_audit.features.noise_optim import NoiseOptimisation
from cdi_audit.features.pia import PIA
from cdi_audit.features.rediffuse import ReDiffuse
from cdi_audit.features.secmi import SecMI
from cdi_audit.features.structural import Structural
from cdi_audit.models.target import ACCESS_LEVELS, Access, Target

EXTRACTORS: dict[str, type[Extractor]] = {
    cls.name: cls for cls in (DenoisingLoss, MultiTimestepLoss, NeighbourLoss, SecMI, PIA, GradientMasking,
                              NoiseOptimisation, CLiD, Structural, ReDiffuse)
}
# ``pian`` shares its first model call with ``pia``: one extractor computes both.
ALIASES = {"pian": "pia"}
PRESETS: dict[str, tuple[str, ...]] = {
    # grey-box, no gradients: 18 columns, 54 noise predictions per image, 53 evaluated (SecMI and PIA share one).
    # neighbour_loss is 24 of the 54 and most of the power on a model that memorises little (issue 22): on the
    # weak-signal benchmark (benchmarks/RESULTS.md) fast needs 20 images per set for median p < 0.01, 100 without.
    "fast": ("loss", "multi_loss", "secmi", "pia", "neighbour_loss"),
    # white-box, needs gradients: 31 columns, about 81 model calls and 18 backward passes per image
    "full": ("loss", "multi_loss", "secmi", "pia", "neighbour_loss", "gradient_masking", "noise_optim"),
    # black-box, an image-to-image endpoint is enough: 3 columns, 10 calls per image (2-3 on latent models)
    "blackbox": ("rediffuse",),
}
# Presets on conditional models (text-to-image, class-conditional) also take these (docs/method.md).
CONDITIONAL_PRESET_EXTRAS = ("clid", "structural")


def default_preset(access: Access) -> str:
    """What ``auto`` means: the grey-box preset for a model at hand, ReDiffuse for an endpoint."""
    return "blackbox" if access == "black" else "fast"


def extractor_names(spec: str, conditioning: str = "none", access: Access = "white") -> list[str]:
    """A preset name or a comma-separated list of extractor names -> extractor names, in order.

    ``auto`` is the preset for the model's ``access`` (``default_preset``). Presets grow by
    ``CONDITIONAL_PRESET_EXTRAS`` on conditional models. Raises ``ValueError`` naming what is
    known when a name is not.
    """
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if item == "auto":
            item = default_preset(access)
        if not item:
            continue
        expanded = PRESETS.get(item, (ALIASES.get(item, item),))
        if item in PRESETS and item != "blackbox" and conditioning != "none":
            expanded = (*expanded, *CONDITIONAL_PRESET_EXTRAS)
        for name in expanded:
            if name not in EXTRACTORS:
                known = ", ".join(["auto", *PRESETS, *EXTRACTORS, *ALIASES])
                raise ValueError(f"unknown feature set or extractor {item!r}; known: {known}")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no features given")
    return names


def resolve_extractors(spec: str) -> list[Extractor]:
    """Extractors for ``spec`` with their default configuration (no model at hand)."""
    return [EXTRACTORS[name]() for name in extractor_names(spec)]


def extractors_for(spec: str, target: Target) -> tuple[list[Extractor], list[str]]:
    """Extractors for ``spec`` configured for ``target``, and a note for each one that does not apply
    to it (skipped, never silently)."""
    extractors, notes = [], []
    for name in extractor_names(spec, target.conditioning, target.access):
        extractor = EXTRACTORS[name].for_target(target)
        reason = extractor.not_applicable(target)
        if reason is None:
            extractors.append(extractor)
        else:
            notes.append(f"Feature {name} skipped: {reason}.")
    if not extractors:
        raise AccessInsufficient(f"None of the features {spec!r} apply to this model ({' '.join(notes)})")
    return extractors, notes


def require_access(available: Access, extractors: list[Extractor]) -> None:
    """Refuse extractors that need more access to the model than the target gives."""
    rank = ACCESS_LEVELS.index(available)
    beyond = [e for e in extractors if ACCESS_LEVELS.index(e.access) > rank]
    if beyond:
        needed = max((e.access for e in beyond), key=ACCESS_LEVELS.index)
        names = ", ".join(e.name for e in beyond)
        raise AccessInsufficient(
            f"The features {names} need {needed}-box access ({ACCESS_DESCRIPTIONS[needed]}), but this model "
            f"gives only {available}-box access ({ACCESS_DESCRIPTIONS[available]}); choose features it can serve, "
            f"e.g. --features {_largest_preset_within(available) or 'with fewer requirements'}."
        )


ACCESS_DESCRIPTIONS: dict[Access, str] = {
    "black": "image-to-image calls only",
    "grey": "noise predictions at chosen timesteps",
    "white": "the weights, for gradients",
}


def _largest_preset_within(available: Access) -> str | None:
    rank = ACCESS_LEVELS.index(available)
    fitting = [name for name, members in PRESETS.items()
               if all(ACCESS_LEVELS.index(EXTRACTORS[m].access) <= rank for m in members)]
    return max(fitting, key=lambda name: len(PRESETS[name]), default=None)
