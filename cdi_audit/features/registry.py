"""Extractors by name, and the presets users choose from."""

from __future__ import annotations

from cdi_audit.features.base import Extractor
from cdi_audit.features.loss import DenoisingLoss
from cdi_audit.features.multi_loss import MultiTimestepLoss
from cdi_audit.features.pia import PIA
from cdi_audit.features.secmi import SecMI

EXTRACTORS: dict[str, type[Extractor]] = {
    cls.name: cls for cls in (DenoisingLoss, MultiTimestepLoss, SecMI, PIA)
}
# ``pian`` shares its first model call with ``pia``: one extractor computes both.
ALIASES = {"pian": "pia"}
PRESETS: dict[str, tuple[str, ...]] = {
    # grey-box, no gradients: 14 columns, 30 forward passes per image
    "fast": ("loss", "multi_loss", "secmi", "pia"),
}


def resolve_extractors(spec: str) -> list[Extractor]:
    """A preset name or a comma-separated list of extractor names -> configured extractors.

    Raises ``ValueError`` naming what is known when a name is not.
    """
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        expanded = PRESETS.get(item, (ALIASES.get(item, item),))
        for name in expanded:
            if name not in EXTRACTORS:
                known = ", ".join([*PRESETS, *EXTRACTORS, *ALIASES])
                raise ValueError(f"unknown feature set or extractor {item!r}; known: {known}")
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no features given")
    return [EXTRACTORS[name]() for name in names]
