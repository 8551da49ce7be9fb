"""The audit result: the single source of truth that the terminal, JSON and reports render.

Field names are a contract (later tooling reads ``report.json``): add fields,
do not rename them, and bump ``SCHEMA_VERSION`` when meanings change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from cdi_audit.results.verdict import Verdict

SCHEMA_VERSION = "2"  # 2: n_suspect and n_reference count groups of near-duplicates once


class Effect(BaseModel):
    """How much higher the suspect set scores than the reference set (descriptive; the p-value is the evidence).
    Intervals are percentile bootstraps that resample the two sets' scores independently; they ignore the
    dependence that cross-fitting creates between scores and are a guide, not a test."""

    auc: float
    auc_ci: tuple[float, float]
    mean_score_difference: float
    mean_score_difference_ci: tuple[float, float]
    cohens_d: float


class ShiftStatisticInfo(BaseModel):
    """A model-free image statistic that differs between the sets: AUC of suspect over reference, and means."""

    name: str
    auc: float
    suspect_mean: float
    reference_mean: float


class NearDuplicateInfo(BaseModel):
    """Two files of the same picture (perceptual-hash distance in bits of 64, correlation of their 8x8
    layouts, and the best correlation of one's framings, up to 10% trimmed off its sides, with the other's
    layout: None when below the threshold). Across the sets, the reference copy is removed from the audit
    (``removed``); within a set, the pair belongs to a group of ``Controls.duplicate_groups``, of which the audit
    keeps one image (``removed`` then says whether either image of the pair was left out)."""

    first_path: str
    first_role: Literal["suspect", "reference"]
    second_path: str
    second_role: Literal["suspect", "reference"]
    distance: int
    correlation: float
    framed_correlation: float | None = None
    removed: bool


class LeftOutImage(BaseModel):
    path: str
    sha256: str


class DuplicateGroupInfo(BaseModel):
    """Near-duplicates within one set (re-encodes, resizes, light crops of one picture) are one unit of the
    test: the audit kept one image (the most pixels, then the largest file, then the first by path) and left
    out the others."""

    role: Literal["suspect", "reference"]
    kept_path: str
    kept_sha256: str
    left_out: list[LeftOutImage]


class SampleSizeCurvePoint(BaseModel):
    """``resamples`` audits of n suspect vs n reference images, drawn from the audit's own: the median p-value
    and the share of p-values below alpha."""

    n: int
    median_p: float
    fraction_below_alpha: float
    resamples: int


class SampleSizeCurve(BaseModel):
    """The p-value against the number of images per set (descriptive; the verdict uses all images)."""

    test: str
    seed: int
    points: list[SampleSizeCurvePoint]


class PowerEstimate(BaseModel):
    """Images per set for ``target_power`` at the audit's alpha. ``images_per_set_from_effect``: what a one-sided
    t-test needs to detect the observed Cohen's d of the scores (a lower bound: smaller audits fit weaker
    scoring models); ``images_per_set_from_curve``: the smallest n of the sample-size curve whose resampled
    audits reached alpha that often (None if none did). Both None when there is no effect to detect."""

    target_power: float
    cohens_d: float
    images_per_set_from_effect: int | None
    images_per_set_from_curve: int | None


class FeatureDiagnosticRow(BaseModel):
    """One feature column alone (AUC of suspect over reference; below 0.5: lower in the suspect set) and the
    scoring model's weight on it, standardised. Diagnostic, not evidence."""

    name: str
    auc: float
    weight: float


class FileDigest(BaseModel):
    """One file an audit read, as a later check can re-hash it."""

    path: str
    sha256: str
    size_bytes: int


class ImageScore(BaseModel):
    """One input image: where it was, what it was, which set it belongs to, and its out-of-fold
    score from the scoring model (None when the test did not score it, e.g. the split test's
    fitting half). Diagnostic: a score is not evidence about a single image."""

    path: str
    sha256: str
    role: Literal["suspect", "reference"]
    score: float | None


