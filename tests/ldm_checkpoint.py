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
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
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
