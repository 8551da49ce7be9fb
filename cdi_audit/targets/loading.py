"""Detect what a model path holds and build its ``Target``: offline, safetensors only.

Nothing here reaches the network (``HF_HUB_OFFLINE`` is set below and
every load passes ``local_files_only=True``), runs remote code, or unpickles a
checkpoint. Every refusal is a ``ModelUnavailable`` whose message says what
was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from cdi_audit.errors import ModelUnavailable
from cdi_audit.images import file_sha256
from cdi_audit.result import ModelInfo
from cdi_audit.targets.base import PREDICTION_TYPES, Target

PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl"})
# Files whose bytes decide what the model computes: they make up its fingerprint.
FINGERPRINT_SUFFIXES = frozenset({".safetensors", ".json"})
SUPPORTED_UNETS = ("UNet2DModel",)
# Read by huggingface_hub when diffusers is first imported (below, lazily): never reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

EXPECTED_LAYOUT = (
    "a diffusers pipeline folder with a UNet2DModel (model_index.json, unet/, scheduler/, "
    "as DDPMPipeline.save_pretrained writes it) or a folder holding unet/ and scheduler/"
)


def model_fingerprint(root: Path) -> str:
    """sha256 over the relative paths and sha256 of every weight and config file under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in FINGERPRINT_SUFFIXES:
            digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelUnavailable(f"{path} is not a readable JSON config ({error}).") from error


def _check_folder(root: Path) -> None:
    """Refuse anything but a supported, safetensors-only pixel UNet folder, saying why."""
    if not root.exists():
        raise ModelUnavailable(f"No model at {root}: the path does not exist. Expected {EXPECTED_LAYOUT}.")
    if root.is_file():
        if root.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelUnavailable(
                f"{root} is a pickle checkpoint, which can run code when loaded; convert it to "
                "safetensors. Expected " + EXPECTED_LAYOUT + "."
            )
        raise ModelUnavailable(
            f"{root} is a single file; this version audits pixel diffusion models only. Expected {EXPECTED_LAYOUT}."
        )
    index = root / "model_index.json"
    if index.is_file():
        unet_entry = _read_json(index).get("unet")
        unet_class = unet_entry[1] if isinstance(unet_entry, list) and len(unet_entry) == 2 else None
        if unet_class not in SUPPORTED_UNETS:
            pipeline = _read_json(index).get("_class_name", "an unknown pipeline")
            raise ModelUnavailable(
                f"{root} holds a {pipeline} (denoiser {unet_class}); this version supports only "
                f"pixel models. Expected {EXPECTED_LAYOUT}."
            )
    for part, config_name in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (root / part / config_name).is_file():
            raise ModelUnavailable(f"{root} has no {part}/{config_name}. Expected {EXPECTED_LAYOUT}.")
    unet_class = _read_json(root / "unet" / "config.json").get("_class_name")
    if unet_class not in SUPPORTED_UNETS:
        raise ModelUnavailable(f"{root}/unet holds a {unet_class}, not a UNet2DModel. Expected {EXPECTED_LAYOUT}.")
    if not list((root / "unet").glob("*.safetensors")):
        pickles = [p.name for p in (root / "unet").iterdir() if p.suffix in PICKLE_SUFFIXES]
        found = "no weights"
        if pickles:
            found = f"only pickle weights ({', '.join(pickles)}), which can run code when loaded"
        raise ModelUnavailable(f"{root}/unet has {found}; save the model with safe_serialization=True.")


def _load_schedule(root: Path) -> tuple[torch.Tensor, str]:
    """alphas_cumprod and prediction type from the model's own scheduler config (never rebuilt by hand)."""
    import diffusers

    config = _read_json(root / "scheduler" / "scheduler_config.json")
    class_name = config.get("_class_name", "")
    scheduler_class = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if scheduler_class is None:
        raise ModelUnavailable(f"{root}/scheduler names an unknown scheduler {class_name!r}.")
    try:
        scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    except Exception as error:
        raise ModelUnavailable(f"The scheduler in {root} cannot be loaded ({error}).") from error
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ModelUnavailable(f"The scheduler {class_name} in {root} has no alphas_cumprod schedule.")
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelUnavailable(
            f"The scheduler in {root} predicts {prediction_type!r}; expected one of {', '.join(PREDICTION_TYPES)}."
        )
    return torch.as_tensor(alphas_cumprod), prediction_type


def load_target(path: Path, device: torch.device) -> Target:
    """Build the ``Target`` for the model at ``path`` on ``device``."""
    from diffusers import UNet2DModel

    from cdi_audit.targets.pixel import PixelTarget

    root = Path(path)
    _check_folder(root)
    alphas_cumprod, prediction_type = _load_schedule(root)
    try:
        unet = UNet2DModel.from_pretrained(
            root, subfolder="unet", local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
        )
    except Exception as error:
        raise ModelUnavailable(f"The UNet in {root} cannot be loaded ({type(error).__name__}: {error}).") from error
    sample_size = unet.config.sample_size
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    description = ModelInfo(
        path=str(root.resolve()),
        fingerprint=model_fingerprint(root),
        family="pixel UNet2DModel",
        sample_size=int(sample_size),
        num_train_timesteps=len(alphas_cumprod),
        prediction_type=prediction_type,
        device=str(device),
    )
    return PixelTarget(unet, alphas_cumprod, prediction_type, device, description)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU; an explicit choice must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is visible; use --device cpu or --device auto.")
    return device
