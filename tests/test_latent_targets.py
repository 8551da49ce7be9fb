"""Latent pipelines (LDM, DiT, Stable Diffusion) built from configs: loading offline, encoding,
conditions, and audits end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_images
from feature_checks import assert_features_close
from tiny_pipelines import save_tiny_dit, save_tiny_ldm, save_tiny_stable_diffusion
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.errors import InputProblem, ModelUnavailable
from cdi_audit.features.catalogue import PRESETS, column_count
from cdi_audit.features.clid import CLiD
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.features.structural import Structural
from cdi_audit.inputs.images import ImageRecord, scan_image_set
from cdi_audit.models.condition import Condition
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latent")
    return {"ldm": save_tiny_ldm(root / "ldm"), "dit": save_tiny_dit(root / "dit"),
            "sd": save_tiny_stable_diffusion(root / "sd"),
            "sd-v": save_tiny_stable_diffusion(root / "sd-v", prediction_type="v_prediction")}


@pytest.mark.parametrize(("name", "family", "conditioning", "channels"), [
    ("ldm", "latent UNet2DModel (LDM)", "none", 3),
    ("dit", "class-conditional DiT", "class", 4),
    ("sd", "text-to-image Stable Diffusion", "text", 4),
])
def test_each_pipeline_loads_offline(pipelines, no_network, name, family, conditioning, channels) -> None:
    target = load_target(pipelines[name], CPU)
    assert (target.description.family, target.conditioning, target.channels) == (family, conditioning, channels)
    assert target.sample_size == 16  # 8x8 latents, autoencoder downscaling 2
    assert target.encode(torch.zeros(2, 3, 16, 16)).shape == (2, channels, 8, 8)


def test_encoding_is_the_scaled_posterior_mean(pipelines) -> None:
    target = load_target(pipelines["sd"], CPU)
    target.scaling_factor, target.shift_factor = 0.5, 0.25
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = target.autoencoder.encode(pixels).latent_dist.mean
        torch.testing.assert_close(target.encode(pixels), 0.5 * (mean - 0.25))
        torch.testing.assert_close(target.encode(pixels), target.encode(pixels))  # no sampling


def test_dit_keeps_the_noise_half_of_its_learned_variance_output(pipelines) -> None:
    target = load_target(pipelines["dit"], CPU)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        raw = target.denoiser(z, timestep=torch.tensor([100, 100]), class_labels=labels).sample
        assert raw.shape[1] == 8
        torch.testing.assert_close(target.predict_noise(z, 100, Condition({"class_labels": labels})), raw[:, :4])
        other_class = target.predict_noise(z, 100, Condition({"class_labels": torch.tensor([0, 0])}))
    assert not torch.allclose(other_class, raw[:, :4])


def test_v_prediction_is_read_from_the_scheduler_and_converted(pipelines) -> None:
    target = load_target(pipelines["sd-v"], CPU)
    assert target.prediction_type == "v_prediction"
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    condition = target.embed_captions(["a red square"])
    a = float(target.schedule.alphas_cumprod[300])
    with torch.no_grad():
        v = target.denoiser(z, torch.tensor([300]), encoder_hidden_states=condition).sample
        torch.testing.assert_close(target.predict_noise(z, 300, Condition({"encoder_hidden_states": condition})),
                                   a**0.5 * v + (1 - a) ** 0.5 * z)


def test_captions_change_the_text_condition_and_a_class_model_needs_labels(pipelines) -> None:
    text = load_target(pipelines["sd"], CPU)
    records = [ImageRecord(Path("a.png"), "a" * 64, caption="a red square"),
               ImageRecord(Path("b.png"), "b" * 64, caption="")]
    with torch.no_grad():
        embeddings = text.encode_condition(records)["encoder_hidden_states"]
    assert embeddings.shape == (2, 16, 32) and not torch.allclose(embeddings[0], embeddings[1])
    classes = load_target(pipelines["dit"], CPU)
    with pytest.raises(InputProblem, match="needs a class id"):
        classes.encode_condition([ImageRecord(Path("a.png"), "a" * 64)])
    with pytest.raises(InputProblem, match="ids 0 to 3"):
        classes.encode_condition([ImageRecord(Path("a.png"), "a" * 64, label=4)])


def test_latent_features_do_not_depend_on_batch_size(pipelines, tmp_path: Path) -> None:
    write_images(tmp_path / "images", 5, seed=4)
    records = [ImageRecord(r.path, r.sha256, caption=f"image {i}")
               for i, r in enumerate(scan_image_set(tmp_path / "images").records)]
    target = load_target(pipelines["sd"], CPU)
    alone, summary = extract_features(records, target, resolve_extractors("full"), seed=0, batch_size=1)
    together, _ = extract_features(records, target, resolve_extractors("full"), seed=0, batch_size=5)
    assert len(alone.columns) == column_count(PRESETS["full"]) and summary.model_calls >= 5 * 50
    assert_features_close(together.values, alone.values, alone.columns, rtol=1e-4, atol=0)


def test_unsupported_or_unsafe_latent_folders_are_refused(pipelines, tmp_path: Path) -> None:
    import shutil

    sdxl = shutil.copytree(pipelines["sd"], tmp_path / "sdxl")
    index = json.loads((sdxl / "model_index.json").read_text())
    (sdxl / "model_index.json").write_text(json.dumps({**index, "text_encoder_2": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(ModelUnavailable, match="has no text_encoder_2/config.json"):  # SDXL, without its parts
        load_target(sdxl, CPU)
    pickled = shutil.copytree(pipelines["dit"], tmp_path / "pickled")
    for weights in (pickled / "vae").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelUnavailable, match="vae has only pickle weights"):
        load_target(pickled, CPU)


@pytest.mark.parametrize("name", ["ldm", "dit", "sd"])
def test_check_runs_on_every_latent_family(pipelines, tmp_path: Path, name: str) -> None:
    for role, seed in (("suspect", 9), ("reference", 10)):
        for label in (0, 2):
            write_images(tmp_path / role / str(label), 6, seed=seed + 10 * label, prefix=f"{role}{label}")
    result = CliRunner().invoke(app, [
        "check", str(tmp_path / "suspect"), "--reference", str(tmp_path / "reference"), "--model",
        str(pipelines[name]), "--json", "--no-cache", "--jobs", "1", "--permutations", "200",
    ])
    payload = json.loads(result.stdout)
    # Random models know none of the images: no evidence, with every fast feature computed, and on
    # conditional models the preset's CLiD and structural columns too.
    assert (result.exit_code, payload["verdict"]) == (0, "no_evidence"), result.stderr
    dropped = {feature["name"] for feature in payload["dropped_features"]}
    extras = {"ldm": (), "dit": CLiD("class").columns + Structural().columns,
              "sd": CLiD("text").columns + Structural().columns}[name]
    assert len(payload["features"]) + len(dropped) == column_count(PRESETS["fast"]) + len(extras)
    assert payload["n_suspect"] == 12
    if name != "ldm":
        assert "clid_l" in payload["features"] and "structural_ssim_t200" in payload["features"]
    # Without captions every image has the empty caption, so weakening it changes nothing: CLiD's
    # differences are all zero, and the audit drops them by name instead of fitting on them.
    assert dropped == ({"clid_d_first", "clid_d_middle", "clid_d_last", "clid_d_null"} if name == "sd" else set())
    assert payload["model"]["family"].startswith({"ldm": "latent", "dit": "class", "sd": "text"}[name])
    caption_notes = [w for w in payload["warnings"] if "have no caption" in w]
    assert len(caption_notes) == (2 if name == "sd" else 0)


def audit_text_to_image(root: Path, suspect: str, *options: str) -> tuple[int, dict]:
    result = CliRunner().invoke(app, [
        "check", str(root / suspect), "--reference", str(root / "nonmembers"), "--model", str(root / "model"),
        "--json", "--no-cache", "--jobs", "1", *options,
    ])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.slow
def test_a_trained_text_to_image_model_gives_evidence_for_its_members(trained_text_to_image: Path) -> None:
    code, result = audit_text_to_image(trained_text_to_image, "members")
    assert (code, result["verdict"]) == (1, "evidence")
    assert result["p_value"] < 0.01 and result["effect"]["auc"] > 0.9
    assert {"clid_d_null", "clid_l", "structural_ssim_t100"} <= set(result["features"])
    assert result["model"]["family"] == "text-to-image Stable Diffusion"
    assert not [w for w in result["warnings"] if "caption" in w]  # every image has its sidecar caption
    # CLiD alone carries the signal through the whole latent path (VAE, text encoder, conditional UNet).
    code, clid_only = audit_text_to_image(trained_text_to_image, "members", "--features", "clid")
    assert code == 1 and clid_only["p_value"] < 0.01 and len(clid_only["features"]) == 5


@pytest.mark.slow
def test_a_trained_text_to_image_model_gives_no_evidence_for_images_it_never_saw(trained_text_to_image: Path) -> None:
    code, result = audit_text_to_image(trained_text_to_image, "other")
    assert (code, result["verdict"]) == (0, "no_evidence")
    assert result["p_value"] >= 0.01 and result["controls"]["negative_control_passed"]


def test_an_extractor_that_does_not_apply_is_skipped_with_a_warning(tiny_model: Path, image_sets) -> None:
    suspect, reference = image_sets
    arguments = ["check", str(suspect), "--reference", str(reference), "--model", str(tiny_model), "--json",
                 "--no-cache", "--jobs", "1", "--permutations", "200"]
    result = CliRunner().invoke(app, [*arguments, "--features", "loss,clid"])
    payload = json.loads(result.stdout)
    assert payload["features"] == ["loss_t100"]
    assert ("Feature clid skipped: clid compares conditional and weakened conditions, and this model is "
            "unconditional.") in payload["warnings"]
    alone = CliRunner().invoke(app, [*arguments, "--features", "clid"])
    assert alone.exit_code == 2 and "None of the features 'clid' apply" in json.loads(alone.stdout)["error"]["message"]


def single_file_from(folder: Path, out: Path) -> tuple[Path, Path]:
    """(checkpoint, config folder): the pipeline in ``folder`` as an original-format single file, and its
    configs and tokenizer without weights, as a user would point --model-config at them."""
    import shutil

    from diffusers import StableDiffusionPipeline
    from ldm_checkpoint import stable_diffusion_to_ldm
    from safetensors.torch import save_file

    pipeline = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                       requires_safety_checker=False)
    out.mkdir(parents=True, exist_ok=True)
    save_file(stable_diffusion_to_ldm(pipeline.components), out / "model.safetensors")
    config = shutil.copytree(folder, out / "config", ignore=shutil.ignore_patterns("*.safetensors"))
    return out / "model.safetensors", config


def test_our_single_file_fixture_round_trips_through_diffusers_conversion(pipelines, tmp_path: Path) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    checkpoint, _ = single_file_from(pipelines["sd"], tmp_path)
    folder = load_target(pipelines["sd"], CPU)
    state = load_file(checkpoint)
    for converted, model in ((convert_ldm_unet_checkpoint(state, dict(folder.denoiser.config)), folder.denoiser),
                             (convert_ldm_vae_checkpoint(state, dict(folder.autoencoder.config)), folder.autoencoder)):
        original = model.state_dict()
        assert set(converted) == set(original)
        assert all(torch.equal(converted[k].reshape(original[k].shape), original[k]) for k in original)


def test_a_single_file_checkpoint_loads_offline_with_its_configs(pipelines, tmp_path: Path, no_network) -> None:
    checkpoint, config = single_file_from(pipelines["sd"], tmp_path)
    single = load_target(checkpoint, CPU, config=config)
    folder = load_target(pipelines["sd"], CPU)
    assert single.description.family == "text-to-image Stable Diffusion (single file)"
    assert single.description.fingerprint != folder.description.fingerprint
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        condition = single.embed_captions(["a red square", "a blue circle"])
        torch.testing.assert_close(condition, folder.embed_captions(["a red square", "a blue circle"]))
        condition = Condition({"encoder_hidden_states": condition})
        torch.testing.assert_close(single.predict_noise(z, 200, condition), folder.predict_noise(z, 200, condition))
    with pytest.raises(ModelUnavailable, match="give --model-config DIR"):
        load_target(checkpoint, CPU)
    with pytest.raises(ModelUnavailable, match="only for single-file checkpoints"):
        load_target(pipelines["sd"], CPU, config=config)


@pytest.mark.slow
def test_a_single_file_audit_equals_the_folder_audit(trained_text_to_image: Path, tmp_path: Path) -> None:
    checkpoint, config = single_file_from(trained_text_to_image / "model", tmp_path)
    _, folder = audit_text_to_image(trained_text_to_image, "members")
    result = CliRunner().invoke(app, [
        "check", str(trained_text_to_image / "members"), "--reference", str(trained_text_to_image / "nonmembers"),
        "--model", str(checkpoint), "--model-config", str(config), "--json", "--no-cache", "--jobs", "1",
    ])
    single = json.loads(result.stdout)
    assert result.exit_code == 1 and single["verdict"] == "evidence"
    assert single["p_value"] == folder["p_value"] and single["effect"]["auc"] == pytest.approx(folder["effect"]["auc"])
    assert single["model"]["family"].endswith("(single file)")


def test_the_shipped_clip_vocabulary_tokenizes_as_clip_does(tmp_path: Path) -> None:
    """Known CLIP token ids: 49406 start, 320 'a', 1125 'photo', 539 'of', 2368 'cat', 49407 end."""
    from transformers import CLIPTokenizer

    from cdi_audit.models.single_file import materialised_config

    with materialised_config("stable-diffusion-v1") as folder:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize(("name", "unet", "text", "size", "prediction"), [
    ("stable-diffusion-v1", 859_520_964, 123_060_480, 64, "epsilon"),
    ("stable-diffusion-v2", 865_910_724, 340_387_840, 96, "v_prediction"),
    ("stable-diffusion-v2-base", 865_910_724, 340_387_840, 64, "epsilon"),
])
def test_the_shipped_configs_build_the_published_architectures(name, unet, text, size, prediction) -> None:
    """Parameter counts of SD 1.x (UNet 859,520,964; CLIP ViT-L/14 text 123,060,480), SD 2.x (UNet
    865,910,724; OpenCLIP-H text 340,387,840), and the shared VAE (83,653,863)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdi_audit.models.single_file import CONFIGS

    root = CONFIGS / name
    with torch.device("meta"):
        models = (UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                  AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                  CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")))
    assert [sum(p.numel() for p in model.parameters()) for model in models] == [unet, 83_653_863, text]
    assert models[0].config.sample_size == size
    scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"], scheduler["prediction_type"]
            ) == ("scaled_linear", 0.00085, 0.012, prediction)


