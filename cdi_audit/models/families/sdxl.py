"""SDXL: a ``UNet2DConditionModel`` with ``text_time`` micro-conditioning, two CLIP text encoders, KL latents
(its Target: ``models/targets/sdxl.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.checkpoint_kind import CheckpointKind
from cdi_audit.models.families import register
from cdi_audit.models.families.sd import TOKENIZERS, check_clip_lengths
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex, config_integer

if TYPE_CHECKING:
    from cdi_audit.models.targets.sdxl import SDXLTarget

# Stable Diffusion 1.x's latent scale; SDXL's VAE is trained for 0.13025, and configs that say 0.18215 exist.
SD1_SCALING_FACTOR = 0.18215
SDXL_SCALING_FACTOR = 0.13025
# SDXL files hold both of its text encoders under the "conditioner" prefix (the names diffusers checks too).
SDXL_FILE = CheckpointKind("sdxl", "SDXL", config="stable-diffusion-xl-base",
                           keys=("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
                                 "conditioner.embedders.1.model.positional_embedding"))


@register
class StableDiffusionXL(Family):
    name = "sdxl"
    label = "text-to-image SDXL"
    display_name = "SDXL"
    pipeline_words = "a StableDiffusionXLPipeline"
    published = "2023-07"
    single_file_pipeline = "StableDiffusionXLPipeline"
    checkpoint_kinds = (SDXL_FILE,)
    lora_loader = "StableDiffusionXLLoraLoaderMixin"
    adapter_layout = "UNet"
    # kohya names an SDXL UNet's layers by the original (SGM) blocks (an SD 1.x/2.x UNet's by diffusers'
    # down_blocks, mid_block and up_blocks) and its text encoders te1 / te2; only SDXL has text_encoder_2 on a
    # UNet, and the UNet's add_embedding.
    adapter_prefixes = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks_", "lora_unet_middle_block_",
                        "lora_unet_output_blocks_")
    adapter_parts = ("text_encoder_2", "add_embedding")

    def recognises(self, index: PipelineIndex) -> bool:
        return (index.has("unet", "UNet2DConditionModel") and index.has("vae") and index.has("text_encoder")
                and index.has("text_encoder_2"))

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("unet", frozenset({"UNet2DConditionModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"),
                Component("text_encoder", frozenset({"CLIPTextModel"}), "text_encoder"),
                Component("text_encoder_2", frozenset({"CLIPTextModelWithProjection"}), "text_encoder"),
                Component("tokenizer", TOKENIZERS, "tokenizer"),
                Component("tokenizer_2", TOKENIZERS, "tokenizer"))

    def check(self, loaded: LoadedParts) -> None:
        """The UNet's added embedding must take 6 time ids and the pooled projection, as the pipeline checks;
        an SDXL VAE config with SD 1.x's scaling factor is read as it is, with a warning."""
        check_clip_lengths(loaded)
        unet = loaded.denoiser.config
        if unet.get("addition_embed_type") != "text_time":
            raise ModelUnavailable(f"{loaded.description.path}: the SDXL UNet's addition_embed_type is "
                                   f"{unet.get('addition_embed_type')!r}, not 'text_time'.")
        projection = config_integer(loaded, "text_encoder_2", "projection_dim")
        expected = 6 * config_integer(loaded, loaded.roles["denoiser"], "addition_time_embed_dim") + projection
        if unet.get("projection_class_embeddings_input_dim") != expected:
            raise ModelUnavailable(
                f"{loaded.description.path}: the UNet's projection_class_embeddings_input_dim is "
                f"{unet.get('projection_class_embeddings_input_dim')!r}, but 6 time ids x addition_time_embed_dim "
                f"plus text_encoder_2's projection_dim make {expected}; the configs do not belong together.")
        scaling = loaded.autoencoder.config.get("scaling_factor")
        if scaling is not None and abs(float(scaling) - SD1_SCALING_FACTOR) < 1e-6:
            loaded.warnings.append(
                f"The VAE config says scaling_factor {SD1_SCALING_FACTOR}, Stable Diffusion 1.x's; SDXL's VAE is "
                f"trained for {SDXL_SCALING_FACTOR}. The audit uses the configured value, as the pipeline would; "
                "if the model was trained with SDXL's, its features are measured on wrongly scaled latents.")

    def build(self, loaded: LoadedParts) -> SDXLTarget:
        from cdi_audit.models.targets.sdxl import SDXLTarget

        return SDXLTarget(loaded)
