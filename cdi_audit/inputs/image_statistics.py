"""What an image looks like without any model: the inputs of the distribution-shift check and of the
near-duplicate search (docs/method.md, "Controls").

If the suspect and reference sets can be told apart from these numbers alone (different cameras,
compression, editing, subjects), then a model-based difference proves nothing about training.
Torch-free; one decode per image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from cdi_audit.inputs.images import open_image

# Statistics are measured on a copy whose longer side is at most this, so a 40-megapixel photograph
# costs what a web image costs; its full size still enters through width, height and bytes per pixel.
WORKING_SIDE = 256
EDGE_THRESHOLD = 0.1  # Sobel magnitude on [0, 1] grey levels that counts as an edge
HUE_BINS = 16
# The grey thumbnail that light crops are matched on, and the trims (fraction of the side, per side) whose
# combinations make an image's framings: a crop that trims up to 10% from any sides of a picture matches one of
# its 81 framings (see ``framing_views``).
THUMBNAIL_SIDE = 32
FRAMING_TRIMS = (0.0, 0.05, 0.10)
# The IJG (libjpeg) luminance quantisation table at quality 50, in zig-zag-free row order; JPEG quality
# is estimated from how a file's table is scaled against it.
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.float64)
STATISTIC_NAMES = (
    "log_width", "log_height", "log_aspect", "log_bytes_per_pixel", "format_jpeg", "format_png", "format_webp",
    "format_other", "jpeg_quality", "has_exif", "mean_red", "mean_green", "mean_blue", "std_red", "std_green",
    "std_blue", "saturation", "edge_density", "high_frequency_energy", "luma_p05", "luma_p50", "luma_p95",
    "hue_entropy",
)


@dataclass(frozen=True)
class ImageDescription:
    """``statistics``: one value per ``STATISTIC_NAMES``; ``perceptual_hash``: 64 bits; ``layout``: the
    8x8 grey thumbnail, centred and scaled to unit norm (both below); ``thumbnail``: the grey picture at
    THUMBNAIL_SIDE x THUMBNAIL_SIDE in [0, 1] (float32), from which its framings are cut."""

    statistics: np.ndarray
    perceptual_hash: int
    layout: np.ndarray
    thumbnail: np.ndarray


def layout_vector(grey: np.ndarray) -> np.ndarray:
    """The picture's coarse layout: 8x8 box-averaged grey levels, mean removed, unit norm (zeros if flat).

    The complement of the pHash: a few compressed or resized low-contrast pictures flip many pHash bits
    (their low frequencies sit near the median), while their 8x8 layout barely moves.
    """
    small = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize((8, 8), Image.Resampling.BOX),
                       dtype=np.float64).reshape(-1)
    small -= small.mean()
    norm = np.linalg.norm(small)
    return small / norm if norm > 0 else small


def jpeg_quality(image: Image.Image) -> float:
    """The IJG quality (1-100) whose scaling best matches the file's luminance table; 100 for lossless
    formats, so 'not JPEG' and 'best JPEG' sit together and a shift in compression still shows."""
    tables = getattr(image, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return 100.0
    scale = 100 * float(np.mean(np.asarray(tables[0], dtype=np.float64) / IJG_LUMINANCE))
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return float(np.clip(quality, 1, 100))


def perceptual_hash(grey: np.ndarray) -> int:
    """pHash: the signs of the 8x8 lowest 2-D DCT frequencies of a 32x32 grey image against their median
    (the DC term excluded from the median). Re-encoding and resizing barely change it."""
    small = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).resize((32, 32), Image.Resampling.LANCZOS),
                       dtype=np.float64)
    low = fft.dctn(small, norm="ortho")[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int(sum(1 << index for index, bit in enumerate(bits) if bit))


def grey_thumbnail(grey: np.ndarray) -> np.ndarray:
    """The picture as THUMBNAIL_SIDE x THUMBNAIL_SIDE box-averaged grey levels in [0, 1] (float32)."""
    image = Image.fromarray(np.asarray(grey, dtype=np.float32))  # float32 gives mode "F"
    small = image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


@functools.cache
def _framing_operators() -> np.ndarray:
    """(len(FRAMING_TRIMS)**2, 8, THUMBNAIL_SIDE): each row-average operator that box-resizes the span left
    after trimming (start, end) fractions off one axis to 8 cells (pixels weighted by their overlap)."""
    side, operators = THUMBNAIL_SIDE, []
    for start in FRAMING_TRIMS:
        for end in FRAMING_TRIMS:
            edges = np.linspace(start * side, side - end * side, 9)
            pixels = np.arange(side)
            overlap = (np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)).clip(0)
            operators.append(overlap / overlap.sum(axis=1, keepdims=True))
    return np.stack(operators).astype(np.float32)


def framing_views(thumbnails: np.ndarray, whole_only: bool = False) -> np.ndarray:
    """(n, K, 64) unit-norm, mean-removed 8x8 layouts of every framing of each (n, side, side) thumbnail:
    the picture with each combination of FRAMING_TRIMS cut off its four sides (K = 81; view 0 is the whole
    picture, and ``whole_only`` computes that one alone). A light crop of a picture correlates with one of
    the picture's framings as a re-encoded copy correlates with the picture itself."""
    operators = _framing_operators()[:1] if whole_only else _framing_operators()
    views = np.einsum("aij,njk,blk->nabil", operators, thumbnails, operators, optimize=True)
    views = views.reshape(len(thumbnails), len(operators) ** 2, 64)
    views -= views.mean(axis=2, keepdims=True)
    norms = np.linalg.norm(views, axis=2, keepdims=True)
    return np.divide(views, norms, out=np.zeros_like(views), where=norms > 0)


