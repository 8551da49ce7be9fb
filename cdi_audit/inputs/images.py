"""Find, validate, hash, load and preprocess the owner's images.

An image's identity is the sha256 of its file: features are cached by it,
overlap between the suspect and reference sets is checked by it, and the
report lists it. Scanning decodes each file once to reject unreadable ones
before any model work; pixels are decoded again only when an extraction batch
needs them, so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cdi_audit.errors import InputProblem

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Files that legitimately sit beside images (captions, labels, notes); not listed as skipped.
SIDECAR_SUFFIXES = frozenset({".txt", ".csv", ".jsonl", ".json", ".md"})
# The EXIF orientation tag, and its values that turn the picture by 90 degrees (width and height swap).
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class ImageRecord:
    """One readable image file: where it is, what it is (sha256 of the file bytes), the
    condition a conditional model sees it with (a caption or a class id; None for others), and where
    that condition came from (``conditions.py`` names the sources; "none" when there is none). The
    source is kept so that sets given their conditions under different rules can be refused; it is
    not part of the record's identity."""

    path: Path
    sha256: str
    caption: str | None = None
    label: int | None = None
    condition_source: str = field(default="none", compare=False)

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
    """The readable, distinct images of one folder, the files that were skipped (with why), and the images
    that were screened out."""

    root: Path
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)
    # Readable images of the folder that the audit left out (near-duplicates of another image): no error where
    # a captions or labels file names them.
    excluded: list[ImageRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def hashes(self) -> list[str]:
        return [record.sha256 for record in self.records]

    @property
    def keys(self) -> list[str]:
        """Feature-row keys of the records (see ``ImageRecord.key``)."""
        return [record.key for record in self.records]

    @property
    def condition_sources(self) -> tuple[str, ...]:
        """Where each record's condition came from, aligned with ``records``. Kept on the records themselves,
        so that a set narrowed later (screening, sharding) still pairs each image with its source."""
        return tuple(record.condition_source for record in self.records)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class UnknownPixelRange(ValueError):
    """Pixel values whose brightness scale cannot be known, so no 8-bit rendering of them is right."""


class FileUnreadable(Exception):
    """The file's bytes cannot be read at all (permissions, I/O error), as opposed to not decoding."""


# Single-channel integer modes holding up to 16 bits: Pillow gives "I;16*" for 16-bit PNG and TIFF files, and "I"
# (32-bit) for older Pillow's 16-bit PNGs and for signed or 32-bit TIFFs, whose values are checked to fit 16 bits.
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def _from_grey(values: np.ndarray) -> Image.Image:
    """An RGB image of 8-bit grey values (already rounded into [0, 255])."""
    return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def _integer_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit by dividing by 257 (65535 -> 255); Pillow's own conversion clips it to white."""
    values = np.asarray(image).astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise UnknownPixelRange(
            f"integer pixel values from {low} to {high} do not fit 16 bits, so their brightness scale is unknown; "
            "save the image as 8- or 16-bit"
        )
    return _from_grey(np.rint(values / 257.0))


def _float_to_rgb(image: Image.Image) -> Image.Image:
    """Float grey in [0, 1] to 8-bit by scaling by 255; Pillow's own conversion turns it black."""
    values = np.asarray(image).astype(np.float64)
    if not np.isfinite(values).all():
        raise UnknownPixelRange("float pixel values include NaN or infinity; save the image as 8- or 16-bit")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise UnknownPixelRange(
            f"float pixel values from {low:g} to {high:g} are outside [0, 1], so their brightness scale is unknown; "
            "save the image as 8- or 16-bit"
        )
    return _from_grey(np.rint(values * 255.0))


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any decoded mode, scaling wide grey modes that ``convert("RGB")`` would clip."""
    if image.mode in _WIDE_INTEGER_MODES:
        return _integer_to_rgb(image)
    if image.mode == "F":
        return _float_to_rgb(image)
    return image.convert("RGB")


def open_image(path: Path) -> Image.Image:
    """Decode an image as upright 8-bit RGB (EXIF orientation applied; first frame of an animation).

    Pillow's decompression-bomb warning is raised as an error: a 200-megapixel
    "photo" in an audit folder is more likely an attack than a photograph.
    16-bit and float greyscale are scaled to 8 bits; values whose scale cannot
    be known raise ``UnknownPixelRange``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)


