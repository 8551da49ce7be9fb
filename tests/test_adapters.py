"""LoRA adapters on a local base: loaded by diffusers' loaders in either format, fused at their scale, part of
the model's identity, and refused clearly when they cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_lora import as_kohya, random_lora
from tiny_pipelines import save_tiny_stable_diffusion
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.errors import InvalidSetting, ModelUnavailable
from cdi_audit.inputs.images import file_sha256
from cdi_audit.models.adapters import Adapter
from cdi_audit.models.condition import Condition
from cdi_audit.models.loading import load_target

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base_and_lora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(tiny SD base, a LoRA on its UNet in diffusers format, the same LoRA in kohya format)."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("lora")
    base = save_tiny_stable_diffusion(root / "base")
    lora = random_lora(StableDiffusionPipeline, base, root / "diffusers")
    return base, lora, as_kohya(lora, root / "kohya.safetensors")


def noise_predictions(target, z: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return target.predict_noise(z, 300, Condition({"encoder_hidden_states": states}))


def test_an_adapter_in_either_format_predicts_as_the_pipeline_with_it_loaded(base_and_lora) -> None:
    """Fused into the base, the adapter gives what diffusers' own pipeline gives with it loaded (unfused) to
    1e-5, in diffusers' and in kohya's format; the base alone differs."""
    from diffusers import StableDiffusionPipeline

    base, lora, kohya = base_and_lora
    plain = load_target(base, CPU)
    adapted = load_target(base, CPU, adapters=(Adapter(lora),))
    from_kohya = load_target(base, CPU, adapters=(Adapter(kohya),))
    pipeline = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    pipeline.load_lora_weights(str(lora))
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        states = plain.embed_captions(["a red square", "a blue circle"])
        expected = pipeline.unet(z, torch.tensor([300, 300]), encoder_hidden_states=states).sample
    for target in (adapted, from_kohya):
        torch.testing.assert_close(noise_predictions(target, z, states), expected, rtol=1e-5, atol=1e-5)
    assert (noise_predictions(plain, z, states) - expected).abs().max() > 1e-2
    info = adapted.description.adapters
    assert [(Path(a.path), a.sha256, a.scale) for a in info] == [(lora.resolve(), file_sha256(lora), 1.0)]
    assert str(lora.resolve()) in {file.path for file in adapted.description.files}


def test_the_adapter_and_its_scale_are_part_of_the_fingerprint(base_and_lora) -> None:
    base, lora, _ = base_and_lora
    fingerprints = {load_target(base, CPU, adapters=adapters).description.fingerprint
                    for adapters in ((), (Adapter(lora),), (Adapter(lora, 0.5),))}
    assert len(fingerprints) == 3
    # The scale is applied: at a millionth the adapted network is the base to float32 rounding (a scale of 0
    # itself is refused, since it would audit the base under the adapter's name).
    faint = load_target(base, CPU, adapters=(Adapter(lora, 1e-6),))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = load_target(base, CPU)
    with torch.no_grad():
        states = plain.embed_captions(["a red square"])
    torch.testing.assert_close(noise_predictions(faint, z, states), noise_predictions(plain, z, states),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidSetting, match="the scale must be a number above 0"):
        Adapter(lora, 0.0)


# One extractor and no curve: these tests follow the adapter through the command, the cache and the reports,
# which is the same for any feature set.
PLUMBING = ("--features", "loss", "--curve-resamples", "0")


def test_check_with_an_adapter_records_it_in_the_result_and_the_cache_never_mixes_them(
        base_and_lora, image_sets, tmp_path) -> None:
    base, lora, _ = base_and_lora
    suspect, reference = image_sets
    arguments = ["check", str(suspect), "--reference", str(reference), "--model", str(base), "--json",
                 "--cache-dir", str(tmp_path / "cache"), "--permutations", "200", "--jobs", "1",
                 *PLUMBING]
    plain = json.loads(CliRunner().invoke(app, arguments).stdout)
    result = CliRunner().invoke(app, [*arguments, "--adapter", f"{lora}:0.5"])
    adapted = json.loads(result.stdout)
    assert result.exit_code in (0, 5), result.stdout
    assert adapted["model"]["adapters"] == [{"path": str(lora.resolve()), "sha256": file_sha256(lora), "scale": 0.5,
                                             "claims": None}]  # diffusers writes no kohya training metadata
    assert adapted["configuration"]["model_adapters"] == f"{lora}:0.5"
    assert adapted["model"]["fingerprint"] != plain["model"]["fingerprint"]
    assert adapted["extraction"]["images_from_cache"] == 0  # the base's cached features are not the adapter's
    assert "adapter" in result.stderr and file_sha256(lora)[:12] in result.stderr
    # Calibrated against the base, whose own audit (from the cache: the plain run's features) is the control.
    base_audit = adapted["controls"]["control_model"]
    assert adapted["calibration"] == "base" and plain["calibration"] is None
    assert base_audit["model"]["fingerprint"] == plain["model"]["fingerprint"] and base_audit["p_value"] == plain[
        "p_value"]
    assert base_audit["extraction"]["images_from_cache"] == plain["n_suspect"] + plain["n_reference"]
    plain_columns = {*plain["features"], *(item["name"] for item in plain["dropped_features"])}
    assert {name.removesuffix("_minus_base") for name in adapted["features"]} <= plain_columns
    assert any(name.endswith("_minus_base") for name in adapted["features"]) and "base model" in result.stderr


@pytest.mark.parametrize(("case", "code", "message"), [
    ("missing", 3, "No adapter at"),
    ("folder", 3, "is a folder (it holds pytorch_lora_weights.safetensors); give the adapter's .safetensors file"),
    ("empty", 4, "holds no tensors, so it would change nothing"),
    ("pickle", 4, "pickle adapter"),
    ("truncated", 4, "not a readable safetensors adapter"),
    ("flux", 4, "does not fit this text-to-image Stable Diffusion base"),
    ("pixel base", 4, "supported on Stable Diffusion 1.x/2.x, SDXL, SD3 / SD3.5 and Flux bases"),
    ("bad scale", 2, "above 0 and at most 10 (1.0: as trained), not nan"),
])
def test_an_adapter_that_cannot_be_used_is_refused_in_one_line(base_and_lora, tiny_model, image_sets, tmp_path,
                                                               case, code, message) -> None:
    from safetensors.torch import load_file, save_file

    base, lora, _ = base_and_lora
    suspect, reference = image_sets
    adapter, model = str(lora), base
    if case == "missing":
        adapter = str(tmp_path / "absent.safetensors")
    elif case == "folder":
        adapter = str(lora.parent)
    elif case == "empty":
        save_file({}, tmp_path / "empty.safetensors")
        adapter = str(tmp_path / "empty.safetensors")
    elif case == "pickle":
        (tmp_path / "lora.pt").write_bytes(b"\x80\x04")
        adapter = str(tmp_path / "lora.pt")
    elif case == "truncated":
        (tmp_path / "cut.safetensors").write_bytes(lora.read_bytes()[:100])
        adapter = str(tmp_path / "cut.safetensors")
    elif case == "flux":
        save_file({key.replace("unet.", "transformer."): value for key, value in load_file(lora).items()},
                  tmp_path / "flux.safetensors")
        adapter = str(tmp_path / "flux.safetensors")
    elif case == "pixel base":
        model = tiny_model
    else:
        adapter = f"{lora}:nan"
    result = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--model", str(model),
                                      "--adapter", adapter, "--json", "--no-cache"])
    assert result.exit_code == code, result.stdout
    text = result.stdout + result.stderr
    assert message in text and "Traceback" not in text


def test_an_adapter_that_fits_only_partly_names_what_it_could_not_place(base_and_lora, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    base, lora, _ = base_and_lora
    save_file({key.replace("down_blocks.0", "down_blocks.7"): value for key, value in load_file(lora).items()},
              tmp_path / "partly.safetensors")
    with pytest.raises(ModelUnavailable, match=r"could not place 8 of its 32 layers"):
        load_target(base, CPU, adapters=(Adapter(tmp_path / "partly.safetensors"),))


def test_an_adapter_the_loader_cannot_take_names_the_base_it_seems_to_be_for(base_and_lora, tmp_path) -> None:
    """An SDXL LoRA (its UNet layers, and text_encoder_2's, as diffusers saves a LoRA that trained both) on an
    SD 1.x base: peft fails on the first shape that differs, and the refusal says which base the file is for."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file, save_file
    from tiny_sdxl import WIDTHS, save_sdxl, tiny_sdxl_components

    base, _, _ = base_and_lora
    sdxl = save_sdxl(tmp_path / "sdxl", tiny_sdxl_components(tmp_path / "sdxl"))
    unet_only = random_lora(StableDiffusionXLPipeline, sdxl, tmp_path / "lora")
    layer = "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"
    save_file({**load_file(unet_only), f"{layer}.lora_A.weight": torch.zeros(4, WIDTHS[1]),
               f"{layer}.lora_B.weight": torch.zeros(WIDTHS[1], 4)}, tmp_path / "both.safetensors")
    for lora, guess in ((unet_only, "a Stable Diffusion 1.x/2.x or SDXL UNet of another size"),
                        (tmp_path / "both.safetensors", "an SDXL base")):
        with pytest.raises(ModelUnavailable) as raised:
            load_target(base, CPU, adapters=(Adapter(lora),))
        assert str(raised.value).startswith(
            f"The adapter {lora} cannot be loaded onto this text-to-image Stable Diffusion base: it seems to be for "
            f"{guess} (RuntimeError: Error(s) in loading state_dict")


def test_kohya_names_of_sdxl_unet_blocks_are_taken_for_sdxl() -> None:
    from cdi_audit.models.adapters import base_guess

    assert base_guess(["lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight"]) == (
        "an SDXL base")
    assert base_guess(["lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]) == (
        "a Stable Diffusion 1.x/2.x or SDXL UNet of another size")


def test_an_sdxl_adapter_loads_through_the_sdxl_loader(tmp_path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from tiny_sdxl import save_sdxl, tiny_sdxl_components

    base = save_sdxl(tmp_path / "sdxl", tiny_sdxl_components(tmp_path / "sdxl"))
    lora = random_lora(StableDiffusionXLPipeline, base, tmp_path / "lora")
    adapted = load_target(base, CPU, adapters=(Adapter(lora),))
    pipeline = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True)
    pipeline.load_lora_weights(str(lora))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        condition = adapted.condition_for(["a red square"], [None])
        added = {"text_embeds": condition["text_embeds"], "time_ids": condition["time_ids"]}
        expected = pipeline.unet(z, torch.tensor([300]), encoder_hidden_states=condition["encoder_hidden_states"],
                                 added_cond_kwargs=added).sample
        torch.testing.assert_close(adapted.predict_noise(z, 300, condition), expected, rtol=1e-5, atol=1e-5)


def test_adapters_in_a_batch_file_are_paths_relative_to_it(base_and_lora, tmp_path) -> None:
    from cdi_audit.pipeline.batch import read_batch_file

    base, lora, _ = base_and_lora
    (tmp_path / "lora.safetensors").write_bytes(lora.read_bytes())
    batch = tmp_path / "audits.toml"
    batch.write_text(f'[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "{base}"\n'
                     'adapters = ["lora.safetensors:0.8"]\n')
    [entry] = read_batch_file(batch)
    assert entry.settings.model.adapters == (Adapter(tmp_path / "lora.safetensors", 0.8),)
    batch.write_text(f'[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "{base}"\nadapters = "lora.safetensors"\n')
    with pytest.raises(Exception, match="adapters must be a list"):
        read_batch_file(batch)


KOHYA_HEADER = {
    "ss_output_name": "my_style", "ss_training_comment": "trained on the portfolio",
    "ss_dataset_dirs": json.dumps({"20_portfolio": {"n_repeats": 20, "img_count": 34}}),
    "ss_num_train_images": "680", "ss_resolution": "(512, 512)", "ss_sd_model_name": "v1-5-pruned.safetensors",
    "ss_new_sd_model_hash": "e1441589a6f3c5a53f5f54d0975a18a7feb7cdf0b0dee276dfc3331ae376a053",
    "ss_tag_frequency": json.dumps({"20_portfolio": {"portrait": 30, "studio": 12, " harbour": 4}}),
    "ss_training_started_at": "1767225600", "ss_training_finished_at": "1767229200",
}


def test_what_a_kohya_header_says_is_shown_everywhere_and_changes_nothing(base_and_lora, image_sets, tmp_path):
    from safetensors.torch import load_file, save_file

    base, _, kohya = base_and_lora
    with_header = tmp_path / "with_header.safetensors"
    save_file(load_file(kohya), with_header, metadata=KOHYA_HEADER)
    suspect, reference = image_sets
    arguments = ["check", str(suspect), "--reference", str(reference), "--model", str(base), "--json",
                 "--cache-dir", str(tmp_path / "cache"), "--permutations", "200", "--jobs", "1",
                 *PLUMBING]
    bare = CliRunner().invoke(app, [*arguments, "--adapter", str(kohya)])
    told = CliRunner().invoke(app, [*arguments, "--adapter", str(with_header), "--out", str(tmp_path / "out"),
                                    "--report", "html"])
    bare_result, told_result = json.loads(bare.stdout), json.loads(told.stdout)
    claims = told_result["model"]["adapters"][0]["claims"]
    assert bare_result["model"]["adapters"][0]["claims"] is None
    assert claims["output_name"] == "my_style" and claims["train_images"] == 680
    assert claims["dataset_folders"] == ["20_portfolio: 34 images x 20 repeats"]
    assert claims["top_tags"] == ["portrait (30)", "studio (12)", "harbour (4)"]
    assert claims["training_started"] == "2026-01-01T00:00:00+00:00"
    assert claims["base_model_hash"].startswith("e1441589")
    assert (told_result["verdict"], told_result["p_value"]) == (bare_result["verdict"], bare_result["p_value"])
    assert "my_style" in told.stderr and "unverified" in told.stderr
    assert "training metadata: none" in bare.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    assert "What the adapter file says about its training (unverified)" in html and "portrait (30)" in html
    assert "features scored" in html and "how much the adapter changed each of them" in html


def test_a_recorded_base_hash_that_differs_from_the_base_file_is_warned_about() -> None:
    from cdi_audit.models.adapters import base_hash_warning
    from cdi_audit.results.schema import TrainingClaims

    claims = TrainingClaims(base_model_hash="e1441589a6f3c5a53f5f54d0975a18a7")
    warning = base_hash_warning(claims, Path("style.safetensors"), "0" * 64)
    assert warning is not None and "style.safetensors" in warning and "e1441589a6f3" in warning
    assert base_hash_warning(claims, Path("style.safetensors"), "e1441589a6f3c5a53f5f54d0975a18a7" + "0" * 32) is None
    assert base_hash_warning(claims, Path("style.safetensors"), None) is None  # a folder base: nothing to compare
    assert base_hash_warning(TrainingClaims(base_model_hash="925997e9"), Path("x"), "0" * 64) is None  # legacy hash


def test_an_adapter_without_a_local_base_is_a_usage_error(base_and_lora, image_sets) -> None:
    _, lora, _ = base_and_lora
    suspect, reference = image_sets
    result = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--endpoint",
                                      "http://127.0.0.1:9/vary", "--adapter", str(lora), "--json"])
    words = " ".join(word for word in (result.stdout + result.stderr).split() if word != "│")
    assert result.exit_code == 2 and "--adapter describes a local model; an endpoint serves its own model" in words