def hamming(first: int, second: int) -> int:
    return (first ^ second).bit_count()


def _hue_entropy(hsv: np.ndarray) -> float:
    """Entropy (bits) of the saturation-weighted hue histogram: how many distinct colours an image has."""
    weights = hsv[..., 1].reshape(-1)
    if weights.sum() == 0:
        return 0.0
    histogram, _ = np.histogram(hsv[..., 0].reshape(-1), bins=HUE_BINS, range=(0, 1), weights=weights)
    shares = histogram[histogram > 0] / histogram.sum()
    return float(-(shares * np.log2(shares)).sum())


def describe_image(path: Path) -> ImageDescription:
    with Image.open(path) as raw:
        width, height = raw.size
        file_format = (raw.format or "").upper()
        quality = jpeg_quality(raw) if file_format == "JPEG" else 100.0
        has_exif = float(len(raw.getexif()) > 0)
    picture = open_image(path)
    picture.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
    rgb = np.asarray(picture, dtype=np.float64) / 255
    hsv = np.asarray(picture.convert("HSV"), dtype=np.float64) / 255
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    edges = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1)) / 8  # Sobel gain is 8
    power = np.abs(fft.fftshift(fft.fft2(grey - grey.mean()))) ** 2
    rows, columns = np.indices(power.shape)
    radius = np.hypot((rows - power.shape[0] / 2) / power.shape[0], (columns - power.shape[1] / 2) / power.shape[1])
    total = power.sum()
    statistics = [
        np.log(width), np.log(height), np.log(width / height), np.log(path.stat().st_size / (width * height)),
        file_format == "JPEG", file_format == "PNG", file_format == "WEBP",
        file_format not in ("JPEG", "PNG", "WEBP"), quality, has_exif,
        *rgb.mean(axis=(0, 1)), *rgb.std(axis=(0, 1)), hsv[..., 1].mean(),
        (edges > EDGE_THRESHOLD).mean(),
        power[radius > 0.25].sum() / total if total > 0 else 0.0,  # beyond half the Nyquist frequency
        *np.percentile(grey, [5, 50, 95]), _hue_entropy(hsv),
    ]
    return ImageDescription(np.asarray(statistics, dtype=np.float64), perceptual_hash(grey), layout_vector(grey),
                            grey_thumbnail(grey))
