"""SDXL built from configs: the condition as the pipeline builds it, the VAE's failure modes, and audits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_images
from family_checks import (
    CAPTIONS,
    CPU,
    assert_served_variations_follow_the_prompt,
    assert_the_preset_and_the_black_box_run,
    audit,
    check,
    unseen_null_rejections,
)
from PIL import Image
from tiny_sdxl import POOLED, WIDTHS, save_sdxl, tiny_sdxl_components

from cdi_audit.inputs.images import ImageRecord, sdxl_crop_geometry, to_model_pixels
from cdi_audit.models.loading import load_target


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny SDXL pipeline folder."""
    folder = tmp_path_factory.mktemp("sdxl") / "model"
    return save_sdxl(folder, tiny_sdxl_components(folder))


@pytest.fixture(scope="module")
def pipeline(sdxl: Path):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(sdxl, local_files_only=True)


def test_the_condition_is_the_pipelines_encode_prompt_with_each_images_own_time_ids(sdxl, pipeline, tmp_path):
    target = load_target(sdxl, CPU)
    assert (target.description.family, target.conditioning) == ("text-to-image SDXL", "text")
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(wide)
    Image.new("RGB", (16, 30), (30, 30, 200)).save(tall)
    records = [ImageRecord(wide, "a" * 64, caption=CAPTIONS[0]), ImageRecord(tall, "b" * 64, caption=CAPTIONS[1])]
    with torch.no_grad():
        condition = target.encode_condition(records)
        states, negative, pooled, negative_pooled = pipeline.encode_prompt(CAPTIONS, device=CPU)
    torch.testing.assert_close(condition["encoder_hidden_states"], states)
    torch.testing.assert_close(condition["text_embeds"], pooled)
    assert states.shape == (2, 16, sum(WIDTHS)) and pooled.shape == (2, POOLED)
    # The real size before resizing, and the centre crop's offset at the 16 px the model sees: a 40 x 24 image
    # is resized to 26 x 16 and loses 5 columns on the left; a 16 x 30 one keeps its width and loses 7 rows.
    expected = [pipeline._get_add_time_ids((24, 40), (0, 5), (16, 16), torch.float32, POOLED),
                pipeline._get_add_time_ids((30, 16), (7, 0), (16, 16), torch.float32, POOLED)]
    torch.testing.assert_close(condition["time_ids"], torch.cat(expected))
    assert [sdxl_crop_geometry(r.path, 16) for r in records] == [(24, 40, 0, 5), (30, 16, 7, 0)]
    # That offset is the crop preprocessing made: the 16 px input is columns 8..31 of the 40 px image.
    wide_image = Image.open(wide)
    np.testing.assert_array_equal(to_model_pixels(wide_image, 16),
                                  to_model_pixels(wide_image.crop((8, 0, 32, 24)), 16))
    # The null condition is the pipeline's negative branch: zeros for both texts, the same time ids.
    null = target.null_condition(condition)
    torch.testing.assert_close(null["encoder_hidden_states"], negative)
    torch.testing.assert_close(null["text_embeds"], negative_pooled)
    assert not negative.any() and null["time_ids"] is condition["time_ids"]


def test_without_force_zeros_the_null_condition_is_the_encoded_empty_prompt(sdxl, pipeline, tmp_path):
    copy = shutil.copytree(sdxl, tmp_path / "model")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "force_zeros_for_empty_prompt": False}))
    target = load_target(copy, CPU)
    pipeline.register_to_config(force_zeros_for_empty_prompt=False)
    try:
        with torch.no_grad():
            condition = target.condition_for(CAPTIONS, [None, None])
            _, negative, _, negative_pooled = pipeline.encode_prompt(CAPTIONS, device=CPU, negative_prompt=["", ""])
    finally:
        pipeline.register_to_config(force_zeros_for_empty_prompt=True)
    null = target.null_condition(condition)
    torch.testing.assert_close(null["encoder_hidden_states"], negative)
    torch.testing.assert_close(null["text_embeds"], negative_pooled)
    assert negative.abs().sum() > 0
    # Without image files (an image-to-image request at the model's size), the time ids are (16, 16, 0, 0, 16, 16).
    assert condition["time_ids"].tolist() == [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]] * 2


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sdxl-images")
    return (Path(write_images(root / "suspect", 12, seed=21)[0]).parent,
            Path(write_images(root / "reference", 12, seed=22)[0]).parent)


def test_an_sdxl_vae_whose_latents_overflow_stops_the_audit_with_exit_4(sdxl, image_folders, tmp_path):
    """The stock SDXL VAE overflows in float16; ours runs in float32 whatever --dtype says, and a latent that is
    not finite is a model error (exit 4), never a feature value."""
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(sdxl, tmp_path / "model")
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"] * 1e38  # activations beyond float32
    save_file(state, weights)
    suspect, reference = image_folders
    result = check([str(suspect), "--reference", str(reference), "--model", str(copy), "--dtype", "float16",
                    "--device", "cpu"])
    assert result.exit_code == 4, result.stdout
    assert "non-finite latents" in json.loads(result.stdout)["error"]["message"]


def test_an_sdxl_vae_config_with_the_sd1_scaling_factor_is_read_and_warned_about(sdxl, tmp_path):
    copy = shutil.copytree(sdxl, tmp_path / "model")
    config = copy / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "scaling_factor": 0.18215}))
    target = load_target(copy, CPU)
    assert target.scaling_factor == pytest.approx(0.18215)
    assert [note for note in target.notes if "scaling_factor 0.18215" in note and "0.13025" in note]
    assert not load_target(sdxl, CPU).notes


