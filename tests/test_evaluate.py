"""``cdi-audit evaluate`` on a tiny trained model whose members are known, and its statistics alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.catalogue import PRESETS, column_count
from cdi_audit.statistics.evaluation import auc, draws, sample_size_grid, tpr_at_fpr

ALPHA = 0.2  # a high level makes the false-positive check informative with few null draws


def test_sample_size_grid_follows_the_spec_and_ends_at_the_data() -> None:
    assert sample_size_grid(500) == [10, 20, 30, 50, 70, 100, 150, 200, 300, 500]
    assert sample_size_grid(1234)[-4:] == [500, 700, 1000, 1234]
    assert sample_size_grid(32) == [10, 20, 30, 32]
    assert sample_size_grid(9) == []


def test_tpr_at_low_fpr_and_auc_by_hand() -> None:
    nonmembers = np.arange(100, dtype=float)  # 0..99: at most one may score at or above the threshold
    members = np.array([98.5, 99.5, 120.0, 50.0])
    # Threshold above 98 (the second-highest non-member) admits 1% FPR: members 98.5, 99.5, 120 pass.
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(0.75)
    assert tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(0.5)  # above 99: 99.5 and 120
    assert auc(members, nonmembers) == pytest.approx((99 + 100 + 100 + 50.5) / 400)  # 50 ties one


def test_null_draws_use_disjoint_non_members_and_repeat_exactly() -> None:
    members, nonmembers = np.arange(30), np.arange(30, 80)
    first = list(draws("null", [10, 20], 3, members, nonmembers, seed=5))
    again = list(draws("null", [10, 20], 3, members, nonmembers, seed=5))
    assert len(first) == 6
    for draw, same in zip(first, again, strict=True):
        assert not set(draw.suspect_rows) & set(draw.reference_rows)
        assert set(draw.suspect_rows) | set(draw.reference_rows) <= set(nonmembers)
        np.testing.assert_array_equal(draw.suspect_rows, same.suspect_rows)
    member_draw = next(draws("members", [10], 1, members, nonmembers, seed=5))
    assert set(member_draw.suspect_rows) <= set(members) and set(member_draw.reference_rows) <= set(nonmembers)


@pytest.fixture(scope="module")
def evaluated(trained_tiny_model, tmp_path_factory) -> tuple[dict, str, Path]:
    model, members, nonmembers = trained_tiny_model
    out = tmp_path_factory.mktemp("evaluation")
    result = CliRunner().invoke(app, [
        "evaluate", "--members", str(members), "--nonmembers", str(nonmembers), "--model", str(model),
        "--features", "loss,multi_loss", "--repeats", "12", "--permutations", "100", "--alpha", str(ALPHA),
        "--no-cache", "--jobs", "1", "--json", "--out", str(out),
    ], prog_name="cdi-audit")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result.stderr, out


def test_evaluate_reports_every_feature_set_and_test(evaluated) -> None:
    payload, stderr, out = evaluated
    assert payload["kind"] == "evaluation" and payload["n_members"] == 32 and payload["n_nonmembers"] == 40
    assert payload["tests"] == ["permutation", "split", "cdi-reference"]
    assert list(payload["feature_sets"]) == ["loss,multi_loss", "loss", "multi_loss"]
    assert len(payload["feature_sets"]["loss,multi_loss"]) == 11
    assert {row["feature_set"] for row in payload["discrimination"]} == set(payload["feature_sets"])
    assert len(payload["images_needed"]) == len(payload["false_positive_rates"]) == 9
    sizes = {(p["kind"], p["n"]) for p in payload["curves"]}
    assert sizes == {("members", 10), ("members", 20), ("members", 30), ("members", 32), ("null", 10), ("null", 20)}
    assert all(len(p["p_values"]) == 12 for p in payload["curves"])
    assert "NOT calibrated" in payload["test_notes"]["cdi-reference"]
    assert "Separation: 32 members vs 40 non-members" in stderr and "Images needed" in stderr
    assert json.loads((out / "evaluation.json").read_text()) == payload
    assert (out / "p_value_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_members_curve_falls_and_the_signal_is_found(evaluated) -> None:
    payload, _, _ = evaluated
    def curve(test: str) -> dict[int, dict]:
        return {p["n"]: p for p in payload["curves"]
                if (p["feature_set"], p["test"], p["kind"]) == ("loss,multi_loss", test, "members")}

    split, permutation = curve("split"), curve("permutation")
    assert split[32]["median_p"] < split[20]["median_p"] < split[10]["median_p"]
    assert permutation[32]["median_p"] < 0.01 and permutation[32]["fraction_below_alpha"] > 0.9
    row = next(r for r in payload["discrimination"] if r["feature_set"] == "loss")
    assert row["auc"] > 0.7 and row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
    needed = {(r["feature_set"], r["test"]): r["images_needed"] for r in payload["images_needed"]}
    assert needed[("loss,multi_loss", "permutation")] is not None


def test_null_rejection_rate_of_the_permutation_test_stays_within_its_binomial_bound(evaluated) -> None:
    payload, _, _ = evaluated
    for row in payload["false_positive_rates"]:
        if row["test"] != "permutation":
            continue
        assert row["runs"] == 24
        assert row["rejections"] <= stats.binom.ppf(0.995, row["runs"], ALPHA)
        assert row["rate"] == pytest.approx(row["rejections"] / row["runs"])


def test_evaluate_refuses_too_few_permutations_to_reach_the_threshold(trained_tiny_model) -> None:
    model, members, nonmembers = trained_tiny_model
    result = CliRunner().invoke(app, ["evaluate", "--members", str(members), "--nonmembers", str(nonmembers),
                                      "--model", str(model), "--permutations", "50"], prog_name="cdi-audit")
    assert result.exit_code == 2 and "1/51" in result.stderr


def test_evaluate_refuses_too_few_non_members_for_the_null_curve(image_sets, tiny_model) -> None:
    members, nonmembers = image_sets
    result = CliRunner().invoke(app, ["evaluate", "--members", str(members), "--nonmembers", str(nonmembers),
                                      "--model", str(tiny_model), "--json"], prog_name="cdi-audit")
    assert result.exit_code == 3
    message = json.loads(result.stdout)["error"]["message"]
    assert "non-members set" in message and "has 12 usable image(s)" in message and "at least 20" in message


def test_feature_sets_are_each_covered_preset_and_each_extractor_alone_without_repeats() -> None:
    from cdi_audit.features.registry import resolve_extractors
    from cdi_audit.pipeline.evaluate import evaluated_feature_sets

    fast = evaluated_feature_sets("fast", resolve_extractors("fast"), "none")
    assert list(fast) == ["fast", *PRESETS["fast"]] and len(fast["fast"]) == column_count(PRESETS["fast"])
    assert evaluated_feature_sets("blackbox", resolve_extractors("blackbox"), "none") == {
        "blackbox": ["rediffuse_l2", "rediffuse_l1", "rediffuse_ssim"]}
    mixed = evaluated_feature_sets("loss,rediffuse", resolve_extractors("loss,rediffuse"), "none")
    assert list(mixed) == ["blackbox", "loss,rediffuse", "loss"]