def test_a_pickle_adapter_is_read_only_when_allowed_and_then_only_as_tensors(base_and_lora, image_sets, tmp_path):
    """--allow-pickle reads a .pt adapter with torch.load(weights_only=True): the same model as its safetensors
    twin; a pickle that would run code is still refused."""
    from safetensors.torch import load_file

    base, lora, _ = base_and_lora
    pickled = tmp_path / "lora.pt"
    torch.save(load_file(lora), pickled)
    from_pickle = load_target(base, CPU, adapters=(Adapter(pickled, allow_pickle=True),))
    from_safetensors = load_target(base, CPU, adapters=(Adapter(lora),))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        states = from_safetensors.embed_captions(["a red square"])
    expected = noise_predictions(from_safetensors, z, states)
    torch.testing.assert_close(noise_predictions(from_pickle, z, states), expected, rtol=0, atol=0)
    assert from_pickle.description.adapters[0].sha256 == file_sha256(pickled)
    torch.save({"weights": load_file(lora), "hook": print}, tmp_path / "code.pt")  # not plain tensors
    suspect, reference = image_sets
    result = CliRunner().invoke(app, ["check", str(suspect), "--reference", str(reference), "--model", str(base),
                                      "--adapter", str(tmp_path / "code.pt"), "--allow-pickle", "--json", "--no-cache"])
    assert result.exit_code == 4 and "not a readable pickle adapter" in result.stdout


