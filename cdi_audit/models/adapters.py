"""LoRA adapters on a local base, loaded by diffusers' own loaders (with peft) and fused into the base.

What people publish (docs/lora.md, "Formats"): the diffusers training scripts' format and
kohya / A1111's (``lora_unet_*``, ``lora_te_*``, ``lora_te1_`` / ``lora_te2_``, ``.alpha``, DoRA's
``dora_scale``; for Flux ``lora_unet_double_blocks_*`` / ``lora_unet_single_blocks_*``). diffusers'
``load_lora_weights`` (the family's loader mixin, ``Family.lora_loader``) reads both (it converts kohya keys
itself), DoRA included (peft fuses its magnitude vector); no key is converted here. LyCORIS files (LoHa, LoKr,
OFT, BOFT) are refused by name: diffusers' loader cannot place them on these bases. An adapter whose keys the
loader cannot place in the base is refused, naming the file and the base it seems to be for: a silently ignored
adapter would audit the base under the adapter's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cdi_audit.errors import InputProblem, InvalidSetting, ModelUnavailable, brief
from cdi_audit.models.families import listing, registered_families, with_article
from cdi_audit.results.schema import TrainingClaims
from cdi_audit.rules import check_number

# Files that unpickle when loaded: refused as models (checks.py), and as adapters without --allow-pickle.
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl"})
# Adapters are trained for scale 1 and used at 0.5-2; far beyond that the fused weights say nothing about what
# the adapter learned.
MAX_SCALE = 10.0


@dataclass(frozen=True)
class Adapter:
    """One adapter file and the scale it is applied at (1.0: as trained)."""

    path: Path
    scale: float = 1.0
    # A pickle file (.pt, .bin, .ckpt) is read only when the user allows it, and then with torch.load's
    # weights_only=True, which unpickles tensors and plain containers but no code.
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        try:
            check_number(self.scale, "adapter", 0, MAX_SCALE, above=True, note=" (1.0: as trained)")
        except InvalidSetting as error:
            raise InvalidSetting("adapter", f"{self.path}: the scale {error.problem} At 0 the base would be "
                                            "audited under the adapter's name.") from None

    @classmethod
    def parse(cls, text: str, allow_pickle: bool = False) -> Adapter:
        """``FILE`` or ``FILE:SCALE``: only a number after the last ':' is a scale. A file whose own name ends
        in ':NUMBER' is taken as it is when no file is named by the part before the colon (else write
        ``NAME:1``)."""
        head, colon, tail = text.rpartition(":")
        if not colon or not head or any(separator in tail for separator in "/\\"):
            return cls(Path(text), allow_pickle=allow_pickle)
        try:
            scale = float(tail)
        except ValueError:
            scale = None
        if Path(text).is_file() and (scale is None or not Path(head).exists()):
            return cls(Path(text), allow_pickle=allow_pickle)
        if scale is None:
            wrong = "nothing" if not tail.strip() else repr(tail)
            raise InvalidSetting("adapter", f"{text!r} has {wrong} after its last ':' where a scale goes; write "
                                            "FILE or FILE:SCALE with a number (e.g. 0.8).")
        return cls(Path(head), scale, allow_pickle)

    @property
    def pickled(self) -> bool:
        return self.path.suffix.lower() in PICKLE_SUFFIXES

    def weights(self) -> str | dict:
        """What diffusers' loader is given: the safetensors path, or the tensors of an allowed pickle."""
        if not self.pickled:
            return str(self.path)
        import torch

        return torch.load(self.path, map_location="cpu", weights_only=True)


# How adapters name the layers of a denoiser of each layout, whatever its family: diffusers by the component
# (unet., transformer., text_encoder.), kohya by lora_unet_ / lora_te_ (lora_transformer_ for some trainers).
LAYOUT_PREFIXES = {"transformer": ("transformer.", "lora_transformer_"),
                   "UNet": ("lora_unet_", "lora_te_", "unet.", "text_encoder.")}


