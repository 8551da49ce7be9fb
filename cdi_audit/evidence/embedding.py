"""A model-agnostic image embedding for comparing generations with the owner's images.

No pretrained embedding network (SSCD, DINO, CLIP image towers) can be downloaded where audits run, so
images are compared by their pixels at low resolution: area-downsampled to ``size`` x ``size``, each
image's mean removed (brightness), then scaled to unit length. The cosine of two embeddings is then
1 - d^2 / 2 for d the normalised L2 distance that SIDE uses at low resolution; 1 means the same picture
up to brightness and detail finer than the grid. It cannot see through crops, flips or shifts, which
is why a match is a near-copy and the absence of matches proves nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_SIZE = 16


def embed_images(images: torch.Tensor, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """Images in [-1, 1], (N, 3, H, W) -> unit vectors (N, 3 * size * size), float32 on the CPU."""
    flat = F.interpolate(images.float().cpu(), size=(size, size), mode="area").flatten(1)  # identity at size
    centred = flat - flat.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-8)


def cosine_similarities(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(Q, D) x (K, D) unit vectors -> (Q, K) cosines."""
    return queries @ keys.T
