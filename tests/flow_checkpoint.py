"""Write tiny SD3 and Flux pipelines as original single-file checkpoints (Stability's and Black Forest Labs' layouts).

Only the test fixtures need this: single files of tiny flow models do not exist, so we make them. The mappings
invert diffusers' own single-file conversion (``convert_sd3_transformer_checkpoint_to_diffusers``,
``convert_flux_transformer_checkpoint_to_diffusers``), and a test checks the round trip against it. The text
encoders and the autoencoder go under the prefixes Stability's and ComfyUI's all-in-one files use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from ldm_checkpoint import vae_to_ldm

DIFFUSION_PREFIX = "model.diffusion_model."
# Black Forest Labs' Flux.1 width, which diffusers' Flux converter takes as given for the single blocks.
FLUX_WIDTH = 3072


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' final modulation is (scale, shift), the original (shift, scale): swapping is its own inverse."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first])


def _renamed(state: dict[str, torch.Tensor], table: dict[str, str]) -> dict[str, torch.Tensor]:
    """Pop every ``diffusers name.weight/bias`` of ``table`` and return it under the original name (an original
    name ending in ``.scale`` takes the diffusers norm's weight: Flux's RMS norms)."""
    result = {}
    for new, old in table.items():
        if old.endswith(".scale"):
            result[old] = state.pop(f"{new}.weight")
            continue
        for kind in ("weight", "bias"):
            if f"{new}.{kind}" in state:
                result[f"{old}.{kind}"] = state.pop(f"{new}.{kind}")
    return result


def _fused(state: dict[str, torch.Tensor], parts: list[str], target: str) -> dict[str, torch.Tensor]:
    """The diffusers projections ``parts`` stacked along the output rows, as one original projection."""
    return {f"{target}.{kind}": torch.cat([state.pop(f"{part}.{kind}") for part in parts])
            for kind in ("weight", "bias")}


def _finished(state: dict[str, torch.Tensor], result: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state:
        raise KeyError(f"unmapped transformer weights: {sorted(state)[:3]}")
    return {prefix + key: value.contiguous() for key, value in result.items()}


def flux_transformer_to_original(transformer: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A ``FluxTransformer2DModel`` in Black Forest Labs' layout (``prefix``: ComfyUI's ``model.diffusion_model.``)."""
    state = dict(transformer.state_dict())
    result = _renamed(state, {
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"})
    for kind in ("weight", "bias"):
        result[f"final_layer.adaLN_modulation.1.{kind}"] = swap_halves(state.pop(f"norm_out.linear.{kind}"))
    for i in range(len(transformer.transformer_blocks)):
        new, old = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        result |= _fused(state, [f"{new}attn.to_{x}" for x in "qkv"], f"{old}img_attn.qkv")
        result |= _fused(state, [f"{new}attn.add_{x}_proj" for x in "qkv"], f"{old}txt_attn.qkv")
        result |= _renamed(state, {f"{new}{a}": f"{old}{b}" for a, b in {
            "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin",
            "attn.norm_q": "img_attn.norm.query_norm.scale", "attn.norm_k": "img_attn.norm.key_norm.scale",
            "attn.norm_added_q": "txt_attn.norm.query_norm.scale", "attn.norm_added_k": "txt_attn.norm.key_norm.scale",
            "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2", "ff_context.net.0.proj": "txt_mlp.0",
            "ff_context.net.2": "txt_mlp.2", "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
        }.items()})
    for i in range(len(transformer.single_transformer_blocks)):
        new, old = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        result |= _fused(state, [*(f"{new}attn.to_{x}" for x in "qkv"), f"{new}proj_mlp"], f"{old}linear1")
        result |= _renamed(state, {f"{new}norm.linear": f"{old}modulation.lin", f"{new}proj_out": f"{old}linear2",
                                   f"{new}attn.norm_q": f"{old}norm.query_norm.scale",
                                   f"{new}attn.norm_k": f"{old}norm.key_norm.scale"})
    return _finished(state, result, prefix)


def sd3_transformer_to_original(transformer: torch.nn.Module, prefix: str = DIFFUSION_PREFIX
                                ) -> dict[str, torch.Tensor]:
    """An ``SD3Transformer2DModel`` in Stability's MMDiT layout (``joint_blocks``), under ``prefix``."""
    state = dict(transformer.state_dict())
    result = {"pos_embed": state.pop("pos_embed.pos_embed")}
    result |= _renamed(state, {
        "pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"})
    for kind in ("weight", "bias"):
        result[f"final_layer.adaLN_modulation.1.{kind}"] = swap_halves(state.pop(f"norm_out.linear.{kind}"))
    last = len(transformer.transformer_blocks) - 1
    for i in range(last + 1):
        new, x, context = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        result |= _fused(state, [f"{new}attn.to_{p}" for p in "qkv"], f"{x}attn.qkv")
        result |= _fused(state, [f"{new}attn.add_{p}_proj" for p in "qkv"], f"{context}attn.qkv")
        if f"{new}attn2.to_q.weight" in state:  # SD3.5 medium's second attention
            result |= _fused(state, [f"{new}attn2.to_{p}" for p in "qkv"], f"{x}attn2.qkv")
        result |= _renamed(state, {f"{new}{a}": b for a, b in {
            "attn.norm_q": f"{x}attn.ln_q", "attn.norm_k": f"{x}attn.ln_k",
            "attn.norm_added_q": f"{context}attn.ln_q", "attn.norm_added_k": f"{context}attn.ln_k",
            "attn2.norm_q": f"{x}attn2.ln_q", "attn2.norm_k": f"{x}attn2.ln_k", "attn2.to_out.0": f"{x}attn2.proj",
            "attn.to_out.0": f"{x}attn.proj", "attn.to_add_out": f"{context}attn.proj",
            "norm1.linear": f"{x}adaLN_modulation.1", "ff.net.0.proj": f"{x}mlp.fc1", "ff.net.2": f"{x}mlp.fc2",
            "ff_context.net.0.proj": f"{context}mlp.fc1", "ff_context.net.2": f"{context}mlp.fc2",
        }.items()})
        for kind in ("weight", "bias"):  # the last block's context modulation is a final-layer one: swapped
            value = state.pop(f"{new}norm1_context.linear.{kind}")
            result[f"{context}adaLN_modulation.1.{kind}"] = swap_halves(value) if i == last else value
    return _finished(state, result, prefix)


def text_encoder_entries(encoder: torch.nn.Module, prefix: str, projection: bool = True) -> dict[str, torch.Tensor]:
    """A transformers text encoder under ``prefix`` as Stability's files hold it: CLIP under ``text_model.``
    (transformers >= 5.6 drops that level from ``CLIPTextModel``), T5 as it is; ``projection=False`` leaves
    CLIP's projection out, as SD3 files do for CLIP-L (diffusers then takes it as the identity)."""
    clip = type(encoder).__name__.startswith("CLIP")
    entries = {}
    for key, value in encoder.state_dict().items():
        if key.endswith("position_ids") or (key.startswith("text_projection") and not projection):
            continue
        if clip and not key.startswith(("text_model.", "text_projection")):
            key = "text_model." + key
        entries[prefix + key] = value.detach().clone()  # T5's tied embeddings: one tensor under two names
    return entries


def sd3_to_original(components: dict, parts: tuple[str, ...] = ("vae", "text_encoders")) -> dict[str, torch.Tensor]:
    """An SD3 pipeline as Stability's single file: the MMDiT, and (``parts``) the VAE and the text encoders
    (CLIP-L, CLIP-G, and T5 when the pipeline has it)."""
    state = sd3_transformer_to_original(components["transformer"])
    if "vae" in parts:
        state |= vae_to_ldm(components["vae"])
    if "text_encoders" in parts:
        state |= text_encoder_entries(components["text_encoder"], "text_encoders.clip_l.transformer.", False)
        state |= text_encoder_entries(components["text_encoder_2"], "text_encoders.clip_g.transformer.")
        if components.get("text_encoder_3") is not None:
            state |= text_encoder_entries(components["text_encoder_3"], "text_encoders.t5xxl.transformer.")
    return state


def flux_to_original(components: dict, all_in_one: bool = False) -> dict[str, torch.Tensor]:
    """A Flux pipeline as Black Forest Labs publish it (the bare transformer), or ``all_in_one`` as ComfyUI's
    checkpoints hold it (under ``model.diffusion_model.``, with the VAE under ``vae.`` and both text encoders)."""
    if not all_in_one:
        return flux_transformer_to_original(components["transformer"])
    state = flux_transformer_to_original(components["transformer"], DIFFUSION_PREFIX)
    state |= {"vae." + key.removeprefix("first_stage_model."): value
              for key, value in vae_to_ldm(components["vae"]).items()}
    state |= text_encoder_entries(components["text_encoder"], "text_encoders.clip_l.transformer.")
    return state | text_encoder_entries(components["text_encoder_2"], "text_encoders.t5xxl.transformer.")


@contextlib.contextmanager
def flux_converter_at_any_width() -> Iterator[None]:
    """diffusers' Flux converter splits each single block's fused projection at Flux.1's sizes (3072 wide, MLP
    4x); a tiny model is narrower. Within this block, each part of that projection is zero-padded to Flux.1's
    size before diffusers' own converter runs, and cut back to the model's size after it, so that the whole of
    the conversion still is diffusers'."""
    from diffusers.loaders import single_file_model

    entry = single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    converter = entry["checkpoint_mapping_fn"]

    def padded_converter(checkpoint, **kwargs):
        checkpoint = {key.removeprefix(DIFFUSION_PREFIX): value for key, value in checkpoint.items()}
        width = checkpoint["img_in.weight"].shape[0]
        sizes = (width, width, width, 4 * width)
        for key in [k for k in checkpoint if k.startswith("single_blocks.") and ".linear1." in k]:
            parts = torch.split(checkpoint[key], sizes)
            checkpoint[key] = torch.cat([torch.nn.functional.pad(part, (0, 0) * (part.ndim - 1) + (
                0, full - len(part))) for part, full in zip(parts, (FLUX_WIDTH,) * 3 + (4 * FLUX_WIDTH,), strict=True)])
        converted = converter(checkpoint, **kwargs)
        for key in [k for k in converted if k.startswith("single_transformer_blocks.")]:
            if any(part in key for part in ("to_q", "to_k", "to_v")):
                converted[key] = converted[key][:width]
            elif "proj_mlp" in key:
                converted[key] = converted[key][:4 * width]
        return converted

    entry["checkpoint_mapping_fn"] = padded_converter
    try:
        yield
    finally:
        entry["checkpoint_mapping_fn"] = converter
