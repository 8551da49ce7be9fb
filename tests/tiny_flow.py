"""Tiny rectified-flow pipelines built from configs: SD3 (two CLIP encoders with projections, T5 optional) and
Flux (CLIP pooled output, T5 states, packed latents, guidance), on 16 px images and 8 x 8 latents, trained
with the diffusers recipe (sigma logit-normal over the scheduler's grid, target eps - z0) in seconds."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from tiny_pipelines import TEXT_TOKENS, tiny_autoencoder_kl, write_clip_tokenizer

SD3_WIDTHS = (16, 24)  # the CLIP encoders' widths, also their projections: pooled = 40
SD3_JOINT = 48  # joint_attention_dim, wider than both CLIP states side by side (40), so the pad is seen
FLUX_CLIP, FLUX_T5 = 16, 32  # Flux's pooled CLIP width and T5 width (joint_attention_dim)
SHIFT_FACTOR = 0.25  # a VAE latent shift, as SD3's (0.0609) and Flux's (0.1159) VAEs have


def write_t5_tokenizer(folder: Path) -> None:
    """A T5TokenizerFast whose vocabulary is one piece per printable character (and a word-start variant),
    saved as tokenizer.json: T5's special tokens (<pad> 0, </s> 1, <unk> 2) and no BOS, as T5 has."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -1.0) for c in string.printable] + [("\u2581" + c, -1.0) for c in string.printable]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                    extra_ids=0).save_pretrained(folder)


def tiny_t5(tokenizer, width: int):
    """A one-layer T5 encoder in evaluation mode: a freshly built module trains, and T5's dropout would make
    the captions' states a random draw at every encoding (training and audit would see different texts)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)).eval()


def clip_tokenizers(folder: Path, names: tuple[str, ...]) -> list:
    """CLIP tokenizers written under ``folder``; the second pads with "!", as OpenCLIP's does."""
    from transformers import CLIPTokenizer

    tokenizers = []
    for index, name in enumerate(names):
        write_clip_tokenizer(folder / name)
        if index == 1:
            config = folder / name / "tokenizer_config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), "pad_token": "!"}))
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / name, local_files_only=True))
    return tokenizers


def clip_encoder(tokenizer, width: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=TEXT_TOKENS, projection_dim=width,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()


def flow_scheduler(**config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)


def tiny_sd3_components(folder: Path, seed: int = 0, with_t5: bool = False) -> dict:
    """The components of a StableDiffusion3Pipeline (tokenizers written under ``folder``); without T5 the
    pipeline is saved with text_encoder_3 and tokenizer_3 null, as SD3 medium is often published."""
    from diffusers import SD3Transformer2DModel
    from transformers import T5TokenizerFast

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = clip_tokenizers(folder, ("tokenizer", "tokenizer_2"))
    text_encoder_3 = tokenizer_3 = None
    if with_t5:
        write_t5_tokenizer(folder / "tokenizer_3")
        tokenizer_3 = T5TokenizerFast.from_pretrained(folder / "tokenizer_3", local_files_only=True)
        text_encoder_3 = tiny_t5(tokenizer_3, SD3_JOINT)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=SD3_JOINT, caption_projection_dim=32,
        pooled_projection_dim=sum(SD3_WIDTHS), pos_embed_max_size=8)
    return {"transformer": transformer, "vae": tiny_autoencoder_kl(shift_factor=SHIFT_FACTOR),
            "text_encoder": clip_encoder(tokenizer, SD3_WIDTHS[0], True),
            "text_encoder_2": clip_encoder(tokenizer_2, SD3_WIDTHS[1], True), "text_encoder_3": text_encoder_3,
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "tokenizer_3": tokenizer_3,
            "scheduler": flow_scheduler(shift=3.0)}