def _unreadable_reason(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image"
    if isinstance(error, (Image.DecompressionBombWarning, Image.DecompressionBombError)):
        return "too many pixels (decompression-bomb guard)"
    if isinstance(error, UnknownPixelRange):
        return str(error)
    if isinstance(error, FileUnreadable):
        return f"cannot be read ({error})"
    if isinstance(error, (PermissionError, FileNotFoundError, IsADirectoryError)):
        return f"cannot be read ({type(error).__name__}: {error})"
    return f"cannot be decoded ({type(error).__name__}: {error})"


def _checked_sha256(path: Path) -> str:
    """The file's sha256 once it is known to decode; raises what makes it unusable (see ``_unreadable_reason``)."""
    try:
        digest = file_sha256(path)
    except OSError as error:
        raise FileUnreadable(f"{type(error).__name__}: {error}") from error
    open_image(path)
    return digest


# Reasons for skipping that lose nothing (the same file or folder is scanned under another path): not
# refused by ``--strict``.
_REPEAT_REASONS = ("same file as", "same folder as")
_SPECIAL_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _special_file_kind(mode: int) -> str:
    """What a path that is neither a regular file nor a folder is, for the reason it is skipped."""
    return next((kind for is_kind, kind in _SPECIAL_FILE_KINDS if is_kind(mode)), "an unknown kind of file")


def _unfollowable_reason(path: Path, error: OSError) -> str:
    if path.is_symlink():
        return f"a symbolic link that cannot be followed ({error.strerror or error})"
    return f"cannot be read ({type(error).__name__}: {error})"


def discover_files(root: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Image files under ``root`` (recursive, sorted) and the other files, listed as skipped.

    Hidden files and caption or label sidecars are ignored without a note; every other file left out is
    listed with why, so that an owner can see what the audit did not look at. Linked sub-folders are
    followed, each real folder once (a link back up the tree would loop forever). Files are only
    ``stat``-ed here, never opened: opening a FIFO blocks until something writes to it.
    """
    if not root.is_dir():
        raise InputProblem(f"{root} is not a folder; give a folder of images.")
    candidates: list[Path] = []
    skipped: list[SkippedFile] = []
    first_path_of_folder = {os.path.realpath(root): root}
    pending = deque([root])  # breadth first: of two paths to one folder, the shallower is scanned
    while pending:
        folder = pending.popleft()
        try:
            names = sorted(entry.name for entry in os.scandir(folder))
        except OSError as error:
            skipped.append(SkippedFile(str(folder), f"cannot be read ({type(error).__name__}: {error})"))
            continue
        for path in (folder / name for name in names if not name.startswith(".")):
            try:
                mode = path.stat().st_mode
            except OSError as error:
                skipped.append(SkippedFile(str(path), _unfollowable_reason(path, error)))
                continue
            if stat.S_ISDIR(mode):
                first = first_path_of_folder.setdefault(os.path.realpath(path), path)
                if first == path:
                    pending.append(path)
                else:
                    skipped.append(SkippedFile(str(path), f"same folder as {first}"))
            elif not stat.S_ISREG(mode):
                skipped.append(SkippedFile(str(path), f"not a regular file ({_special_file_kind(mode)})"))
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                candidates.append(path)
            elif path.suffix.lower() not in SIDECAR_SUFFIXES:
                skipped.append(SkippedFile(str(path), f"unsupported file type '{path.suffix.lower() or path.name}'"))
    return sorted(candidates), sorted(skipped, key=lambda item: Path(item.path))


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
        try:
            digest = _checked_sha256(path)
        except Exception as error:  # Pillow raises many types for corrupt files.
            skipped.append(SkippedFile(str(path), _unreadable_reason(error)))
        else:
            if digest in first_path_of:
                skipped.append(SkippedFile(str(path), f"same file as {first_path_of[digest]}"))
            else:
                first_path_of[digest] = path
                records.append(ImageRecord(path, digest))
    bad = [item for item in skipped if not item.reason.startswith(_REPEAT_REASONS)]
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


def sdxl_crop_geometry(path: Path, size: int) -> tuple[int, int, int, int]:
    """(original height, original width, crop top, crop left) of an image prepared by ``to_model_pixels``,
    as the SDXL training scripts pass them as micro-conditioning: the upright size before resizing, and
    the offset of the centre crop in the image resized so that its shorter side is ``size``. Reads the
    file's header only."""
    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    short = min(width, height)
    resized_height, resized_width = int(height * size / short), int(width * size / short)
    return (height, width, max(0, round((resized_height - size) / 2)), max(0, round((resized_width - size) / 2)))


def load_model_pixels(records: list[ImageRecord], size: int) -> np.ndarray:
    """Pixels of a batch of images, (B, 3, size, size) float32 in [-1, 1]."""
    return np.stack([to_model_pixels(open_image(record.path), size) for record in records])


# Images whose shorter side is below this share of the model's resolution are upscaled so much that their
# features measure the blur of the upscaling as much as the model's familiarity with them.
SMALL_IMAGE_SHARE = 0.5


def small_images_note(records: list[ImageRecord], resolution: int) -> str | None:
    """A warning for the report when images are far smaller than the model's ``resolution`` (read from the
    file headers only), else None."""
    small = []
    for record in records:
        with Image.open(record.path) as image:
            if min(image.size) < SMALL_IMAGE_SHARE * resolution:
                small.append(record)
    if not small:
        return None
    return (f"{len(small)} of {len(records)} images (e.g. {small[0].path.name}) are smaller than half the "
            f"model's resolution of {resolution} px, so they are upscaled before the model sees them; their "
            "features then measure the upscaling's blur as much as the model, and a result on them is weaker.")

