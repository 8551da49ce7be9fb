"""Loading models offline and safely, and refusing the rest with exit-4 sentences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_pipeline

from cdi_audit.errors import ModelUnavailable
from cdi_audit.targets.loading import load_target, model_fingerprint

CPU = torch.device("cpu")


def test_a_ddpm_pipeline_folder_loads_with_its_own_schedule(tiny_model: Path) -> None:
    from diffusers import DDPMScheduler

    target = load_target(tiny_model, CPU)
    expected = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    torch.testing.assert_close(target.alphas_cumprod, expected)
    assert target.sample_size == 16 and target.description.prediction_type == "epsilon"
    assert target.predict_noise(torch.zeros(2, 3, 16, 16), 10).shape == (2, 3, 16, 16)


def test_a_bare_folder_with_unet_and_scheduler_loads(tiny_model: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model / "unet", tmp_path / "unet")
    shutil.copytree(tiny_model / "scheduler", tmp_path / "scheduler")
    assert load_target(tmp_path, CPU).description.fingerprint == model_fingerprint(tmp_path)


def test_a_ddim_v_prediction_model_loads(tmp_path: Path) -> None:
    folder = save_tiny_pipeline(tmp_path / "v", prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["_class_name"] = "DDIMScheduler"
    config_path.write_text(json.dumps(config))
    target = load_target(folder, CPU)
    assert target.prediction_type == "v_prediction"
    assert target.alpha_bar(999) < 1e-3  # the cosine schedule, read from the config, not rebuilt


def test_the_fingerprint_follows_the_weights(tiny_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert model_fingerprint(copy) == model_fingerprint(tiny_model)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model)


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "does not exist"), ("model.ckpt", "pickle"),
     ("model.safetensors", "not a readable safetensors checkpoint"), ("", "no unet/config.json")],
)
def test_unsupported_paths_are_refused_with_what_was_expected(tmp_path: Path, name: str, message: str) -> None:
    path = tmp_path / name
    if "." in name:
        path.write_bytes(b"x")
    with pytest.raises(ModelUnavailable, match=message) as raised:
        load_target(path, CPU)
    assert "Expected a diffusers pipeline folder" in str(raised.value)


def test_pickle_weights_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").rename(copy / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="only pickle weights"):
        load_target(copy, CPU)


def test_latent_pipelines_are_refused_in_this_version(tiny_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    (copy / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}))
    with pytest.raises(ModelUnavailable, match="StableDiffusionPipeline"):
        load_target(copy, CPU)
