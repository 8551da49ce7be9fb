"""Where the network runs and in what precision: the --device and --dtype choices, resolved and checked
before any weight is read."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that supports it (else float16), float32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when a GPU is present, else the CPU; otherwise ``cpu``, ``cuda`` or ``cuda:N`` for a GPU
    that exists. Other torch devices (mps, meta, ...) are refused here: the audit's code paths are tested on
    these only, and a device without storage (meta) would fail only at the first forward pass."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index is not None):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N (N the index of a GPU).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no GPU is visible; use --device cpu or --device auto.")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"there is no GPU {device.index}: {torch.cuda.device_count()} visible (indices from 0); "
                         "choose one of them or --device auto.")
    return device
