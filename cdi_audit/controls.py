"""Checks that keep a verdict honest: input overlap and the negative control."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cdi_audit.errors import InputProblem
from cdi_audit.images import ImageSet
from cdi_audit.stats import TestName, TestOutcome, run_test


def reject_overlap(
    first: ImageSet,
    second: ImageSet,
    requirement: str = "the reference set must hold only unpublished images",
) -> None:
    """The same file in both sets makes the comparison meaningless: an input error, not a finding."""
    second_paths = {record.sha256: record.path for record in second.records}
    shared = [(record.path, second_paths[record.sha256]) for record in first.records
              if record.sha256 in second_paths]
    if shared:
        first_path, second_path = shared[0]
        raise InputProblem(
            f"{len(shared)} file(s) are in both {first.root} and {second.root} "
            f"(e.g. {first_path} = {second_path}); {requirement}."
        )


def negative_control(
    reference_features: np.ndarray,
    test: TestName,
    seed: int,
    permutations: int,
    n_jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> TestOutcome:
    """The full test on two random halves of the reference set, the first half playing P.

    Both halves are unseen by the model, so this is null by construction: a
    significant result points at a bug or an ordering artefact, and the audit
    is then inconclusive rather than trusted.
    """
    n = len(reference_features)
    first_half = np.zeros(n, dtype=bool)
    first_half[np.random.default_rng([seed, 104729]).permutation(n)[: n // 2]] = True
    return run_test(test, reference_features, first_half, seed, permutations, n_jobs, on_progress)
