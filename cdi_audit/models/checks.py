"""What a model path, its pipeline folder and its configs must be, refused before any weight is read.

Every refusal is a ``ModelUnavailable`` whose message says what was expected: a path that is no model we can
read safely (a pickle, a damaged or unrecognised single file), or a folder whose pipeline no family
recognises or whose components are missing, of other classes, or pickled.
"""

from __future__ import annotations

from pathlib import Path

from cdi_audit.errors import ModelUnavailable, brief
from cdi_audit.models.adapters import PICKLE_SUFFIXES
from cdi_audit.models.components import TOKENIZER_CLASSES, read_json
from cdi_audit.models.families import (
    checkpoint_kinds,
    family_for,
    listing,
    registered_families,
    single_file_phrase,
    supported,
    with_article,
)
from cdi_audit.models.family import Component, Family, PipelineIndex
from cdi_audit.models.single_file import (
    check_config_folder,
    checkpoint_keys,
    checkpoint_kind,
    is_scaled_fp8,
    is_shipped,
)


def expected_layout() -> str:
    """What a model path may be, as every refusal of one ends: the registered families' pipelines and files."""
    pipelines = listing([family.pipeline_words for family in registered_families()], "or")
    return ("a diffusers pipeline folder saved with save_pretrained (model_index.json and one sub-folder per "
            f"component, safetensors weights): {pipelines}, or a bare folder holding unet/ and scheduler/; or "
            f"{single_file_phrase()}")


def refuse_path(root: Path, config: Path | None) -> None:
    """Refuse a model path that is no pipeline folder or safetensors checkpoint we can read, or a single file
    whose configs must be given and are not (or a --model-config that holds none)."""
    if not root.exists():
        raise ModelUnavailable(f"No model at {root}: the path does not exist. Expected {expected_layout()}.")
    if config is not None and not is_shipped(config):
        check_config_folder(Path(config))
    if root.is_file():
        if root.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelUnavailable(
                f"{root} is a pickle checkpoint, which can run code when loaded; convert it to "
                "safetensors. Expected " + expected_layout() + "."
            )
        if root.suffix.lower() != ".safetensors":
            raise ModelUnavailable(f"{root} is neither a pipeline folder nor a .safetensors checkpoint. "
                                   f"Expected {expected_layout()}.")
        try:
            found = checkpoint_kind(root)
        except Exception as error:  # safetensors raises its own error types for a damaged header
            raise ModelUnavailable(f"{root} is not a readable safetensors checkpoint ({brief(error)}). "
                                   f"Expected {expected_layout()}.") from error
        keys = checkpoint_keys(root)
        if is_scaled_fp8(keys):
            raise ModelUnavailable(
                f"{root} is a 'scaled fp8' checkpoint (ComfyUI's: each weight stored divided by a scale kept beside "
                "it), which diffusers cannot read as it is; give the model in bfloat16 or float32, or as a pipeline "
                "folder.")
        kind = None if found is None else found[1]
        relative = None if kind is None else kind.relative_in(keys)
        if relative is not None:
            raise ModelUnavailable(f"{root} is a {relative} checkpoint, which this version does not support: it "
                                   f"audits {kind.covers}.")
        if config is None and kind is not None and kind.config is None:
            raise ModelUnavailable(f"{root} is {with_article(kind.display_name)} {kind.needs_config}")
        if config is None and kind is None:
            known = listing([each.display_name for _, each in checkpoint_kinds()], "or")
            raise ModelUnavailable(
                f"{root} is a single-file checkpoint that is not {known}, as far as its weights tell; give "
                "--model-config DIR, a Stable Diffusion pipeline folder of the same architecture holding its configs "
                "and tokenizer (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/ as "
                "save_pretrained writes them; weights are not needed), since nothing may be looked up on a hub. "
                f"Expected {expected_layout()}."
            )
    elif config is not None:
        raise ModelUnavailable(f"--model-config is only for single-file checkpoints, and {root} is a folder.")


