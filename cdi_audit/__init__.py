"""cdi-audit: test whether a diffusion model was trained on a set of images (CDI dataset inference).

The library's face: ``audit`` and ``evaluate`` (``cdi_audit/api.py``, docs/api.md) and the types they take and
give. They are imported on first use, so ``import cdi_audit`` stays light (the command line imports it too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cdi_audit.version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "audit": "cdi_audit.api",
    "evaluate": "cdi_audit.api",
    "AuditResult": "cdi_audit.api",
    "EvaluationResult": "cdi_audit.api",
    "ModelSpec": "cdi_audit.models.spec",
    "Adapter": "cdi_audit.models.adapters",
    "EndpointSettings": "cdi_audit.blackbox.endpoints",
    "Verdict": "cdi_audit.results.verdict",
    "ExitCode": "cdi_audit.errors",
    "AuditError": "cdi_audit.errors",
    "InvalidSetting": "cdi_audit.errors",
    "InputProblem": "cdi_audit.errors",
    "ModelUnavailable": "cdi_audit.errors",
    "SettingsProblem": "cdi_audit.errors",
    "OutputProblem": "cdi_audit.errors",
}
__all__ = [
    "__version__", "audit", "evaluate", "AuditResult", "EvaluationResult", "ModelSpec", "Adapter", "EndpointSettings",
    "Verdict", "ExitCode", "AuditError", "InvalidSetting", "InputProblem", "ModelUnavailable", "SettingsProblem",
    "OutputProblem",
]

if TYPE_CHECKING:
    from cdi_audit.api import AuditResult, EvaluationResult, audit, evaluate
    from cdi_audit.blackbox.endpoints import EndpointSettings
    from cdi_audit.errors import (
        AuditError,
        ExitCode,
        InputProblem,
        InvalidSetting,
        ModelUnavailable,
        OutputProblem,
        SettingsProblem,
    )
    from cdi_audit.models.adapters import Adapter
    from cdi_audit.models.spec import ModelSpec
    from cdi_audit.results.verdict import Verdict


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cdi_audit' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
