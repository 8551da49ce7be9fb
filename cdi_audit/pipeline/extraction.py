"""The feature stage: images + target + extractors -> FeatureTable, through the cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from cdi_audit.blackbox.variation import BlackBoxTarget
from cdi_audit.cache import FeatureSection, FeatureStore
from cdi_audit.errors import ModelUnavailable
from cdi_audit.features.base import NOISE_SCHEME, Extractor, LatentBatch, NoiseSource
from cdi_audit.features.fused import ForwardBatcher, default_max_rows, run_fused
from cdi_audit.features.table import FeatureTable
from cdi_audit.inputs.images import ImageRecord, load_model_pixels
from cdi_audit.models.target import Target
from cdi_audit.results.schema import ExtractionInfo

# Bump when image loading or preprocessing changes what the model sees.
PREPROCESSING_VERSION = "centre-crop-lanczos-1"
# Images per backward pass: bounds the activation memory of gradient features.
DEFAULT_MAX_BATCH_GRAD = 16


def cache_key(target: Target | BlackBoxTarget, extractor: Extractor, seed: int) -> dict:
    """Everything that changes an extractor's values for a given image (for a local model, also how its
    schedule maps the features' nominal levels: ``NoiseSchedule.identity``)."""
    schedule = getattr(target, "schedule", None)
    return {
        "model": target.description.fingerprint,
        **({"levels": schedule.identity()} if schedule is not None else {}),
        "sample_size": target.sample_size,
        "preprocessing": PREPROCESSING_VERSION,
        "extractor": extractor.name,
        "version": extractor.version,
        "params": extractor.params(),
        "seed": seed,
        "noise": NOISE_SCHEME,
        "device": target.device.type,
        "dtype": target.description.dtype,
    }


def _finite(extractor: Extractor, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ModelUnavailable(
            f"The model produced non-finite values for the {extractor.name} feature; "
            "its weights or schedule are broken, so no audit can be run on it."
        )
    return values


def _compute(
    extractor: Extractor, target: Target | BlackBoxTarget, batch: LatentBatch, noise: NoiseSource, max_batch_grad: int
) -> np.ndarray:
    """One extractor on one batch, as a (B, k) array.

    Extractors that take gradients run in micro-batches of at most
    ``max_batch_grad`` images: a backward pass holds every activation of its
    batch in memory, and a large model would otherwise run out of it.
    """
    needs_gradients = extractor.access == "white"
    step = max_batch_grad if needs_gradients else len(batch.hashes)
    with torch.set_grad_enabled(needs_gradients), target.precision(extractor.full_precision):
        values = np.concatenate([
            extractor.extract(target, batch.select(slice(i, i + step)), noise).numpy()
            for i in range(0, len(batch.hashes), step)
        ])
    return _finite(extractor, values)


def _compute_fused(work: list[tuple[Extractor, LatentBatch]], noise: NoiseSource, batcher: ForwardBatcher
                   ) -> list[np.ndarray]:
    """Planned extractors (forward passes only) on their batches, their requests sharing network calls."""
    with torch.no_grad():
        values = run_fused([extractor.plan(batcher.target, batch, noise) for extractor, batch in work],
                           [extractor.full_precision for extractor, _ in work], batcher)
    return [_finite(extractor, value.numpy()) for (extractor, _), value in zip(work, values, strict=True)]


def extract_features(
    records: list[ImageRecord],
    target: Target | BlackBoxTarget,
    extractors: list[Extractor],
    seed: int,
    batch_size: int,
    store: FeatureStore | None = None,
    on_images_done: Callable[[int, int], None] | None = None,
    max_batch_grad: int = DEFAULT_MAX_BATCH_GRAD,
    max_rows: int | None = None,
) -> tuple[FeatureTable, ExtractionInfo]:
    """Features of every image in ``records`` (unique by key), computed or read from ``store``.

    Images are loaded, encoded once and run through every extractor that has
    no cached row for them, batch by batch; each batch's rows are stored
    before the next starts. They are processed in key order, so suspect
    and reference images share batches and go through the same code path.
    ``on_images_done(done, total)`` reports progress. Results do not depend
    on ``batch_size``, ``max_batch_grad`` or ``max_rows`` beyond float rounding.

    Extractors written as plans share network calls of up to ``max_rows`` rows
    (``features/fused.py``; a default by device, halved on out-of-memory);
    black-box targets and gradient features run one extractor at a time.
    """
    started = time.perf_counter()
    calls_before = target.forward_rows
    unique = sorted({record.key: record for record in records}.values(), key=lambda record: record.key)
    noise = NoiseSource(seed)
    batcher = None if isinstance(target, BlackBoxTarget) else ForwardBatcher(
        target, max_rows or default_max_rows(target.device))
    sections: dict[str, FeatureSection | None] = {}
    known: dict[str, dict[str, np.ndarray]] = {}
    for extractor in extractors:
        section = store.section(cache_key(target, extractor, seed)) if store is not None else None
        sections[extractor.name] = section
        known[extractor.name] = section.load() if section is not None else {}
    missing = [r for r in unique if any(r.key not in known[e.name] for e in extractors)]
    if on_images_done is not None:
        on_images_done(0, len(missing))
    for start in range(0, len(missing), batch_size):
        records_in_batch = missing[start : start + batch_size]
        pixels = torch.from_numpy(load_model_pixels(records_in_batch, target.sample_size)).to(target.device)
        with torch.no_grad():
            captions = tuple(r.caption or "" for r in records_in_batch) if target.conditioning == "text" else None
            batch = LatentBatch(target.encode(pixels), tuple(record.sha256 for record in records_in_batch),
                                target.encode_condition(records_in_batch), pixels, captions)
        work = []
        for extractor in extractors:
            todo = [i for i, r in enumerate(records_in_batch) if r.key not in known[extractor.name]]
            if todo:
                # The whole batch itself where possible: fused requests on the same tensors are evaluated once.
                work.append((extractor, todo, batch if len(todo) == len(records_in_batch) else batch.select(todo)))
        fusable = [(extractor, part) for extractor, _, part in work if batcher is not None and extractor.planned]
        fused_values = _compute_fused(fusable, noise, batcher) if fusable else []
        fused = {e.name: values for (e, _), values in zip(fusable, fused_values, strict=True)}
        for extractor, todo, part in work:
            values = fused.get(extractor.name)
            if values is None:
                values = _compute(extractor, target, part, noise, max_batch_grad)
            keys = [records_in_batch[i].key for i in todo]
            known[extractor.name].update(zip(keys, values, strict=True))
            section = sections[extractor.name]
            if section is not None:
                section.append(keys, values)
        if on_images_done is not None:
            on_images_done(start + len(records_in_batch), len(missing))

    keys = tuple(record.key for record in unique)
    columns = tuple(column for e in extractors for column in e.columns)
    rows = [np.concatenate([known[e.name][key] for e in extractors]) for key in keys]
    table = FeatureTable(
        keys=keys,
        columns=columns,
        values=np.array(rows, dtype=np.float64).reshape(len(keys), len(columns)),
        log_columns=frozenset(column for e in extractors for column in e.log_columns),
    )
    summary = ExtractionInfo(
        images=len(unique),
        images_from_cache=len(unique) - len(missing),
        model_calls=target.forward_rows - calls_before,
        seconds=time.perf_counter() - started,
    )
    return table, summary
