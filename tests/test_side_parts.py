"""The parts of the extraction-evidence search (SIDE): the DDIM sampler, the generation pool and its cache,
the embedding, the pool's clusters and the surrogate classifier's guidance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cdi_audit.cache import FeatureStore
from cdi_audit.evidence.classifier import SurrogateClassifier, towards
from cdi_audit.evidence.clusters import cluster_pool, leave_one_out_cohesion
from cdi_audit.evidence.embedding import cosine_similarities, embed_images
from cdi_audit.evidence.pool import generate
from cdi_audit.evidence.sampling import ddim_sample, initial_noise
from cdi_audit.models.loading import load_target
from cdi_audit.models.schedule import trailing_timesteps as ddim_timesteps


@pytest.fixture(scope="module")
def target(trained_tiny_model):
    return load_target(trained_tiny_model[0], torch.device("cpu"))


def test_ddim_timesteps_are_diffusers_trailing_spacing() -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    for steps in (1, 10, 50, 333):
        scheduler.set_timesteps(steps)
        assert ddim_timesteps(1000, steps) == scheduler.timesteps.tolist()
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_the_sampler_is_diffusers_ddim_with_clipped_estimates(target) -> None:
    """Same start, same schedule: our loop and diffusers' DDIMScheduler (eta 0, clip_sample, trailing spacing,
    final alpha 1) give the same images."""
    from diffusers import DDIMScheduler

    noise = initial_noise((3, 16, 16), 0, "pool", range(4), target.device)
    ours = ddim_sample(target, noise, steps=20)
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=True,
                              set_alpha_to_one=True)
    scheduler.set_timesteps(20)
    sample = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(target.predict_noise(sample, int(t)), t, sample).prev_sample
    np.testing.assert_allclose(ours.numpy(), sample.numpy(), rtol=1e-4, atol=1e-5)
    assert ours.abs().max() <= 1.0 and ours.std() > 0.1  # clipped images, not a constant


def test_generations_depend_on_the_seed_only_and_are_stored_once(target, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    rows = target.forward_rows
    first = generate(target, "pool", 10, seed=3, steps=5, batch_size=4, store=store)
    assert target.forward_rows - rows == 10 * 5
    rows = target.forward_rows
    again = generate(target, "pool", 10, seed=3, steps=5, batch_size=10, store=store)
    assert target.forward_rows == rows  # all read back
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    alone = generate(target, "pool", 10, seed=3, steps=5, batch_size=3, store=None)
    np.testing.assert_allclose(alone.numpy(), first.numpy(), rtol=1e-4, atol=1e-5)  # batch size: rounding only
    rows = target.forward_rows
    more = generate(target, "pool", 14, seed=3, steps=5, batch_size=4, store=store)  # a larger pool extends it
    assert target.forward_rows - rows == 4 * 5
    np.testing.assert_array_equal(more[:10].numpy(), first.numpy())
    other = generate(target, "pool", 10, seed=4, steps=5, batch_size=10, store=None)
    assert np.abs(other.numpy() - first.numpy()).mean() > 0.05


def test_the_embedding_compares_pictures_up_to_brightness() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((5, 3, 32, 32), generator=generator) * 2 - 1
    embedded = embed_images(images, size=16)
    assert embedded.shape == (5, 768)
    np.testing.assert_allclose(embedded.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    brighter = embed_images((images + 0.2).clamp(-1, 2), size=16)
    np.testing.assert_allclose(cosine_similarities(embedded, brighter).diagonal().numpy(), 1.0, rtol=1e-5)
    # Cosine of unit vectors = 1 - d^2 / 2 for their L2 distance d: the normalised L2 of SIDE at low resolution.
    small = torch.nn.functional.avg_pool2d(images, 2).flatten(1)
    centred = small - small.mean(dim=1, keepdim=True)
    unit = centred / centred.norm(dim=1, keepdim=True)
    distance = torch.cdist(unit, unit)
    np.testing.assert_allclose(cosine_similarities(embedded, embedded).numpy(), (1 - distance**2 / 2).numpy(),
                               atol=1e-5)


def test_only_cohesive_clusters_are_kept() -> None:
    generator = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(3, 64, generator=generator), dim=1)
    tight = torch.cat([centres[k] + 0.05 * torch.randn(20, 64, generator=generator) for k in range(3)])
    loose = torch.randn(40, 64, generator=generator)  # noise: no cluster there is cohesive
    embeddings = torch.nn.functional.normalize(torch.cat([tight, loose]), dim=1)
    clusters = cluster_pool(embeddings, seed=0, max_clusters=8, cohesion=0.5)
    assert len(clusters.centroids) == 8 and clusters.sizes.sum() == 100
    assert len(clusters.kept) == 3
    for k in clusters.kept:
        members = np.flatnonzero(clusters.labels == k)
        tight_members = members[members < 60]
        assert len(tight_members) == 20 and len({int(m) // 20 for m in tight_members}) == 1
        assert len(members) - 20 <= 2  # k-means may hang a stray noise vector on a tight cluster
        assert clusters.cohesion[k] > 0.9
    assert list(clusters.cohesion[list(clusters.kept)]) == sorted(clusters.cohesion[list(clusters.kept)],
                                                                  reverse=True)
    # Left out, two unrelated unit vectors score their own cosine (about 0), not the 0.71 of the plain mean.
    pair = torch.nn.functional.normalize(torch.randn(2, 768, generator=generator), dim=1).double().numpy()
    assert abs(leave_one_out_cohesion(pair) - float(pair[0] @ pair[1])) < 1e-6
    assert abs(leave_one_out_cohesion(pair)) < 0.15


def test_guidance_is_the_gradient_of_the_log_probability() -> None:
    torch.manual_seed(0)
    classifier = SurrogateClassifier(channels=3, classes=4, total_timesteps=1000).eval()
    z = torch.randn(2, 3, 16, 16)
    gradient = towards(classifier, 2)(z, 500)
    assert gradient.shape == z.shape and not z.requires_grad

    def log_probability(point: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = classifier(point, torch.full((2,), 500))
        return torch.log_softmax(logits, dim=1)[:, 2]

    step = 1e-3 * gradient / gradient.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    change = log_probability(z + step) - log_probability(z - step)
    expected = 2 * (gradient * step).flatten(1).sum(dim=1)  # central difference along the gradient
    np.testing.assert_allclose(change.numpy(), expected.numpy(), rtol=0.05)
    assert (change > 0).all()
