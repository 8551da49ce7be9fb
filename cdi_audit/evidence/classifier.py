"""The surrogate classifier: which pool cluster a noised latent comes from, at any timestep.

SIDE's guidance needs grad log p(cluster | z_t) along the whole sampling path, so the classifier sees
noised latents z_t = a z0 + b eps at levels drawn uniformly over the model's schedule, with the level given
to it as a sinusoidal embedding. It is deliberately small (three convolutions): it only
has to tell a few dozen clusters of one model's own generations apart, and trains in seconds on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cdi_audit.evidence.sampling import Guidance
from cdi_audit.models.schedule import Level
from cdi_audit.models.target import Target

DEFAULT_TRAINING_STEPS = 600
TIME_FEATURES = 32


def timestep_features(timesteps: torch.Tensor, total: int) -> torch.Tensor:
    """Sinusoidal features of t / total, (B, TIME_FEATURES)."""
    half = TIME_FEATURES // 2
    frequencies = torch.exp(torch.arange(half, device=timesteps.device) * (-math.log(1000.0) / half))
    angles = (timesteps.float() / total * 1000.0)[:, None] * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SurrogateClassifier(nn.Module):
    def __init__(self, channels: int, classes: int, total_timesteps: int, width: int = 32) -> None:
        super().__init__()
        self.total_timesteps = total_timesteps
        self.time = nn.Sequential(nn.Linear(TIME_FEATURES, width), nn.SiLU(), nn.Linear(width, width))
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * width), nn.SiLU(), nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * width), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, classes)

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        time = self.time(timestep_features(timesteps, self.total_timesteps))
        return self.head(self.body(self.stem(z_t) + time[:, :, None, None]))


def train_surrogate(target: Target, latents: torch.Tensor, labels: torch.Tensor, classes: int, seed: int,
                    steps: int = DEFAULT_TRAINING_STEPS, batch_size: int = 64) -> SurrogateClassifier:
    """A classifier of ``labels`` from noised ``latents`` (N, C, H, W), trained with AdamW on random
    timesteps and noise from a generator seeded by ``seed`` (the same seed gives the same classifier)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the layers' initial weights
    schedule = target.schedule
    classifier = SurrogateClassifier(latents.shape[1], classes, schedule.span).to(target.device)
    optimiser = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=1e-4)
    latents, labels = latents.cpu(), labels.cpu().long()
    for _ in range(steps):
        rows = torch.randint(0, len(latents), (batch_size,), generator=generator)
        timesteps = schedule.random_levels(batch_size, generator)
        noise = torch.randn((batch_size, *latents.shape[1:]), generator=generator)
        a, b = (value.float().view(-1, 1, 1, 1) for value in schedule.row_coefficients(timesteps))
        z_t = (a * latents[rows] + b * noise).to(target.device)
        loss = F.cross_entropy(classifier(z_t, timesteps.to(target.device)), labels[rows].to(target.device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return classifier.eval().requires_grad_(False)


def towards(classifier: SurrogateClassifier, cluster: int) -> Guidance:
    """grad log p(cluster | z_t) with respect to z_t, image by image."""
    def gradient(z_t: torch.Tensor, t: Level) -> torch.Tensor:
        with torch.enable_grad():
            z = z_t.detach().requires_grad_(True)
            timesteps = torch.full((len(z),), t, device=z.device)
            log_probability = F.log_softmax(classifier(z, timesteps), dim=1)[:, cluster].sum()
            (grad,) = torch.autograd.grad(log_probability, z)
        return grad
    return gradient
