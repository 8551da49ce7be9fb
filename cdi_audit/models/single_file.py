"""Single-file checkpoints: what a file is, the configs it loads with, and loading it through its family's
diffusers pipeline, with no hub.

A single file holds the weights but no configs and no tokenizer. Which family's it is, and which configs it
loads with, each family says (``Family.checkpoint_kinds``); this module reads a file's tensor names and asks
the registry. ``configs`` holds the component configs that ship, written for this package (SD 1.x, SD 2.x
768 px v-prediction, SD 2.x base 512 px epsilon, SDXL base 1024 px), and ``clip_tokenizer`` the CLIP byte-pair
vocabulary (from openai/CLIP, MIT licence, beside it), from which each tokenizer's vocab.json and merges.txt
are built when a checkpoint is loaded. Where none ship, the user gives ``--model-config``: a shipped name or
the diffusers pipeline folder of the same model, from which the components the file does not hold are read
too (``Family.single_file_parts``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cdi_audit.errors import ModelUnavailable, brief
from cdi_audit.models.checkpoint_kind import CheckpointKind
from cdi_audit.models.components import load_component, read_json
from cdi_audit.models.deferred import DeferredModule
from cdi_audit.models.families import checkpoint_kinds, with_article
from cdi_audit.models.family import Component, Family

CONFIGS = Path(__file__).resolve().parent / "configs"
BPE_FILE = CONFIGS / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
# CLIP's vocabulary: 256 bytes, the same with an end-of-word mark, 48,894 merges, 2 special tokens.
MERGES = 49408 - 2 * 256 - 2
# The shipped configs, by name: every pipeline folder under ``configs`` (a family's kinds name theirs).
SHIPPED = tuple(sorted(folder.name for folder in CONFIGS.iterdir() if (folder / "model_index.json").is_file()))
# ComfyUI's "scaled fp8" files store each weight divided by a scale kept beside it, which diffusers does not apply.
SCALED_FP8_MARKERS = ("scaled_fp8", ".scale_weight")


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


def checkpoint_kind(checkpoint: Path) -> tuple[Family, CheckpointKind] | None:
    """The registered family whose kind of single file ``checkpoint`` is (from the tensors its header names;
    none is loaded), with that kind, or None."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        keys = set(handle.keys())
        for family, kind in checkpoint_kinds():
            if kind.held_in(keys, lambda key: handle.get_slice(key).get_shape()[-1]):
                return family, kind
    return None


