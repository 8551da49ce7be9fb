"""The values in a loaded model's configs that the audit computes with, checked before its first step: a
wrong one would fail half-way through an audit, or make it measure nonsense."""

from __future__ import annotations

import math
from pathlib import Path

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.family import RGB, Family

# The side of the square images the model is fed. 4096 x 4096 RGB in float32 is 192 MiB per image, 6 GiB
# per batch of 32 (and more in activations): a config asking more is a mistake, not a model we can audit.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 4096


def image_size(denoiser, autoencoder, folder: Path, roles: dict[str, str], default: int | None = None) -> int:
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


def check_latent_scale(autoencoder, config_path: Path) -> None:
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


def check_channels(family: Family, denoiser, autoencoder, folder: Path, roles: dict[str, str]) -> None:
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
