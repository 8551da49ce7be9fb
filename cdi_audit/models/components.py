"""Reading a pipeline's components from disk: offline, safetensors only, weights deferred to first use.

Nothing here reaches a hub: every load passes ``local_files_only=True`` and runs inside ``offline()`` (held by
``load_target`` while it loads, and again by each deferred read of weights), which switches the hub libraries
to offline mode for our own loads only: a notebook that also downloads models from a hub is not silently cut
off by using cdi-audit.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from cdi_audit.errors import ModelUnavailable, brief
from cdi_audit.models.deferred import DeferredModule
from cdi_audit.models.family import Component

if TYPE_CHECKING:
    import torch

# One line of torch's load_state_dict error per weight whose shape differs from the model the config builds.
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                           r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")
# The tokenizer classes a config may name, and the transformers class each is read with: CLIP's byte-pair
# files need no extra library; T5's SentencePiece model is read from its tokenizer.json (no sentencepiece).
TOKENIZER_CLASSES = {"CLIPTokenizer": "CLIPTokenizer", "CLIPTokenizerFast": "CLIPTokenizer",
                     "T5Tokenizer": "T5TokenizerFast", "T5TokenizerFast": "T5TokenizerFast"}
# The libraries that read HF_HUB_OFFLINE: huggingface_hub keeps it in its constants, and some diffusers modules
# copy it when they are imported (``from huggingface_hub.constants import HF_HUB_OFFLINE``).
HUB_LIBRARIES = ("huggingface_hub", "diffusers", "transformers")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub offline mode for the duration of the block: the environment variable, huggingface_hub's constant and
    every copy of it in an imported hub library are on inside, and as they were after (a copy made by a module
    first imported inside gets the value from before)."""
    import huggingface_hub.constants

    default = huggingface_hub.constants.HF_HUB_OFFLINE
    before = {module: module.HF_HUB_OFFLINE for module in _holding_the_offline_flag()}
    environment = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    for module in before:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if environment is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = environment
        for module in _holding_the_offline_flag():
            module.HF_HUB_OFFLINE = before.get(module, default)


def _holding_the_offline_flag() -> list[ModuleType]:
    """The imported modules of the hub libraries that hold an HF_HUB_OFFLINE flag of their own."""
    return [module for name, module in list(sys.modules.items())
            if name.split(".")[0] in HUB_LIBRARIES and isinstance(getattr(module, "HF_HUB_OFFLINE", None), bool)]


def quiet(library: ModuleType) -> None:
    """diffusers and transformers log progress bars and notes while loading; our stderr is for the audit."""
    library.utils.logging.set_verbosity_error()
    library.utils.logging.disable_progress_bar()


def read_json(path: Path) -> dict:
    """A JSON config file's object, or a refusal naming the file."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelUnavailable(f"{path} is not a readable JSON config ({brief(error)}).") from error
    if not isinstance(config, dict):
        raise ModelUnavailable(f"{path} is not a JSON config: it holds a {type(config).__name__}, not an object.")
    return config


def load_model(root: Path, part: str) -> DeferredModule:
    """One diffusers model component, offline and from safetensors only; its weights are read on first use
    (an audit whose features are all cached never reads them; that read is offline too), its config at once."""
    import diffusers
    from diffusers.configuration_utils import FrozenDict

    saved = read_json(root / part / "config.json")
    model_class = getattr(diffusers, saved["_class_name"])
    parameters = inspect.signature(model_class.__init__).parameters.items()
    defaults = {name: p.default for name, p in parameters if p.default is not inspect.Parameter.empty}

    def load() -> torch.nn.Module:
        try:
            with offline():
                return model_class.from_pretrained(root, subfolder=part, local_files_only=True,
                                                   use_safetensors=True, low_cpu_mem_usage=False)
        except Exception as error:
            mismatches = SIZE_MISMATCH.findall(str(error))
            if mismatches:
                raise ModelUnavailable(f"The {part} weights in {root} do not fit {part}/config.json "
                                       f"({_mismatch_summary(mismatches)}); use the config saved with these weights."
                                       ) from error
            raise ModelUnavailable(f"The {part} in {root} cannot be loaded ({brief(error)}).") from error

    return DeferredModule(saved["_class_name"], FrozenDict({**defaults, **saved}), load)


def _mismatch_summary(mismatches: list[tuple[str, str, str]]) -> str:
    """The first weight whose shape differs, and how many more do."""
    name, saved, built = mismatches[0]
    more = f", and {len(mismatches) - 1} more" if len(mismatches) > 1 else ""
    return f"{name} is {saved} in the weights but {built} by the config{more}"


def load_component(root: Path, component: Component):
    """One component, offline and from safetensors only: a diffusers model or a text encoder whose weights are
    read on first use (its config at once), or a tokenizer."""
    if component.kind == "diffusers":
        return load_model(root, component.folder)
    import transformers

    quiet(transformers)
    folder = root / component.folder
    if component.kind == "tokenizer":
        class_name = read_json(folder / "tokenizer_config.json").get("tokenizer_class", "")
        try:
            return getattr(transformers, TOKENIZER_CLASSES[class_name]).from_pretrained(folder, local_files_only=True)
        except Exception as error:
            raise ModelUnavailable(f"The {component.folder} in {root} cannot be loaded ({brief(error)}).") from error
    class_name = next(iter(read_json(folder / "config.json").get("architectures") or []))
    model_class = getattr(transformers, class_name)

    def load() -> torch.nn.Module:
        try:
            with offline():
                return model_class.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except Exception as error:
            raise ModelUnavailable(f"The {component.folder} in {root} cannot be loaded ({brief(error)}).") from error

    return DeferredModule(class_name, model_class.config_class.from_pretrained(folder), load)
