"""The shipped sample audit, run as the README runs it (default alpha, test and permutations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLE_DATA
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.catalogue import PRESETS, column_count


@pytest.fixture(scope="module")
def cache(sample_audit: tuple[int, dict, Path]) -> Path:
    """The sample audit's feature cache: the reference images' features are computed once for both audits."""
    return sample_audit[2].parent / "cache"


def audit(suspect: str, cache: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [
        "check", str(SAMPLE_DATA / suspect), "--reference", str(SAMPLE_DATA / "unpublished"),
        "--model", str(SAMPLE_DATA / "model"), "--cache-dir", str(cache), "--json", "--jobs", "2",
    ])
    return result.exit_code, json.loads(result.stdout)


def test_published_images_give_evidence(sample_audit: tuple[int, dict, Path]) -> None:
    code, result, _ = sample_audit
    assert (code, result["verdict"]) == (1, "evidence")
    assert result["p_value"] < 0.01
    assert result["n_suspect"] == result["n_reference"] == 64
    assert result["controls"]["negative_control_p_value"] >= 0.01
    assert result["effect"]["auc"] > 0.7
    # The controls must not destroy a true finding: the sets come from the same photographs.
    assert result["controls"]["shift_passed"] is True and result["controls"]["shift_p_value"] >= 0.05
    assert result["controls"]["near_duplicates"] == []


def test_never_trained_images_give_no_evidence(cache: Path) -> None:
    code, result = audit("other", cache)
    assert (code, result["verdict"]) == (0, "no_evidence")
    assert result["p_value"] >= 0.01


def test_full_white_box_features_find_the_members_of_a_trained_model(trained_tiny_model, tmp_path: Path) -> None:
    model, members, nonmembers = trained_tiny_model
    result = CliRunner().invoke(app, [
        "check", str(members), "--reference", str(nonmembers), "--model", str(model), "--features", "full",
        "--max-batch-grad", "8", "--cache-dir", str(tmp_path), "--json", "--jobs", "1",
    ])
    payload = json.loads(result.stdout)
    assert (result.exit_code, payload["verdict"]) == (1, "evidence")
    assert len(payload["features"]) == column_count(PRESETS["full"]) and payload["p_value"] < 0.01
    assert any(name.startswith("gradient_masking_") for name in payload["features"])
    assert "noise_optim_delta_t100" in payload["features"]