def test_several_adapters_are_fused_one_after_another(base_and_lora) -> None:
    """The same LoRA twice at 0.5 adds the same change as once at 1.0 (fusing adds scale x up x down)."""
    base, lora, kohya = base_and_lora
    twice = load_target(base, CPU, adapters=(Adapter(lora, 0.5), Adapter(kohya, 0.5)))
    once = load_target(base, CPU, adapters=(Adapter(lora),))
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        states = once.embed_captions(["a blue circle"])
    torch.testing.assert_close(noise_predictions(twice, z, states), noise_predictions(once, z, states),
                               rtol=1e-5, atol=1e-5)
    assert [a.scale for a in twice.description.adapters] == [0.5, 0.5]


def test_a_dora_adapter_fused_predicts_as_the_pipeline_with_it_loaded(base_and_lora, tmp_path) -> None:
    """DoRA (a LoRA with a learned magnitude per output, ``lora_magnitude_vector``) through the same loader:
    fused, it predicts what diffusers' pipeline gives with it loaded, to 1e-5."""
    from diffusers import StableDiffusionPipeline

    base, _, _ = base_and_lora
    dora = random_lora(StableDiffusionPipeline, base, tmp_path / "dora", dora=True)
    from safetensors import safe_open

    with safe_open(str(dora), framework="pt") as handle:
        assert any("lora_magnitude_vector" in key for key in handle.keys())
    pipeline = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    pipeline.load_lora_weights(str(dora))
    adapted, plain = load_target(base, CPU, adapters=(Adapter(dora),)), load_target(base, CPU)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        states = plain.embed_captions(["a red square", "a blue circle"])
        expected = pipeline.unet(z, torch.tensor([300, 300]), encoder_hidden_states=states).sample
    torch.testing.assert_close(noise_predictions(adapted, z, states), expected, rtol=1e-5, atol=1e-5)
    assert (noise_predictions(plain, z, states) - expected).abs().max() > 1e-2