class TrainingClaims(BaseModel):
    """What an adapter file's header says about its training (kohya's ``ss_*`` fields). Unsigned and easy to
    edit or strip: a lead for the owner, never evidence; it changes neither the p-value nor the verdict."""

    output_name: str | None = None
    training_comment: str | None = None
    dataset_folders: list[str] = []  # "folder: N images x R repeats", as recorded
    train_images: int | None = None  # repeats included
    top_tags: list[str] = []  # "tag (count)", most frequent first
    resolution: str | None = None
    base_model_name: str | None = None
    base_model_hash: str | None = None
    training_started: str | None = None
    training_finished: str | None = None


class AdapterInfo(BaseModel):
    """One adapter (LoRA) file applied to the base model, at ``scale``, and what its header claims (None: the
    file has no training metadata)."""

    path: str
    sha256: str
    scale: float
    claims: TrainingClaims | None = None


class ModelInfo(BaseModel):
    """What the report says about the model: where it is, what it is, its content hash, where it ran."""

    path: str
    fingerprint: str
    family: str
    sample_size: int
    num_train_timesteps: int | None  # None: behind an endpoint, unknown
    prediction_type: str | None
    device: str
    # Precision of the forward passes (autocast); inversions always run in float32.
    dtype: str = "float32"
    # What the audit could use: "white" (weights, gradients), "grey" (noise predictions) or "black"
    # (an image-to-image endpoint only; then ``endpoint`` says which, without credentials).
    access: str = "white"
    endpoint: str | None = None
    # The weight and config files the fingerprint covers (none for an endpoint), adapters included.
    files: list[FileDigest] = []
    # Adapters fused into the base before the audit, in the order applied (their sha256 and scale are part of
    # the fingerprint).
    adapters: list[AdapterInfo] = []
    # The guidance value a guidance-distilled transformer was fed (Flux-dev; part of the fingerprint); None for
    # models that take none.
    guidance: float | None = None


class SkippedFileInfo(BaseModel):
    path: str
    reason: str
    image_set: Literal["suspect", "reference", "members", "nonmembers"]


class DroppedFeature(BaseModel):
    name: str
    reason: str


class ExtractionInfo(BaseModel):
    """The feature stage: images featurised, how many came from the cache, the rows the network evaluated (one
    image at one level = one), and the time it took."""

    images: int
    images_from_cache: int
    model_calls: int
    seconds: float


class ControlModelResult(BaseModel):
    """The same audit run on a model known not to have seen the suspect images (``--control-model``).

    ``separates_sets``: its own test is significant at alpha (reported; the suspect model must then go beyond
    it). ``auc_difference``: the suspect model's AUC minus the control's, with a paired bootstrap interval at
    ``auc_difference_level`` = 1 - 2 alpha, whose lower end is the one-sided bound at alpha. ``passed``: the
    control's negative control passed and, if the suspect's result is significant, that lower end is above 0
    (the suspect's effect is larger beyond chance); None when the control's scores were unusable."""

    model: ModelInfo
    reason: str  # the control model's own verdict reason
    p_value: float | None
    statistic: float | None
    permutations_run: int | None
    effect: Effect | None
    negative_control_p_value: float | None
    separates_sets: bool | None
    auc_difference: float | None
    auc_difference_ci: tuple[float, float] | None
    auc_difference_level: float
    passed: bool | None
    features: list[str]
    extraction: ExtractionInfo


class Controls(BaseModel):
    negative_control_p_value: float | None
    negative_control_passed: bool | None
    # The audit's test run on model-free image statistics (size, format, compression, colour, sharpness):
    # if the sets differ without the model, the verdict is inconclusive.
    shift_p_value: float | None = None
    shift_alpha: float | None = None
    shift_passed: bool | None = None
    shift_statistics: list[ShiftStatisticInfo] = []
    near_duplicates: list[NearDuplicateInfo] = []
    duplicate_groups: list[DuplicateGroupInfo] = []
    control_model: ControlModelResult | None = None


CORRECTION_NAMES = {"bh": "Benjamini-Hochberg", "holm": "Holm", "none": "no"}


