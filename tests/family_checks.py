"""Checks every text-to-image family gets: the preset runs whole through `check` (white box and local black
box), trained fixtures beside images they never saw, and null audits on those images' features."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from null_audits import null_rejections
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.features.catalogue import column_count, preset_members

CPU = torch.device("cpu")
CAPTIONS = ["a red circle on a blue background", "a yellow square"]  # two captions for condition checks
# The preset's columns on a text model: fast, CLiD's 5 and structural's 2.
PRESET_COLUMNS = column_count(preset_members("fast", conditional=True))


def check(arguments: list[str]):
    """``cdi-audit check ARGUMENTS --json``, uncached, one worker."""
    return CliRunner().invoke(app, ["check", *arguments, "--json", "--no-cache", "--jobs", "1"])


def assert_the_preset_and_the_black_box_run(model: Path, suspect: Path, reference: Path) -> dict:
    """Every preset column is computed (or dropped as constant) and two unseen sets give no evidence; through
    the local black box, ReDiffuse. The white-box result, for family-specific checks."""
    arguments = [str(suspect), "--reference", str(reference), "--model", str(model), "--permutations", "200"]
    result = check(arguments)
    payload = json.loads(result.stdout)
    assert (result.exit_code, payload["verdict"]) == (0, "no_evidence"), result.stdout
    assert len(payload["features"]) + len(payload["dropped_features"]) == PRESET_COLUMNS
    black = check([*arguments, "--access", "blackbox"])
    black_payload = json.loads(black.stdout)
    assert black.exit_code in (0, 5) and black_payload["features"][0].startswith("rediffuse_"), black.stdout
    return payload


def write_membership_folders(root: Path, count: int = 32) -> Path:
    """``members/`` (to train on), ``nonmembers/`` and ``other/`` under ``root``: captioned shapes, disjoint."""
    from tiny_pipelines import write_captioned_shapes

    for name, seed in (("members", 1), ("nonmembers", 2), ("other", 3)):
        write_captioned_shapes(root / name, count, seed)
    return root


def audit(root: Path, model: str, suspect: str) -> tuple[int, dict]:
    """``check`` of ``root/suspect`` against ``root/nonmembers`` on ``root/model``: exit code and result."""
    result = check([str(root / suspect), "--reference", str(root / "nonmembers"), "--model", str(root / model)])
    return result.exit_code, json.loads(result.stdout)


def unseen_null_rejections(root: Path, model: str, stream: int, folders: tuple[str, ...] = ("nonmembers", "other")
                           ) -> int:
    """Of 200 null audits (20 vs 20 drawn from the 64 images in ``folders`` under ``root``, which the model at
    ``root/model`` never saw; the preset's columns; B = 100, alpha 0.05), how many reject."""
    from cdi_audit.features.registry import extractors_for
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import scan_image_set
    from cdi_audit.models.loading import load_target
    from cdi_audit.pipeline.extraction import extract_features

    target = load_target(root / model, CPU)
    extractors, _ = extractors_for("auto", target)
    records = [record for name in folders
               for record in with_captions(scan_image_set(root / name))[0].records]
    table, _ = extract_features(records, target, extractors, seed=0, batch_size=32)
    matrix = table.scoring_matrix([record.key for record in records])
    assert matrix.shape == (64, PRESET_COLUMNS)
    return null_rejections(matrix, stream=stream)


def assert_served_variations_follow_the_prompt(model: Path, captions: list[str]) -> None:
    """The model behind the variation server (``cdi-audit serve``): the endpoint describes it, answers exactly
    as the local back end does, and different prompts give different variations (the text reaches the
    denoiser)."""
    import numpy as np
    from PIL import Image
    from variation_servers import running_server

    from cdi_audit.blackbox import endpoints
    from cdi_audit.blackbox.variation import LocalVariation, VariationRequest
    from cdi_audit.models.loading import load_target

    backend = LocalVariation(load_target(model, CPU), batch_size=1)
    image = np.asarray(Image.new("RGB", (16, 16), (200, 40, 40)))
    requests = [VariationRequest(image, 0.3, seed=5, prompt=prompt) for prompt in captions]
    with running_server(backend) as server:
        remote = endpoints.open_endpoint(endpoints.EndpointSettings(url=server.url), None)
        assert (remote.sample_size, remote.info.family, remote.info.conditioning) == (16, "latent", "text")
        served = [remote.backend.vary(request) for request in requests]
    local = [backend.vary(request) for request in requests]
    np.testing.assert_array_equal(np.stack(served), np.stack(local))
    assert served[0].shape == (16, 16, 3) and not np.array_equal(served[0], served[1])
