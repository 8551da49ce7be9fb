"""Detect what a model path holds and build its ``Target``: offline, safetensors only.

Nothing here reaches the network (``HF_HUB_OFFLINE`` is set below and
every load passes ``local_files_only=True``), runs remote code, or unpickles a
checkpoint. Every refusal is a ``ModelUnavailable`` whose message says what
was expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from cdi_audit.errors import ModelUnavailable, brief
from cdi_audit.inputs.images import file_sha256
from cdi_audit.models.adapters import (
    PICKLE_SUFFIXES,
    Adapter,
    base_hash_warning,
    check_adapter_file,
    fuse_adapters,
    training_claims,
)
from cdi_audit.models.deferred import DeferredModule
from cdi_audit.models.families import family_for
from cdi_audit.models.family import RGB, Component, Family, LoadedParts, PipelineIndex
from cdi_audit.models.prediction import SCHEDULER_PREDICTION_TYPES
from cdi_audit.models.schedule import DiscreteSchedule, FlowMatchSchedule, NoiseSchedule, NominalKind
from cdi_audit.models.single_file import (
    CHECKPOINT_NAMES,
    FAMILY_OF_CHECKPOINT,
    SHIPPED,
    checkpoint_family,
    checkpoint_keys,
    is_scaled_fp8,
    materialised_config,
    packaged_config_for,
    unsupported_relative,
)
from cdi_audit.models.target import Target
from cdi_audit.results.schema import AdapterInfo, FileDigest, ModelInfo

# Files whose bytes decide what the model computes: they make up its fingerprint.
FINGERPRINT_SUFFIXES = frozenset({".safetensors", ".json", ".txt"})
# A schedule shorter than 2 steps has no noising to measure; one beyond 100,000 is no trained model's.
MIN_TRAIN_TIMESTEPS, MAX_TRAIN_TIMESTEPS = 2, 100_000
# A flow scheduler's static shift s moves its sigmas to s t / (1 + (s - 1) t), towards noise (s > 1) or towards
# the data (s < 1; 1 / s mirrors s). Published models train at 1 to about 20 (SD3 3). At 100 the least noisy of
# 1000 training levels is already sigma 0.09, so the low-noise levels the features are measured at are gone;
# far further out (or at 0, below it, or not finite) no sigma is left strictly between 0 and 1 at all.
MIN_FLOW_SHIFT, MAX_FLOW_SHIFT = 0.01, 100.0
# The side of the square images the model is fed. 4096 x 4096 RGB in float32 is 192 MiB per image, 6 GiB
# per batch of 32 (and more in activations): a config asking more is a mistake, not a model we can audit.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 4096
# One line of torch's load_state_dict error per weight whose shape differs from the model the config builds.
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                           r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")
# The tokenizer classes a config may name, and the transformers class each is read with: CLIP's byte-pair
# files need no extra library; T5's SentencePiece model is read from its tokenizer.json (no sentencepiece).
TOKENIZER_CLASSES = {"CLIPTokenizer": "CLIPTokenizer", "CLIPTokenizerFast": "CLIPTokenizer",
                     "T5Tokenizer": "T5TokenizerFast", "T5TokenizerFast": "T5TokenizerFast"}
# The scheduler of rectified-flow pipelines (SD3, Flux): its sigmas are the noise levels the model trained at.
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"
# Read by huggingface_hub when diffusers is first imported (below, lazily): never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

EXPECTED_LAYOUT = (
    "a diffusers pipeline folder saved with save_pretrained (model_index.json and one sub-folder per "
    "component, safetensors weights): a pixel DDPM/DDIM pipeline (UNet2DModel), an LDMPipeline, a DiTPipeline, "
    "a StableDiffusionPipeline (SD 1.x/2.x), a StableDiffusionXLPipeline, a StableDiffusion3Pipeline (SD3, SD3.5) "
    "or a FluxPipeline, or a bare folder holding unet/ and "
    "scheduler/; or a single-file .safetensors checkpoint of Stable Diffusion or SDXL (SD 1.x and SDXL as they are, "
    "SD 2.x or others with --model-config) or of SD3 / SD3.5 or Flux (with --model-config)"
)


def model_files(root: Path) -> list[FileDigest]:
    """Every weight and config file under ``root`` (or ``root`` itself, a single file), hashed."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                   and p.suffix in FINGERPRINT_SUFFIXES)
    return [FileDigest(path=str(path.resolve()), sha256=file_sha256(path), size_bytes=path.stat().st_size)
            for path in paths]