def check_folder(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """Refuse anything but a supported, safetensors-only pipeline folder, saying why."""
    family, index, options = _family(root)
    components = family.components(index)
    _check_component(root, next(c for c in components if c.role == "denoiser"))
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise ModelUnavailable(f"{root} has no scheduler/scheduler_config.json. Expected {expected_layout()}.")
    for component in components:
        if component.role != "denoiser":
            _check_component(root, component)
    return family, index, options


def check_configs(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """The family of a pipeline folder whose weights may be absent (a --model-config folder)."""
    family, index, options = _family(root)
    if family.single_file_pipeline is None:
        single = supported(lambda family: family.single_file_pipeline is not None)
        raise ModelUnavailable(f"{root} is {with_article(family.label)} pipeline; single-file checkpoints are "
                               f"supported for {single} only.")
    for component in family.components(index):
        if component.kind != "tokenizer" and not (root / component.folder / "config.json").is_file():
            raise ModelUnavailable(f"{root} has no {component.folder}/config.json. Expected {expected_layout()}.")
    return family, index, options


def refuse_guidance(family: Family, requested: float | None) -> None:
    """A guidance value is for guidance-distilled families only; elsewhere it would be silently ignored."""
    if requested is not None and not family.takes_guidance:
        distilled = supported(lambda each: each.takes_guidance, "or")
        raise ModelUnavailable(f"--guidance is for guidance-distilled {distilled} models; "
                               f"{with_article(family.label)} model takes no guidance value.")


def _read_index(root: Path) -> tuple[PipelineIndex, dict]:
    """What model_index.json says (a bare unet/ + scheduler/ folder is a pixel pipeline), and its other
    entries (pipeline options such as SDXL's force_zeros_for_empty_prompt)."""
    index = root / "model_index.json"
    if not index.is_file():
        return PipelineIndex("", {"unet": "UNet2DModel"}), {}
    data = read_json(index)
    components = {name: value[1] for name, value in data.items()
                  if isinstance(value, list) and len(value) == 2 and value[1] is not None}
    options = {name: value for name, value in data.items() if not isinstance(value, list)}
    return PipelineIndex(str(data.get("_class_name", "an unknown pipeline")), components), options


def _family(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """The registered family that recognises the pipeline in ``root``, or a refusal saying what is supported."""
    index, options = _read_index(root)
    family = family_for(index)
    if family is None:
        denoiser = index.components.get("transformer") or index.components.get("unet")
        raise ModelUnavailable(f"{root} holds a {index.pipeline} (denoiser {denoiser}), which this version does "
                               f"not support. Expected {expected_layout()}.")
    return family, index, options


def _check_component(root: Path, component: Component) -> None:
    """A component folder must hold a config naming an allowed class, and (but for tokenizers) safetensors
    weights."""
    part = component.folder
    if not (root / part / component.config_file).is_file():
        raise ModelUnavailable(f"{root} has no {part}/{component.config_file}. Expected {expected_layout()}.")
    config = read_json(root / part / component.config_file)
    if component.kind == "tokenizer":
        if config.get("tokenizer_class") not in component.classes:
            raise ModelUnavailable(f"{root}/{part} holds a {config.get('tokenizer_class')}; expected one of "
                                   f"{', '.join(sorted(component.classes))}.")
        fast = TOKENIZER_CLASSES[config["tokenizer_class"]].endswith("Fast")
        if fast and not (root / part / "tokenizer.json").is_file():
            raise ModelUnavailable(f"{root}/{part} has no tokenizer.json; a {config['tokenizer_class']} is read from "
                                   "it (save the tokenizer with save_pretrained, as the pipeline is published).")
        return
    class_name = config.get("_class_name") or next(iter(config.get("architectures") or []), None)
    if class_name not in component.classes:
        raise ModelUnavailable(f"{root}/{part} holds a {class_name}, not one of "
                               f"{', '.join(sorted(component.classes))}. Expected {expected_layout()}.")
    if not list((root / part).glob("*.safetensors")):
        pickles = [p.name for p in (root / part).iterdir() if p.suffix in PICKLE_SUFFIXES]
        found = "no weights"
        if pickles:
            found = f"only pickle weights ({', '.join(pickles)}), which can run code when loaded"
        raise ModelUnavailable(f"{root}/{part} has {found}; save the model with safe_serialization=True.")
