"""The verdict logic on feature tables (no model): what makes evidence, and what blocks it."""

from __future__ import annotations

import numpy as np
import pytest

import cdi_audit.verdict.decision as decision_module
from cdi_audit.features.table import FeatureTable
from cdi_audit.statistics.testing import TestOutcome
from cdi_audit.verdict.decision import decide


def table(seed: int, n: int = 30, shift: float = 0.0, constant_column: bool = False) -> tuple[FeatureTable, list, list]:
    rng = np.random.default_rng(seed)
    values = np.exp(rng.standard_normal((2 * n, 3)))  # positive, heavy-tailed, like norms
    values[:n, 0] *= np.exp(-shift)  # members: lower loss
    if constant_column:
        values = np.hstack([values, np.full((2 * n, 1), 2.5)])
    columns = ("loss", "secmi", "pia", "flat")[: values.shape[1]]
    hashes = tuple(f"{seed:08d}{index:056d}" for index in range(2 * n))
    return FeatureTable(hashes, columns, values, frozenset(columns)), list(hashes[:n]), list(hashes[n:])


def test_planted_membership_signal_gives_evidence() -> None:
    features, suspect, reference = table(seed=1, shift=1.5)
    decision = decide(features, suspect, reference, alpha=0.01, test="permutation", seed=0, permutations=200)
    assert decision.verdict == "evidence"
    assert decision.outcome.p_value < 0.01
    assert decision.effect.auc > 0.8
    assert decision.negative_control.p_value >= 0.01


def test_no_signal_gives_no_evidence() -> None:
    features, suspect, reference = table(seed=2)
    decision = decide(features, suspect, reference, alpha=0.01, test="split", seed=0, permutations=0)
    assert decision.verdict == "no_evidence"
    assert decision.outcome.p_value >= 0.01


def test_rows_are_matched_by_image_hash_not_position() -> None:
    features, suspect, reference = table(seed=3, shift=0.8)
    order = np.random.default_rng(0).permutation(len(features.keys))
    shuffled = FeatureTable(tuple(np.array(features.keys)[order]), features.columns, features.values[order],
                            features.log_columns)
    first = decide(features, suspect, reference, alpha=0.01, test="permutation", seed=0, permutations=100)
    second = decide(shuffled, suspect, reference, alpha=0.01, test="permutation", seed=0, permutations=100)
    assert first.outcome.p_value == second.outcome.p_value
    np.testing.assert_array_equal(first.outcome.scores, second.outcome.scores)


def test_a_failed_negative_control_turns_evidence_into_inconclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    features, suspect, reference = table(seed=4, shift=1.5)
    failed = TestOutcome("permutation", 3.0, 0.002, np.zeros(2), np.array([True, False]), 100)
    monkeypatch.setattr(decision_module, "negative_control", lambda *args, **kwargs: failed)
    decision = decide(features, suspect, reference, alpha=0.01, test="permutation", seed=0, permutations=200)
    assert decision.outcome.p_value < 0.01
    assert decision.verdict == "inconclusive"
    assert "negative control" in decision.reason


def test_constant_columns_are_dropped_by_name() -> None:
    features, suspect, reference = table(seed=5, constant_column=True)
    decision = decide(features, suspect, reference, alpha=0.01, test="split", seed=0, permutations=0)
    assert decision.used_columns == ("loss", "secmi", "pia")
    assert [dropped.name for dropped in decision.dropped] == ["flat"]


def test_all_constant_features_are_inconclusive() -> None:
    hashes = tuple(f"{index:064d}" for index in range(20))
    flat = FeatureTable(hashes, ("loss",), np.ones((20, 1)), frozenset({"loss"}))
    decision = decide(flat, list(hashes[:10]), list(hashes[10:]), alpha=0.01, test="permutation", seed=0,
                      permutations=200)
    assert decision.verdict == "inconclusive"
    assert decision.outcome is None


def test_norm_columns_are_log_scaled_for_the_scoring_model() -> None:
    features = FeatureTable(("a", "b"), ("loss", "ssim"), np.array([[np.e, 0.5], [1.0, 0.25]]), frozenset({"loss"}))
    np.testing.assert_allclose(features.scoring_matrix(["b", "a"]), [[1e-12, 0.25], [1.0, 0.5]], atol=1e-11)
