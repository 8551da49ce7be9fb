"""Limits on the audit settings, worded once for the command line and for batch files: each returns what
is wrong with a value (one sentence), or None."""

from __future__ import annotations

import math


def alpha_problem(alpha: float) -> str | None:
    return None if 0.0 < alpha < 0.5 else "alpha must be between 0 and 0.5 (e.g. 0.01)."


def permutations_problem(permutations: int, threshold: float, what: str = "alpha") -> str | None:
    """A permutation p-value is at least 1/(B+1): a B that could never go below ``threshold`` is refused."""
    if 1 / (permutations + 1) < threshold:
        return None
    return (f"with {permutations} permutations the smallest p-value is 1/{permutations + 1}, which cannot be "
            f"below {what} = {threshold:g}; use at least {math.ceil(1 / threshold)}.")
