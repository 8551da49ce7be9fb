"""How much of a model an audit can reach, from least to most; torch-free, so catalogues and reports can name it."""

from __future__ import annotations

from typing import Literal

Access = Literal["black", "grey", "white"]
# From least to most: an image-to-image endpoint, noise predictions, weights and gradients.
ACCESS_LEVELS: tuple[Access, ...] = ("black", "grey", "white")
ACCESS_DESCRIPTIONS: dict[Access, str] = {
    "black": "image-to-image calls only",
    "grey": "noise predictions at chosen timesteps",
    "white": "the weights, for gradients",
}


def within(needed: Access, available: Access) -> bool:
    """Whether a model that gives ``available`` access serves what needs ``needed``."""
    return ACCESS_LEVELS.index(needed) <= ACCESS_LEVELS.index(available)
