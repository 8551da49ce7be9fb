"""Configs shipped with cdi-audit, so a Stable Diffusion 1.x single-file checkpoint loads with no hub.

A single file holds the weights but no configs and no tokenizer. ``model_configs/stable-diffusion-v1``
holds the SD 1.x component configs (written for this package), and ``model_configs/clip_tokenizer``
the CLIP byte-pair vocabulary (from openai/CLIP, MIT licence, beside it), from which the tokenizer's
vocab.json and merges.txt are built when a checkpoint is loaded.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "model_configs"
BPE_FILE = CONFIGS / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 bytes, the same with an end-of-word mark, 48,894 merges, 2 special tokens.
MERGES = 49408 - 2 * 256 - 2
# A tensor only SD 1.x files have: the CLIP ViT-L/14 text model (width 768) under the LDM prefix.
SD1_TEXT_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"


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


def packaged_config_for(checkpoint: Path) -> str | None:
    """The name of the shipped config folder that fits ``checkpoint``, or None."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        if SD1_TEXT_KEY in handle.keys() and handle.get_slice(SD1_TEXT_KEY).get_shape()[-1] == 768:
            return "stable-diffusion-v1"
    return None


@contextlib.contextmanager
def materialised_config(name: str) -> Iterator[Path]:
    """A temporary copy of the shipped config folder ``name``, with its tokenizer vocabulary written out."""
    with tempfile.TemporaryDirectory(prefix="cdi-audit-config-") as temporary:
        folder = Path(shutil.copytree(CONFIGS / name, Path(temporary) / name))
        write_clip_vocabulary(folder / "tokenizer")
        yield folder