def test_an_sd2_file_needs_its_variant_named(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from cdi_audit.models.families.sd import SD2_FILE
    from cdi_audit.models.single_file import checkpoint_kind

    save_file({SD2_FILE.keys[0]: torch.zeros(3072, 1024)}, tmp_path / "sd2.safetensors")
    assert checkpoint_kind(tmp_path / "sd2.safetensors")[1] == SD2_FILE
    with pytest.raises(ModelUnavailable, match="stable-diffusion-v2 .768 px, v-prediction. or .*-v2-base"):
        load_target(tmp_path / "sd2.safetensors", CPU)
    with pytest.raises(ModelUnavailable, match="cannot be loaded with the configs in .*stable-diffusion-v2-base"):
        load_target(tmp_path / "sd2.safetensors", CPU, config=Path("stable-diffusion-v2-base"))


def test_an_sd1_layout_file_without_model_config_uses_the_shipped_configs(pipelines, tmp_path: Path) -> None:
    """Our tiny file has SD 1.x's layout (width 32, not 768): detection asks for --model-config, and a
    width-768 text model is taken for SD 1.x and loaded with the shipped configs (here: a clear shape error)."""
    from safetensors.torch import load_file, save_file

    from cdi_audit.models.families.sd import SD1_FILE
    from cdi_audit.models.single_file import packaged_config_for

    checkpoint, _ = single_file_from(pipelines["sd"], tmp_path)
    assert packaged_config_for(checkpoint) is None
    state = load_file(checkpoint)
    state[SD1_FILE.keys[0]] = torch.zeros(77, 768)
    save_file(state, tmp_path / "looks_like_sd1.safetensors")
    assert packaged_config_for(tmp_path / "looks_like_sd1.safetensors") == "stable-diffusion-v1"
    with pytest.raises(ModelUnavailable, match="cannot be loaded with the configs in .*stable-diffusion-v1"):
        load_target(tmp_path / "looks_like_sd1.safetensors", CPU)


@pytest.mark.slow
def test_a_full_size_sd1_single_file_loads_with_the_shipped_configs(tmp_path: Path) -> None:
    """A Stable Diffusion 1.x file of full size (random fp16 weights, original layout, 2.1 GB) loads with no
    --model-config, every weight intact. About 40 s and 8 GB of memory; not in the default run."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from ldm_checkpoint import stable_diffusion_to_ldm
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdi_audit.models.single_file import CONFIGS

    root = CONFIGS / "stable-diffusion-v1"
    torch.manual_seed(0)
    components = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")).half(),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")).half(),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder")).half(),
    }
    save_file(stable_diffusion_to_ldm(components), tmp_path / "sd15.safetensors")
    target = load_target(tmp_path / "sd15.safetensors", CPU)
    assert (target.sample_size, target.prediction_type, target.conditioning) == (512, "epsilon", "text")
    for name, model in (("unet", target.denoiser), ("vae", target.autoencoder), ("text_encoder", target.text_encoder)):
        expected, loaded = components[name].state_dict(), model.state_dict()
        assert set(expected) == set(loaded)
        assert all(torch.equal(expected[k].float(), loaded[k].float().reshape(expected[k].shape)) for k in expected)
