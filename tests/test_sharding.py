"""Sharded extraction: shards split the images by hash, together give one process's features (to float32
rounding) and verdict, can run
as parallel processes on one cache, and a killed extraction resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from feature_checks import assert_same_audit
from typer.testing import CliRunner

from cdi_audit.cache import CHUNK_PATTERN, FeatureStore
from cdi_audit.cli import app
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.inputs.sharding import Shard, parse_shard
from cdi_audit.models.loading import load_target
from cdi_audit.models.spec import ModelSpec
from cdi_audit.pipeline.extraction import extract_features
from cdi_audit.pipeline.model_features import run_extraction
from cdi_audit.pipeline.settings import ModelSettings


def test_shards_partition_the_images_by_hash(image_sets) -> None:
    images = scan_image_set(image_sets[0])
    shards = [Shard(index, 3) for index in (1, 2, 3)]
    selected = [{record.sha256 for record in shard.select(images).records} for shard in shards]
    assert set().union(*selected) == set(images.hashes)
    assert sum(len(part) for part in selected) == len(images)
    assert all(int(h, 16) % 3 == index for index, part in enumerate(selected) for h in part)
    assert parse_shard(" 2 / 4 ") == Shard(2, 4)
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match="i/N"):
            parse_shard(bad)


def features_of(model: Path, folders: list[Path], store: FeatureStore | None):
    import torch

    target = load_target(model, torch.device("cpu"))
    records = [record for folder in folders for record in scan_image_set(folder).records]
    return extract_features(records, target, resolve_extractors("fast"), 0, 8, store)


def test_two_shards_give_the_features_and_verdict_of_one_process(image_sets, tiny_model: Path, tmp_path: Path) -> None:
    folders = list(image_sets)
    settings = ModelSettings(model=ModelSpec(tiny_model), features="fast", batch_size=8, cache_dir=tmp_path)
    counts = [run_extraction(settings, folders, Shard(index, 2))[0].images for index in (1, 2)]
    assert sum(counts) == 24 and min(counts) > 0
    merged, summary = features_of(tiny_model, folders, FeatureStore(tmp_path))
    assert summary.model_calls == 0 and summary.images_from_cache == 24
    alone, _ = features_of(tiny_model, folders, None)
    # Each shard's batches hold other images than one process's: equal to float32 rounding, same verdict and p.
    suspect_keys = scan_image_set(folders[0]).keys
    assert_same_audit(merged, alone, suspect_keys, [key for key in alone.keys if key not in suspect_keys])


def test_check_from_a_filled_cache_never_reads_the_weights(image_sets, tiny_model: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """After extraction, check needs the model's files for its fingerprint and configs, not its weights."""
    import diffusers

    suspect, reference = image_sets
    settings = ModelSettings(model=ModelSpec(tiny_model), features="fast", batch_size=8, cache_dir=tmp_path)
    run_extraction(settings, [suspect, reference])

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read")

    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", refuse)
    arguments = ["check", str(suspect), "--reference", str(reference), "--model", str(tiny_model), "--cache-dir",
                 str(tmp_path), "--features", "fast", "--batch-size", "8", "--json", "--test", "split",
                 "--curve-resamples", "0", "--jobs", "1"]
    cached = CliRunner().invoke(app, arguments)
    assert cached.exit_code in (0, 1, 5), cached.output
    report = json.loads(cached.stdout)
    assert report["extraction"]["model_calls"] == 0 and report["extraction"]["images_from_cache"] == 24
    # Images the cache lacks do need the weights: the refusal surfaces as an unusable model (exit 4).
    missing = CliRunner().invoke(app, [*arguments, "--seed", "1"])
    assert missing.exit_code == 4 and "the weights were read" in missing.output


def command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "cdi_audit", *arguments]


def one_thread() -> dict[str, str]:
    """Two processes at once on two cores: one torch thread each (threads must not exceed cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_shards_run_as_parallel_processes_on_one_cache(image_sets, tiny_model: Path, tmp_path: Path) -> None:
    suspect, reference = image_sets
    processes = [subprocess.Popen(command("extract", str(suspect), str(reference), "--model", str(tiny_model),
                                          "--shard", f"{index}/2", "--cache-dir", str(tmp_path), "--json",
                                          "--device", "cpu"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread())
                 for index in (1, 2)]
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout))
    assert sum(report["images"] for report in reports) == 24
    # The audit from the shards' cache, and one process extracting everything itself; both with one torch
    # thread, like the shards.
    cached, computed = (json.loads(subprocess.run(
        command("check", str(suspect), "--reference", str(reference), "--model", str(tiny_model), *cache, "--json",
                "--test", "split", "--curve-resamples", "0", "--device", "cpu", "--jobs", "1"),
        capture_output=True, text=True, env=one_thread(), timeout=240).stdout)
        for cache in (("--cache-dir", str(tmp_path)), ("--no-cache",)))
    assert cached["extraction"]["model_calls"] == 0 and cached["extraction"]["images_from_cache"] == 24
    # Not bitwise: on one thread, oneDNN picks its convolution kernels by batch size, and the shards' batches
    # (12 images) are not the single process's (24), which moves float32 features by up to 4e-6. Same batch
    # sizes give identical features (the test above).
    assert cached["verdict"] == computed["verdict"]
    assert cached["p_value"] == pytest.approx(computed["p_value"], rel=1e-4)
    scores = [[np.nan if image["score"] is None else image["score"] for image in audit["images"]]
              for audit in (cached, computed)]  # the split test leaves its fitting half unscored
    np.testing.assert_allclose(*scores, rtol=1e-4)


@pytest.mark.slow
def test_a_killed_extraction_resumes_to_the_same_result(sample_audit, tmp_path: Path) -> None:
    """SIGKILL mid-extraction (batches of 4, so chunks land often), then the full audit: it computes only
    what is missing and gives the uninterrupted audit's p-value and scores."""
    cache = tmp_path / "cache"
    process = subprocess.Popen(command("extract", str(SAMPLE_DATA / "published"), str(SAMPLE_DATA / "unpublished"),
                                       "--model", str(SAMPLE_DATA / "model"), "--cache-dir", str(cache),
                                       "--batch-size", "4", "--device", "cpu"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_thread())
    deadline = time.monotonic() + 120
    # One chunk per extractor (4 with 'fast') per batch: 13 chunks means at least three whole batches.
    while len(list(cache.glob(f"features/*/{CHUNK_PATTERN}"))) < 13 and time.monotonic() < deadline:
        assert process.poll() is None, "the extraction ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    result = CliRunner().invoke(app, ["check", str(SAMPLE_DATA / "published"), "--reference",
                                      str(SAMPLE_DATA / "unpublished"), "--model", str(SAMPLE_DATA / "model"),
                                      "--cache-dir", str(cache), "--json", "--jobs", "2"])
    resumed = json.loads(result.stdout)
    _, uninterrupted, _ = sample_audit
    assert 0 < resumed["extraction"]["images_from_cache"] < 128
    assert (resumed["verdict"], resumed["p_value"]) == (uninterrupted["verdict"], uninterrupted["p_value"])
    # Equal up to float32 rounding: the killed run used batches of 4 on one thread (see above).
    np.testing.assert_allclose([image["score"] for image in resumed["images"]],
                               [image["score"] for image in uninterrupted["images"]], rtol=1e-4, atol=1e-6)
