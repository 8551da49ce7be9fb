"""What a network predicts, converted to the noise eps (docs/architecture.md, "The primitives").

With z_t = a z0 + b eps: an epsilon model predicts eps; a v-prediction model v = a eps - b z0, so
eps = a v + b z_t; a sample model z0, so eps = (z_t - a z0) / b; a rectified-flow model (a = 1 - b) the
velocity u = eps - z0, so z0 = eps - u and z_t = eps - a u, i.e. eps = z_t + a u.
"""

from __future__ import annotations

import torch

# What a variance-preserving scheduler's config may say it predicts; a flow-matching scheduler says nothing
# (its models predict the velocity, "flow").
SCHEDULER_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
PREDICTION_TYPES = (*SCHEDULER_PREDICTION_TYPES, "flow")


def to_noise(output: torch.Tensor, z_t: torch.Tensor, a: torch.Tensor, b: torch.Tensor, prediction_type: str
             ) -> torch.Tensor:
    """eps from the network's ``output`` at ``z_t``; ``a`` and ``b`` broadcast against it."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return a * output + b * z_t
    if prediction_type == "sample":
        return (z_t - a * output) / b
    if prediction_type == "flow":
        return z_t + a * output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")
