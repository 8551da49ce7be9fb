"""Trained test models, built once and kept on disk: training a tiny model takes from 30 s to a few minutes,
and the default and the slow suites (two pytest runs in CI) need the same ones.

A model lives in ``.test-models/<name>-<key>/`` at the repository root (or under ``CDI_AUDIT_TEST_MODELS``);
the key hashes the builder's name and arguments, the source files that build it, and the torch and diffusers
versions, so editing a training recipe or upgrading a library builds it afresh. A file lock lets parallel
test processes wait for one build instead of racing; a build that fails or is interrupted leaves nothing
behind that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import diffusers
import torch

REPO = Path(__file__).resolve().parents[1]
FINISHED = ".finished"


def models_root() -> Path:
    return Path(os.environ.get("CDI_AUDIT_TEST_MODELS", REPO / ".test-models"))


def _key(name: str, arguments: dict, sources: tuple[Path, ...]) -> str:
    digest = hashlib.sha256(json.dumps([name, arguments, torch.__version__, diffusers.__version__],
                                       sort_keys=True, default=str).encode())
    for source in sorted(sources):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX); without fcntl, no lock (one test process at a time)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_build(name: str, build: Callable[[Path], None], sources: tuple[Path, ...], **arguments) -> Path:
    """The folder ``build(folder)`` fills, built on the first call for these arguments and sources and reused
    afterwards. ``sources`` are the files whose code decides what is built (the builder's own module is
    always one of them)."""
    module_file = Path(build.__code__.co_filename)
    key = _key(name, arguments, (*sources, module_file) if module_file.is_file() else sources)
    root = models_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{name}-{key}"
    if (folder / FINISHED).exists():
        return folder
    with _locked(root / f"{name}-{key}.lock"):
        if (folder / FINISHED).exists():
            return folder
        partial = root / f"{name}-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        partial.mkdir()
        build(partial)
        (partial / FINISHED).write_text("")
        partial.rename(folder)
    return folder
