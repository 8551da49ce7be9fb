"""The feature store: extracted features on disk, so nothing is computed twice.

One folder per key, a dictionary of everything that changes an extractor's values for an image (its parts are chosen
by ``pipeline.extraction.cache_key``; the store only hashes them); inside it, chunk files of (image sha256, feature
row) written atomically (temporary file, then rename) after every batch. A killed run leaves only whole chunks
behind and resumes where it stopped; a re-run with another alpha or test reads everything back and makes no model
call.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from cdi_audit.errors import InputProblem, InvalidSetting, OutputProblem, SettingsProblem

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
            rows.update(_read_chunk(chunk))
        return rows

    def append(self, hashes: list[str], values: np.ndarray) -> None:
        """Store rows for ``hashes`` as one new chunk, atomically. The folder took files when the run started
        (the settings check it); a disk that fills mid-run is the user's to fix (exit 2), not a bug."""
        buffer = io.BytesIO()
        np.savez(buffer, hashes=np.array(hashes, dtype=str), values=np.asarray(values, dtype=np.float64))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            key_file = self.folder / "key.json"
            if not key_file.exists():
                atomic_write(key_file, json.dumps(self.key, indent=2, sort_keys=True).encode())
            atomic_write(self.folder / f"chunk-{time.time_ns()}-{os.getpid()}.npz", buffer.getvalue())
        except OSError as error:
            raise OutputProblem(f"The feature cache {self.folder.parent.parent} stopped taking files "
                                f"({error.strerror or type(error).__name__}); free space or give another "
                                "--cache-dir, then re-run: features stored so far are kept.") from None


def _read_chunk(chunk: Path) -> dict[str, np.ndarray]:
    """One chunk's rows. Chunks are written whole (``atomic_write``), so a damaged one was truncated or
    changed outside cdi-audit (a partial copy of the cache): name it, since deleting it only costs the
    recomputation of its rows."""
    try:
        with np.load(chunk, allow_pickle=False) as data:
            return {str(image_hash): values for image_hash, values in zip(data["hashes"], data["values"],
                                                                           strict=True)}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as error:
        raise InputProblem(f"The cache chunk {chunk} cannot be read ({type(error).__name__}: damaged, perhaps "
                           "copied only in part); delete it and its features are computed again.") from error


class FeatureStore:
    """Feature sections under one cache root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        require_cache_folder(self.root)

    def section(self, key: dict) -> FeatureSection:
        """The section for ``key``: a JSON-serialisable dict of everything that changes the values."""
        canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:32]
        return FeatureSection(self.root / "features" / digest, key)


def require_cache_folder(root: Path) -> None:
    """The cache root must be a folder or not yet exist (inside a folder): a file there would only fail when
    the first chunk is written, after the model has run."""
    for path in (root, *root.parents):
        if path.is_dir():
            return
        if path.exists():
            where = "is a file" if path == root else f"lies inside {path}, which is a file"
            raise SettingsProblem(f"The cache folder {root} {where}, not a folder; give a folder for --cache-dir.")


def require_writable_cache(root: Path, given: bool) -> None:
    """The cache must take files before any model work: a folder that cannot be created or written (read-only,
    under /proc, a full disk, a bad XDG_CACHE_HOME) would otherwise fail only after the whole extraction.
    ``given``: whether the user named it (else it is the default user cache folder). Raises ``InvalidSetting``
    for the field ``cache_dir``."""
    require_cache_folder(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-") as probe:
            probe.write(b"cdi-audit")
            probe.flush()
    except OSError as error:
        where = f"{root}" if given else f"{root} (the default user cache folder; XDG_CACHE_HOME moves it)"
        raise InvalidSetting("cache_dir", f"{where} cannot take files ({error.strerror or type(error).__name__}); "
                                          "give a folder you may write to, or turn the cache off.") from None


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
