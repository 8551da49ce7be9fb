"""One module per model family: what it recognises, what it loads and the Target it builds.

Every module in this package is imported when the families are first needed; each registers its family
with ``@register``. So a new family is one new module here (plus its configs, for single files).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator

from cdi_audit.models.family import Family, PipelineIndex

_REGISTERED: list[Family] = []
_IMPORTED = False


def register(family_class: type[Family]) -> type[Family]:
    """Class decorator: add one instance of ``family_class`` to the registry."""
    _REGISTERED.append(family_class())
    return family_class


def registered_families() -> tuple[Family, ...]:
    """Every registered family, after importing each module of this package once."""
    global _IMPORTED
    if not _IMPORTED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _IMPORTED = True
    return tuple(_REGISTERED)


def family_for(index: PipelineIndex) -> Family | None:
    """The one family that recognises ``index``, or None. Two that both claim it are a bug in their rules."""
    matches = [family for family in registered_families() if family.recognises(index)]
    if len(matches) > 1:
        raise RuntimeError(f"families {', '.join(f.name for f in matches)} all recognise {index}")
    return matches[0] if matches else None


@contextlib.contextmanager
def temporarily_registered(family: Family) -> Iterator[Family]:
    """``family`` registered within the block only (tests of a family defined at run time)."""
    registered_families()
    _REGISTERED.append(family)
    try:
        yield family
    finally:
        _REGISTERED.remove(family)
