"""The feature table: one row per image (keyed by sha256), named columns, raw values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_OFFSET = 1e-12


@dataclass(frozen=True)
class FeatureTable:
    """Raw feature values (n_images, n_columns); rows are looked up by image hash, never by position.

    ``log_columns`` are norms, fed to the scoring model as log(value + 1e-12).
    """

    hashes: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray
    log_columns: frozenset[str]

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.hashes), len(self.columns)):
            expected = (len(self.hashes), len(self.columns))
            raise ValueError(f"values of shape {self.values.shape} do not match (rows, columns) = {expected}")

    def rows(self, hashes: list[str] | tuple[str, ...]) -> np.ndarray:
        """Raw values for ``hashes``, in that order."""
        position = {image_hash: index for index, image_hash in enumerate(self.hashes)}
        return self.values[[position[image_hash] for image_hash in hashes]]

    def scoring_matrix(self, hashes: list[str] | tuple[str, ...]) -> np.ndarray:
        """The scoring model's input for ``hashes``: raw values with norm columns log-transformed."""
        matrix = self.rows(hashes).copy()
        for index, column in enumerate(self.columns):
            if column in self.log_columns:
                matrix[:, index] = np.log(matrix[:, index] + LOG_OFFSET)
        return matrix
