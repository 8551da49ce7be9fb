"""Extractors by name, built from the catalogue (``features/catalogue.py``), and the choice of them for a model."""

from __future__ import annotations

import importlib

from cdi_audit.access import ACCESS_DESCRIPTIONS, ACCESS_LEVELS, Access, within
from cdi_audit.errors import AccessInsufficient
from cdi_audit.features.base import Extractor
from cdi_audit.features.catalogue import ALIASES, CATALOGUE, PRESETS, largest_preset_within, preset_members
from cdi_audit.models.target import Target


def _implementation(location: str) -> type[Extractor]:
    module, name = location.split(":")
    return getattr(importlib.import_module(module), name)


EXTRACTORS: dict[str, type[Extractor]] = {name: _implementation(entry.implementation)
                                          for name, entry in CATALOGUE.items()}


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
        if item in PRESETS:
            expanded = preset_members(item, conditional=conditioning != "none")
        else:
            expanded = (ALIASES.get(item, item),)
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
    beyond = [e for e in extractors if not within(e.access, available)]
    if beyond:
        needed = max((e.access for e in beyond), key=ACCESS_LEVELS.index)
        names = ", ".join(e.name for e in beyond)
        raise AccessInsufficient(
            f"The features {names} need {needed}-box access ({ACCESS_DESCRIPTIONS[needed]}), but this model "
            f"gives only {available}-box access ({ACCESS_DESCRIPTIONS[available]}); choose features it can serve, "
            f"e.g. --features {largest_preset_within(available) or 'with fewer requirements'}."
        )