def checkpoint_keys(checkpoint: Path) -> list[str]:
    """The tensor names a safetensors file holds (read from its header; no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as handle:
        return list(handle.keys())


def is_scaled_fp8(keys: list[str]) -> bool:
    return any(key == SCALED_FP8_MARKERS[0] or key.endswith(SCALED_FP8_MARKERS[1]) for key in keys)


def packaged_config_for(checkpoint: Path) -> str | None:
    """The shipped config folder that fits ``checkpoint`` unambiguously (its kind's ``config``), or None."""
    found = checkpoint_kind(checkpoint)
    return None if found is None else found[1].config


@contextlib.contextmanager
def materialised_config(name: str) -> Iterator[Path]:
    """A temporary copy of the shipped config folder ``name``, with each tokenizer's vocabulary written out."""
    with tempfile.TemporaryDirectory(prefix="cdi-audit-config-") as temporary:
        folder = Path(shutil.copytree(CONFIGS / name, Path(temporary) / name))
        for tokenizer in sorted(folder.glob("tokenizer*")):
            write_clip_vocabulary(tokenizer)
        yield folder


def is_shipped(config: Path) -> bool:
    """Whether --model-config names a shipped config (a path of that name, if there is one, comes first)."""
    return str(config) in SHIPPED and not Path(config).exists()


def check_config_folder(config: Path) -> None:
    """A --model-config that is not a shipped name must be a folder holding a pipeline's model_index.json."""
    expected = "give the checkpoint's pipeline folder (its configs and tokenizers) or a shipped config name"
    if not config.exists():
        raise ModelUnavailable(f"The --model-config {config} does not exist; {expected} ({', '.join(SHIPPED)}).")
    if not config.is_dir():
        raise ModelUnavailable(f"The --model-config {config} is a file, not a folder; {expected}.")
    if not (config / "model_index.json").is_file():
        what = "it is empty" if not any(config.iterdir()) else "no model_index.json"
        raise ModelUnavailable(f"The --model-config folder {config} holds no pipeline configs ({what}); {expected}.")


@contextlib.contextmanager
def single_file_configs(checkpoint: Path, config: Path | None) -> Iterator[tuple[Path, str]]:
    """The user's --model-config folder, a shipped config named by it, or the shipped one that fits; with the
    words a message names them by (a shipped config by its name: its folder is a temporary copy)."""
    if config is None or is_shipped(config):
        name = str(config) if config is not None else packaged_config_for(checkpoint)
        with materialised_config(name) as folder:
            yield folder, f"the configs in the shipped {name!r}"
    else:
        yield Path(config), f"the configs in {config}"


def check_checkpoint_fits(checkpoint: Path, family: Family, configs: str) -> None:
    """A file recognised as one family's must not be given another family's configs (``configs``: their
    words)."""
    found = checkpoint_kind(checkpoint)
    if found is not None and found[0].name != family.name:
        raise ModelUnavailable(f"{checkpoint} holds {with_article(found[1].display_name)} model, but {configs} are "
                               f"of {with_article(family.label)} pipeline; give --model-config the configs of the "
                               "file's own architecture.")


def load_single_file(checkpoint: Path, config: Path, family: Family, components: tuple[Component, ...],
                     configs: str) -> tuple[dict, list[str]]:
    """The components of a single-file checkpoint, configured from ``config`` (offline; ``config`` already
    checked by ``check_configs``; ``configs``: the words naming it), through the family's diffusers pipeline;
    those the file does not hold (``Family.single_file_parts``) are read from ``config``. Also the notes for the
    report: parts of the file that the configs leave out."""
    import diffusers
    import torch

    keys = checkpoint_keys(checkpoint)
    in_file = {folder: any(key.startswith(prefixes) for key in keys)
               for folder, prefixes in family.single_file_parts.items()}
    from_config = {}
    for component in components:
        if in_file.get(component.folder, True):
            continue
        if not list((config / component.folder).glob("*.safetensors")):
            raise ModelUnavailable(
                f"{checkpoint} holds no {component.folder} weights (a {family.label} file holds them under "
                f"{' or '.join(family.single_file_parts[component.folder])}), and {config / component.folder} has "
                "none either; give --model-config the pipeline folder of the model the file was made from, with "
                "that component's weights (safetensors), or a checkpoint that includes them.")
        from_config[component.folder] = load_component(config, component)
        if isinstance(from_config[component.folder], DeferredModule):
            from_config[component.folder] = from_config[component.folder].module
    # Components model_index.json names as absent ([null, null], SD3 saved without T5) must be passed as None.
    absent = {name: None for name, value in read_json(config / "model_index.json").items()
              if isinstance(value, list) and value[:1] == [None]}
    folders = {component.folder for component in components}
    notes = [f"The checkpoint also holds {folder} weights, which {configs} leave out "
             "(model_index.json); the audit runs without them, as the pipeline would."
             for folder, present in in_file.items() if present and folder not in folders]
    pipeline_class = getattr(diffusers, str(family.single_file_pipeline))
    try:
        pipeline = pipeline_class.from_single_file(str(checkpoint), config=str(config), local_files_only=True,
                                                   torch_dtype=torch.float32,
                                                   **{**absent, **family.single_file_options, **from_config})
    except Exception as error:
        raise ModelUnavailable(f"The checkpoint {checkpoint} cannot be loaded with {configs} ({brief(error)})."
                               ) from error
    parts = {component.folder: getattr(pipeline, component.folder) for component in components}
    for folder, part in parts.items():
        missing = [name for name, p in getattr(part, "named_parameters", list)() if p.device.type == "meta"]
        if missing:  # diffusers loads what the file holds and leaves the rest unset
            raise ModelUnavailable(f"{checkpoint} lacks {len(missing)} of the {folder} weights that {configs} call "
                                   f"for (the first: {missing[0]}); the file is incomplete or of another "
                                   "architecture.")
    return parts, notes
