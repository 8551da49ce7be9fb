"""Configs shipped with cdi-audit, so Stable Diffusion and SDXL single-file checkpoints load with no hub.

A single file holds the weights but no configs and no tokenizer. ``configs`` holds the component
configs of SD 1.x, SD 2.x (768 px, v-prediction), SD 2.x base (512 px, epsilon) and SDXL base (1024 px),
written for this package, and ``clip_tokenizer`` the CLIP byte-pair vocabulary (from openai/CLIP, MIT
licence, beside it), from which each tokenizer's vocab.json and merges.txt are built when a checkpoint is
loaded. SD 1.x and SDXL are recognised from their weights; the two SD 2.x variants have the same weights
layout, so the user names one (``--model-config stable-diffusion-v2`` or ``-v2-base``).

SD3 / SD3.5 and Flux files are recognised from their transformer's weights, but no configs ship for them:
their variants differ in ways the weights do not all tell (Flux-dev or -schnell, SD3 medium or 3.5), and their
T5 tokenizer is megabytes. The user gives ``--model-config DIR``: the diffusers pipeline folder of the same
model, from which the components the file does not hold are read too (``Family.single_file_parts``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
BPE_FILE = CONFIGS / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 bytes, the same with an end-of-word mark, 48,894 merges, 2 special tokens.
MERGES = 49408 - 2 * 256 - 2
SHIPPED = ("stable-diffusion-v1", "stable-diffusion-v2", "stable-diffusion-v2-base", "stable-diffusion-xl-base")
# A tensor only SD 1.x files have: the CLIP ViT-L/14 text model (width 768) under the LDM prefix.
SD1_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
# SD 2.x files hold an OpenCLIP text model instead.
SD2_TEXT_KEY = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
# SDXL files hold both of its text encoders under the "conditioner" prefix (the names diffusers checks too).
SDXL_TEXT_KEYS = ("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
                  "conditioner.embedders.1.model.positional_embedding")
# Flow-matching transformers in their original layouts (Black Forest Labs' Flux, Stability's SD3 / SD3.5),
# bare or under ComfyUI's "model.diffusion_model." prefix: recognised so that they are refused by name.
FLOW_TRANSFORMER_KEYS = {"flux": "double_blocks.0.img_attn.qkv.weight",
                         "sd3": "joint_blocks.0.context_block.attn.qkv.weight"}
# Transformers that share Flux.1's block names but not its architecture, recognised so that they are refused by
# name rather than failing half-way through Flux.1's conversion (the keys diffusers tells them apart by).
FLUX_RELATIVES = {"single_stream_modulation.lin.weight": "Flux.2",
                  "distilled_guidance_layer.in_proj.bias": "Chroma"}
# ComfyUI's "scaled fp8" files store each weight divided by a scale kept beside it, which diffusers does not apply.
SCALED_FP8_MARKERS = ("scaled_fp8", ".scale_weight")
DIFFUSION_PREFIX = "model.diffusion_model."
# What each recognised kind of file is in the model families' terms (``models/families``).
FAMILY_OF_CHECKPOINT = {"sd1": "sd", "sd2": "sd", "sdxl": "sdxl", "flux": "flux", "sd3": "sd3"}
CHECKPOINT_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL", "flux": "Flux",
                    "sd3": "SD3 / SD3.5"}
# Which shipped config a recognised file loads with (SD 2.x has two; the user names one).
FAMILY_CONFIGS = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-base"}


def byte_symbols() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes 0..255, in vocabulary order: the printable
    bytes stand for themselves and come first; the others are mapped to chr(256 + k) and follow."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + k) for k in range(len(others))]


def write_clip_vocabulary(folder: Path) -> None:
    """vocab.json and merges.txt of the CLIP tokenizer, built from the shipped byte-pair merges."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : MERGES + 1]  # the first line is a header
    symbols = byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), *(merge.replace(" ", "") for merge in merges),
              "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def checkpoint_family(checkpoint: Path) -> str | None:
    """"sd1", "sd2" or "sdxl" from the text-encoder tensors a single file holds, "flux" or "sd3" from its
    transformer's, else None."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = set(handle.keys())
        if SD1_TEXT_KEY in keys and handle.get_slice(SD1_TEXT_KEY).get_shape()[-1] == 768:
            return "sd1"
    if all(key in keys for key in SDXL_TEXT_KEYS):
        return "sdxl"
    for family, key in FLOW_TRANSFORMER_KEYS.items():
        if key in keys or DIFFUSION_PREFIX + key in keys:
            return family
    return "sd2" if SD2_TEXT_KEY in keys else None


def checkpoint_keys(checkpoint: Path) -> list[str]:
    """The tensor names a safetensors file holds (read from its header; no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        return list(handle.keys())


def unsupported_relative(keys: list[str]) -> str | None:
    """The name of a Flux.1-like architecture this version cannot load (Flux.2, Chroma), or None."""
    for key, name in FLUX_RELATIVES.items():
        if key in keys or DIFFUSION_PREFIX + key in keys:
            return name
    return None


def is_scaled_fp8(keys: list[str]) -> bool:
    return any(key == SCALED_FP8_MARKERS[0] or key.endswith(SCALED_FP8_MARKERS[1]) for key in keys)


def packaged_config_for(checkpoint: Path) -> str | None:
    """The shipped config folder that fits ``checkpoint`` unambiguously (SD 1.x, SDXL), or None."""
    return FAMILY_CONFIGS.get(checkpoint_family(checkpoint) or "")


@contextlib.contextmanager
def materialised_config(name: str) -> Iterator[Path]:
    """A temporary copy of the shipped config folder ``name``, with each tokenizer's vocabulary written out."""
    with tempfile.TemporaryDirectory(prefix="cdi-audit-config-") as temporary:
        folder = Path(shutil.copytree(CONFIGS / name, Path(temporary) / name))
        for tokenizer in sorted(folder.glob("tokenizer*")):
            write_clip_vocabulary(tokenizer)
        yield folder
