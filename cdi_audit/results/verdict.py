"""The verdict of an audit and everything it maps to, in one place: its exit code, its label, its colour in the
reports, its style in the terminal and its severity in a batch.

Torch-free and low in the package, so that the CLI, the batch, the reports and the decision all read one
definition and cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cdi_audit.errors import ExitCode


class Verdict(str, Enum):
    """What a completed audit found. A ``str`` (``Verdict.EVIDENCE == "evidence"``), so report.json holds the
    plain string and reading an older report gives the same member."""

    EVIDENCE = "evidence"
    NO_EVIDENCE = "no_evidence"
    INCONCLUSIVE = "inconclusive"

    # Printed and formatted as its value ("evidence"), as the bare string was (and StrEnum does from 3.11).
    __str__ = str.__str__
    __format__ = str.__format__

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        """Validated as one of the three strings, then made a member: report.json's JSON Schema keeps
        describing the verdict inline, as the three strings it always was, rather than as a ``$ref``."""
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(cls, core_schema.literal_schema([m.value for m in cls]))

    @property
    def exit_code(self) -> ExitCode:
        """The code ``check`` exits with, for a CI job to branch on."""
        return _TRAITS[self].exit_code

    @property
    def label(self) -> str:
        """How the terminal and the reports name it."""
        return _TRAITS[self].label

    @property
    def colour(self) -> str:
        """The verdict banner's colour in the HTML and PDF reports."""
        return _TRAITS[self].colour

    @property
    def style(self) -> str:
        """Its Rich style in the terminal summary."""
        return _TRAITS[self].style

    @property
    def severity(self) -> int:
        """Its rank in a batch, whose exit code is that of its most severe audit: a failed control
        (inconclusive) must not hide behind evidence, nor evidence behind no evidence."""
        return _TRAITS[self].severity


@dataclass(frozen=True)
class _Traits:
    exit_code: ExitCode
    label: str
    colour: str
    style: str
    severity: int


_TRAITS = {
    Verdict.NO_EVIDENCE: _Traits(ExitCode.NO_EVIDENCE, "NO EVIDENCE", "#1e6b35", "bold green", 0),  # green
    Verdict.EVIDENCE: _Traits(ExitCode.EVIDENCE, "EVIDENCE", "#b3261e", "bold red", 1),  # red
    Verdict.INCONCLUSIVE: _Traits(ExitCode.INCONCLUSIVE, "INCONCLUSIVE", "#8a5a00", "bold yellow", 2),  # amber
}