def base_guess(keys: list[str]) -> str:
    """Which kind of base an adapter's keys were written for, in words (for a refusal): a family whose adapters
    have names only they use (``Family.adapter_prefixes`` and ``adapter_parts``), else the families of the
    layout the names fit (``LAYOUT_PREFIXES``: generic, as the same names serve every family of a layout)."""
    families = [family for family in registered_families() if family.lora_loader is not None]
    for family in families:
        if any(key.startswith(family.adapter_prefixes) or any(part in key for part in family.adapter_parts)
               for key in keys):
            return f"{with_article(family.display_name)} base"
    for layout, prefixes in LAYOUT_PREFIXES.items():
        if any(key.startswith(prefixes) for key in keys):
            names = listing([family.display_name for family in families if family.adapter_layout == layout], "or")
            return f"{with_article(names)} {layout} of another size"
    return "an unknown base"


# LyCORIS formats by the key parts that mark them; diffusers' LoRA loader places none of them on these bases.
LYCORIS_FORMATS = {".hada_w1_a": "LoHa", ".lokr_w1": "LoKr", ".oft_blocks": "OFT", ".oft_diag": "OFT",
                   ".boft_": "BOFT"}


def lycoris_format(keys: list[str]) -> str | None:
    """The LyCORIS format an adapter's keys are in (LoHa, LoKr, ...), or None for a LoRA."""
    for marker, name in LYCORIS_FORMATS.items():
        if any(marker in key for key in keys):
            return name
    return None


def fuse_adapters(loader: str, modules: Mapping[str, object], adapters: tuple[Adapter, ...], family: str) -> None:
    """Load each adapter into ``modules`` (component name -> loaded module, changed in place) with the diffusers
    LoRA loader mixin ``loader``, fuse it at its scale, and drop the adapter layers."""
    import diffusers

    mixin = getattr(diffusers.loaders, loader)
    # What the mixin reads of a pipeline: each component by name, all of them, and no device map (everything
    # is on one device).
    holder = type("AdapterTarget", (mixin,), {"hf_device_map": None, "components": dict(modules)})()
    for name, module in modules.items():
        setattr(holder, name, module)
    for index, adapter in enumerate(adapters):
        name = f"adapter_{index}"
        weights = adapter.weights()
        keys = list(weights) if isinstance(weights, dict) else _keys(adapter)
        unsupported = lycoris_format(keys)
        if unsupported is not None:
            raise ModelUnavailable(f"The adapter {adapter.path} is a LyCORIS {unsupported} adapter, which diffusers' "
                                   f"LoRA loader cannot place on a {family} base; merge it into the base with the "
                                   "tool that trained it and give the merged model as --model.")
        before = _adapted(modules)
        try:
            holder.load_lora_weights(weights, adapter_name=name)
        except Exception as error:  # peft's errors on shapes that differ are long and name no base
            raise ModelUnavailable(f"The adapter {adapter.path} cannot be loaded onto this {family} base: it seems "
                                   f"to be for {base_guess(keys)} ({brief(error)}).") from error
        # diffusers only warns about keys it cannot place: count the layers it placed against the file's.
        placed, expected = _adapted(modules) - before, _layers_in(keys)
        if placed < expected:
            how_many = "any of its layers" if placed == 0 else f"{expected - placed} of its {expected} layers"
            raise ModelUnavailable(f"The adapter {adapter.path} does not fit this {family} base: the loader could "
                                   f"not place {how_many}; it seems to be for {base_guess(keys)}.")
        holder.fuse_lora(components=[c for c in mixin._lora_loadable_modules if c in modules],
                         lora_scale=adapter.scale, adapter_names=[name])
        holder.unload_lora_weights()  # the fused weights stay; the next adapter gets layers of its own


