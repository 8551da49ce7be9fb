"""Failures that end an audit, each with the exit code a CI job branches on.

A failure must never look like a finding: these codes are disjoint from the
verdict codes (0 no evidence, 1 evidence, 5 inconclusive).
"""

from enum import IntEnum


class ExitCode(IntEnum):
    NO_EVIDENCE = 0
    EVIDENCE = 1
    USAGE = 2
    INPUT_PROBLEM = 3
    MODEL_UNAVAILABLE = 4
    INCONCLUSIVE = 5


VERDICT_EXIT_CODES = {
    "no_evidence": ExitCode.NO_EVIDENCE,
    "evidence": ExitCode.EVIDENCE,
    "inconclusive": ExitCode.INCONCLUSIVE,
}


class AuditError(Exception):
    """An audit cannot run. The message is one sentence for the user: what is wrong, what to do."""

    exit_code: ExitCode = ExitCode.INPUT_PROBLEM


class InputProblem(AuditError):
    """Too few or unreadable images, overlapping sets, a missing folder."""

    exit_code = ExitCode.INPUT_PROBLEM


class ModelUnavailable(AuditError):
    """The model path holds nothing we can load offline and safely, or the model misbehaves."""

    exit_code = ExitCode.MODEL_UNAVAILABLE


class SettingsProblem(AuditError):
    """The options cannot work together or miss something the audit needs (like a usage error)."""

    exit_code = ExitCode.USAGE


class AccessInsufficient(SettingsProblem):
    """The chosen features need more access to the model (e.g. gradients) than the target gives."""
