"""Find, validate, hash, load and preprocess the owner's images.

An image's identity is the sha256 of its file: features are cached by it,
overlap between the suspect and reference sets is checked by it, and the
report lists it. Scanning decodes each file once to reject unreadable ones
before any model work; pixels are decoded again only when an extraction batch
needs them, so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cdi_audit.errors import InputProblem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Files that legitimately sit beside images (captions, labels, notes); not listed as skipped.
SIDECAR_SUFFIXES = frozenset({".txt", ".csv", ".jsonl", ".json", ".md"})


@dataclass(frozen=True)
class ImageRecord:
    """One readable image file: where it is, what it is (sha256 of the file bytes), and the
    condition a conditional model sees it with (a caption or a class id; None for others)."""

    path: Path
    sha256: str
    caption: str | None = None
    label: int | None = None

    @property
    def key(self) -> str:
        """The identity of this image's feature row: its hash, plus its condition when it has one
        (the same file with another caption has other features)."""
        if self.caption is None and self.label is None:
            return self.sha256
        condition = f"{self.sha256}|caption={self.caption!r}|label={self.label!r}"
        return hashlib.sha256(condition.encode()).hexdigest()


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class ImageSet:
    """The readable, distinct images of one folder, and the files that were left out (with why)."""

    root: Path
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def hashes(self) -> list[str]:
        return [record.sha256 for record in self.records]

    @property
    def keys(self) -> list[str]:
        """Feature-row keys of the records (see ``ImageRecord.key``)."""
        return [record.key for record in self.records]


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_image(path: Path) -> Image.Image:
    """Decode an image as upright RGB (EXIF orientation applied; first frame of an animation).

    Pillow's decompression-bomb warning is raised as an error: a 200-megapixel
    "photo" in an audit folder is more likely an attack than a photograph.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
            return upright.convert("RGB")


def _unreadable_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image"
    if isinstance(error, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return "too many pixels (decompression-bomb guard)"
    return f"cannot be decoded ({type(error).__name__}: {error})"


def discover_files(root: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Image files under ``root`` (recursive, sorted) and the other files, listed as skipped.

    Hidden files and caption or label sidecars are ignored without a note.
    """
    if not root.is_dir():
        raise InputProblem(f"{root} is not a folder; give a folder of images.")
    candidates: list[Path] = []
    skipped: list[SkippedFile] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            candidates.append(path)
        elif suffix not in SIDECAR_SUFFIXES:
            skipped.append(SkippedFile(str(path), f"unsupported file type '{suffix or path.name}'"))
    return candidates, skipped


def scan_image_set(
    root: Path,
    strict: bool = False,
    track: Callable[[list[Path]], Iterable[Path]] = iter,
) -> ImageSet:
    """Hash and decode every image under ``root``.

    Unreadable files and repeated files (same sha256) are listed in
    ``ImageSet.skipped``; with ``strict`` an unreadable or unsupported file
    is an ``InputProblem`` instead. ``track`` wraps the iteration over the
    candidate files (a progress bar).
    """
    candidates, skipped = discover_files(root)
    records: list[ImageRecord] = []
    first_path_of: dict[str, Path] = {}
    for path in track(candidates):
        digest = file_sha256(path)
        try:
            open_image(path)
        except Exception as error:  # Pillow raises many types for corrupt files.
            skipped.append(SkippedFile(str(path), _unreadable_reason(error)))
        else:
            if digest in first_path_of:
                skipped.append(SkippedFile(str(path), f"same file as {first_path_of[digest]}"))
            else:
                first_path_of[digest] = path
                records.append(ImageRecord(path, digest))
    bad = [item for item in skipped if not item.reason.startswith("same file as")]
    if strict and bad:
        raise InputProblem(
            f"{len(bad)} file(s) in {root} cannot be used (first: {bad[0].path}: {bad[0].reason}); "
            "remove them or run without --strict to skip them."
        )
    return ImageSet(root, records, skipped)


def to_model_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square, resize to ``size`` (Lanczos), scale to [-1, 1].

    Returns float32 (3, size, size): what a diffusers pixel pipeline feeds its UNet.
    """
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(square, dtype=np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_model_pixels(records: list[ImageRecord], size: int) -> np.ndarray:
    """Pixels of a batch of images, (B, 3, size, size) float32 in [-1, 1]."""
    return np.stack([to_model_pixels(open_image(record.path), size) for record in records])
