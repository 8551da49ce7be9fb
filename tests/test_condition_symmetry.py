"""Both sets treated alike, or no accusation: null audits on the shipped tiny SD3 (which saw neither
``sample_data/other`` nor ``sample_data/unpublished``) with captions given differently for the two sets.

Before the rule, a captions.csv in the suspect folder and none in the reference folder gave EVIDENCE (p = 0.005,
exit 1) on images the model never saw. Now sets captioned under different rules are refused before any feature
is extracted (exit 3), and captions of one kind written differently for the two sets fail the shift check
(inconclusive, exit 5).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from null_audits import null_rejections
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.verdict.controls import ConditionsSeen, condition_statistics

SD3 = SAMPLE_DATA / "flow" / "sd3"
PER_SET = 16
DRAWS = 2
WORDS = ("red", "blue", "green", "round", "square", "soft", "bright", "dark", "shape", "field")


def null_sets(root: Path, draw: int) -> tuple[Path, Path]:
    """Two disjoint random sets of ``PER_SET`` images the model never saw, drawn from other/ and unpublished/."""
    pool = sorted((SAMPLE_DATA / "other").glob("*.png")) + sorted((SAMPLE_DATA / "unpublished").glob("*.png"))
    chosen = np.random.default_rng([32, draw]).permutation(len(pool))[: 2 * PER_SET]
    for folder, indices in (("p", chosen[:PER_SET]), ("u", chosen[PER_SET:])):
        (root / folder).mkdir(parents=True)
        for index in indices:
            shutil.copy(pool[index], root / folder / pool[index].name)
    return root / "p", root / "u"


def caption_text(index: int, words: int) -> str:
    rng = np.random.default_rng(index)
    return " ".join(rng.choice(WORDS, size=words))


def captions_csv(folder: Path, words: int = 4) -> None:
    rows = [f"{image.name},{caption_text(i, words)}" for i, image in enumerate(sorted(folder.glob("*.png")))]
    (folder / "captions.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")


def captions_jsonl(folder: Path, words: int = 4) -> None:
    rows = [json.dumps({"file": image.name, "caption": caption_text(i, words)})
            for i, image in enumerate(sorted(folder.glob("*.png")))]
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")


def sidecars(folder: Path, words: int = 4) -> None:
    for i, image in enumerate(sorted(folder.glob("*.png"))):
        image.with_suffix(".txt").write_text(caption_text(i, words))


def titled_and_tagged(suspect: Path, reference: Path) -> None:
    """One kind of source for both, written differently: long titles for the published works, one-word tags
    for the sketches."""
    rows = [f"{image.name},A carefully composed study no. {i}: {caption_text(i, 12)} (2019)"
            for i, image in enumerate(sorted(suspect.glob("*.png")))]
    (suspect / "captions.csv").write_text("file,caption\n" + "\n".join(rows) + "\n")
    captions_csv(reference, words=1)


# How the two sets are captioned, and the exit code that must end the audit: 3 (refused before any feature is
# extracted) or 5 (inconclusive: the shift check sees the captions differ).
ASYMMETRIC: dict[str, tuple[int, Callable[[Path, Path], None]]] = {
    "captions.csv for the suspect set, none for the reference set": (3, lambda p, u: captions_csv(p)),
    "none for the suspect set, sidecars for the reference set": (3, lambda p, u: sidecars(u)),
    "sidecars for the suspect set, captions.csv for the reference set": (3, lambda p, u: (sidecars(p),
                                                                                          captions_csv(u))),
    "captions.jsonl for the suspect set, captions.csv for the reference set": (3, lambda p, u: (captions_jsonl(p),
                                                                                               captions_csv(u))),
    "titles for the suspect set, one-word tags for the reference set": (5, titled_and_tagged),
}


def audit(suspect: Path, reference: Path, cache: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [
        "check", str(suspect), "--reference", str(reference), "--model", str(SD3), "--features", "loss",
        "--test", "split", "--curve-resamples", "0", "--cache-dir", str(cache), "--jobs", "1", "--json"])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("draw", range(DRAWS))
@pytest.mark.parametrize("rule", sorted(ASYMMETRIC))
def test_sets_captioned_under_different_rules_never_give_evidence(rule: str, draw: int, tmp_path: Path) -> None:
    expected, caption = ASYMMETRIC[rule]
    suspect, reference = null_sets(tmp_path, draw)
    caption(suspect, reference)
    code, stdout, stderr = audit(suspect, reference, tmp_path / "cache")
    assert code == expected, stderr
    assert "EVIDENCE" not in stderr.replace("NO EVIDENCE", "")
    if expected == 3:  # refused before the model made a single call
        assert "do not come from the same kind of source" in " ".join(stderr.split())
        assert json.loads(stdout)["error"]["exit_code"] == 3
        assert not list((tmp_path / "cache").rglob("chunk-*.npz"))
    else:
        result = json.loads(stdout)
        assert result["verdict"] == "inconclusive" and not result["controls"]["shift_passed"]
        assert result["controls"]["shift_statistics"][0]["name"].startswith("caption_")


def test_sets_captioned_alike_are_audited(tmp_path: Path) -> None:
    """The same rule for both (a captions.csv in each, captions drawn alike): no refusal, and no evidence on
    images the model never saw."""
    suspect, reference = null_sets(tmp_path, 7)
    captions_csv(suspect)
    captions_csv(reference)
    code, stdout, stderr = audit(suspect, reference, tmp_path / "cache")
    result = json.loads(stdout)
    assert code == 0 and result["verdict"] == "no_evidence", stderr
    assert result["controls"]["shift_passed"]


def test_class_columns_keep_the_shift_checks_level() -> None:
    """The class-mix columns of the shift check, on class ids drawn alike for both sets: null audits reject
    at 0.05 no more often than a binomial bound allows."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=400)
    conditions = ConditionsSeen("class", {str(i): int(label) for i, label in enumerate(labels)})
    images = [SimpleNamespace(record=SimpleNamespace(sha256=str(i))) for i in range(len(labels))]
    matrix, names = condition_statistics(conditions, images)
    assert names == ["no_class", "class_0", "class_1", "class_2", "class_3"]
    assert np.array_equal(matrix[:, 1:].argmax(axis=1), labels) and not matrix[:, 0].any()
    rejections = null_rejections(matrix, stream=9, draws=100, per_set=20, permutations=99)
    assert rejections <= 13  # binomial(100, 0.05): P(X > 13) < 0.001
