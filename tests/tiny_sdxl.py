"""A tiny SDXL pipeline built from configs: two small CLIP encoders, a ``text_time`` UNet, a KL autoencoder
and SDXL's Euler scheduler, trained in seconds on captioned 16 px shapes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_pipelines import TEXT_TOKENS, fit_noise_prediction, tiny_autoencoder_kl, write_clip_tokenizer

TIME_EMBED = 8  # addition_time_embed_dim: each of the six time ids becomes 8 sinusoidal features
# The text encoders' widths differ, as CLIP-L's 768 and OpenCLIP-bigG's 1280 do: diffusers tells the two apart
# by width when it reads a single-file checkpoint. The second's projection is the pooled embedding.
WIDTHS = (32, 48)
POOLED = 48


def tiny_sdxl_components(folder: Path, seed: int = 0) -> dict:
    """The components of a StableDiffusionXLPipeline; the tokenizers are written under ``folder``. The second
    tokenizer pads with "!", as SDXL's OpenCLIP tokenizer does (the first pads with its end token)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2")
    config = folder / "tokenizer_2" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "pad_token": "!"}))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)

    def text_config(width: int, **extra) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=TEXT_TOKENS,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **extra)

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=sum(WIDTHS), attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED, projection_class_embeddings_input_dim=6 * TIME_EMBED + POOLED,
    )
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1)
    return {"vae": tiny_autoencoder_kl(), "text_encoder": CLIPTextModel(text_config(WIDTHS[0])),
            "text_encoder_2": CLIPTextModelWithProjection(text_config(WIDTHS[1], projection_dim=POOLED)),
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "unet": unet, "scheduler": scheduler}


def save_sdxl(folder: Path, components: dict) -> Path:
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(folder, safe_serialization=True)
    return folder


def sdxl_text_condition(components: dict, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(states, pooled) as SDXL's training scripts compute them: both encoders' penultimate states side by
    side, and the second encoder's pooled projection."""
    states, pooled = [], None
    for tokenizer, encoder in ((components["tokenizer"], components["text_encoder"]),
                               (components["tokenizer_2"], components["text_encoder_2"])):
        ids = tokenizer(captions, padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                        return_tensors="pt").input_ids
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]
    return torch.cat(states, dim=-1), pooled


def train_tiny_sdxl(members: Path, folder: Path, steps: int, seed: int = 0) -> Path:
    """Train the tiny SDXL UNet on the captioned images in ``members`` (the VAE and both text encoders stay
    random and frozen) with each image's own time ids, and save the pipeline to ``folder``. The VAE's
    scaling factor gives the members' latents unit variance, as for the tiny Stable Diffusion model."""
    from diffusers import DDPMScheduler

    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import load_model_pixels, scan_image_set, sdxl_crop_geometry

    components = tiny_sdxl_components(folder, seed)
    vae, unet = components["vae"], components["unet"]
    images, _ = with_captions(scan_image_set(members))
    records = images.records
    pixels = torch.from_numpy(load_model_pixels(records, 16))
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
        scaling = float(1 / latents.std())
        vae.register_to_config(scaling_factor=scaling)
        latents = latents * scaling
        states, pooled = sdxl_text_condition(components, [r.caption for r in records])
        time_ids = torch.tensor([[*sdxl_crop_geometry(r.path, 16), 16, 16] for r in records], dtype=torch.float32)
    # The same variance-preserving noising as SDXL's Euler scheduler in its scaled form (and its betas).
    noising = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                            beta_schedule="scaled_linear")
    added = {"text_embeds": pooled, "time_ids": time_ids}
    fit_noise_prediction(unet, latents, noising, steps, seed, lambda noisy, timesteps, rows: unet(
        noisy, timesteps, encoder_hidden_states=states[rows],
        added_cond_kwargs={name: values[rows] for name, values in added.items()}))
    return save_sdxl(folder, components)