class MultipleTesting(BaseModel):
    """The audit was one of a batch: its p-value adjusted over the batch's audits (``family_size`` p-values,
    ``correction`` "bh" Benjamini-Hochberg, "holm" or "none"); ``verdict_before`` is what it alone gave."""

    correction: Literal["bh", "holm", "none"]
    family_size: int
    adjusted_p_value: float
    verdict_before: Verdict


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
    # Units of the test: images, where a group of near-duplicates within a set counts once (Controls).
    n_suspect: int
    n_reference: int
    effect: Effect | None
    features: list[str]
    dropped_features: list[DroppedFeature]
    controls: Controls
    model: ModelInfo
    # "base": an adapter audit scored the features and how much the adapters changed each (adapted minus base,
    # per image at the same noise); ``controls.control_model`` is the base's own audit. None: the features alone.
    calibration: Literal["base"] | None = None
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
    images: list[ImageScore] = []
    sample_size_curve: SampleSizeCurve | None = None
    feature_diagnostics: list[FeatureDiagnosticRow] = []
    power: PowerEstimate | None = None
    multiple_testing: MultipleTesting | None = None


class BatchAudit(BaseModel):
    """One audit of a batch: its verdict after the correction (or "error"), its exit code, raw and adjusted
    p-values, and the full result (None when it could not run; then ``error`` says why)."""

    name: str
    verdict: Verdict | Literal["error"]
    exit_code: int
    p_value: float | None
    adjusted_p_value: float | None
    error: str | None = None
    result: AuditResult | None = None


class BatchResult(BaseModel):
    """``cdi-audit batch``: every audit of a batch file, corrected for multiple testing together; the exit
    code is the most severe of the audits' (error, then inconclusive, then evidence, then no evidence)."""

    schema_version: str = SCHEMA_VERSION
    kind: Literal["batch"] = "batch"
    batch_file: str
    correction: Literal["bh", "holm", "none"]
    family_size: int
    exit_code: int
    created: str
    audits: list[BatchAudit]


class FeatureSetDiscrimination(BaseModel):
    """Cross-fitted scores of all members against all non-members, with bootstrap 95% intervals."""

    feature_set: str
    columns: list[str]
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci: tuple[float, float]


class CurvePointResult(BaseModel):
    """``repeats`` simulated audits of n vs n images: members vs non-members, or (null) non-members only."""

    feature_set: str
    test: str
    kind: Literal["members", "null"]
    n: int
    median_p: float
    fraction_below_alpha: float
    p_values: list[float]


class ImagesNeededResult(BaseModel):
    """Smallest n whose median p on the members curve is below 0.01; None when no n tried reached it."""

    feature_set: str
    test: str
    images_needed: int | None
    largest_n_tried: int


class FalsePositiveRateResult(BaseModel):
    """Share of null audits with p < alpha; ``binomial_p_value`` small means the test rejects too often."""

    feature_set: str
    test: str
    runs: int
    rejections: int
    rate: float
    binomial_p_value: float


class EvaluationResult(BaseModel):
    schema_version: str = SCHEMA_VERSION
    kind: Literal["evaluation"] = "evaluation"
    n_members: int
    n_nonmembers: int
    members_dir: str
    nonmembers_dir: str
    model: ModelInfo
    # "base": the feature sets are the adapters' per-image change against their base (see AuditResult).
    calibration: Literal["base"] | None = None
    alpha: float
    repeats: int
    permutations: int
    seed: int
    tests: list[str]
    test_notes: dict[str, str]
    feature_sets: dict[str, list[str]]
    discrimination: list[FeatureSetDiscrimination]
    images_needed: list[ImagesNeededResult]
    false_positive_rates: list[FalsePositiveRateResult]
    curves: list[CurvePointResult]
    skipped_files: list[SkippedFileInfo]
    warnings: list[str]
    extraction: ExtractionInfo
    timings_seconds: dict[str, float]
    versions: dict[str, str]
    configuration: dict[str, str | int | float | bool | None]
    created: str


def report_schema() -> dict:
    """The JSON Schema of report.json (committed as docs/report.schema.json)."""
    return AuditResult.model_json_schema()


def report_json(result: AuditResult) -> str:
    """report.json's text; the manifest hashes exactly these bytes (``manifest.report_entry``)."""
    return result.model_dump_json(indent=2) + "\n"
