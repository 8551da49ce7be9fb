"""Tiny latent pipelines built from configs (no download), saved as real diffusers folders.

Image size 16 px; the autoencoders downscale by 2, so the denoisers work on 8x8 latents. The
CLIP tokenizer is written as Stable Diffusion ships it (vocab.json, merges.txt), with one token
per byte and no merges, so every caption tokenizes without a downloaded vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_TOKENS = 16  # tokenizer model_max_length: captions are padded or cut to this many tokens


def tiny_autoencoder_kl(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=scaling_factor,
    )


def save_tiny_ldm(folder: Path, seed: int = 0) -> Path:
    """LDMPipeline: VQ autoencoder + unconditional UNet2DModel on 3x8x8 latents."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(seed)
    vqvae = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=3, num_vq_embeddings=32, norm_num_groups=8, sample_size=16,
    )
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=8,
    )
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(
        folder, safe_serialization=True)
    return folder


def save_tiny_dit(folder: Path, num_classes: int = 4, seed: int = 0) -> Path:
    """DiTPipeline: KL autoencoder + class-conditional DiT with learned variance (8 output channels)."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=num_classes, norm_num_groups=8,
    )
    DiTPipeline(transformer=transformer, vae=tiny_autoencoder_kl(),
                scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(folder, safe_serialization=True)
    return folder


def write_clip_tokenizer(folder: Path) -> None:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    characters = list(bytes_to_unicode().values())
    vocabulary = [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": TEXT_TOKENS, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))


def save_tiny_stable_diffusion(folder: Path, seed: int = 0, prediction_type: str = "epsilon",
                               scaling_factor: float = 1.0, unet=None, vae=None) -> Path:
    """StableDiffusionPipeline: KL autoencoder, CLIP text encoder (2 layers, width 32), cross-attention UNet."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = unet or UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae or tiny_autoencoder_kl(scaling_factor), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False,
                                steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
