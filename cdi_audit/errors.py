"""Failures that end an audit, each with the exit code a CI job branches on.

A failure must never look like a finding: these codes are disjoint from the
verdict codes (0 no evidence, 1 evidence, 5 inconclusive; ``Verdict.exit_code``).
"""

import sys
from enum import IntEnum


class ExitCode(IntEnum):
    NO_EVIDENCE = 0
    EVIDENCE = 1
    USAGE = 2
    INPUT_PROBLEM = 3
    MODEL_UNAVAILABLE = 4
    INCONCLUSIVE = 5
    INTERNAL_ERROR = 70  # a bug; never a finding (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT); what was computed is cached
    # The success of a command that gives no verdict (``verify``: every file matches); the same number as
    # NO_EVIDENCE, under the name that says what it means there.
    SUCCESS = 0


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


class InvalidSetting(SettingsProblem):
    """One setting outside what it may be, named by its field, so that each way in names it its own way: the
    command line as its option (``--alpha``), a batch file as its key, Python as the field itself."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(self.worded(field))

    def worded(self, name: str) -> str:
        """The sentence with the setting called ``name``, e.g. "--alpha must be between 0 and 0.5"."""
        return f"{name} {self.problem}"


class AccessInsufficient(SettingsProblem):
    """The chosen features need more access to the model (e.g. gradients) than the target gives."""


class OutputProblem(SettingsProblem):
    """The output folder cannot hold the audit's files (a file in its place, no permission, a full disk)."""


OUT_OF_MEMORY_MESSAGES = ("can't allocate memory", "out of memory")
# A library's error embedded in ours is cut to its gist: some span hundreds of lines (one per mismatched
# weight).
MAX_ERROR_CHARS = 180


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, CUDA's out-of-memory error, or the CPU allocator's failure (a RuntimeError).

    Torch-free: torch's error class is looked up only when torch is already imported."""
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in OUT_OF_MEMORY_MESSAGES)


def brief(error: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``error`` as one line for a message of ours: its type and first line (with the next one when the first
    only announces it, as torch's "Error(s) in loading state_dict for X:"), at most ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
