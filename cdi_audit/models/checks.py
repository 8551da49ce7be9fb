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
from cdi_audit.models.families import family_for
from cdi_audit.models.family import Component, Family, PipelineIndex
from cdi_audit.models.single_file import (
    CHECKPOINT_NAMES,
    check_config_folder,
    checkpoint_family,
    checkpoint_keys,
    is_scaled_fp8,
    is_shipped,
    unsupported_relative,
)

EXPECTED_LAYOUT = (
    "a diffusers pipeline folder saved with save_pretrained (model_index.json and one sub-folder per "
    "component, safetensors weights): a pixel DDPM/DDIM pipeline (UNet2DModel), an LDMPipeline, a DiTPipeline, "
    "a StableDiffusionPipeline (SD 1.x/2.x), a StableDiffusionXLPipeline, a StableDiffusion3Pipeline (SD3, SD3.5) "
    "or a FluxPipeline, or a bare folder holding unet/ and "
    "scheduler/; or a single-file .safetensors checkpoint of Stable Diffusion or SDXL (SD 1.x and SDXL as they are, "
    "SD 2.x or others with --model-config) or of SD3 / SD3.5 or Flux (with --model-config)"
)


def refuse_path(root: Path, config: Path | None) -> None:
    """Refuse a model path that is no pipeline folder or safetensors checkpoint we can read, or a single file
    whose configs must be given and are not (or a --model-config that holds none)."""
    if not root.exists():
        raise ModelUnavailable(f"No model at {root}: the path does not exist. Expected {EXPECTED_LAYOUT}.")
    if config is not None and not is_shipped(config):
        check_config_folder(Path(config))
    if root.is_file():
        if root.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelUnavailable(
                f"{root} is a pickle checkpoint, which can run code when loaded; convert it to "
                "safetensors. Expected " + EXPECTED_LAYOUT + "."
            )
        if root.suffix.lower() != ".safetensors":
            raise ModelUnavailable(f"{root} is neither a pipeline folder nor a .safetensors checkpoint. "
                                   f"Expected {EXPECTED_LAYOUT}.")
        try:
            family = checkpoint_family(root)
        except Exception as error:  # safetensors raises its own error types for a damaged header
            raise ModelUnavailable(f"{root} is not a readable safetensors checkpoint ({brief(error)}). "
                                   f"Expected {EXPECTED_LAYOUT}.") from error
        keys = checkpoint_keys(root)
        if is_scaled_fp8(keys):
            raise ModelUnavailable(
                f"{root} is a 'scaled fp8' checkpoint (ComfyUI's: each weight stored divided by a scale kept beside "
                "it), which diffusers cannot read as it is; give the model in bfloat16 or float32, or as a pipeline "
                "folder.")
        relative = unsupported_relative(keys) if family == "flux" else None
        if relative is not None:
            raise ModelUnavailable(f"{root} is a {relative} checkpoint, which this version does not support: it "
                                   "audits Flux.1 (dev, schnell and their fine-tunes).")
        if config is None and family in ("flux", "sd3"):
            pipeline = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}[family]
            raise ModelUnavailable(
                f"{root} is a {CHECKPOINT_NAMES[family]} single-file checkpoint, and no configs ship for it (its "
                f"variants differ in ways the weights do not all tell); give --model-config DIR, the {pipeline} "
                "folder of the same model as save_pretrained writes it (model_index.json, each component's config, "
                "the tokenizers). The file's own weights are used; the components it does not hold (Black Forest "
                "Labs' Flux files hold only the transformer) are read from DIR, which must then hold their weights.")
        if config is None and family == "sd2":
            raise ModelUnavailable(
                f"{root} is a Stable Diffusion 2.x checkpoint, whose weights do not tell its variant; give "
                "--model-config stable-diffusion-v2 (768 px, v-prediction) or --model-config "
                "stable-diffusion-v2-base (512 px, epsilon), or a config folder of your own."
            )
        if config is None and family is None:
            raise ModelUnavailable(
                f"{root} is a single-file checkpoint that is not Stable Diffusion 1.x, 2.x, SDXL, SD3 or Flux, as far "
                "as its weights tell; give --model-config DIR, a Stable Diffusion pipeline folder of the same "
                "architecture holding its configs and tokenizer (model_index.json, unet/, vae/, text_encoder/, "
                "tokenizer/, scheduler/ as save_pretrained writes them; weights are not needed), since nothing "
                f"may be looked up on a hub. Expected {EXPECTED_LAYOUT}."
            )
    elif config is not None:
        raise ModelUnavailable(f"--model-config is only for single-file checkpoints, and {root} is a folder.")


def check_folder(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """Refuse anything but a supported, safetensors-only pipeline folder, saying why."""
    family, index, options = _family(root)
    components = family.components(index)
    _check_component(root, next(c for c in components if c.role == "denoiser"))
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        raise ModelUnavailable(f"{root} has no scheduler/scheduler_config.json. Expected {EXPECTED_LAYOUT}.")
    for component in components:
        if component.role != "denoiser":
            _check_component(root, component)
    return family, index, options


def check_configs(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """The family of a pipeline folder whose weights may be absent (a --model-config folder)."""
    family, index, options = _family(root)
    if family.single_file_pipeline is None:
        raise ModelUnavailable(f"{root} is a {family.label} pipeline; single-file checkpoints are supported "
                               "for Stable Diffusion 1.x/2.x, SDXL, SD3 / SD3.5 and Flux only.")
    for component in family.components(index):
        if component.kind != "tokenizer" and not (root / component.folder / "config.json").is_file():
            raise ModelUnavailable(f"{root} has no {component.folder}/config.json. Expected {EXPECTED_LAYOUT}.")
    return family, index, options


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
                               f"not support. Expected {EXPECTED_LAYOUT}.")
    return family, index, options


def _check_component(root: Path, component: Component) -> None:
    """A component folder must hold a config naming an allowed class, and (but for tokenizers) safetensors
    weights."""
    part = component.folder
    if not (root / part / component.config_file).is_file():
        raise ModelUnavailable(f"{root} has no {part}/{component.config_file}. Expected {EXPECTED_LAYOUT}.")
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
                               f"{', '.join(sorted(component.classes))}. Expected {EXPECTED_LAYOUT}.")
    if not list((root / part).glob("*.safetensors")):
        pickles = [p.name for p in (root / part).iterdir() if p.suffix in PICKLE_SUFFIXES]
        found = "no weights"
        if pickles:
            found = f"only pickle weights ({', '.join(pickles)}), which can run code when loaded"
        raise ModelUnavailable(f"{root}/{part} has {found}; save the model with safe_serialization=True.")
