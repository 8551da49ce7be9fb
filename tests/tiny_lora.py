"""Random LoRA adapters for the tiny pipelines, written as diffusers saves them and, through diffusers' own
conversion, in kohya's format."""

from __future__ import annotations

from pathlib import Path

import torch

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def random_lora(pipeline_class, folder: Path, out: Path, rank: int = 4, seed: int = 0,
                dora: bool = False, denoiser: str = "unet", **loading) -> Path:
    """A rank-``rank`` LoRA (``dora``: DoRA) on the attention projections of the ``denoiser`` (the UNet, or a
    transformer) in ``folder``, with random up weights (peft starts them at zero, which would change nothing)
    and DoRA magnitudes moved off their start, saved by ``pipeline_class.save_lora_weights``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = pipeline_class.from_pretrained(folder, local_files_only=True, **loading)
    network = getattr(pipeline, denoiser)
    network.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=ATTENTION, use_dora=dora))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
            elif "lora_magnitude_vector" in name:
                parameter.mul_(1 + 0.2 * torch.rand(parameter.shape, generator=generator))
    pipeline_class.save_lora_weights(out, **{f"{denoiser}_lora_layers": get_peft_model_state_dict(network)},
                                     safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def as_kohya(diffusers_file: Path, out: Path) -> Path:
    """The same adapter in kohya's key format (``lora_unet_*.lora_down.weight``, ``.alpha``), converted by
    diffusers' ``convert_state_dict_to_kohya``."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    save_file(convert_state_dict_to_kohya(load_file(diffusers_file)), out)
    return out


def train_unet_lora(pipeline_class, base: Path, members: Path, out: Path, steps: int = 400, rank: int = 4,
                    seed: int = 0, learning_rate: float = 5e-3, caption: str | None = None) -> Path:
    """A rank-``rank`` LoRA on the UNet attention of the tiny text-to-image ``base``, trained on the captioned
    images in ``members`` as diffusers' training script does it (base frozen, only the adapter learns; the
    noise-prediction loss at uniform timesteps), saved by ``pipeline_class.save_lora_weights``."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from tiny_pipelines import captioned_training_data, fit_noise_prediction

    pipeline = pipeline_class.from_pretrained(base, local_files_only=True)
    unet = pipeline.unet
    latents, embeddings = captioned_training_data(members, caption, pipeline.vae, pipeline.tokenizer,
                                                  pipeline.text_encoder, fit_scaling=False)
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=ATTENTION))
    fit_noise_prediction(unet, latents, pipeline.scheduler, steps, seed,
                         lambda noisy, timesteps, rows: unet(noisy, timesteps, encoder_hidden_states=embeddings[rows]),
                         learning_rate)
    pipeline_class.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"
