"""The small rules every setting is checked by, worded once: each raises ``InvalidSetting`` naming the field,
with a sentence that reads after any name the field goes by ("--seed must be ...", "seed must be ...").

The settings objects (``pipeline/settings.py``, ``Machine``, ``ModelSpec``, ``Adapter``, ``EndpointSettings``)
call these when they are made, so every way in refuses the same values in the same words.
"""

from __future__ import annotations

import math
import os

from cdi_audit.errors import InvalidSetting

# Worker processes of the statistics when none are asked for: one per core, at most 8 (every way in shares it).
DEFAULT_JOBS = min(8, os.cpu_count() or 1)


def require(condition: bool, field: str, problem: str) -> None:
    if not condition:
        raise InvalidSetting(field, problem)


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(value: object, field: str, least: int = 1, most: int | None = None) -> None:
    """A whole number (of permutations, images per batch, workers, ...) of at least ``least``."""
    inside = is_integer(value) and value >= least and (most is None or value <= most)
    bounds = f"of at least {least}" if most is None else f"from {least} to {most}"
    require(inside, field, f"must be a whole number {bounds}, not {value!r}.")


def check_number(value: object, field: str, low: float = -math.inf, high: float = math.inf, above: bool = False,
                 note: str = "") -> None:
    """A finite number in [low, high], or (low, high] when ``above``; ``note`` explains the bounds."""
    inside = is_number(value) and math.isfinite(value) and (value > low if above else value >= low) \
        and value <= high
    if high == math.inf:
        bounds = f"above {low:g}" if above else f"of at least {low:g}"
    else:
        bounds = f"above {low:g} and at most {high:g}" if above else f"from {low:g} to {high:g}"
    require(inside, field, f"must be a number {bounds}{note}, not {value!r}.")
