"""One model's side of a run: open it (locally, black-box or through an endpoint), check it serves the
features, attach the conditions it sees the images with, and extract their features through the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cdi_audit.cache import FeatureStore
from cdi_audit.console import StageProgress, timed
from cdi_audit.errors import SettingsProblem
from cdi_audit.features.table import FeatureTable
from cdi_audit.inputs.images import ImageSet, scan_image_set, small_images_note
from cdi_audit.inputs.sharding import ALL, Shard
from cdi_audit.models.spec import ModelSpec
from cdi_audit.pipeline.inputs import SET_ROLES
from cdi_audit.pipeline.settings import ModelSettings
from cdi_audit.results.schema import ExtractionInfo, ModelInfo
from cdi_audit.verdict.controls import ConditionsSeen

if TYPE_CHECKING:  # torch-backed types, imported only when a model is used
    from cdi_audit.blackbox.variation import BlackBoxTarget
    from cdi_audit.features.base import Extractor
    from cdi_audit.models.target import Target


@dataclass(frozen=True)
class ModelFeatures:
    """Features of every image, and the image sets as the model saw them (with captions or class ids)."""

    table: FeatureTable
    summary: ExtractionInfo
    target: Target | BlackBoxTarget
    extractors: list[Extractor]
    image_sets: list[ImageSet]
    notes: list[str]


def open_target(settings: ModelSettings, store_root: Path | None) -> Target | BlackBoxTarget:
    """The model as the audit may use it: loaded locally (all it gives, or only through variations
    with ``access="blackbox"``), or reached through an endpoint (completed calls stored under
    ``store_root``)."""
    if settings.endpoint is not None:
        from cdi_audit.blackbox.endpoints import open_endpoint

        return open_endpoint(settings.endpoint, store_root)
    from cdi_audit.blackbox.variation import local_black_box

    target = settings.model.load(settings.machine)
    return local_black_box(target) if settings.access == "blackbox" else target


class ModelPool:
    """Local models kept loaded between the audits of a batch: loading a large model can take longer than
    auditing with it. Holds at most ``capacity`` models (a suspect and its control), dropping the least
    recently used; endpoints are cheap to open and are not kept."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.loads = 0
        self._targets: OrderedDict[tuple, Target | BlackBoxTarget] = OrderedDict()

    def open(self, settings: ModelSettings, store_root: Path | None) -> Target | BlackBoxTarget:
        if settings.endpoint is not None:
            return open_target(settings, store_root)
        key = (settings.model.key, settings.access, settings.machine)
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        while len(self._targets) >= self.capacity:
            self._targets.popitem(last=False)
        self._targets[key] = open_target(settings, store_root)
        self.loads += 1
        return self._targets[key]


@dataclass(frozen=True)
class OpenedModel:
    """A model ready to extract from: its target, the extractors it serves, and the image sets with the
    conditions it sees them with (captions or class ids)."""

    target: Target | BlackBoxTarget
    extractors: list[Extractor]
    image_sets: list[ImageSet]
    notes: list[str]


def open_model(settings: ModelSettings, image_sets: list[ImageSet], progress: StageProgress,
               timings: dict[str, float], role: str = "",
               check_target: Callable[[Target | BlackBoxTarget], None] | None = None,
               models: ModelPool | None = None, set_roles: tuple[str, ...] = SET_ROLES) -> OpenedModel:
    """Load the model, check it can serve the features, and attach the conditions it needs; sets whose
    conditions follow different rules (``set_roles`` names them) are refused before any feature is extracted.
    ``role`` prefixes timing keys and progress labels (e.g. "control_" for the control model); ``check_target``
    may refuse the loaded model; ``models`` keeps loaded models for later audits."""
    from cdi_audit.features.registry import extractors_for, require_access
    from cdi_audit.inputs.conditions import require_alike, with_conditions

    with timed(timings, role + "load_model"):
        target = (models.open(settings, settings.store_root) if models is not None
                  else open_target(settings, settings.store_root))
    if check_target is not None:
        check_target(target)
    extractors, notes = extractors_for(settings.features, target)
    notes[:0] = target.notes
    require_access(target.access, extractors)
    if target.access == "black":
        target.on_calls_done = progress.counter(role.replace("_", " ") + "endpoint calls (this batch)")
    conditioned = []
    for images in image_sets:
        with_condition, set_notes = with_conditions(images, target.conditioning, settings.caption)
        conditioned.append(with_condition)
        notes.extend(note for note in set_notes if note not in notes)
    require_alike(list(zip(set_roles, conditioned, strict=True)))
    small = small_images_note([record for images in conditioned for record in images.records], target.sample_size)
    if small is not None:
        notes.append(small)
    return OpenedModel(target, extractors, conditioned, notes)


