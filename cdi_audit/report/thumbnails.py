"""A strip of thumbnails, so the reader of a report sees what was compared.

Drawn from the image files the report lists, and only from files that still have the sha256 the audit
recorded: a strip never shows an image that was not the one tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdi_audit.inputs.images import file_sha256, open_image
from cdi_audit.report.figures import ROLE_LABELS, figure_png, pyplot
from cdi_audit.results.schema import AuditResult

THUMBNAILS_PER_SET = 8
THUMBNAIL_PIXELS = 128


def _unchanged_images(result: AuditResult, role: str, count: int) -> list[np.ndarray]:
    """The first ``count`` images of ``role`` (in the report's order) whose file still matches, as RGB arrays."""
    pictures = []
    for image in result.images:
        if len(pictures) == count:
            break
        path = Path(image.path)
        if image.role != role or not path.is_file() or file_sha256(path) != image.sha256:
            continue
        picture = open_image(path)
        picture.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        pictures.append(np.asarray(picture))
    return pictures


def thumbnail_strip(result: AuditResult, per_set: int = THUMBNAILS_PER_SET) -> bytes | None:
    """Two rows of up to ``per_set`` thumbnails (suspect above, reference below) as PNG; None when no file
    of either set is still there unchanged."""
    rows = {role: _unchanged_images(result, role, per_set) for role in ROLE_LABELS}
    columns = max(len(pictures) for pictures in rows.values())
    if columns == 0:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(2, columns, figsize=(9, 2.6), squeeze=False)
    for axes_row, (role, pictures) in zip(axes, rows.items(), strict=True):
        for index, axis in enumerate(axes_row):
            axis.axis("off")
            if index < len(pictures):
                axis.imshow(pictures[index], interpolation="nearest")
        axes_row[0].set_title(f"{ROLE_LABELS[role]}: {len(pictures)} of "
                              f"{sum(image.role == role for image in result.images)}",
                              fontsize=9, loc="left")
    figure.tight_layout()
    return figure_png(figure)
