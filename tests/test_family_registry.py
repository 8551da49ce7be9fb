"""Every list of model families the user reads is the registry's: --help, the refusals, and each family's facts
are stated once, in its own module (``Family`` attributes); the registry imports no torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cdi_audit.cli import app
from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.adapters import Adapter, base_guess
from cdi_audit.models.families import registered_families, with_article
from cdi_audit.models.family import Family
from cdi_audit.models.loading import load_target
from cdi_audit.models.single_file import SHIPPED

CPU = torch.device("cpu")


def names(predicate=lambda family: True, last: str = "and") -> str:
    """The display names of the registered families for which ``predicate`` holds, as a sentence lists them."""
    chosen = [family.display_name for family in registered_families() if predicate(family)]
    return chosen[0] if len(chosen) == 1 else f"{', '.join(chosen[:-1])} {last} {chosen[-1]}"


def takes_single_files(family: Family) -> bool:
    return family.single_file_pipeline is not None


def takes_adapters(family: Family) -> bool:
    return family.lora_loader is not None


def one_line(text: str) -> str:
    """Rich's help panel as one line of words (borders and wrapping gone)."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_check_help_names_the_registered_families_for_models_single_files_and_adapters() -> None:
    result = CliRunner().invoke(app, ["check", "--help"], terminal_width=400)
    assert result.exit_code == 0
    text = one_line(result.output)
    assert f"save_pretrained (safetensors): a {names(last='or')} pipeline; or a single-file" in text
    assert f"checkpoint of {names(takes_single_files, 'or')} (" in text
    assert f"For {names(takes_adapters)} bases." in text


def test_refusals_name_the_registered_families_that_take_single_files_adapters_and_guidance(
        tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"unknown.weight": torch.zeros(2)}, tmp_path / "unknown.safetensors")
    with pytest.raises(ModelUnavailable) as raised:
        load_target(tmp_path / "unknown.safetensors", CPU, config=tiny_model)  # a pixel pipeline's configs
    assert str(raised.value).endswith(
        f"single-file checkpoints are supported for {names(takes_single_files)} only.")
    kinds = [kind.display_name for family in registered_families() for kind in family.checkpoint_kinds]
    with pytest.raises(ModelUnavailable) as raised:
        load_target(tmp_path / "unknown.safetensors", CPU)
    assert f"is a single-file checkpoint that is not {', '.join(kinds[:-1])} or {kinds[-1]}, as far" in str(
        raised.value)
    for family in registered_families():
        assert family.pipeline_words in str(raised.value)  # what a model path may be

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}, tmp_path / "lora.safetensors")
    with pytest.raises(ModelUnavailable) as raised:
        load_target(tiny_model, CPU, adapters=(Adapter(tmp_path / "lora.safetensors"),))
    assert str(raised.value) == (f"Adapters (--adapter) are supported on {names(takes_adapters)} bases; this is a "
                                 "pixel UNet2DModel.")
    with pytest.raises(ModelUnavailable) as raised:
        load_target(tiny_model, CPU, guidance=2.0)
    distilled = names(lambda family: family.takes_guidance, "or")
    assert str(raised.value) == (f"--guidance is for guidance-distilled {distilled} models; a pixel UNet2DModel model "
                                 "takes no guidance value.")


def test_each_family_states_its_facts_in_its_own_module() -> None:
    families = registered_families()
    assert [family.published for family in families] == sorted(family.published for family in families)
    kinds = [kind for family in families for kind in family.checkpoint_kinds]
    assert len({kind.name for kind in kinds}) == len(kinds)
    for family in families:
        assert family.display_name and family.pipeline_words and re.fullmatch(r"\d{4}-\d{2}", family.published)
        assert type(family).__module__ == f"cdi_audit.models.families.{family.name}"
        overrides_guidance = type(family).guidance is not Family.guidance
        assert family.takes_guidance == overrides_guidance, family.name
        assert bool(family.checkpoint_kinds) == takes_single_files(family), family.name
        assert (family.adapter_layout in ("UNet", "transformer")) == takes_adapters(family), family.name
        for kind in family.checkpoint_kinds:  # a shipped config, or the words saying what to give
            assert (kind.config in SHIPPED) if kind.config is not None else kind.needs_config, kind.name


def test_an_adapter_is_guessed_for_the_family_whose_names_it_uses() -> None:
    for family in registered_families():
        for mark in (*family.adapter_prefixes, *family.adapter_parts):
            assert base_guess([f"{mark}_0.lora_down.weight"]) == f"{with_article(family.display_name)} base"
    transformers = with_article(names(lambda family: family.adapter_layout == "transformer", "or"))
    assert base_guess(["transformer.blocks.0.lora_A.weight"]) == f"{transformers} transformer of another size"
    assert base_guess(["lora_magic.weight"]) == "an unknown base"


def test_articles_follow_the_sound_of_the_first_letter() -> None:
    assert [with_article(words) for words in ("SDXL", "SD3 / SD3.5", "LDM", "Flux", "DiT", "Stable Diffusion 2.x",
                                              "pixel DDPM/DDIM", "text-to-image SD3", "Ultra")] == [
        "an SDXL", "an SD3 / SD3.5", "an LDM", "a Flux", "a DiT", "a Stable Diffusion 2.x", "a pixel DDPM/DDIM",
        "a text-to-image SD3", "an Ultra"]


def test_the_registry_and_the_command_line_options_import_without_torch() -> None:
    code = ("import sys; import cdi_audit.cli.options; "
            "from cdi_audit.models.families import registered_families; "
            "print(len(registered_families()), 'torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == [str(len(registered_families())), "False"]
