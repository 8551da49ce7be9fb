"""The ``Verdict`` type: what each verdict maps to agrees with the documentation, report.json keeps plain
strings, and a batch exits with its most severe audit's code."""

from __future__ import annotations

import itertools
import json
import re

from conftest import REPO

from cdi_audit.errors import ExitCode
from cdi_audit.pipeline.batch import batch_exit_code
from cdi_audit.results.schema import AuditResult, BatchAudit, BatchResult, report_json
from cdi_audit.results.verdict import Verdict

GOLDEN = REPO / "tests" / "golden" / "sample_report.json"
TABLE_ROW = re.compile(r"^\| (\d+) \| (.+) \|$")


def documented_exit_codes() -> dict[int, str]:
    """The exit-code table of docs/options.md: code -> meaning."""
    text = (REPO / "docs" / "options.md").read_text()
    section = text.split("## Exit codes and errors", 1)[1].split("\n## ", 1)[0]
    return {int(match[1]): match[2] for line in section.splitlines() if (match := TABLE_ROW.match(line))}


def test_the_documented_exit_codes_are_the_enum() -> None:
    assert documented_exit_codes().keys() == {int(code) for code in ExitCode}


def test_each_verdict_has_its_documented_exit_code_label_and_severity() -> None:
    documented = documented_exit_codes()
    for verdict in Verdict:
        assert documented[verdict.exit_code].startswith(f"{verdict.label.lower()} (a completed audit")
    assert {verdict: (int(verdict.exit_code), verdict.label) for verdict in Verdict} == {
        Verdict.NO_EVIDENCE: (0, "NO EVIDENCE"), Verdict.EVIDENCE: (1, "EVIDENCE"),
        Verdict.INCONCLUSIVE: (5, "INCONCLUSIVE")}
    # docs/batch.md, "Exit code": 5 if any audit is inconclusive, 1 if any is evidence, else 0.
    assert sorted(Verdict, key=lambda verdict: verdict.severity) == [
        Verdict.NO_EVIDENCE, Verdict.EVIDENCE, Verdict.INCONCLUSIVE]
    assert len({verdict.colour for verdict in Verdict}) == len({verdict.style for verdict in Verdict}) == 3


def test_a_report_holds_the_verdict_as_a_plain_string() -> None:
    report = json.loads(GOLDEN.read_text())  # the golden report leaves out what changes from run to run
    report |= {"created": "2025-01-01T00:00:00+00:00", "timings_seconds": {}, "versions": {}}
    report["extraction"]["seconds"] = 1.0
    result = AuditResult.model_validate_json(json.dumps(report))
    assert result.verdict is Verdict.EVIDENCE and f"{result.verdict}" == "evidence"
    written = json.loads(report_json(result))
    assert written == report  # read and written back, nothing changes
    assert written["verdict"] == "evidence" and type(written["verdict"]) is str
    demoted = result.model_copy(update={"verdict": Verdict.INCONCLUSIVE})
    assert json.loads(report_json(demoted))["verdict"] == "inconclusive"


def test_a_batch_keeps_plain_strings_and_errors() -> None:
    audits = [BatchAudit(name="a", verdict=Verdict.EVIDENCE, exit_code=1, p_value=0.001, adjusted_p_value=0.002),
              BatchAudit(name="b", verdict="error", exit_code=3, p_value=None, adjusted_p_value=None, error="x")]
    batch = BatchResult(batch_file="audits.toml", correction="bh", family_size=1, exit_code=3, created="now",
                        audits=audits)
    read = BatchResult.model_validate_json(batch.model_dump_json())
    assert [audit.verdict for audit in read.audits] == [Verdict.EVIDENCE, "error"]
    assert [audit["verdict"] for audit in json.loads(batch.model_dump_json())["audits"]] == ["evidence", "error"]


def entry(verdict: Verdict | str, exit_code: int) -> BatchAudit:
    return BatchAudit(name="a", verdict=verdict, exit_code=exit_code, p_value=None, adjusted_p_value=None)


def test_a_batch_exits_with_its_most_severe_audits_code() -> None:
    for size in (1, 2, 3):
        for verdicts in itertools.product(Verdict, repeat=size):
            audits = [entry(verdict, verdict.exit_code) for verdict in verdicts]
            worst = max(verdicts, key=lambda verdict: verdict.severity)
            assert batch_exit_code(audits) == worst.exit_code
            # A failed audit is more severe than any verdict.
            failed = entry("error", ExitCode.MODEL_UNAVAILABLE)
            assert batch_exit_code([*audits, failed]) == ExitCode.MODEL_UNAVAILABLE
