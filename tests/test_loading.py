"""Loading models offline and safely, and refusing the rest with exit-4 sentences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_pipeline

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.fingerprint import model_fingerprint
from cdi_audit.models.loading import load_target

CPU = torch.device("cpu")


def test_a_ddpm_pipeline_folder_loads_with_its_own_schedule(tiny_model: Path) -> None:
    from diffusers import DDPMScheduler

    target = load_target(tiny_model, CPU)
    expected = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    torch.testing.assert_close(target.schedule.alphas_cumprod, expected)
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
    assert target.schedule.coefficients(999)[0] ** 2 < 1e-3  # the cosine schedule, read from the config, not rebuilt


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


def edited_copy(tiny_model: Path, tmp_path: Path, config: str, **changes) -> tuple[Path, Path]:
    """(a copy of the tiny model, the config file in it) with ``changes`` made to that config."""
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    path = copy / config
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return copy, path


def assert_one_line(error: ModelUnavailable) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize("sample_size", [0, -5, "abc", 40000, 4.5, None, True, [16, 0], [16, 5000]])
def test_a_sample_size_that_makes_no_usable_image_is_refused_naming_the_field(
    tiny_model: Path, tmp_path: Path, sample_size
) -> None:
    copy, config = edited_copy(tiny_model, tmp_path, "unet/config.json", sample_size=sample_size)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: sample_size is {sample_size!r}, which does not make an image side from 8 to 4096 pixels; "
        "correct sample_size to the model's resolution.")


def test_a_height_width_sample_size_gives_its_first_side(tiny_model: Path, tmp_path: Path) -> None:
    copy, _ = edited_copy(tiny_model, tmp_path, "unet/config.json", sample_size=[16, 24])
    assert load_target(copy, CPU).description.sample_size == 16


@pytest.mark.parametrize("steps", [0, 1, "abc", 1000.0, 200_000])
def test_a_number_of_training_timesteps_out_of_range_is_refused(tiny_model: Path, tmp_path: Path, steps) -> None:
    copy, config = edited_copy(tiny_model, tmp_path, "scheduler/scheduler_config.json", num_train_timesteps=steps)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: num_train_timesteps is {steps!r}, not an integer from 2 to 100000; correct num_train_timesteps "
        "to the steps the model was trained with.")


def test_a_schedule_of_one_step_is_refused_after_the_scheduler_is_built(tiny_model: Path, tmp_path: Path) -> None:
    copy, config = edited_copy(tiny_model, tmp_path, "scheduler/scheduler_config.json", trained_betas=[0.1])
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value).startswith(
        f"{config}: the length of its schedule (alphas_cumprod) is 1, not an integer from 2 to 100000")


def test_weights_that_do_not_fit_the_config_fail_at_first_use_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    copy, _ = edited_copy(tiny_model, tmp_path, "unet/config.json", block_out_channels=[16, 32, 64])
    target = load_target(copy, CPU)  # the weights are read on first use
    with pytest.raises(ModelUnavailable) as raised:
        target.predict_noise(torch.zeros(1, 3, 16, 16), 10)
    message = assert_one_line(raised.value)
    cause = str(raised.value.__cause__)
    assert message == (f"The unet weights in {copy} do not fit unet/config.json (down_blocks.2.resnets.0.conv1.weight "
                       f"is [32, 32, 3, 3] in the weights but [64, 32, 3, 3] by the config, and "
                       f"{cause.count('size mismatch for') - 1} more); use the config saved with these weights.")
    assert len(str(raised.value.__cause__).splitlines()) > 50  # what the message used to embed whole


def test_brief_keeps_the_first_line_of_a_library_error() -> None:
    from cdi_audit.errors import brief

    assert brief(ValueError("bad value\nat line 2")) == "ValueError: bad value"
    assert brief(KeyError()) == "KeyError"
    long = brief(RuntimeError("x" * 500))
    assert len(long) == 180 and long.endswith("x…")


def test_only_cpu_and_existing_cuda_devices_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from cdi_audit.models.device import resolve_device

    for name in ("mps", "meta", "lazy", "xla", "cpu:1", "cuda:-1", "gpu", ""):
        with pytest.raises(ValueError) as raised:
            resolve_device(name)
        assert str(raised.value) == f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N (N the index of a GPU)."
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(ValueError, match="no GPU is visible"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (resolve_device("auto"), resolve_device("cuda"), resolve_device("cuda:1")) == (
        torch.device("cuda"), torch.device("cuda"), torch.device("cuda:1"))
    with pytest.raises(ValueError) as raised:
        resolve_device("cuda:2")
    assert str(raised.value) == "there is no GPU 2: 2 visible (indices from 0); choose one of them or --device auto."


def test_a_latent_sample_size_is_bounded_after_the_autoencoders_downscaling(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cdi_audit.models.config_values import image_size

    layout = {"denoiser": "unet", "autoencoder": "vae"}  # the component folders by role
    vae = SimpleNamespace(config={"block_out_channels": [8, 8, 8, 8]})  # downscales by 8
    assert image_size(SimpleNamespace(config={"sample_size": [64, 48]}), vae, tmp_path, layout) == 512
    with pytest.raises(ModelUnavailable) as raised:  # 64 x 8 is fine, 600 x 8 = 4800 is not
        image_size(SimpleNamespace(config={"sample_size": [64, 600]}), vae, tmp_path, layout)
    assert assert_one_line(raised.value) == (
        f"{tmp_path / 'unet' / 'config.json'}: sample_size is [64, 600] (latent: times 8, the autoencoder's "
        "downscaling), which does not make an image side from 8 to 4096 pixels; correct sample_size to the model's "
        "resolution.")
    with pytest.raises(ModelUnavailable, match=r"vae/config.json: block_out_channels is None"):
        image_size(SimpleNamespace(config={"sample_size": 64}), SimpleNamespace(config={}), tmp_path, layout)


def test_a_unet2d_side_that_does_not_halve_whole_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """The tiny UNet has 3 down blocks: it halves the side twice, and 18 -> 9 -> 5 does not come back to 18."""
    copy, config = edited_copy(tiny_model, tmp_path, "unet/config.json", sample_size=18)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: sample_size gives the pixel UNet2DModel denoiser inputs of side 18; the UNet halves it twice, "
        "so the side must be a multiple of 4: correct sample_size to the model's resolution.")


@pytest.fixture(scope="module")
def tiny_latent_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_pipelines import save_tiny_dit, save_tiny_ldm

    root = tmp_path_factory.mktemp("latent")
    return {"ldm": save_tiny_ldm(root / "ldm"), "dit": save_tiny_dit(root / "dit")}


@pytest.mark.parametrize(("model", "config", "change", "phrase"), [
    ("ldm", "vqvae", {"scaling_factor": "abc"}, "scaling_factor is 'abc', not a positive number"),
    ("dit", "vae", {"scaling_factor": float("nan")}, "scaling_factor is nan, not a positive number"),
    ("dit", "vae", {"scaling_factor": 0}, "scaling_factor is 0, not a positive number"),
    ("dit", "vae", {"shift_factor": "x"}, "shift_factor is 'x', not a finite number"),
    ("dit", "vae", {"shift_factor": float("inf")}, "shift_factor is inf, not a finite number"),
    ("ldm", "unet", {"sample_size": 9}, "inputs of side 9; the UNet halves it once, so the side must be even"),
    ("dit", "transformer", {"sample_size": 7}, "cuts latents into 2 x 2 patches, so the side must be even"),
    ("dit", "transformer", {"num_embeds_ada_norm": "abc"}, "num_embeds_ada_norm is 'abc', not an integer of at "
                                                            "least 1"),
    ("dit", "transformer", {"patch_size": None}, "patch_size is None, not an integer of at least 1"),
    ("ldm", "vqvae", {"in_channels": 1}, "in_channels is 1, but the audit feeds images as RGB (3 channels)"),
])
def test_a_latent_config_value_the_audit_computes_with_is_refused_when_malformed(
        tiny_latent_models, tmp_path: Path, model, config, change, phrase) -> None:
    copy, path = edited_copy(tiny_latent_models[model], tmp_path, f"{config}/config.json", **change)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value).startswith(f"{path}: ") and phrase in str(raised.value)


def single_file(tmp_path: Path, *keys: str) -> Path:
    """A safetensors file holding only ``keys`` (enough for the checks that precede loading)."""
    from safetensors.torch import save_file

    save_file({key: torch.zeros(1) for key in keys or ("weight",)}, tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors"


@pytest.mark.parametrize(("case", "phrase"), [
    ("missing", "The --model-config {config} does not exist; give the checkpoint's pipeline folder (its configs "
                "and tokenizers) or a shipped config name (stable-diffusion-v1, stable-diffusion-v2, "),
    ("empty", "The --model-config folder {config} holds no pipeline configs (it is empty)"),
    ("not a pipeline", "The --model-config folder {config} holds no pipeline configs (no model_index.json)"),
    ("file", "The --model-config {config} is a file, not a folder"),
])
def test_a_model_config_that_holds_no_configs_says_so(tmp_path: Path, case: str, phrase: str) -> None:
    config = tmp_path / "configs"
    if case == "file":
        config.write_text("{}")
    elif case != "missing":
        config.mkdir()
    if case == "not a pipeline":
        (config / "unet").mkdir()
    with pytest.raises(ModelUnavailable) as raised:
        load_target(single_file(tmp_path), CPU, config=config)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(phrase.format(config=config))
    assert case == "missing" or message.endswith(
        "; give the checkpoint's pipeline folder (its configs and tokenizers) or a shipped config name.")


def test_a_shipped_config_is_named_by_its_name_never_by_its_temporary_copy(tmp_path: Path) -> None:
    from cdi_audit.models.families.sdxl import SDXL_FILE

    with pytest.raises(ModelUnavailable) as raised:
        load_target(single_file(tmp_path, *SDXL_FILE.keys), CPU, config=Path("stable-diffusion-v2"))
    assert assert_one_line(raised.value) == (
        f"{tmp_path / 'model.safetensors'} holds an SDXL model, but the configs in the shipped 'stable-diffusion-v2' "
        "are of a text-to-image Stable Diffusion pipeline; give --model-config the configs of the file's own "
        "architecture.")


@pytest.mark.parametrize(("change", "value", "step"), [
    ({"beta_end": float("nan")}, "nan", 0), ({"beta_end": 1.5}, "0", 336),
    ({"trained_betas": [0.1, -0.5, 0.1]}, "1.35", 1),
])
def test_betas_that_make_no_schedule_are_refused(tiny_model: Path, tmp_path: Path, change, value, step) -> None:
    copy, config = edited_copy(tiny_model, tmp_path, "scheduler/scheduler_config.json", **change)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: the schedule it gives has alphas_cumprod {value} at timestep {step}, not a share of signal in "
        "(0, 1]; correct beta_start, beta_end or trained_betas to the model's.")


def test_a_zero_terminal_snr_schedule_loads(tiny_model: Path, tmp_path: Path) -> None:
    copy, _ = edited_copy(tiny_model, tmp_path, "scheduler/scheduler_config.json", rescale_betas_zero_snr=True)
    assert float(load_target(copy, CPU).schedule.alphas_cumprod[-1]) == 0.0


@pytest.fixture(scope="module")
def tiny_text_to_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_pipelines import save_tiny_stable_diffusion

    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "model")


@pytest.mark.parametrize(("length", "shown"), [(None, "not set"), ("abc", "'abc'"), (0, "0"), (77, "77")])
def test_a_clip_tokenizer_length_its_encoder_cannot_take_is_refused(tiny_text_to_image: Path, tmp_path: Path,
                                                                    length, shown) -> None:
    """The tiny text encoder has 16 positions; transformers takes 10^30 for a length that is not set."""
    copy, config = edited_copy(tiny_text_to_image, tmp_path, "tokenizer/tokenizer_config.json", model_max_length=length)
    if length is None:
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "model_max_length"}))
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: model_max_length is {shown}; it must be an integer from 2 to 16 (the text encoder's "
        "max_position_embeddings): correct it to the tokenizer's (77 for CLIP).")


def test_a_denoiser_that_does_not_take_the_autoencoders_latents_is_refused(tiny_text_to_image: Path,
                                                                          tmp_path: Path) -> None:
    """An inpainting UNet (9 input channels on 4-channel latents) is recognised as a text-to-image one."""
    copy, config = edited_copy(tiny_text_to_image, tmp_path, "unet/config.json", in_channels=9)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value).startswith(
        f"{config}: in_channels is 9, but the autoencoder's latents have 4 channels; an inpainting or "
        "image-conditioned model")


def test_a_pixel_unet_on_other_channels_than_rgb_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    copy, config = edited_copy(tiny_model, tmp_path, "unet/config.json", in_channels=1)
    with pytest.raises(ModelUnavailable) as raised:
        load_target(copy, CPU)
    assert assert_one_line(raised.value) == (
        f"{config}: in_channels is 1, but the audit feeds images as RGB (3 channels); a pixel model on other channels "
        "(grayscale, RGBA) is not audited by this version.")


@pytest.mark.parametrize("before", [None, "0"])
def test_hub_offline_mode_is_on_for_our_loads_only(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                   before: str | None) -> None:
    """Loading (and the deferred read of the weights) runs with the hub off; the process is left as it was, so a
    notebook's own downloads still work after an audit."""
    import os

    import diffusers
    import diffusers.utils.hub_utils as diffusers_hub
    import huggingface_hub.constants as hub

    from cdi_audit.models import loading

    def state() -> tuple:
        return os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE, diffusers_hub.HF_HUB_OFFLINE

    if before is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", before)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers_hub, "HF_HUB_OFFLINE", False)  # diffusers copies the flag when imported
    seen = []

    def recorded(function):
        def call(*args, **kwargs):
            seen.append((function.__name__, *state()))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(loading, "load_schedule", recorded(loading.load_schedule))
    read = diffusers.UNet2DModel.from_pretrained.__func__
    monkeypatch.setattr(diffusers.UNet2DModel, "from_pretrained", classmethod(recorded(read)))
    target = load_target(tiny_model, CPU)
    assert state() == (before, False, False)
    target.load_weights()  # the UNet's weights are read now, on first use
    assert seen == [("load_schedule", "1", True, True), ("from_pretrained", "1", True, True)]
    assert state() == (before, False, False)