def _adapted(modules: Mapping[str, object]) -> int:
    """How many layers carry an adapter (peft's tuner layers), over all modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(layer, BaseTunerLayer) for module in modules.values() for layer in module.modules())


def _layers_in(keys: list[str]) -> int:
    """How many layers the adapter file changes: its distinct module names, in either format (diffusers:
    ``NAME.lora_A.weight``; kohya: ``NAME.lora_down.weight``, ``NAME.alpha``, ``NAME.dora_scale``)."""
    return len({re.split(r"\.(?:lora|alpha|dora_scale)", key)[0] for key in keys})


def _keys(adapter: Adapter) -> list[str]:
    if adapter.pickled:
        weights = adapter.weights()
        if not isinstance(weights, dict):
            raise ValueError(f"it holds a {type(weights).__name__}, not a dictionary of tensors")
        return list(weights)
    from safetensors import safe_open

    with safe_open(str(adapter.path), framework="pt") as handle:
        return list(handle.keys())


def check_adapter_file(adapter: Adapter) -> None:
    """A missing, pickled, unreadable or empty adapter is refused before any loading, in one sentence: an empty
    one would place 0 of 0 layers, and the base would be audited under the adapter's name."""
    path = adapter.path
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))[:3]
        found = f" (it holds {', '.join(inside)})" if inside else ""
        raise InputProblem(f"The adapter {path} is a folder{found}; give the adapter's .safetensors file.")
    if not path.is_file():
        raise InputProblem(f"No adapter at {path}: the file does not exist.")
    if adapter.pickled and not adapter.allow_pickle:
        raise ModelUnavailable(f"{path} is a pickle adapter, which can run code when loaded; convert it to "
                               "safetensors, or give --allow-pickle to read only its tensors (torch.load with "
                               "weights_only=True).")
    if not adapter.pickled and path.suffix.lower() != ".safetensors":
        raise ModelUnavailable(f"{path} is not a .safetensors adapter.")
    kind = "pickle" if adapter.pickled else "safetensors"
    try:
        keys = _keys(adapter)
    except Exception as error:  # safetensors and torch raise their own error types for a damaged file
        raise ModelUnavailable(f"{path} is not a readable {kind} adapter ({brief(error)}).") from error
    if not keys:
        raise ModelUnavailable(f"The adapter {path} holds no tensors, so it would change nothing; give the file "
                               "its training wrote.")


# How many of the most frequent training tags the report shows.
TOP_TAGS = 10


def training_claims(adapter: Adapter) -> TrainingClaims | None:
    """kohya's training metadata from the adapter's safetensors header, or None when it has none (a pickle
    carries no header)."""
    from safetensors import safe_open

    if adapter.pickled:
        return None
    with safe_open(str(adapter.path), framework="pt") as handle:
        header = handle.metadata() or {}
    fields = {key: value for key, value in header.items() if key.startswith("ss_")}
    if not fields:
        return None
    return TrainingClaims(
        output_name=fields.get("ss_output_name"), training_comment=fields.get("ss_training_comment"),
        dataset_folders=_dataset_folders(fields.get("ss_dataset_dirs")),
        train_images=_integer(fields.get("ss_num_train_images")), top_tags=_top_tags(fields.get("ss_tag_frequency")),
        resolution=fields.get("ss_resolution"), base_model_name=fields.get("ss_sd_model_name"),
        base_model_hash=fields.get("ss_new_sd_model_hash") or fields.get("ss_sd_model_hash"),
        training_started=_timestamp(fields.get("ss_training_started_at")),
        training_finished=_timestamp(fields.get("ss_training_finished_at")))


def _json(text: str | None):
    import json

    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _dataset_folders(text: str | None) -> list[str]:
    folders = _json(text)
    if not isinstance(folders, dict):
        return []
    return [f"{name}: {entry.get('img_count', '?')} images x {entry.get('n_repeats', '?')} repeats"
            if isinstance(entry, dict) else str(name) for name, entry in folders.items()]


def _top_tags(text: str | None) -> list[str]:
    """Tags summed over the dataset folders, most frequent first."""
    frequency = _json(text)
    counts: dict[str, int] = {}
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, int):
                        counts[tag.strip()] = counts.get(tag.strip(), 0) + count
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_TAGS]
    return [f"{tag} ({count})" for tag, count in ranked]


def _integer(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _timestamp(text: str | None) -> str | None:
    """A Unix time as kohya writes it, as UTC ISO text (the text itself if it is not a number)."""
    from datetime import datetime, timezone

    if text is None:
        return None
    try:
        return datetime.fromtimestamp(float(text), tz=timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return text


def base_hash_warning(claims: TrainingClaims | None, adapter: Path, base_sha256: str | None) -> str | None:
    """A warning when the header names a base by its file hash and the given single-file base has another."""
    if claims is None or not claims.base_model_hash or base_sha256 is None:
        return None
    recorded = claims.base_model_hash.lower()
    if len(recorded) < 10 or base_sha256.startswith(recorded):
        return None
    return (f"The adapter {adapter.name} says it was trained on a base with hash {recorded[:12]}…, and this base's "
            f"file has sha256 {base_sha256[:12]}…: it may be meant for another base (the header is unverified).")