@pytest.mark.parametrize(("marker", "name"), [("hada_w1_a", "LoHa"), ("lokr_w1", "LoKr"), ("oft_blocks", "OFT")])
def test_a_lycoris_adapter_is_refused_by_its_format(base_and_lora, tmp_path, marker, name) -> None:
    from safetensors.torch import save_file

    base, _, _ = base_and_lora
    path = tmp_path / f"{name}.safetensors"
    save_file({f"lora_unet_down_blocks_0_attentions_0_proj_in.{marker}": torch.zeros(4, 4)}, path)
    with pytest.raises(ModelUnavailable, match=f"is a LyCORIS {name} adapter, which diffusers' LoRA loader cannot"):
        load_target(base, CPU, adapters=(Adapter(path),))


@pytest.mark.parametrize(("extra", "message"), [
    (["--control-model", "BASE"], "--control-model must be left out with adapters: the base model is then"),
    (["--no-calibration", "NOADAPTER"], "--no-calibration against the base applies to audits with adapters only"),
])
def test_calibration_options_that_do_not_fit_are_usage_errors(base_and_lora, image_sets, extra, message) -> None:
    base, lora, _ = base_and_lora
    suspect, reference = image_sets
    arguments = ["check", str(suspect), "--reference", str(reference), "--model", str(base), "--json"]
    if "NOADAPTER" not in extra:
        arguments += ["--adapter", str(lora)]
    arguments += [str(base) if item == "BASE" else item for item in extra if item != "NOADAPTER"]
    result = CliRunner().invoke(app, arguments)
    words = " ".join(word for word in (result.stdout + result.stderr).split() if word != "│")
    assert result.exit_code == 2 and message in words, words


