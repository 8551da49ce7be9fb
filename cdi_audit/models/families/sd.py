"""Stable Diffusion 1.x / 2.x: a ``UNet2DConditionModel`` on KL latents, conditioned on CLIP text states."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.checkpoint_kind import CheckpointKind
from cdi_audit.models.families import register
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex

if TYPE_CHECKING:
    from cdi_audit.models.targets.sd import StableDiffusionTarget

TOKENIZERS = frozenset({"CLIPTokenizer", "CLIPTokenizerFast"})
# SD 1.x files hold the CLIP ViT-L/14 text model (width 768) under the LDM prefix; SD 2.x files an OpenCLIP
# one. The two SD 2.x variants (768 px v-prediction, 512 px epsilon) have the same weights: the user names one.
SD1_FILE = CheckpointKind("sd1", "Stable Diffusion 1.x", width=768, config="stable-diffusion-v1",
                          keys=("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",))
SD2_FILE = CheckpointKind(
    "sd2", "Stable Diffusion 2.x", keys=("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",),
    needs_config="checkpoint, whose weights do not tell its variant; give --model-config stable-diffusion-v2 "
                 "(768 px, v-prediction) or --model-config stable-diffusion-v2-base (512 px, epsilon), or a config "
                 "folder of your own.")


def check_clip_lengths(loaded: LoadedParts) -> None:
    """Captions are padded and cut to each CLIP tokenizer's model_max_length, which its text encoder's position
    embeddings must cover; a tokenizer config without it (transformers then takes 10^30), or with a length
    the encoder cannot take, would fail at the first caption, or (0) encode no caption at all."""
    from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

    for folder, tokenizer in loaded.parts.items():
        if not folder.startswith("tokenizer") or "CLIP" not in type(tokenizer).__name__:
            continue
        most = loaded.parts[folder.replace("tokenizer", "text_encoder")].config.max_position_embeddings
        length = tokenizer.model_max_length
        if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= most:
            shown = "not set" if length == VERY_LARGE_INTEGER else f"{length!r}"
            raise ModelUnavailable(f"{loaded.config_file(folder, 'tokenizer_config.json')}: model_max_length is "
                                   f"{shown}; it must be an integer from 2 to {most} (the text encoder's "
                                   "max_position_embeddings): correct it to the tokenizer's (77 for CLIP).")


@register
class StableDiffusion(Family):
    name = "sd"
    label = "text-to-image Stable Diffusion"
    display_name = "Stable Diffusion 1.x/2.x"
    pipeline_words = "a StableDiffusionPipeline (SD 1.x/2.x)"
    published = "2022-08"
    single_file_pipeline = "StableDiffusionPipeline"
    checkpoint_kinds = (SD1_FILE, SD2_FILE)
    single_file_options = {"safety_checker": None, "requires_safety_checker": False}
    lora_loader = "StableDiffusionLoraLoaderMixin"
    adapter_layout = "UNet"

    def recognises(self, index: PipelineIndex) -> bool:
        return (index.has("unet", "UNet2DConditionModel") and index.has("vae") and index.has("text_encoder")
                and not index.has("text_encoder_2"))

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("unet", frozenset({"UNet2DConditionModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"),
                Component("text_encoder", frozenset({"CLIPTextModel"}), "text_encoder"),
                Component("tokenizer", TOKENIZERS, "tokenizer"))

    def check(self, loaded: LoadedParts) -> None:
        check_clip_lengths(loaded)

    def build(self, loaded: LoadedParts) -> StableDiffusionTarget:
        from cdi_audit.models.targets.sd import StableDiffusionTarget

        return StableDiffusionTarget(loaded)
