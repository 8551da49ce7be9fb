"""A model as the user names it, and where it runs: the one way every command loads a model.

A ``ModelSpec`` is the model's identity: its path, the configs of a single-file checkpoint, and its adapters
(LoRA files fused into it). It knows every file loading reads, so the fingerprint, the manifest
and the report speak of the same files. A ``Machine`` says where and how the network runs; ``check``,
``extract``, ``batch``, ``evaluate``, ``serve``, ``extract-evidence`` and the control model all load through
``ModelSpec.load``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cdi_audit.errors import InvalidSetting
from cdi_audit.models.adapters import Adapter
from cdi_audit.rules import check_number, require

if TYPE_CHECKING:
    from cdi_audit.models.target import Target


DTYPES = ("auto", "float32", "bfloat16", "float16")
# Guidance-distilled transformers embed the value as a sinusoid of 1000 times it; trained values lie around 1-10,
# and far larger ones overflow float32 inside that embedding.
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class Machine:
    """Where and how a model's network runs (the same options for every command)."""

    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: str = "auto"  # auto, float32, bfloat16 or float16 (forward passes; the VAE and inversions stay float32)
    compile_network: bool = False  # torch.compile the network (values move by float rounding only)

    def __post_init__(self) -> None:
        require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        if self.device != "auto":
            from cdi_audit.models.device import resolve_device

            try:
                resolve_device(self.device)
            except (RuntimeError, ValueError) as error:
                raise InvalidSetting("device", f"cannot be {self.device!r}: {error}") from None


@dataclass(frozen=True)
class ModelSpec:
    """One local model: a pipeline folder or a single-file checkpoint with its configs."""

    path: Path
    config: Path | None = None  # configs of a single-file checkpoint: a folder or a shipped name
    adapters: tuple[Adapter, ...] = ()  # LoRA files fused into the base, in this order
    guidance: float | None = None  # the value a guidance-distilled transformer is fed (None: its default)

    def __post_init__(self) -> None:
        if self.guidance is not None:
            check_number(self.guidance, "guidance", 0, MAX_GUIDANCE,
                         note=" (guidance-distilled models are trained around 1 to 10)")
        seen: set[Path] = set()
        for adapter in self.adapters:
            where = Path(adapter.path).resolve()
            if where in seen:
                raise InvalidSetting("adapter", f"{adapter.path} is given twice; give it once, at the scale you "
                                                "mean (two copies would add up).")
            seen.add(where)

    @classmethod
    def named(cls, path: str | Path | None, *, config: str | Path | None = None, adapters: tuple[Adapter, ...] = (),
              guidance: float | None = None) -> ModelSpec | None:
        """The model a path and its options name; None without a path (an endpoint serves its own model), where
        an option for a local model is refused rather than silently ignored."""
        if path is None:
            given = [name for name, value in (("model_config", config), ("adapters", adapters),
                                              ("guidance", guidance)) if value not in (None, ())]
            require(not given, given[0] if given else "model",
                    "describes a local model; an endpoint serves its own model and would silently ignore it.")
            return None
        return cls(Path(path), None if config is None else Path(config), tuple(adapters), guidance)

    @property
    def key(self) -> tuple:
        """Equal for two specs that name the same files (a model pool keeps one copy)."""
        config = None if self.config is None else str(Path(self.config).resolve() if Path(self.config).exists()
                                                         else self.config)
        return (str(Path(self.path).resolve()), config,
                tuple((str(Path(a.path).resolve()), a.scale) for a in self.adapters), self.guidance)

    @property
    def base(self) -> ModelSpec:
        """The model without its adapters: what they were trained on top of, so it never saw their training
        images (an adapter audit's control and calibration); fed the same guidance."""
        return replace(self, adapters=())

    @staticmethod
    def public_of(spec: ModelSpec | None, prefix: str) -> dict[str, str | None]:
        """A spec (or its absence) as the report's configuration records it: ``model_path`` and
        ``model_config`` for the suspect model, ``control_model`` and ``control_model_config`` for a control."""
        path_key = "model_path" if prefix == "model" else prefix
        if spec is None:
            return {path_key: None, f"{prefix}_config": None, f"{prefix}_adapters": None}
        adapters = ",".join(f"{a.path}:{a.scale:g}" for a in spec.adapters) or None
        return {path_key: str(spec.path), f"{prefix}_config": None if spec.config is None else str(spec.config),
                f"{prefix}_adapters": adapters}

    def load(self, machine: Machine) -> Target:
        """The model's Target on ``machine`` (offline, safetensors only; see ``models/loading.py``)."""
        from cdi_audit.models.device import resolve_device, resolve_dtype
        from cdi_audit.models.loading import load_target

        device = resolve_device(machine.device)
        target = load_target(self.path, device, dtype=resolve_dtype(machine.dtype, device), config=self.config,
                             adapters=self.adapters, guidance=self.guidance)
        if machine.compile_network:
            target.compile_network()
        return target
