"""One module per model family: what it is, recognises and loads, and which Target it builds.

Every module in this package is imported when the families are first needed; each registers its family
with ``@register``. So a new family is one new module here (plus its Target in ``models/targets/`` if it
needs one of its own, and its configs, for single files): every list of families the user reads (--help,
refusals) is built here from the registered families' attributes. The modules import no torch, so the
command line's help can ask them.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence

from cdi_audit.models.checkpoint_kind import CheckpointKind
from cdi_audit.models.family import Family, PipelineIndex

_REGISTERED: list[Family] = []
_IMPORTED = False


def register(family_class: type[Family]) -> type[Family]:
    """Class decorator: add one instance of ``family_class`` to the registry."""
    _REGISTERED.append(family_class())
    return family_class


def registered_families() -> tuple[Family, ...]:
    """Every registered family, oldest first, after importing each module of this package once."""
    global _IMPORTED
    if not _IMPORTED:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _IMPORTED = True
    return tuple(sorted(_REGISTERED, key=lambda family: family.published))


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


def checkpoint_kinds() -> tuple[tuple[Family, CheckpointKind], ...]:
    """Every kind of single-file checkpoint a registered family recognises, with that family."""
    return tuple((family, kind) for family in registered_families() for kind in family.checkpoint_kinds)


def listing(words: Sequence[str], last: str = "and") -> str:
    """'A, B and C' (``last``: the word before the last item)."""
    if len(words) < 2:
        return words[0] if words else "none"
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def with_article(words: str) -> str:
    """'a Flux', 'an SDXL': the article by the sound of the first letter (of its name, in an acronym)."""
    vowel_sounds = "AEFHILMNORSX" if words[:2].isupper() else "AEIOUaeiou"
    return f"{'an' if words[:1] and words[0] in vowel_sounds else 'a'} {words}"


def supported(predicate: Callable[[Family], bool] = lambda family: True, last: str = "and") -> str:
    """The display names of the registered families for which ``predicate`` holds, e.g. 'SDXL, SD3 / SD3.5
    and Flux'."""
    return listing([family.display_name for family in registered_families() if predicate(family)], last)


def single_file_phrase() -> str:
    """Which single-file checkpoints load, and which of them need --model-config."""
    kinds = [kind for _, kind in checkpoint_kinds()]
    as_they_are = listing([kind.display_name for kind in kinds if kind.config is not None])
    configured = listing([kind.display_name for kind in kinds if kind.config is None] + ["others"], "or")
    return (f"a single-file .safetensors checkpoint of {supported(lambda f: f.single_file_pipeline is not None, 'or')} "
            f"({as_they_are} as they are; {configured} with --model-config)")


def model_phrase() -> str:
    """What --model may be: the pipeline folders and single files of the registered families."""
    return f"a {supported(last='or')} pipeline; or {single_file_phrase()}"


def adapter_phrase() -> str:
    """Which bases take --adapter."""
    return f"{supported(lambda family: family.lora_loader is not None)} bases"
