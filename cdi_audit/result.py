"""The audit result: the single source of truth that the terminal, JSON and reports render.

Field names are a contract (later tooling reads ``report.json``): add fields,
do not rename them, and bump ``SCHEMA_VERSION`` when meanings change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

SCHEMA_VERSION = "1"
Verdict = Literal["evidence", "no_evidence", "inconclusive"]


class Effect(BaseModel):
    auc: float
    auc_ci: tuple[float, float]
    mean_score_difference: float
    mean_score_difference_ci: tuple[float, float]
    cohens_d: float


class Controls(BaseModel):
    negative_control_p_value: float | None
    negative_control_passed: bool | None


class ModelInfo(BaseModel):
    """What the report says about the model: where it is, what it is, its content hash, where it ran."""

    path: str
    fingerprint: str
    family: str
    sample_size: int
    num_train_timesteps: int
    prediction_type: str
    device: str


class SkippedFileInfo(BaseModel):
    path: str
    reason: str
    image_set: Literal["suspect", "reference"]


class DroppedFeature(BaseModel):
    name: str
    reason: str


class ExtractionInfo(BaseModel):
    images: int
    images_from_cache: int
    model_calls: int
    seconds: float


class AuditResult(BaseModel):
    schema_version: str = SCHEMA_VERSION
    verdict: Verdict
    verdict_reason: str
    p_value: float | None
    alpha: float
    test: str
    test_description: str
    statistic: float | None
    permutations_requested: int | None
    permutations_run: int | None
    n_suspect: int
    n_reference: int
    effect: Effect | None
    features: list[str]
    dropped_features: list[DroppedFeature]
    controls: Controls
    model: ModelInfo
    seed: int
    suspect_dir: str
    reference_dir: str
    skipped_files: list[SkippedFileInfo]
    warnings: list[str]
    extraction: ExtractionInfo
    timings_seconds: dict[str, float]
    versions: dict[str, str]
    configuration: dict[str, str | int | float | bool | None]
    created: str
