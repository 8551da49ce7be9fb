"""Tiny latent pipelines built from configs (no download), saved as real diffusers folders.

Image size 16 px; the autoencoders downscale by 2, so the denoisers work on 8x8 latents. The
CLIP tokenizer is written as Stable Diffusion ships it (vocab.json, merges.txt), with one token
per byte and no merges, so every caption tokenizes without a downloaded vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

TEXT_TOKENS = 16  # tokenizer model_max_length: captions are padded or cut to this many tokens


def tiny_autoencoder_kl(scaling_factor: float = 1.0, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=scaling_factor, shift_factor=shift_factor,
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


def tiny_stable_diffusion_components(tokenizer_folder: Path, seed: int = 0, prediction_type: str = "epsilon",
                                     scaling_factor: float = 1.0, widths: tuple[int, int] = (32, 64)) -> dict:
    """The components of a StableDiffusionPipeline: KL autoencoder, CLIP text encoder (2 layers, width 32),
    cross-attention UNet on 4x8x8 latents (``widths``: its two blocks' channels), DDPM scheduler. The tokenizer
    is written to ``tokenizer_folder``."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    write_clip_tokenizer(tokenizer_folder)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TEXT_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=widths, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, clip_sample=False,
                              steps_offset=1)
    return {"vae": tiny_autoencoder_kl(scaling_factor), "text_encoder": text_encoder, "tokenizer": tokenizer,
            "unet": unet, "scheduler": scheduler}


def save_stable_diffusion(folder: Path, components: dict) -> Path:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_stable_diffusion(folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """A randomly initialised tiny StableDiffusionPipeline folder."""
    return save_stable_diffusion(folder, tiny_stable_diffusion_components(folder / "tokenizer", seed, prediction_type))


COLOURS = {"red": (215, 45, 40), "green": (40, 170, 70), "blue": (45, 80, 215), "yellow": (235, 205, 40),
           "white": (240, 240, 240), "black": (25, 25, 25), "purple": (140, 50, 170), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")


def write_captioned_shapes(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` distinct 16 px images of a coloured shape on a coloured background, each with a sidecar
    caption that describes it ("a red circle on a blue background")."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    paths = []
    for index in range(count):
        colour, background = rng.choice(len(names), size=2, replace=False)
        shape = SHAPES[rng.integers(len(SHAPES))]
        canvas = Image.new("RGB", (64, 64), COLOURS[names[background]])
        draw = ImageDraw.Draw(canvas)
        size = rng.uniform(18, 40)
        left, top = rng.uniform(2, 62 - size, size=2)
        box = (left, top, left + size, top + size)
        fill = COLOURS[names[colour]]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(left, top + size), (left + size, top + size), (left + size / 2, top)], fill=fill)
        path = folder / f"shape_{seed}_{index:03d}.png"
        canvas.resize((16, 16), Image.Resampling.LANCZOS).save(path)
        path.with_suffix(".txt").write_text(f"a {names[colour]} {shape} on a {names[background]} background")
        paths.append(path)
    return paths


def train_tiny_text_to_image(members: Path, folder: Path, steps: int, seed: int = 0,
                             widths: tuple[int, int] = (32, 64), caption: str | None = None) -> Path:
    """Train the tiny Stable Diffusion UNet on the captioned images in ``members`` (VAE and text encoder
    stay random and frozen) and save the pipeline to ``folder``.

    The VAE's scaling factor is set so the members' latents have unit variance (docs/method.md, "Latent scale");
    with the default 0.18215 a random VAE's latents would be so small that denoising is trivial.
    """
    components = tiny_stable_diffusion_components(folder / "tokenizer", seed, widths=widths)
    unet, scheduler = components["unet"], components["scheduler"]
    latents, embeddings = captioned_training_data(members, caption, components["vae"], components["tokenizer"],
                                                  components["text_encoder"], fit_scaling=True)
    fit_noise_prediction(unet, latents, scheduler, steps, seed,
                         lambda noisy, timesteps, rows: unet(noisy, timesteps, encoder_hidden_states=embeddings[rows]))
    return save_stable_diffusion(folder, components)


def captioned_training_data(members: Path, caption: str | None, vae, tokenizer, text_encoder,
                            fit_scaling: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, caption embeddings) of the images in ``members``, captioned by their sidecars unless
    ``caption`` is given. ``fit_scaling`` first sets the VAE's scaling factor so the latents have unit
    variance (docs/method.md, "Latent scale"); otherwise the VAE's own factor is used."""
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import load_model_pixels, scan_image_set

    images, _ = with_captions(scan_image_set(members), caption)
    pixels = torch.from_numpy(load_model_pixels(images.records, 16))
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
        if fit_scaling:
            vae.register_to_config(scaling_factor=float(1 / latents.std()))
        latents = latents * vae.config.scaling_factor
        ids = tokenizer([r.caption for r in images.records], padding="max_length", max_length=TEXT_TOKENS,
                        truncation=True, return_tensors="pt").input_ids
        return latents, text_encoder(ids)[0]


def fit_noise_prediction(unet: torch.nn.Module, latents: torch.Tensor, scheduler, steps: int, seed: int,
                         predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object],
                         learning_rate: float = 1e-3) -> None:
    """Train the trainable parameters of ``unet`` (AdamW, 32 rows a step, uniform timesteps) to predict the
    noise that ``scheduler.add_noise`` puts on ``latents``; ``predict(noisy, timesteps, rows)`` calls the UNet
    with the conditions of those rows and returns its output."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=learning_rate)
    unet.train()
    for _ in range(steps):
        rows = torch.randint(0, len(latents), (32,), generator=generator)
        noise = torch.randn(latents[rows].shape, generator=generator)
        timesteps = torch.randint(0, 1000, (32,), generator=generator)
        loss = F.mse_loss(predict(scheduler.add_noise(latents[rows], noise, timesteps), timesteps, rows).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    unet.eval()
