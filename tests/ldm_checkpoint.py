"""Write a diffusers Stable Diffusion pipeline as an original (CompVis LDM) single-file checkpoint.

Only the test fixtures need this: single-file checkpoints of tiny models do not exist, so we make
one. The mapping inverts diffusers' own single-file conversion, and a test checks the round trip
against it (diffusers converts our file back to exactly the weights we started from).
"""

from __future__ import annotations

import re

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, layers: int) -> str:
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL's
    for new, old in fixed.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
    if match:
        direction, block, kind, index, rest = match.groups()
        block, index = int(block), int(index)
        if kind == "resnets":
            rest = _rename(rest, RESNET)
        if direction == "down":
            if kind == "downsamplers":
                return f"input_blocks.{(layers + 1) * (block + 1)}.0.op.{rest.removeprefix('conv.')}"
            return f"input_blocks.{(layers + 1) * block + index + 1}.{0 if kind == 'resnets' else 1}.{rest}"
        position = (layers + 1) * block + index
        if kind == "upsamplers":
            return f"output_blocks.{(layers + 1) * block + layers}.UPSAMPLER.{rest}"
        return f"output_blocks.{position}.{0 if kind == 'resnets' else 1}.{rest}"
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if match:
        kind, index, rest = match.groups()
        if kind == "resnets":
            return f"middle_block.{2 * int(index)}.{_rename(rest, RESNET)}"
        return f"middle_block.1.{rest}"
    raise KeyError(key)


def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_to_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    layers = unet.config.layers_per_block
    state = {_unet_key(k, layers): v for k, v in unet.state_dict().items()}
    # An output block's upsampler sits after its resnet (index 1), or after resnet and attention (index 2).
    fixed = {}
    for key, value in state.items():
        if ".UPSAMPLER." in key:
            block = key.split(".")[1]
            has_attention = any(k.startswith(f"output_blocks.{block}.1.") and ".UPSAMPLER." not in k for k in state)
            key = key.replace(".UPSAMPLER.", ".2." if has_attention else ".1.")
        fixed["model.diffusion_model." + key] = value
    return fixed


def vae_to_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.block_out_channels)
    result = {}
    for key, value in vae.state_dict().items():
        new = key
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                     lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block.{m[2]}", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                     lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample", new)
        new = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", new)
        new = new.replace("mid_block.attentions.0", "mid.attn_1").replace("conv_norm_out", "norm_out")
        new = new.replace("conv_shortcut", "nin_shortcut")
        if ".attn_1." in new:
            prefix, rest = new.split(".attn_1.")
            new = f"{prefix}.attn_1.{_rename(rest, VAE_ATTENTION)}"
            if value.ndim == 2:  # linear in diffusers, 1x1 convolution in LDM
                value = value[:, :, None, None]
        result["first_stage_model." + new] = value
    return result


def stable_diffusion_to_ldm(components: dict) -> dict[str, torch.Tensor]:
    state = {**unet_to_ldm(components["unet"]), **vae_to_ldm(components["vae"])}
    for key, value in components["text_encoder"].state_dict().items():
        # SD 1.x files hold the CLIP text model under this prefix (transformers >= 5.6 drops "text_model.").
        state["cond_stage_model.transformer." + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    return {key: value.contiguous() for key, value in state.items()}


# diffusers' CLIP layer names -> OpenCLIP's (SDXL's second text encoder in the original layout).
OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                   "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_to_ldm(encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP's layout: q, k and v stacked into ``in_proj``, the
    positional embedding and the (transposed) projection as bare tensors."""
    state = {key.removeprefix("text_model."): value for key, value in encoder.state_dict().items()
             if not key.endswith("position_ids")}
    result = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
              prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
              prefix + "text_projection": state.pop("text_projection.weight").T}
    for kind in ("weight", "bias"):
        result[prefix + f"ln_final.{kind}"] = state.pop(f"final_layer_norm.{kind}")
    layers = {int(key.split(".")[2]) for key in state if key.startswith("encoder.layers.")}
    for layer in sorted(layers):
        source, target = f"encoder.layers.{layer}.", f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            result[target + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{source}self_attn.{part}_proj.{kind}") for part in ("q", "k", "v")])
            for new, old in OPEN_CLIP_LAYER.items():
                result[target + f"{old}.{kind}"] = state.pop(f"{source}{new}.{kind}")
    if state:
        raise KeyError(f"unmapped text-encoder weights: {sorted(state)[:3]}")
    return result


def sdxl_to_ldm(components: dict) -> dict[str, torch.Tensor]:
    """An SDXL pipeline as an original single file: the UNet (its added embedding as ``label_emb``), the VAE,
    CLIP-L under ``conditioner.embedders.0.transformer.`` and OpenCLIP under ``conditioner.embedders.1.model.``."""
    state = {**unet_to_ldm(components["unet"]), **vae_to_ldm(components["vae"])}
    for key, value in components["text_encoder"].state_dict().items():
        if not key.endswith("position_ids"):
            name = key if key.startswith("text_model.") else "text_model." + key
            state["conditioner.embedders.0.transformer." + name] = value
    state.update(open_clip_to_ldm(components["text_encoder_2"], "conditioner.embedders.1.model."))
    return {key: value.contiguous() for key, value in state.items()}
