"""Fused extraction: all plans' requests share network calls, give each extractor's own values, drop exact
repeats, and back off to smaller calls when the device runs out of memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from feature_checks import assert_features_close

from cdi_audit.errors import ModelUnavailable
from cdi_audit.features.base import LatentBatch, NoiseSource
from cdi_audit.features.catalogue import CATALOGUE, PRESETS, noise_predictions
from cdi_audit.features.fused import ForwardBatcher, run_fused
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import load_model_pixels, scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.models.spec import Machine, ModelSpec
from cdi_audit.pipeline.extraction import extract_features


@pytest.fixture(scope="module")
def setting(tiny_model: Path, image_sets):
    target = load_target(tiny_model, torch.device("cpu"))
    records = sorted((r for folder in image_sets for r in scan_image_set(folder).records), key=lambda r: r.key)
    pixels = torch.from_numpy(load_model_pixels(records, target.sample_size))
    batch = LatentBatch(target.encode(pixels), tuple(r.sha256 for r in records), None, pixels)
    return target, records, batch


def each_alone(target, batch, extractors) -> np.ndarray:
    """Every extractor on its own, one network call per request (the reference structure)."""
    noise = NoiseSource(0)
    with torch.no_grad():
        return np.concatenate([e.extract(target, batch, noise).numpy() for e in extractors], axis=1)


def test_fused_extraction_gives_each_extractor_its_own_values_in_fewer_calls(setting) -> None:
    target, records, batch = setting
    extractors = resolve_extractors("fast")
    calls, rows = target.network_calls, target.forward_rows
    alone = each_alone(target, batch, extractors)
    alone_calls, alone_rows = target.network_calls - calls, target.forward_rows - rows
    requests = sum(CATALOGUE[name].noise_predictions for name in PRESETS["fast"])  # 5 + 10 + 12 + 3 + 24
    assert (alone_calls, alone_rows) == (requests, requests * len(records))
    calls = target.network_calls
    table, summary = extract_features(records, target, extractors, 0, batch_size=len(records), max_rows=10_000)
    # One call per round: round 1 holds loss (5), multi_loss (10), the neighbour loss (24), SecMI's first step
    # and PIA's first prediction, which are the same request (z0 at t = 0) and evaluated once; SecMI's 11
    # further steps make 11 more rounds, PIA's second pair shares the second.
    assert target.network_calls - calls == 12
    assert summary.model_calls == (requests - 1) * len(records) == noise_predictions(PRESETS["fast"]) * len(records)
    assert_features_close(table.values, alone, table.columns, atol=1e-7)


def test_shared_requests_are_evaluated_once_only_at_the_same_precision(setting) -> None:
    target, _, batch = setting
    secmi, pia = resolve_extractors("secmi,pia")
    noise = NoiseSource(0)

    def rows_for(forward_dtype) -> int:
        target.forward_dtype = forward_dtype
        before = target.forward_rows
        try:
            with torch.no_grad():
                run_fused([secmi.plan(target, batch, noise), pia.plan(target, batch, noise)],
                          [secmi.full_precision, pia.full_precision], ForwardBatcher(target, 10_000))
        finally:
            target.forward_dtype = None
        return (target.forward_rows - before) // len(batch.hashes)

    assert rows_for(None) == 12 + 3 - 1
    # In half precision PIA's first prediction is not SecMI's float32 one: both are computed.
    assert rows_for(torch.bfloat16) == 12 + 3


def failing_above(target, rows: int, error: Exception):
    """The target's network, raising ``error`` for calls of more than ``rows`` rows."""
    network = target._forward

    def forward(z, timesteps, condition):
        if len(z) > rows:
            raise error
        return network(z, timesteps, condition)

    return forward


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_halves_the_calls_and_keeps_the_values(setting, monkeypatch, error) -> None:
    target, _, batch = setting
    extractors = resolve_extractors("loss,multi_loss")
    noise = NoiseSource(0)
    with torch.no_grad():
        roomy = run_fused([e.plan(target, batch, noise) for e in extractors], [False, False],
                          ForwardBatcher(target, 10_000))
    monkeypatch.setattr(target, "_forward", failing_above(target, 50, error))
    batcher = ForwardBatcher(target, 400)
    with torch.no_grad():
        tight = run_fused([e.plan(target, batch, noise) for e in extractors], [False, False], batcher)
    assert batcher.max_rows == 50 and batcher.backoffs == 3  # 400 -> 200 -> 100 -> 50, then remembered
    assert batcher.calls == -(-15 * len(batch.hashes) // 50)
    for a, b in zip(roomy, tight, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_other_errors_and_a_model_too_large_for_one_row_are_not_retried(setting, monkeypatch) -> None:
    target, _, batch = setting
    (loss,) = resolve_extractors("loss")
    monkeypatch.setattr(target, "_forward", failing_above(target, 0, torch.cuda.OutOfMemoryError("out of memory")))
    with pytest.raises(ModelUnavailable, match="does not fit in the device's memory even one image at a time"):
        run_fused([loss.plan(target, batch, NoiseSource(0))], [False], ForwardBatcher(target, 8))
    monkeypatch.setattr(target, "_forward", failing_above(target, 0, RuntimeError("shape mismatch")))
    batcher = ForwardBatcher(target, 8)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_fused([loss.plan(target, batch, NoiseSource(0))], [False], batcher)
    assert batcher.backoffs == 0


def test_compile_flag_reaches_the_network(tiny_model: Path, image_sets) -> None:
    """--compile wraps the network call in torch.compile (compiled lazily, so this costs nothing here)."""
    from typer.testing import CliRunner

    from cdi_audit.cli import app
    from cdi_audit.pipeline.model_features import open_target
    from cdi_audit.pipeline.settings import ModelSettings

    eager = open_target(ModelSettings(model=ModelSpec(tiny_model), machine=Machine("cpu")), None)
    compiled = open_target(ModelSettings(model=ModelSpec(tiny_model), machine=Machine("cpu", compile_network=True)),
                           None)
    assert not hasattr(eager._forward, "_torchdynamo_orig_callable")
    assert compiled._forward._torchdynamo_orig_callable == compiled._model_output
    for command in ("check", "extract", "batch", "evaluate"):
        assert "--compile" in CliRunner().invoke(app, [command, "--help"], terminal_width=200).stdout


@pytest.mark.slow
def test_a_compiled_network_gives_the_eager_features(tiny_model: Path, image_sets) -> None:
    records = sorted((r for folder in image_sets for r in scan_image_set(folder).records), key=lambda r: r.key)[:8]
    extractors = resolve_extractors("fast")
    eager = load_target(tiny_model, torch.device("cpu"))
    compiled = load_target(tiny_model, torch.device("cpu"))
    compiled.compile_network()
    expected, _ = extract_features(records, eager, extractors, 0, batch_size=8)
    values, _ = extract_features(records, compiled, extractors, 0, batch_size=8)
    assert_features_close(values.values, expected.values, values.columns, rtol=1e-4)
