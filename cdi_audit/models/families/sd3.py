"""Stable Diffusion 3 and 3.5: an ``SD3Transformer2DModel`` on 16-channel KL latents, trained by rectified flow;
two CLIP text encoders and an optional T5 (its Target: ``models/targets/sd3.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.checkpoint_kind import DIFFUSION_PREFIX, CheckpointKind, config_folder_needed
from cdi_audit.models.families import register
from cdi_audit.models.families.sd import TOKENIZERS, check_clip_lengths
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex, config_integer

if TYPE_CHECKING:
    from cdi_audit.models.targets.sd3 import SD3Target

T5_TOKENIZERS = frozenset({"T5Tokenizer", "T5TokenizerFast"})
# Stability's files: the MMDiT in its original layout (joint_blocks), bare or under ComfyUI's prefix. No configs
# ship: SD3 medium and 3.5 differ in ways the weights do not all tell, and T5's tokenizer is megabytes.
SD3_FILE = CheckpointKind(
    "sd3", "SD3 / SD3.5", keys=("joint_blocks.0.context_block.attn.qkv.weight",), prefixes=("", DIFFUSION_PREFIX),
    needs_config=config_folder_needed("StableDiffusion3Pipeline",
                                      "Stability's files may leave out the VAE, the CLIP encoders and T5"))


@register
class StableDiffusion3(Family):
    name = "sd3"
    label = "text-to-image SD3"
    display_name = "SD3 / SD3.5"
    pipeline_words = "a StableDiffusion3Pipeline (SD3, SD3.5)"
    published = "2024-03"
    lora_loader = "SD3LoraLoaderMixin"
    adapter_layout = "transformer"
    flow_time_scale = 1000.0
    single_file_pipeline = "StableDiffusion3Pipeline"
    checkpoint_kinds = (SD3_FILE,)
    # Stability's files: the MMDiT under model.diffusion_model., with or without the VAE, both CLIPs and T5.
    single_file_parts = {"vae": ("first_stage_model.",), "text_encoder": ("text_encoders.clip_l.",),
                         "text_encoder_2": ("text_encoders.clip_g.",), "text_encoder_3": ("text_encoders.t5xxl.",)}

    def recognises(self, index: PipelineIndex) -> bool:
        return index.has("transformer", "SD3Transformer2DModel")

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        clip = frozenset({"CLIPTextModelWithProjection"})
        t5 = ((Component("text_encoder_3", frozenset({"T5EncoderModel"}), "text_encoder"),
               Component("tokenizer_3", T5_TOKENIZERS, "tokenizer")) if index.has("text_encoder_3") else ())
        return (Component("transformer", frozenset({"SD3Transformer2DModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"),
                Component("text_encoder", clip, "text_encoder"), Component("text_encoder_2", clip, "text_encoder"),
                Component("tokenizer", TOKENIZERS, "tokenizer"), Component("tokenizer_2", TOKENIZERS, "tokenizer"),
                *t5)

    def check(self, loaded: LoadedParts) -> None:
        """The latent side must split into whole patches, no more a side than the position embedding holds
        (the transformer finds out only when first run); the T5 states' width is the transformer's; the CLIP
        tokenizers' lengths fit their encoders."""
        check_clip_lengths(loaded)
        denoiser = loaded.roles["denoiser"]
        config_integer(loaded, denoiser, "joint_attention_dim")
        patch = config_integer(loaded, denoiser, "patch_size")
        self.check_side(loaded, patch, f"the transformer cuts latents into {patch} x {patch} patches")
        if loaded.denoiser.config.get("pos_embed_max_size") is None:
            return
        most = config_integer(loaded, denoiser, "pos_embed_max_size")
        patches = self.fed_side(loaded) // patch
        if patches > most:
            raise ModelUnavailable(f"{loaded.config_file(denoiser)}: sample_size gives {patches} patches a side, more "
                                   f"than pos_embed_max_size {most}, the side of the transformer's position embedding; "
                                   "correct sample_size to the model's resolution.")

    def build(self, loaded: LoadedParts) -> SD3Target:
        from cdi_audit.models.targets.sd3 import SD3Target

        return SD3Target(loaded)
