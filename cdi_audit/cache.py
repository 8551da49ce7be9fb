"""The feature store: extracted features on disk, so nothing is computed twice.

One folder per (model fingerprint, extractor name, version, parameters, seed,
device) key; inside it, chunk files of (image sha256, feature row) written
atomically (temporary file, then rename) after every batch. A killed run
leaves only whole chunks behind and resumes where it stopped; a re-run with
another alpha or test reads everything back and makes no model call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK_PATTERN = "chunk-*.npz"


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("cdi-audit"))


class FeatureSection:
    """The cached rows of one extractor on one model under one configuration."""

    def __init__(self, folder: Path, key: dict) -> None:
        self.folder = folder
        self.key = key

    def load(self) -> dict[str, np.ndarray]:
        """Every cached row: image sha256 -> feature vector (float64)."""
        rows: dict[str, np.ndarray] = {}
        for chunk in sorted(self.folder.glob(CHUNK_PATTERN)):
            with np.load(chunk, allow_pickle=False) as data:
                for image_hash, values in zip(data["hashes"], data["values"], strict=True):
                    rows[str(image_hash)] = values
        return rows

    def append(self, hashes: list[str], values: np.ndarray) -> None:
        """Store rows for ``hashes`` as one new chunk, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / "key.json"
        if not key_file.exists():
            atomic_write(key_file, json.dumps(self.key, indent=2, sort_keys=True).encode())
        buffer = io.BytesIO()
        np.savez(buffer, hashes=np.array(hashes, dtype=str), values=np.asarray(values, dtype=np.float64))
        atomic_write(self.folder / f"chunk-{time.time_ns()}-{os.getpid()}.npz", buffer.getvalue())


class FeatureStore:
    """Feature sections under one cache root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def section(self, key: dict) -> FeatureSection:
        """The section for ``key``: a JSON-serialisable dict of everything that changes the values."""
        canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        return FeatureSection(self.root / "features" / digest, key)


def atomic_write(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    # mkstemp creates the file readable by its owner only; give it the usual permissions for a report.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
