"""The model's fingerprint: one sha256 over everything that decides what the network computes.

Cached features are keyed by it, so it changes whenever the model's output can, and is otherwise stable
across versions (features cached before stay valid): it covers the weight and config files (a single file's
sha256 with its configs'), each adapter's sha256 and scale in order, and the guidance value fed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from cdi_audit.inputs.images import file_sha256
from cdi_audit.results.schema import AdapterInfo, FileDigest

# Files whose bytes decide what the model computes: they make up its fingerprint.
FINGERPRINT_SUFFIXES = frozenset({".safetensors", ".json", ".txt"})


def model_files(root: Path) -> list[FileDigest]:
    """Every weight and config file under ``root`` (or ``root`` itself, a single file), hashed."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                   and p.suffix in FINGERPRINT_SUFFIXES)
    return [FileDigest(path=str(path.resolve()), sha256=file_sha256(path), size_bytes=path.stat().st_size)
            for path in paths]


def model_fingerprint(root: Path, files: Sequence[FileDigest] | None = None, *, configs: Path | None = None,
                      config_files: Sequence[FileDigest] | None = None, adapters: Sequence[AdapterInfo] = (),
                      guidance: float | None = None) -> str:
    """The fingerprint of the model at ``root`` (a pipeline folder, or a single file whose configs are the
    folder ``configs``), ``files`` and ``config_files`` as ``model_files`` lists them (hashed here when None),
    with ``adapters`` fused in order and fed ``guidance`` (None: it takes none)."""
    files = model_files(root) if files is None else files
    if configs is None:
        identity = _files_digest(root, files)
    else:
        config_files = model_files(configs) if config_files is None else config_files
        identity = _sha256(f"{files[0].sha256}|{_files_digest(configs, config_files)}")
    if adapters:
        identity = _sha256("|".join([identity, *(f"adapter:{a.sha256}:{a.scale!r}" for a in adapters)]))
    if guidance is not None:  # what the network computes depends on it, as on its weights
        identity = _sha256(f"{identity}|guidance:{guidance!r}")
    return identity


def _files_digest(root: Path, files: Sequence[FileDigest]) -> str:
    """sha256 over the path relative to ``root`` and the sha256 of every file."""
    digest = hashlib.sha256()
    base = root.resolve()
    for file in files:
        digest.update(f"{Path(file.path).relative_to(base).as_posix()}\0{file.sha256}\n".encode())
    return digest.hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
