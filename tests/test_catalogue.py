"""The extractor catalogue is the one list of extractors: the registry, ``--help``, the docs' feature table and
the report's Method section all agree with it, and it stays free of torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.catalogue import (
    ALIASES,
    CATALOGUE,
    PRESETS,
    column_count,
    extractor_of,
    noise_predictions,
    preset_members,
)
from cdi_audit.features.registry import EXTRACTORS, extractor_names
from cdi_audit.report.citations import references_for

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_entry_is_implemented_as_it_says() -> None:
    """Each entry names a class whose default configuration gives the stated number of columns, each traced back
    to the entry by its prefix; no two extractors share a column name; access comes from the entry."""
    assert list(EXTRACTORS) == list(CATALOGUE)
    seen: set[str] = set()
    for name, entry in CATALOGUE.items():
        extractor = EXTRACTORS[name]()
        assert extractor.name == name and extractor.access == entry.access
        assert len(extractor.columns) == entry.columns, name
        assert all(extractor_of(column) == name for column in extractor.columns), (name, extractor.columns)
        assert not seen & set(extractor.columns)
        seen |= set(extractor.columns)
    assert extractor_of("pian_t200") == "pia" and extractor_of("neighbour_mirror_t050") == "neighbour_loss"
    assert extractor_of("unknown_column") is None


def test_presets_and_aliases_resolve_through_the_catalogue() -> None:
    assert extractor_names("fast") == list(PRESETS["fast"])
    assert extractor_names("full", conditioning="text") == list(preset_members("full", conditional=True))
    assert preset_members("full", conditional=True)[-2:] == ("clid", "structural")
    assert extractor_names("blackbox", conditioning="text") == ["rediffuse"]
    assert extractor_names("pian") == [ALIASES["pian"]] == ["pia"]
    # The fused runner evaluates SecMI's first step and PIA's first prediction once.
    assert noise_predictions(PRESETS["fast"]) == sum(CATALOGUE[n].noise_predictions for n in PRESETS["fast"]) - 1
    assert noise_predictions(PRESETS["full"]) is None


def documented_feature_rows() -> dict[str, tuple[str, str, str]]:
    """The feature table of docs/method.md: extractor -> (columns, what it measures, presets)."""
    text = (DOCS / "method.md").read_text()
    table = text[text.index("| extractor | columns |"):].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for line in table:
        name, columns, measures, presets = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name.strip("`")] = (columns, measures, presets)
    return rows


def catalogue_row(name: str) -> tuple[str, str, str]:
    entry = CATALOGUE[name]
    columns = f"{entry.columns} ({entry.columns_note})" if entry.columns_note else str(entry.columns)
    presets = ", ".join(preset for preset, members in PRESETS.items() if name in members)
    return columns, entry.measures, presets or "conditional models"


def test_the_docs_feature_table_is_the_catalogue() -> None:
    expected = {name: catalogue_row(name) for name in CATALOGUE}
    assert documented_feature_rows() == expected, "\n".join(
        f"| `{name}` | {' | '.join(row)} |" for name, row in expected.items())


def test_features_help_states_each_presets_members_and_columns() -> None:
    result = CliRunner().invoke(app, ["check", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))
    for preset, members in PRESETS.items():
        assert f"'{preset}' " in text and f"{', '.join(members)}; {column_count(members)} columns" in text
    fast_calls = noise_predictions(PRESETS["fast"])
    assert f"{fast_calls} noise predictions per image" in text


def test_the_method_section_cites_each_extractors_papers() -> None:
    columns = [column for name in ("loss", "neighbour_loss") for column in EXTRACTORS[name]().columns]
    keys = {reference.key for reference in references_for(columns, "permutation")}
    assert keys == {"cdi", "dataset-inference", "permutation-p", "sequential-p", "loss", "neighbourhood"}


def test_the_catalogue_and_the_citations_import_without_torch() -> None:
    code = ("import sys; import cdi_audit.features.catalogue, cdi_audit.report.citations; "
            "print('torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "False"
