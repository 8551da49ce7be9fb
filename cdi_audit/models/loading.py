"""Build the ``Target`` of a model path: offline, safetensors only, every refusal saying what was expected.

The steps, each in a module of its own: refuse what cannot be read safely (``checks``), read the
components (``components``; a single file through its family's pipeline, ``single_file``), the schedule
(``schedule_loading``), check the config values the audit computes with (``config_values``), fuse the
adapters, and name it all by one fingerprint (``fingerprint``). Nothing reaches a hub (``components.offline``),
runs remote code, or unpickles a checkpoint.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from cdi_audit.errors import ModelUnavailable
from cdi_audit.inputs.images import file_sha256
from cdi_audit.models.adapters import Adapter, base_hash_warning, check_adapter_file, fuse_adapters, training_claims
from cdi_audit.models.checks import check_configs, check_folder, refuse_guidance, refuse_path
from cdi_audit.models.components import load_component, offline, quiet
from cdi_audit.models.config_values import check_channels, check_latent_scale, image_size
from cdi_audit.models.deferred import DeferredModule
from cdi_audit.models.families import adapter_phrase, with_article
from cdi_audit.models.family import Component, Family, LoadedParts
from cdi_audit.models.fingerprint import model_files, model_fingerprint
from cdi_audit.models.schedule_loading import load_schedule, nominal_kind
from cdi_audit.models.single_file import check_checkpoint_fits, load_single_file, single_file_configs
from cdi_audit.models.target import Target
from cdi_audit.results.schema import AdapterInfo, FileDigest, ModelInfo


def load_target(path: Path, device: torch.device, *, dtype: torch.dtype | None = None, config: Path | None = None,
                adapters: tuple[Adapter, ...] = (), guidance: float | None = None) -> Target:
    """Build the ``Target`` for the model at ``path`` on ``device``; forward passes in ``dtype`` (None or
    float32: full precision; see ``device.resolve_dtype``). ``config``: the configs of a single-file checkpoint
    (a pipeline folder without weights, or a shipped name). ``adapters``: LoRA files fused into the base, in
    order (``models/adapters.py``). ``guidance``: the value fed to a guidance-distilled transformer (None: its
    family's default; refused for models that take none). Commands load through ``ModelSpec.load``."""
    import diffusers

    quiet(diffusers)
    root = Path(path)
    refuse_path(root, config)
    for adapter in adapters:
        check_adapter_file(adapter)
    with offline(), _configs(root, config) as (configs, named):
        if root.is_file():
            family, index, options = check_configs(configs)
            refuse_guidance(family, guidance)  # before any weight is read
            check_checkpoint_fits(root, family, named)
            components = family.components(index)
            parts, notes = load_single_file(root, configs, family, components, named)
            schedule, prediction_type, train_steps = load_schedule(configs, family, nominal_kind(components))
        else:
            family, index, options = check_folder(root)
            refuse_guidance(family, guidance)
            notes = []
            components = family.components(index)
            schedule, prediction_type, train_steps = load_schedule(root, family, nominal_kind(components))
            parts = {component.folder: load_component(root, component) for component in components}
        files = model_files(root)
        config_files = model_files(configs) if root.is_file() else None
        roles = {c.role: c.folder for c in components if c.role != "condition"}
        sample_size = image_size(parts[roles["denoiser"]], parts.get(roles.get("autoencoder", "")), configs, roles,
                                 family.default_sample_size)
        if "autoencoder" in roles:
            check_latent_scale(parts[roles["autoencoder"]], configs / roles["autoencoder"] / "config.json")
            check_channels(family, parts[roles["denoiser"]], parts[roles["autoencoder"]], configs, roles)
        adapter_infos = [AdapterInfo(path=str(a.path.resolve()), sha256=file_sha256(a.path), scale=a.scale,
                                     claims=training_claims(a)) for a in adapters]
        base_sha256 = files[0].sha256 if root.is_file() else None
        notes += [note for adapter, info in zip(adapters, adapter_infos, strict=True)
                  if (note := base_hash_warning(info.claims, adapter.path, base_sha256))]
        if adapters:
            apply_adapters(family, parts, adapters, components)
        guidance_value = family.guidance(parts[roles["denoiser"]].config, guidance)
        fingerprint = model_fingerprint(root, files, configs=configs if root.is_file() else None,
                                        config_files=config_files, adapters=adapter_infos, guidance=guidance_value)
    read = [*files, *(config_files if config is not None and Path(config).exists() else ()),  # the user's configs
            *(FileDigest(path=info.path, sha256=info.sha256, size_bytes=Path(info.path).stat().st_size)
              for info in adapter_infos)]
    description = ModelInfo(
        path=str(root.resolve()),
        fingerprint=fingerprint,
        family=family.label + (" (single file)" if root.is_file() else ""),
        sample_size=sample_size,
        num_train_timesteps=train_steps,
        prediction_type=prediction_type,
        device=str(device),
        dtype=str(dtype or torch.float32).removeprefix("torch."),
        files=read,
        adapters=adapter_infos,
        guidance=guidance_value,
    )
    # ``configs``, a shipped config's temporary copy by now removed, is only named in refusals.
    loaded = LoadedParts(parts, roles, schedule, prediction_type, device, description, options,
                         guidance=guidance_value, configs=configs)
    family.check(loaded)
    target = family.build(loaded)
    target.notes = loaded.warnings + notes
    target.forward_dtype = None if dtype in (None, torch.float32) else dtype
    return target


def apply_adapters(family: Family, parts: dict, adapters: tuple[Adapter, ...],
                   components: tuple[Component, ...]) -> None:
    """Fuse ``adapters`` into the denoiser and the text encoders (their weights are read now: an adapter
    changes them)."""
    if family.lora_loader is None:
        raise ModelUnavailable(f"Adapters (--adapter) are supported on {adapter_phrase()}; this is "
                               f"{with_article(family.label)}.")
    adapted = [c.folder for c in components if c.kind != "tokenizer" and c.role != "autoencoder"]
    modules = {name: parts[name].module if isinstance(parts[name], DeferredModule) else parts[name]
               for name in adapted}
    fuse_adapters(family.lora_loader, modules, adapters, family.label)
    parts.update(modules)


def _configs(root: Path, config: Path | None) -> contextlib.AbstractContextManager[tuple[Path, str]]:
    """The folder whose configs are read, and the words naming it: a pipeline folder's own, or a single file's
    (``single_file_configs``)."""
    if root.is_file():
        return single_file_configs(root, config)
    return contextlib.nullcontext((root, f"the configs in {root}"))