def test_check_runs_every_feature_of_the_preset_on_sdxl_and_the_black_box_too(sdxl, image_folders):
    payload = assert_the_preset_and_the_black_box_run(sdxl, *image_folders)
    assert payload["model"]["family"] == "text-to-image SDXL"


@pytest.fixture(scope="session")
def trained_sdxl() -> Path:
    """The tiny SDXL UNet trained 600 steps on ``members/`` (32 captioned shapes), beside ``nonmembers/`` and
    ``other/`` (32 each, never trained on). Built once into .test-models/; read-only."""
    from fixture_cache import cached_build
    from trained_models import IMAGE_INPUTS, LIBRARIES, TESTS, sdxl

    return cached_build("sdxl", sdxl, (TESTS / "tiny_sdxl.py", TESTS / "tiny_pipelines.py", TESTS / "family_checks.py",
                                       *IMAGE_INPUTS), libraries=LIBRARIES)


@pytest.mark.slow
def test_a_trained_sdxl_model_gives_evidence_for_its_members_and_none_for_unseen_images(trained_sdxl: Path):
    """Measured: members p = 0.000999 (the smallest with B = 1000), AUC 1.00; unseen images p = 0.37, AUC 0.51."""
    code, members = audit(trained_sdxl, "model", "members")
    assert (code, members["verdict"]) == (1, "evidence"), members.get("warnings")
    assert members["p_value"] < 0.01 and members["effect"]["auc"] > 0.9
    assert {"clid_d_null", "clid_l", "structural_ssim_t100"} <= set(members["features"])
    code, unseen = audit(trained_sdxl, "model", "other")
    assert (code, unseen["verdict"]) == (0, "no_evidence")
    assert unseen["p_value"] >= 0.01 and unseen["controls"]["negative_control_passed"]


def test_a_single_file_sdxl_checkpoint_audits_equal_to_its_folder(sdxl, image_folders, tmp_path):
    """The tiny SDXL pipeline written in the original layout (our inverse of diffusers' conversion, checked by
    the round trip: every weight comes back) with its configs as --model-config gives the folder's audit."""
    from diffusers import StableDiffusionXLPipeline
    from ldm_checkpoint import sdxl_to_ldm
    from safetensors.torch import save_file

    from cdi_audit.models.single_file import checkpoint_kind

    pipeline = StableDiffusionXLPipeline.from_pretrained(sdxl, local_files_only=True)
    components = {name: getattr(pipeline, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    checkpoint = tmp_path / "tiny_sdxl.safetensors"
    save_file(sdxl_to_ldm(components), checkpoint)
    assert checkpoint_kind(checkpoint)[1].name == "sdxl"
    configs = tmp_path / "configs"
    shutil.copytree(sdxl, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    single = load_target(checkpoint, CPU, config=configs)
    assert single.description.family == "text-to-image SDXL (single file)"
    for name, module in components.items():
        loaded = getattr(single, {"unet": "denoiser", "vae": "autoencoder"}.get(name, name))
        for key, value in module.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=f"{name} {key}")
    suspect, reference = image_folders
    arguments = [str(suspect), "--reference", str(reference), "--permutations", "200"]
    folder_run = check([*arguments, "--model", str(sdxl)])
    single_run = check([*arguments, "--model", str(checkpoint), "--model-config", str(configs)])
    folder_result, single_result = json.loads(folder_run.stdout), json.loads(single_run.stdout)
    assert (single_run.exit_code, single_result["verdict"]) == (folder_run.exit_code, folder_result["verdict"])
    assert single_result["p_value"] == folder_result["p_value"]
    assert single_result["effect"]["auc"] == pytest.approx(folder_result["effect"]["auc"], abs=1e-9)


def test_the_shipped_sdxl_config_builds_sdxl_base_and_is_chosen_for_an_sdxl_file(tmp_path):
    """Parameter counts of SDXL base 1.0: UNet 2,567,463,684; CLIP-L text 123,060,480; OpenCLIP-bigG text with
    projection 694,659,840; VAE 83,653,863. An SDXL-layout file needs no --model-config."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from cdi_audit.models.families.sdxl import SDXL_FILE
    from cdi_audit.models.single_file import CONFIGS, materialised_config, packaged_config_for

    root = CONFIGS / "stable-diffusion-xl-base"
    with torch.device("meta"):
        models = (UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                  AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                  CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")),
                  CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root / "text_encoder_2")))
    assert [sum(p.numel() for p in model.parameters()) for model in models] == [
        2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
    assert models[0].config.sample_size * 8 == 1024 and models[1].config.scaling_factor == 0.13025
    with materialised_config("stable-diffusion-xl-base") as folder:
        second = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)
    assert second.pad_token == "!" and second("a photo").input_ids == [49406, 320, 1125, 49407]
    save_file({key: torch.zeros(77, 8) for key in SDXL_FILE.keys}, tmp_path / "sdxl.safetensors")
    assert packaged_config_for(tmp_path / "sdxl.safetensors") == "stable-diffusion-xl-base"


def test_serve_answers_sdxl_variations_that_follow_the_prompt(sdxl):
    assert_served_variations_follow_the_prompt(sdxl, CAPTIONS)


@pytest.mark.slow
def test_null_audits_on_sdxl_keep_their_false_positive_rate(trained_sdxl: Path) -> None:
    """200 null audits on the trained SDXL model (the preset's 21 columns, CLiD and structural included): 20 vs
    20 of 64 images it never saw, permutation test at alpha 0.05 (B = 100); the rejections stay within the
    binomial 99.9% bound of alpha (measured: 11 of 200, bound 21; 2 of 200 at alpha 0.01, bound 8)."""
    from scipy import stats

    rejections = unseen_null_rejections(trained_sdxl, "model", stream=19)
    assert rejections <= stats.binom.ppf(0.999, 200, 0.05), rejections
