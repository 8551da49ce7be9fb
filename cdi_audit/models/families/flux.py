"""Flux.1 (dev, schnell and their fine-tunes): a ``FluxTransformer2DModel`` on packed 16-channel KL latents,
conditioned on CLIP and T5; a guidance-distilled transformer (Flux-dev) also takes a guidance value (its Target:
``models/targets/flux.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable
from cdi_audit.models.checkpoint_kind import DIFFUSION_PREFIX, CheckpointKind, config_folder_needed
from cdi_audit.models.families import register
from cdi_audit.models.families.sd import TOKENIZERS, check_clip_lengths
from cdi_audit.models.families.sd3 import T5_TOKENIZERS
from cdi_audit.models.family import Component, Family, LoadedParts, PipelineIndex

if TYPE_CHECKING:
    from cdi_audit.models.targets.flux import FluxTarget

DEFAULT_GUIDANCE = 1.0  # what LoRA trainers for Flux-dev typically train with (docs/flow-models.md)
# Black Forest Labs' transformer in its original layout, bare or under ComfyUI's prefix. No configs ship: dev and
# schnell differ in ways the weights do not all tell, and T5's tokenizer is megabytes. Flux.2 and Chroma share
# its block names but not its architecture (the keys diffusers tells them apart by).
FLUX_FILE = CheckpointKind(
    "flux", "Flux", keys=("double_blocks.0.img_attn.qkv.weight",), prefixes=("", DIFFUSION_PREFIX),
    needs_config=config_folder_needed("FluxPipeline", "Black Forest Labs' Flux files hold only the transformer"),
    relatives={"single_stream_modulation.lin.weight": "Flux.2", "distilled_guidance_layer.in_proj.bias": "Chroma"},
    covers="Flux.1 (dev, schnell and their fine-tunes)")


@register
class Flux(Family):
    name = "flux"
    label = "text-to-image Flux"
    display_name = "Flux"
    pipeline_words = "a FluxPipeline"
    published = "2024-08"
    lora_loader = "FluxLoraLoaderMixin"
    adapter_layout = "transformer"
    # kohya's names of Flux's double- and single-stream blocks, and diffusers' of its single-stream blocks.
    adapter_prefixes = ("lora_unet_double_blocks", "lora_unet_single_blocks")
    adapter_parts = ("single_transformer_blocks",)
    takes_guidance = True
    flow_time_scale = 1.0
    single_file_pipeline = "FluxPipeline"
    checkpoint_kinds = (FLUX_FILE,)
    # Black Forest Labs publish the transformer alone; ComfyUI's all-in-one files add the VAE and both encoders.
    single_file_parts = {"vae": ("vae.", "first_stage_model."), "text_encoder": ("text_encoders.clip_l.",),
                         "text_encoder_2": ("text_encoders.t5xxl.",)}
    default_sample_size = 128  # FluxPipeline.default_sample_size: 1024 px through the 8x VAE
    packed_positions = 4

    def recognises(self, index: PipelineIndex) -> bool:
        return index.has("transformer", "FluxTransformer2DModel")

    def components(self, index: PipelineIndex) -> tuple[Component, ...]:
        return (Component("transformer", frozenset({"FluxTransformer2DModel"}), role="denoiser"),
                Component("vae", frozenset({"AutoencoderKL"}), role="autoencoder"),
                Component("text_encoder", frozenset({"CLIPTextModel"}), "text_encoder"),
                Component("text_encoder_2", frozenset({"T5EncoderModel"}), "text_encoder"),
                Component("tokenizer", TOKENIZERS, "tokenizer"),
                Component("tokenizer_2", T5_TOKENIZERS, "tokenizer"))

    def guidance(self, denoiser_config, requested: float | None) -> float | None:
        if denoiser_config.get("guidance_embeds", False):
            return DEFAULT_GUIDANCE if requested is None else requested
        if requested is not None:
            raise ModelUnavailable("--guidance is for guidance-distilled Flux models (Flux-dev); this transformer "
                                   "takes no guidance value (guidance_embeds is false, as for Flux-schnell).")
        return None

    def check(self, loaded: LoadedParts) -> None:
        check_clip_lengths(loaded)
        self.check_side(loaded, 2, "Flux packs latents in 2 x 2 patches")

    def build(self, loaded: LoadedParts) -> FluxTarget:
        from cdi_audit.models.targets.flux import FluxTarget

        return FluxTarget(loaded)
