"""Data-parallel extraction under ``accelerate launch``: each process extracts its own shard into one cache, and
together they give exactly the features of one process; the launch is read from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from feature_checks import assert_same_audit
from typer.testing import CliRunner

from cdi_audit.cache import FeatureStore
from cdi_audit.cli import app
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.inputs.sharding import Launch, Shard, detect_launch
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def flat(text: str) -> str:
    """Rich's wrapped terminal text as one line."""
    return " ".join(text.split())


# One fused feature and one gradient feature: the two ways a rank computes its shard; the whole preset adds
# model calls, not paths (its process invariance is the single-process tests' in test_sharding.py).
FEATURES = "loss,gradient_masking"


def features_of(model: Path, folders: list[Path], store: FeatureStore | None):
    """The ``FEATURES`` of every image in ``folders``, one image per batch, read from ``store`` where cached."""
    import torch

    target = load_target(model, torch.device("cpu"))
    records = [record for folder in folders for record in scan_image_set(folder).records]
    return extract_features(records, target, resolve_extractors(FEATURES), 0, 1, store)


def on_one_thread(compute):
    """``compute()`` with one torch thread, as each launched rank runs here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compute()
    finally:
        torch.set_num_threads(threads)


def accelerate_launch(*arguments: str) -> list[str]:
    """Two local processes started through torchrun, as on a machine with two GPUs. On a machine without GPUs,
    'accelerate launch --cpu --num_processes 2' starts ONE process (several CPU processes need mpirun), so
    --multi_gpu asks for the torchrun launcher; the ranks never talk, so no GPU or process group is needed.
    Port 0: a free port, so parallel test runs do not collide."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "cdi_audit", *arguments]


@pytest.mark.slow  # two processes that each import torch and diffusers: 15 s of start-up on two cores
def test_two_launched_processes_give_the_features_and_verdict_of_one(image_sets, tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    pytest.importorskip("accelerate", reason="accelerate is the launcher under test (pip install -e '.[test]')")
    suspect, reference = image_sets
    environment = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
    environment.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # two processes on two cores: one thread each
    launched = subprocess.run(accelerate_launch(
        "extract", str(suspect), str(reference), "--model", str(tiny_model), "--cache-dir", str(tmp_path),
        "--batch-size", "1", "--device", "cpu", "--features", FEATURES, "--json"),
        capture_output=True, text=True, env=environment, timeout=240)
    assert launched.returncode == 0, launched.stderr
    reports = sorted((json.loads(line) for line in launched.stdout.splitlines() if line.startswith("{")),
                     key=lambda report: report["rank"])
    assert [(report["rank"], report["shard"]) for report in reports] == [(0, "1/2"), (1, "2/2")]
    assert sum(report["images"] for report in reports) == 24 and all(report["model_calls"] > 0 for report in reports)
    assert "rank 0, shard 1/2:" in flat(launched.stderr) and "rank 1, shard 2/2:" in flat(launched.stderr)

    folders = [suspect, reference]
    merged, summary = features_of(tiny_model, folders, FeatureStore(tmp_path))
    assert summary.model_calls == 0 and summary.images_from_cache == 24
    alone, _ = on_one_thread(lambda: features_of(tiny_model, folders, None))
    assert merged.keys == alone.keys and len(alone.keys) == 24 and merged.columns == alone.columns
    columns = [column for extractor in resolve_extractors(FEATURES) for column in extractor.columns]
    assert list(merged.columns) == columns and merged.values.shape == (24, len(columns))
    assert np.isfinite(merged.values).all()
    # Other processes: equal to float32 rounding, with the same verdict and p-value (feature_checks.py).
    suspect_keys = scan_image_set(suspect).keys
    assert_same_audit(merged, alone, suspect_keys, [key for key in alone.keys if key not in suspect_keys])
    # The audit from the launched ranks' cache computes nothing.
    checked = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--model", str(tiny_model),
                                       "--cache-dir", str(tmp_path), "--device", "cpu", "--json", "--test", "split",
                                       "--features", FEATURES,
                                       "--curve-resamples", "0", "--jobs", "1"])
    extraction = json.loads(checked.stdout)["extraction"]
    assert (extraction["model_calls"], extraction["images_from_cache"]) == (0, 24), checked.stderr


def test_the_launch_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    torchrun = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}  # 2nd machine of 2
    assert detect_launch(torchrun) == Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert detect_launch(torchrun).shard == Shard(4, 4)
    assert detect_launch({"WORLD_SIZE": "3", "RANK": "0"}) == Launch(0, 3, 0, 3)  # one machine assumed
    for not_launched in ({}, {"WORLD_SIZE": "1", "RANK": "0"}, {"RANK": "2"}):
        assert detect_launch(not_launched) is None
    for broken in ({"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "two", "RANK": "0"},
                   {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}):
        with pytest.raises(ValueError):
            detect_launch(broken)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    assert detect_launch() == Launch(1, 2, 1, 2) and detect_launch().shard == Shard(2, 2)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name)
    assert detect_launch() is None


def test_each_rank_gets_its_own_gpu_and_a_share_of_the_cores() -> None:
    launch = Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert launch.device("auto", cuda_available=True) == "cuda:1" and launch.device("cuda", True) == "cuda:1"
    assert launch.device("auto", cuda_available=False) == "auto"  # resolves to the CPU
    assert launch.device("cpu", True) == "cpu" and launch.device("cuda:0", True) == "cuda:0"  # as chosen
    assert [launch.cpu_threads(cores) for cores in (16, 3, 1, None)] == [8, 1, 1, 1]


def test_an_explicit_shard_under_a_launch_is_refused(monkeypatch: pytest.MonkeyPatch, image_sets,
                                                     tiny_model: Path, tmp_path: Path) -> None:
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    arguments = ["extract", *map(str, image_sets), "--model", str(tiny_model), "--cache-dir", str(tmp_path)]
    refused = CliRunner().invoke(app, [*arguments, "--shard", "2/4", "--json"])
    assert refused.exit_code == 2
    assert "--shard 2/4 cannot be combined with a launch of 2 processes" in flat(refused.stderr)
    assert json.loads(refused.stdout)["error"]["exit_code"] == 2
    monkeypatch.delenv("RANK")
    broken = CliRunner().invoke(app, [*arguments])
    assert broken.exit_code == 2 and "RANK is not set although WORLD_SIZE is" in flat(broken.stderr)
    assert not (tmp_path / "features").exists()  # refused before any extraction