def model_fingerprint(root: Path, files: list[FileDigest] | None = None) -> str:
    """sha256 over the relative paths and sha256 of every weight and config file under ``root``."""
    digest = hashlib.sha256()
    base = root.resolve()
    for file in files if files is not None else model_files(root):
        digest.update(f"{Path(file.path).relative_to(base).as_posix()}\0{file.sha256}\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelUnavailable(f"{path} is not a readable JSON config ({brief(error)}).") from error
    if not isinstance(config, dict):
        raise ModelUnavailable(f"{path} is not a JSON config: it holds a {type(config).__name__}, not an object.")
    return config


def _refuse_path(root: Path, config: Path | None) -> None:
    if not root.exists():
        raise ModelUnavailable(f"No model at {root}: the path does not exist. Expected {EXPECTED_LAYOUT}.")
    if config is not None and not _is_shipped(config):
        _check_config_folder(Path(config))
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


def _read_index(root: Path) -> tuple[PipelineIndex, dict]:
    """What model_index.json says (a bare unet/ + scheduler/ folder is a pixel pipeline), and its other
    entries (pipeline options such as SDXL's force_zeros_for_empty_prompt)."""
    index = root / "model_index.json"
    if not index.is_file():
        return PipelineIndex("", {"unet": "UNet2DModel"}), {}
    data = _read_json(index)
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
    config = _read_json(root / part / component.config_file)
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


def _check_configs(root: Path) -> tuple[Family, PipelineIndex, dict]:
    """The family of a pipeline folder whose weights may be absent (a --model-config folder)."""
    family, index, options = _family(root)
    if family.single_file_pipeline is None:
        raise ModelUnavailable(f"{root} is a {family.label} pipeline; single-file checkpoints are supported "
                               "for Stable Diffusion 1.x/2.x, SDXL, SD3 / SD3.5 and Flux only.")
    for component in family.components(index):
        if component.kind != "tokenizer" and not (root / component.folder / "config.json").is_file():
            raise ModelUnavailable(f"{root} has no {component.folder}/config.json. Expected {EXPECTED_LAYOUT}.")
    return family, index, options


def _check_folder(root: Path) -> tuple[Family, PipelineIndex, dict]:
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


def _load_schedule(root: Path, family: Family, nominal: NominalKind) -> tuple[NoiseSchedule, str, int]:
    """The noise schedule, prediction type and number of training steps from the model's own scheduler config
    (never rebuilt by hand): variance-preserving from its ``alphas_cumprod``, or rectified flow from a
    ``FlowMatchEulerDiscreteScheduler``'s sigmas for a family whose denoiser predicts the velocity."""
    import diffusers

    config_path = root / "scheduler" / "scheduler_config.json"
    config = _read_json(config_path)
    if "num_train_timesteps" in config:  # absent: the scheduler's default
        _check_timesteps(config["num_train_timesteps"], config_path)
    class_name = config.get("_class_name", "")
    if class_name == FLOW_SCHEDULER:
        _check_flow_shift(config, config_path)
    scheduler_class = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if scheduler_class is None:
        raise ModelUnavailable(f"{root}/scheduler names an unknown scheduler {class_name!r}.")
    try:
        scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    except Exception as error:
        raise ModelUnavailable(f"The scheduler in {root} cannot be loaded ({brief(error)}).") from error
    if family.flow_time_scale is not None:
        if class_name != FLOW_SCHEDULER:
            raise ModelUnavailable(f"{root} is a {family.label} pipeline, whose transformer predicts a flow "
                                   f"velocity, but its scheduler is a {class_name}; expected a {FLOW_SCHEDULER}.")
        schedule = FlowMatchSchedule.from_scheduler(scheduler, family.flow_time_scale, nominal)
        return schedule, "flow", int(scheduler.config.num_train_timesteps)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ModelUnavailable(f"The scheduler {class_name} in {root} has no alphas_cumprod schedule, and a "
                               f"{family.label} model is trained with one.")
    _check_timesteps(len(alphas_cumprod), config_path, "the length of its schedule (alphas_cumprod)")
    _check_signal_fractions(torch.as_tensor(alphas_cumprod), config_path)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in SCHEDULER_PREDICTION_TYPES:
        raise ModelUnavailable(
            f"The scheduler in {root} predicts {prediction_type!r}; expected one of "
            f"{', '.join(SCHEDULER_PREDICTION_TYPES)}."
        )
    return DiscreteSchedule(torch.as_tensor(alphas_cumprod), nominal), prediction_type, len(alphas_cumprod)


def _nominal(components: tuple[Component, ...]) -> NominalKind:
    """Latent models' levels are matched to Stable Diffusion's nominal DDPM, pixel models' to DDPM's."""
    return "latent" if any(c.role == "autoencoder" for c in components) else "pixel"


def _check_timesteps(value: object, config_path: Path, field: str = "num_train_timesteps") -> None:
    """The number of training timesteps must be an integer in [MIN_TRAIN_TIMESTEPS, MAX_TRAIN_TIMESTEPS]."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TRAIN_TIMESTEPS <= value <= MAX_TRAIN_TIMESTEPS:
        raise ModelUnavailable(f"{config_path}: {field} is {value!r}, not an integer from {MIN_TRAIN_TIMESTEPS} to "
                               f"{MAX_TRAIN_TIMESTEPS}; correct num_train_timesteps to the steps the model was "
                               "trained with.")


def _check_signal_fractions(alphas_cumprod: torch.Tensor, config_path: Path) -> None:
    """Each abar_t is the share of the signal left at step t, in (0, 1] (0 at the last step too: a zero
    terminal SNR schedule): betas that make one non-finite, negative or above 1, or 0 before the end (a beta
    outside [0, 1), or underflow), are no schedule, and an audit on them would measure nonsense."""
    abar = alphas_cumprod.double()
    before_the_end = torch.arange(len(abar)) < len(abar) - 1
    bad = ~torch.isfinite(abar) | (abar > 1) | (abar < 0) | ((abar == 0) & before_the_end)
    if bad.any():
        step = int(bad.nonzero()[0])
        raise ModelUnavailable(f"{config_path}: the schedule it gives has alphas_cumprod "
                               f"{float(alphas_cumprod[step]):g} at timestep {step}, not a share of signal in (0, 1]; "
                               "correct beta_start, beta_end or trained_betas to the model's.")


def _check_flow_shift(config: dict, config_path: Path) -> None:
    """A flow scheduler's static ``shift``, where it is applied (not with dynamic shifting, whose shift is an
    inference setting, as are ``base_shift`` and ``max_shift``, none of which the audit reads), must be a number
    from MIN_FLOW_SHIFT to MAX_FLOW_SHIFT: outside, the training sigmas leave the audit no levels to measure."""
    if config.get("use_dynamic_shifting", False):
        return
    shift = config.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not MIN_FLOW_SHIFT <= shift <= MAX_FLOW_SHIFT:
        raise ModelUnavailable(f"{config_path}: shift is {shift!r}; it must be a positive number from {MIN_FLOW_SHIFT} "
                               f"to {MAX_FLOW_SHIFT:g} (published flow models use 1 to about 20, SD3 3); correct shift "
                               "to the one the model was trained with.")


def _load_model(root: Path, part: str) -> DeferredModule:
    """One diffusers model component, offline and from safetensors only; its weights are read on first use
    (an audit whose features are all cached never reads them), its config at once."""
    import diffusers
    from diffusers.configuration_utils import FrozenDict

    saved = _read_json(root / part / "config.json")
    model_class = getattr(diffusers, saved["_class_name"])
    parameters = inspect.signature(model_class.__init__).parameters.items()
    defaults = {name: p.default for name, p in parameters if p.default is not inspect.Parameter.empty}

    def load() -> torch.nn.Module:
        try:
            return model_class.from_pretrained(root, subfolder=part, local_files_only=True, use_safetensors=True,
                                               low_cpu_mem_usage=False)
        except Exception as error:
            mismatches = SIZE_MISMATCH.findall(str(error))
            if mismatches:
                raise ModelUnavailable(f"The {part} weights in {root} do not fit {part}/config.json "
                                       f"({_mismatch_summary(mismatches)}); use the config saved with these weights."
                                       ) from error
            raise ModelUnavailable(f"The {part} in {root} cannot be loaded ({brief(error)}).") from error

    return DeferredModule(saved["_class_name"], FrozenDict({**defaults, **saved}), load)


def _mismatch_summary(mismatches: list[tuple[str, str, str]]) -> str:
    """The first weight whose shape differs, and how many more do."""
    name, saved, built = mismatches[0]
    more = f", and {len(mismatches) - 1} more" if len(mismatches) > 1 else ""
    return f"{name} is {saved} in the weights but {built} by the config{more}"


def _load_component(root: Path, component: Component):
    """One component, offline and from safetensors only: a diffusers model or a text encoder whose weights are
    read on first use (its config at once), or a tokenizer."""
    if component.kind == "diffusers":
        return _load_model(root, component.folder)
    import transformers

    _quiet(transformers)
    folder = root / component.folder
    if component.kind == "tokenizer":
        class_name = _read_json(folder / "tokenizer_config.json").get("tokenizer_class", "")
        try:
            return getattr(transformers, TOKENIZER_CLASSES[class_name]).from_pretrained(folder, local_files_only=True)
        except Exception as error:
            raise ModelUnavailable(f"The {component.folder} in {root} cannot be loaded ({brief(error)}).") from error
    class_name = next(iter(_read_json(folder / "config.json").get("architectures") or []))
    model_class = getattr(transformers, class_name)

    def load() -> torch.nn.Module:
        try:
            return model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except Exception as error:
            raise ModelUnavailable(f"The {component.folder} in {root} cannot be loaded ({brief(error)}).") from error

    return DeferredModule(class_name, model_class.config_class.from_pretrained(folder), load)


def _image_size(denoiser, autoencoder, folder: Path, roles: dict[str, str], default: int | None = None) -> int:
    """The resolution images are fed at: the denoiser's sample size (the first of a (height, width) pair;
    ``default`` where its config has none) times the autoencoder's downscaling. Every side must make an image
    from MIN_IMAGE_SIDE to MAX_IMAGE_SIDE pixels; ``folder`` holds the configs, named when one is wrong."""
    config_path = folder / roles["denoiser"] / "config.json"
    sample_size = denoiser.config.get("sample_size", default)
    sides = list(sample_size) if isinstance(sample_size, (list, tuple)) and sample_size else [sample_size]
    scale = 1 if autoencoder is None else _downscaling(autoencoder, folder / roles["autoencoder"] / "config.json")
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or not MIN_IMAGE_SIDE <= side * scale <= MAX_IMAGE_SIDE:
            latent = f" (latent: times {scale}, the autoencoder's downscaling)" if scale > 1 else ""
            raise ModelUnavailable(
                f"{config_path}: sample_size is {sample_size!r}{latent}, which does not make an image side from "
                f"{MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels; correct sample_size to the model's resolution.")
    return sides[0] * scale


def _downscaling(autoencoder, config_path: Path) -> int:
    """2 ** (number of the autoencoder's blocks - 1): the factor from a latent side to an image side."""
    channels = autoencoder.config.get("block_out_channels")
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 8:
        raise ModelUnavailable(f"{config_path}: block_out_channels is {channels!r}, not a list of 1 to 8 channel "
                               "counts; correct it to the autoencoder's.")
    return 2 ** (len(channels) - 1)


def _check_latent_scale(autoencoder, config_path: Path) -> None:
    """Latents are scaling_factor x (mean - shift_factor): a scale that is not a positive finite number, or a
    shift that is not a finite one, would fail half-way through the audit or make every latent non-finite."""
    for key, least in (("scaling_factor", 0.0), ("shift_factor", -math.inf)):
        value = autoencoder.config.get(key)
        if value is None:  # absent: 1 and 0, as the pipelines read them
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not least < value < math.inf:
            kind = "a positive number" if key == "scaling_factor" else "a finite number"
            raise ModelUnavailable(f"{config_path}: {key} is {value!r}, not {kind}; correct it to the autoencoder's "
                                   "(the value the model was trained with).")


def _check_channels(family: Family, denoiser, autoencoder, folder: Path, roles: dict[str, str]) -> None:
    """The autoencoder must take RGB images, and the denoiser its latents: an inpainting or image-conditioned
    UNet (9 or 8 input channels on 4-channel latents) loads as a text-to-image one, and would fail at its first
    step."""
    images = autoencoder.config.get("in_channels")
    if images != RGB:
        raise ModelUnavailable(f"{folder / roles['autoencoder'] / 'config.json'}: in_channels is {images!r}, but the "
                               f"audit feeds images as RGB ({RGB} channels); an autoencoder on other channels "
                               "(grayscale, RGBA) is not audited by this version.")
    takes, gives = denoiser.config.get("in_channels"), autoencoder.config.get("latent_channels")
    if not isinstance(gives, int) or takes != family.packed_positions * gives:
        packed = f" x {family.packed_positions} packed" if family.packed_positions > 1 else ""
        raise ModelUnavailable(f"{folder / roles['denoiser'] / 'config.json'}: in_channels is {takes!r}, but the "
                               f"autoencoder's latents have {gives!r}{packed} channels; an inpainting or "
                               "image-conditioned model, which takes more, is not audited by this version, and other "
                               "components must come from the same pipeline.")


def _quiet(library) -> None:
    """diffusers and transformers log progress bars and notes while loading; our stderr is for the audit."""
    library.utils.logging.set_verbosity_error()
    library.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def _single_file_configs(checkpoint: Path, config: Path | None) -> Iterator[tuple[Path, str]]:
    """The user's --model-config folder, a shipped config named by it, or the shipped one that fits; with the
    words a message names them by (a shipped config by its name: its folder is a temporary copy)."""
    if config is None or _is_shipped(config):
        name = str(config) if config is not None else packaged_config_for(checkpoint)
        with materialised_config(name) as folder:
            yield folder, f"the configs in the shipped {name!r}"
    else:
        yield Path(config), f"the configs in {config}"


def _is_shipped(config: Path) -> bool:
    """Whether --model-config names a shipped config (a path of that name, if there is one, comes first)."""
    return str(config) in SHIPPED and not Path(config).exists()


def _check_config_folder(config: Path) -> None:
    """A --model-config that is not a shipped name must be a folder holding a pipeline's model_index.json."""
    expected = "give the checkpoint's pipeline folder (its configs and tokenizers) or a shipped config name"
    if not config.exists():
        raise ModelUnavailable(f"The --model-config {config} does not exist; {expected} ({', '.join(SHIPPED)}).")
    if not config.is_dir():
        raise ModelUnavailable(f"The --model-config {config} is a file, not a folder; {expected}.")
    if not (config / "model_index.json").is_file():
        what = "it is empty" if not any(config.iterdir()) else "no model_index.json"
        raise ModelUnavailable(f"The --model-config folder {config} holds no pipeline configs ({what}); {expected}.")


def _check_checkpoint_fits(checkpoint: Path, family: Family, configs: str) -> None:
    """A file recognised as one family's must not be given another family's configs (``configs``: their
    words)."""
    kind = checkpoint_family(checkpoint)
    if kind is not None and FAMILY_OF_CHECKPOINT[kind] != family.name:
        raise ModelUnavailable(f"{checkpoint} holds a {CHECKPOINT_NAMES[kind]} model, but {configs} are of a "
                               f"{family.label} pipeline; give --model-config the configs of the file's own "
                               "architecture.")


def _load_single_file(checkpoint: Path, config: Path, family: Family, components: tuple[Component, ...],
                      configs: str) -> tuple[dict, list[str]]:
    """The components of a single-file checkpoint, configured from ``config`` (offline; ``config`` already
    checked by ``_check_configs``; ``configs``: the words naming it), through the family's diffusers pipeline;
    those the file does not hold (``Family.single_file_parts``) are read from ``config``. Also the notes for the
    report: parts of the file that the configs leave out."""
    import diffusers

    keys = checkpoint_keys(checkpoint)
    in_file = {folder: any(key.startswith(prefixes) for key in keys)
               for folder, prefixes in family.single_file_parts.items()}
    from_config = {}
    for component in components:
        if in_file.get(component.folder, True):
            continue
        if not list((config / component.folder).glob("*.safetensors")):
            raise ModelUnavailable(
                f"{checkpoint} holds no {component.folder} weights (a {family.label} file holds them under "
                f"{' or '.join(family.single_file_parts[component.folder])}), and {config / component.folder} has "
                "none either; give --model-config the pipeline folder of the model the file was made from, with "
                "that component's weights (safetensors), or a checkpoint that includes them.")
        from_config[component.folder] = _load_component(config, component)
        if isinstance(from_config[component.folder], DeferredModule):
            from_config[component.folder] = from_config[component.folder].module
    # Components model_index.json names as absent ([null, null], SD3 saved without T5) must be passed as None.
    absent = {name: None for name, value in _read_json(config / "model_index.json").items()
              if isinstance(value, list) and value[:1] == [None]}
    folders = {component.folder for component in components}
    notes = [f"The checkpoint also holds {folder} weights, which {configs} leave out "
             "(model_index.json); the audit runs without them, as the pipeline would."
             for folder, present in in_file.items() if present and folder not in folders]
    pipeline_class = getattr(diffusers, str(family.single_file_pipeline))
    try:
        pipeline = pipeline_class.from_single_file(str(checkpoint), config=str(config), local_files_only=True,
                                                   torch_dtype=torch.float32,
                                                   **{**absent, **family.single_file_options, **from_config})
    except Exception as error:
        raise ModelUnavailable(f"The checkpoint {checkpoint} cannot be loaded with {configs} ({brief(error)})."
                               ) from error
    parts = {component.folder: getattr(pipeline, component.folder) for component in components}
    for folder, part in parts.items():
        missing = [name for name, p in getattr(part, "named_parameters", list)() if p.device.type == "meta"]
        if missing:  # diffusers loads what the file holds and leaves the rest unset
            raise ModelUnavailable(f"{checkpoint} lacks {len(missing)} of the {folder} weights that {configs} call "
                                   f"for (the first: {missing[0]}); the file is incomplete or of another "
                                   "architecture.")
    return parts, notes


def load_target(path: Path, device: torch.device, dtype: torch.dtype | None = None, config: Path | None = None,
                adapters: tuple[Adapter, ...] = (), guidance: float | None = None) -> Target:
    """Build the ``Target`` for the model at ``path`` on ``device``; forward passes in ``dtype`` (None or
    float32: full precision; see ``resolve_dtype``). ``config``: the configs of a single-file checkpoint (a
    pipeline folder without weights, or a shipped name). ``adapters``: LoRA files fused into the base, in order
    (``models/adapters.py``). ``guidance``: the value fed to a guidance-distilled transformer (None: its
    family's default; refused for models that take none). Commands load through ``ModelSpec.load``."""
    import diffusers

    _quiet(diffusers)
    root = Path(path)
    _refuse_path(root, config)
    for adapter in adapters:
        check_adapter_file(adapter)
    if root.is_file():
        with _single_file_configs(root, config) as (configs, configs_named):
            family, index, options = _check_configs(configs)
            _check_checkpoint_fits(root, family, configs_named)
            components = family.components(index)
            parts, single_file_notes = _load_single_file(root, configs, family, components, configs_named)
            schedule, prediction_type, train_steps = _load_schedule(configs, family, _nominal(components))
            files = model_files(root)
            config_files = model_files(configs)
            fingerprint = hashlib.sha256(f"{files[0].sha256}|{model_fingerprint(configs, config_files)}".encode()
                                         ).hexdigest()
            if config is not None and Path(config).exists():
                files += config_files  # the user's own configs are inputs too; shipped ones are in the package
        config_folder = configs  # named in a refusal of its sample size; the configs themselves are read
    else:
        family, index, options = _check_folder(root)
        single_file_notes = []
        components = family.components(index)
        schedule, prediction_type, train_steps = _load_schedule(root, family, _nominal(components))
        files = model_files(root)
        fingerprint = model_fingerprint(root, files)
        parts = {component.folder: _load_component(root, component) for component in components}
        config_folder = root
    roles = {c.role: c.folder for c in components if c.role != "condition"}
    sample_size = _image_size(parts[roles["denoiser"]], parts.get(roles.get("autoencoder", "")), config_folder, roles,
                              family.default_sample_size)
    if "autoencoder" in roles:
        _check_latent_scale(parts[roles["autoencoder"]], config_folder / roles["autoencoder"] / "config.json")
        _check_channels(family, parts[roles["denoiser"]], parts[roles["autoencoder"]], config_folder, roles)
    adapter_infos = [AdapterInfo(path=str(a.path.resolve()), sha256=file_sha256(a.path), scale=a.scale,
                                 claims=training_claims(a)) for a in adapters]
    notes = [note for adapter, info in zip(adapters, adapter_infos, strict=True)
             if (note := base_hash_warning(info.claims, adapter.path, files[0].sha256 if root.is_file() else None))]
    if adapters:
        _apply_adapters(family, parts, adapters, components)
        files += [FileDigest(path=info.path, sha256=info.sha256, size_bytes=Path(info.path).stat().st_size)
                  for info in adapter_infos]
        parts_of_identity = [fingerprint, *(f"adapter:{info.sha256}:{info.scale!r}" for info in adapter_infos)]
        fingerprint = hashlib.sha256("|".join(parts_of_identity).encode()).hexdigest()
    guidance_value = family.guidance(parts[roles["denoiser"]].config, guidance)
    if guidance_value is not None:  # what the network computes depends on it, as on its weights
        fingerprint = hashlib.sha256(f"{fingerprint}|guidance:{guidance_value!r}".encode()).hexdigest()
    description = ModelInfo(
        path=str(root.resolve()),
        fingerprint=fingerprint,
        family=family.label + (" (single file)" if root.is_file() else ""),
        sample_size=sample_size,
        num_train_timesteps=train_steps,
        prediction_type=prediction_type,
        device=str(device),
        dtype=str(dtype or torch.float32).removeprefix("torch."),
        files=files,
        adapters=adapter_infos,
        guidance=guidance_value,
    )
    loaded = LoadedParts(parts, roles, schedule, prediction_type, device, description, options,
                         guidance=guidance_value, configs=config_folder)
    family.check(loaded)
    target = family.build(loaded)
    target.notes = loaded.warnings + single_file_notes + notes
    target.forward_dtype = None if dtype in (None, torch.float32) else dtype
    return target


def _apply_adapters(family: Family, parts: dict, adapters: tuple[Adapter, ...],
                    components: tuple[Component, ...]) -> None:
    """Fuse ``adapters`` into the denoiser and the text encoders (their weights are read now: an adapter
    changes them)."""
    if family.lora_loader is None:
        raise ModelUnavailable(f"Adapters (--adapter) are supported on Stable Diffusion 1.x/2.x, SDXL, SD3 and Flux "
                               f"bases; this is a {family.label}.")
    adapted = [c.folder for c in components if c.kind != "tokenizer" and c.role != "autoencoder"]
    modules = {name: parts[name].module if isinstance(parts[name], DeferredModule) else parts[name]
               for name in adapted}
    fuse_adapters(family.lora_loader, modules, adapters, family.label)
    parts.update(modules)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it (else float16), float32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU; otherwise ``cpu``, ``cuda`` or ``cuda:N`` for a GPU
    that exists. Other torch devices (mps, meta, ...) are refused here: the audit's code paths are tested on
    these only, and a device without storage (meta) would fail only at the first forward pass."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N (N the index of a GPU).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is visible; use --device cpu or --device auto.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"there is no GPU {device.index}: {torch.cuda.device_count()} visible (indices from 0); "
                         "choose one of them or --device auto.")
    return device