def extract_opened(settings: ModelSettings, opened: OpenedModel, progress: StageProgress,
                   timings: dict[str, float], role: str = "") -> ModelFeatures:
    """The features of every image of ``opened``'s sets (through the cache)."""
    from cdi_audit.pipeline.extraction import extract_features

    store = FeatureStore(settings.store_root) if settings.store_root is not None else None
    records = [record for images in opened.image_sets for record in images.records]
    with timed(timings, role + "extract"):
        table, summary = extract_features(
            records, opened.target, opened.extractors, settings.seed, settings.batch_size, store,
            progress.counter(role.replace("_", " ") + "extracting features (images)"), settings.max_batch_grad,
        )
    return ModelFeatures(table, summary, opened.target, opened.extractors, opened.image_sets, opened.notes)


def load_and_extract(settings: ModelSettings, image_sets: list[ImageSet], progress: StageProgress,
                     timings: dict[str, float], role: str = "",
                     check_target: Callable[[Target | BlackBoxTarget], None] | None = None,
                     models: ModelPool | None = None, set_roles: tuple[str, ...] = SET_ROLES) -> ModelFeatures:
    """``open_model`` then ``extract_opened``: the features of every image on one model."""
    opened = open_model(settings, image_sets, progress, timings, role, check_target, models, set_roles)
    return extract_opened(settings, opened, progress, timings, role)


def on_model(settings: ModelSettings, model: ModelSpec, extractors: list[Extractor]) -> ModelSettings:
    """The same settings on another model, with exactly the extractors ``extractors`` (so a preset cannot
    resolve to other features there). Calibration is a choice about adapters: a model without them (an adapted
    model's base) keeps the default."""
    return replace(settings, model=model, features=",".join(dict.fromkeys(extractor.name for extractor in extractors)),
                   calibration=settings.calibration or not model.adapters)


def conditions_seen(opened: OpenedModel) -> ConditionsSeen | None:
    """What the model sees besides pixels, image by image, for the shift check: captions for a text-to-image
    model, class ids for a class-conditional one, nothing otherwise."""
    kind = opened.target.conditioning
    if kind not in ("text", "class"):
        return None
    records = [record for images in opened.image_sets for record in images.records]
    return ConditionsSeen(kind, {record.sha256: record.caption if kind == "text" else record.label
                                 for record in records})


def run_extraction(settings: ModelSettings, folders: list[Path], shard: Shard = ALL,
                   progress: StageProgress | None = None) -> tuple[ExtractionInfo, ModelInfo]:
    """Features only, into the cache (``cdi-audit extract``): the images of ``shard`` in ``folders``, on the
    model and, for an adapted model, on its base (the control and calibration of its check). A later ``check``
    with the same model, features and seed reads them back and makes no model call for them."""
    if not settings.use_cache:
        raise SettingsProblem("extraction only fills the feature cache; it cannot run with --no-cache.")
    progress = progress or StageProgress()
    image_sets = [shard.select(scan_image_set(folder, settings.strict, progress.track(f"hashing {folder.name}")))
                  for folder in folders]
    extracted = load_and_extract(settings, image_sets, progress, {})
    if settings.model is not None and settings.model.adapters:  # an adapter's check also needs its base's
        load_and_extract(on_model(settings, settings.model.base, extracted.extractors), image_sets, progress, {},
                         "base_")
    return extracted.summary, extracted.target.description
