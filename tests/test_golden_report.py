"""The README's sample audit against a committed report.json: a restructuring must keep every field.

Compared field by field, after leaving out what changes from run to run (times, the date, library versions,
the temporary cache folder) and writing paths relative to the repository. Exact: every string, integer,
flag, the verdict and the three p-values (multiples of 1/(B + 1)). Other numbers: relative 1e-3, as the
features differ in float32 rounding between CPUs; the curve's median p-values, tails of a t distribution that
magnify such rounding, to 0.05 in log10.

After a change that is meant to alter the report, rewrite the file and say why in the commit:
    CDI_AUDIT_UPDATE_GOLDEN=1 pytest tests/test_golden_report.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from conftest import REPO

GOLDEN = Path(__file__).parent / "golden" / "sample_report.json"
VOLATILE = {("created",), ("timings_seconds",), ("versions",), ("extraction", "seconds"),
            ("configuration", "cache_dir")}
EXACT_NUMBERS = {"p_value", "negative_control_p_value", "shift_p_value"}


def stable(value, path: tuple[str, ...] = ()):
    """``value`` without the volatile fields, with paths under the repository made relative to it."""
    if isinstance(value, dict):
        return {key: stable(item, (*path, key)) for key, item in value.items() if (*path, key) not in VOLATILE}
    if isinstance(value, list):
        return [stable(item, path) for item in value]
    if isinstance(value, str):
        return value.replace(str(REPO) + os.sep, "")
    return value


def differences(expected, actual, path: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(expected.keys() ^ actual.keys())} differ"]
        return [line for key in expected for line in differences(expected[key], actual[key], f"{path}.{key}")]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: {len(actual)} items, expected {len(expected)}"]
        return [line for index, (first, second) in enumerate(zip(expected, actual, strict=True))
                for line in differences(first, second, f"{path}[{index}]")]
    name = path.rsplit(".", 1)[-1]
    if isinstance(expected, float) and isinstance(actual, float) and name not in EXACT_NUMBERS:
        if name == "median_p" and expected > 0 and actual > 0:
            close = abs(math.log10(expected) - math.log10(actual)) <= 0.05
        else:
            close = math.isclose(expected, actual, rel_tol=1e-3, abs_tol=1e-12)
        return [] if close else [f"{path}: {actual!r}, expected {expected!r}"]
    same = expected == actual and type(expected) is type(actual)
    return [] if same else [f"{path}: {actual!r}, expected {expected!r}"]


def test_the_sample_audit_writes_the_committed_report(sample_audit: tuple[int, dict, Path]) -> None:
    code, _, out = sample_audit
    assert code == 1
    report = stable(json.loads((out / "report.json").read_text()))
    if os.environ.get("CDI_AUDIT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    assert differences(json.loads(GOLDEN.read_text()), report) == []


def test_the_comparison_catches_a_changed_field() -> None:
    golden = json.loads(GOLDEN.read_text())
    changed = json.loads(GOLDEN.read_text())
    changed["p_value"] = changed["p_value"] * (1 + 1e-9)
    changed["images"][3]["score"] *= 1.01
    changed["sample_size_curve"]["points"][0]["median_p"] *= 1.5
    changed["features"] = changed["features"][:-1]
    assert len(differences(golden, changed)) == 4
    assert differences(golden, stable(golden)) == []
