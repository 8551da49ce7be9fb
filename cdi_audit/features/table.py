"""The feature table: one row per image (keyed by ``ImageRecord.key``), named columns, raw values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_OFFSET = 1e-12


@dataclass(frozen=True)
class FeatureTable:
    """Raw feature values (n_images, n_columns); rows are looked up by key, never by position.

    A key is the image's sha256, or for a conditional model a hash of the
    image's sha256 and its caption or class (see ``ImageRecord.key``).

    ``log_columns`` are norms, fed to the scoring model as log(value + 1e-12).
    """

    keys: tuple[str, ...]
    columns: tuple[str, ...]
    values: np.ndarray
    log_columns: frozenset[str]

    def __post_init__(self) -> None:
        if self.values.shape != (len(self.keys), len(self.columns)):
            expected = (len(self.keys), len(self.columns))
            raise ValueError(f"values of shape {self.values.shape} do not match (rows, columns) = {expected}")

    def rows(self, keys: list[str] | tuple[str, ...]) -> np.ndarray:
        """Raw values for ``keys``, in that order."""
        position = {key: index for index, key in enumerate(self.keys)}
        return self.values[[position[key] for key in keys]]

    def scoring_matrix(self, keys: list[str] | tuple[str, ...]) -> np.ndarray:
        """The scoring model's input for ``keys``: raw values with norm columns log-transformed."""
        matrix = self.rows(keys).copy()
        for index, column in enumerate(self.columns):
            if column in self.log_columns:
                matrix[:, index] = np.log(matrix[:, index] + LOG_OFFSET)
        return matrix


CALIBRATED_SUFFIX = "_minus_base"


def calibrated(adapted: FeatureTable, base: FeatureTable) -> FeatureTable:
    """The scoring model's input for an adapter audit: the adapted model's features and how much the adapter
    changed each of them, image by image (adapted minus base, on the scoring scale: norms logged first, so a
    norm's change is the log of its ratio), for the columns and keys both tables have.

    Both tables must come from the same images at the same noise (the same seed). The change removes what the
    image itself contributes (its difficulty) where the base's value measures it; the features themselves
    are kept because a base that generalises poorly measures difficulty badly, and the scoring model then
    leans on them (benchmarks/RESULTS.md, LoRA calibration: neither alone is best on both kinds of base).
    """
    columns = tuple(column for column in adapted.columns if column in base.columns)
    base_keys = set(base.keys)
    keys = tuple(key for key in adapted.keys if key in base_keys)

    def scaled(table: FeatureTable) -> np.ndarray:
        matrix = table.scoring_matrix(keys)
        return matrix[:, [table.columns.index(column) for column in columns]]

    features = scaled(adapted)
    return FeatureTable(keys=keys, columns=columns + tuple(column + CALIBRATED_SUFFIX for column in columns),
                        values=np.hstack([features, features - scaled(base)]), log_columns=frozenset())