def tiny_flux_components(folder: Path, seed: int = 0, guidance_embeds: bool = True) -> dict:
    """The components of a FluxPipeline (tokenizers written under ``folder``); the scheduler shifts dynamically,
    as Flux's does."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5TokenizerFast

    torch.manual_seed(seed)
    (tokenizer,) = clip_tokenizers(folder, ("tokenizer",))
    write_t5_tokenizer(folder / "tokenizer_2")
    tokenizer_2 = T5TokenizerFast.from_pretrained(folder / "tokenizer_2", local_files_only=True)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=FLUX_T5, pooled_projection_dim=FLUX_CLIP,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
    return {"transformer": transformer, "vae": tiny_autoencoder_kl(shift_factor=SHIFT_FACTOR),
            "text_encoder": clip_encoder(tokenizer, FLUX_CLIP, False), "text_encoder_2": tiny_t5(tokenizer_2, FLUX_T5),
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
            "scheduler": flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)}


def save_sd3(folder: Path, components: dict) -> Path:
    from diffusers import StableDiffusion3Pipeline

    StableDiffusion3Pipeline(**components).save_pretrained(folder, safe_serialization=True)
    return folder


def save_flux(folder: Path, components: dict) -> Path:
    """The pipeline folder; the transformer config also records the 8 x 8 latent side the model trained at
    (``sample_size``, which Flux's own config lacks; the audit reads it when present, else 1024 px)."""
    from diffusers import FluxPipeline

    FluxPipeline(**components).save_pretrained(folder, safe_serialization=True)
    config = folder / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": 8}, indent=2))
    return folder


def quiet() -> None:
    """The pipelines warn of every caption the 16-token tokenizers cut; the tests know."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def sd3_condition(components: dict, captions: list[str]) -> dict:
    """The SD3 transformer's text inputs as the pipeline's encode_prompt builds them."""
    from diffusers import StableDiffusion3Pipeline

    quiet()
    pipeline = StableDiffusion3Pipeline(**components)
    states, _, pooled, _ = pipeline.encode_prompt(captions, None, None, do_classifier_free_guidance=False)
    return {"encoder_hidden_states": states, "pooled_projections": pooled}


def flux_condition(components: dict, captions: list[str]) -> dict:
    from diffusers import FluxPipeline

    quiet()
    states, pooled, text_ids = FluxPipeline(**components).encode_prompt(captions, None)
    return {"encoder_hidden_states": states, "pooled_projections": pooled, "txt_ids": text_ids}


def fit_velocity(model: torch.nn.Module, latents: torch.Tensor, sigmas: torch.Tensor, steps: int, seed: int,
                 predict, learning_rate: float = 2e-3) -> None:
    """Train ``model`` (AdamW, 32 rows a step) by the diffusers flow-matching recipe: an index into the
    scheduler's training ``sigmas`` drawn logit-normal (u = sigmoid(N(0, 1))), z_t = (1 - sigma) z0 +
    sigma eps, target eps - z0; ``predict(noisy, sigma, rows)`` calls the model with those rows' conditions."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(latents), (32,), generator=generator)
        clean = latents[rows]
        noise = torch.randn(clean.shape, generator=generator)
        u = torch.sigmoid(torch.randn(32, generator=generator))
        sigma = sigmas[(u * len(sigmas)).long().clamp(max=len(sigmas) - 1)].float().view(-1, 1, 1, 1)
        noisy = (1 - sigma) * clean + sigma * noise
        loss = F.mse_loss(predict(noisy, sigma.flatten(), rows), noise - clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def flow_training_data(members: Path, components: dict) -> tuple[torch.Tensor, list[str]]:
    """The members' latents, scaled as the pipeline scales them ((mean - shift) x scale) after setting the
    VAE's scaling factor so they have unit variance, and their captions."""
    from cdi_audit.inputs.conditions import with_captions
    from cdi_audit.inputs.images import load_model_pixels, scan_image_set

    images, _ = with_captions(scan_image_set(members))
    vae = components["vae"]
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(load_model_pixels(images.records, 16))).latent_dist.mean
        shifted = mean - vae.config.shift_factor
        vae.register_to_config(scaling_factor=float(1 / shifted.std()))
    return shifted * vae.config.scaling_factor, [r.caption for r in images.records]


def train_tiny_sd3(members: Path, folder: Path, steps: int, seed: int = 0, with_t5: bool = False) -> Path:
    """The tiny SD3 transformer trained on the captioned images in ``members`` (VAE and text encoders random
    and frozen), saved to ``folder``."""
    components = tiny_sd3_components(folder, seed, with_t5)
    latents, captions = flow_training_data(members, components)
    with torch.no_grad():
        condition = sd3_condition(components, captions)
    transformer, scheduler = components["transformer"], components["scheduler"]
    fit_velocity(transformer, latents, scheduler.sigmas, steps, seed, lambda noisy, sigma, rows: transformer(
        hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=condition["encoder_hidden_states"][rows],
        pooled_projections=condition["pooled_projections"][rows]).sample)
    return save_sd3(folder, components)


def train_tiny_flux(members: Path, folder: Path, steps: int, seed: int = 0, guidance: float = 1.0) -> Path:
    """The tiny Flux transformer trained on packed latents of the captioned images in ``members`` with the
    pipeline's ids and guidance ``guidance``, saved to ``folder``."""
    from diffusers import FluxPipeline

    components = tiny_flux_components(folder, seed)
    latents, captions = flow_training_data(members, components)
    with torch.no_grad():
        condition = flux_condition(components, captions)
    transformer, scheduler = components["transformer"], components["scheduler"]
    size = latents.shape[-1]
    ids = FluxPipeline._prepare_latent_image_ids(1, size // 2, size // 2, "cpu", torch.float32)

    def predict(noisy, sigma, rows):
        packed = FluxPipeline._pack_latents(noisy, len(rows), noisy.shape[1], size, size)
        output = transformer(hidden_states=packed, timestep=sigma, guidance=torch.full((len(rows),), guidance),
                             encoder_hidden_states=condition["encoder_hidden_states"][rows],
                             pooled_projections=condition["pooled_projections"][rows], txt_ids=condition["txt_ids"],
                             img_ids=ids).sample
        return FluxPipeline._unpack_latents(output, size * 2, size * 2, 2)

    fit_velocity(transformer, latents, scheduler.sigmas, steps, seed, predict)
    return save_flux(folder, components)