def test_a_batch_file_with_adapters_takes_calibration_and_refuses_a_control_model(base_and_lora, tmp_path) -> None:
    from cdi_audit.errors import SettingsProblem
    from cdi_audit.pipeline.batch import read_batch_file

    base, lora, _ = base_and_lora
    batch = tmp_path / "audits.toml"
    entry = f'[[audit]]\nsuspect = "a"\nreference = "b"\nmodel = "{base}"\nadapters = ["{lora}"]\n'
    batch.write_text(entry + "calibration = false\n")
    [read] = read_batch_file(batch)
    assert (read.settings.calibration, read.settings.calibrated, read.settings.control_model) == (
        False, False, read.settings.model.base)
    batch.write_text(entry)
    [read] = read_batch_file(batch)
    assert read.settings.calibrated and read.settings.control_model.adapters == ()
    batch.write_text(entry + f'control_model = "{base}"\n')
    with pytest.raises(SettingsProblem, match="control_model must be left out with adapters"):
        read_batch_file(batch)
    batch.write_text(entry + 'calibration = "no"\n')
    with pytest.raises(SettingsProblem, match="calibration must be true or false"):
        read_batch_file(batch)


@pytest.mark.slow
def test_evaluate_and_extract_with_an_adapter_use_the_base_too(base_and_lora, tmp_path) -> None:
    """evaluate --adapter evaluates the calibrated columns (each feature set gains its _minus_base twins);
    --no-calibration the features alone; extract --adapter caches the base's features as well, so the check
    that follows computes nothing."""
    from conftest import write_images

    base, lora, _ = base_and_lora
    write_images(tmp_path / "members", 12, seed=31, prefix="m")
    write_images(tmp_path / "nonmembers", 20, seed=32, prefix="n")
    common = ["--model", str(base), "--adapter", str(lora), "--cache-dir", str(tmp_path / "cache")]
    evaluate = ["evaluate", "--members", str(tmp_path / "members"), "--nonmembers", str(tmp_path / "nonmembers"),
                "--features", "fast", "--repeats", "2", "--permutations", "100", "--test", "split", "--json",
                "--jobs", "1", *common]
    calibrated_run = json.loads(CliRunner().invoke(app, evaluate).stdout)
    plain_run = json.loads(CliRunner().invoke(app, [*evaluate, "--no-calibration"]).stdout)
    assert (calibrated_run["calibration"], plain_run["calibration"]) == ("base", None)
    plain_columns = plain_run["feature_sets"]["fast"]
    assert calibrated_run["feature_sets"]["fast"] == [*plain_columns, *(c + "_minus_base" for c in plain_columns)]
    extracted = CliRunner().invoke(app, ["extract", str(tmp_path / "members"), str(tmp_path / "nonmembers"),
                                         *common])
    assert extracted.exit_code == 0, extracted.stdout + extracted.stderr
    check = json.loads(CliRunner().invoke(app, [
        "check", str(tmp_path / "members"), "--reference", str(tmp_path / "nonmembers"), "--json",
        "--permutations", "200", "--jobs", "1", *common]).stdout)
    images = check["n_suspect"] + check["n_reference"]
    assert check["extraction"]["images_from_cache"] == images
    assert check["controls"]["control_model"]["extraction"]["images_from_cache"] == images
