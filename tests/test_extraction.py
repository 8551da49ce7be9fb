"""The feature stage on a real (tiny, random) UNet: batch independence, cache and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from feature_checks import FLOAT32_ATOL, FLOAT32_RTOL, assert_features_close

from cdi_audit.cache import FeatureStore
from cdi_audit.features.catalogue import PRESETS, column_count, noise_predictions
from cdi_audit.features.registry import resolve_extractors
from cdi_audit.inputs.images import scan_image_set
from cdi_audit.models.loading import load_target
from cdi_audit.pipeline.extraction import extract_features


@pytest.fixture(scope="module")
def target(tiny_model: Path):
    return load_target(tiny_model, torch.device("cpu"))


@pytest.fixture(scope="module")
def records(image_sets: tuple[Path, Path]):
    suspect, reference = image_sets
    return scan_image_set(suspect).records + scan_image_set(reference).records


def test_features_do_not_depend_on_batch_size_or_neighbours(target, records) -> None:
    extractors = resolve_extractors("fast")
    alone, _ = extract_features(records[:6], target, extractors, seed=0, batch_size=1)
    batched, _ = extract_features(records[:6], target, extractors, seed=0, batch_size=4)
    reordered, _ = extract_features(records[6:8] + records[5:6] + records[:5], target, extractors, 0, 3)
    # Same image in a batch of the same size with other neighbours: bit-identical.
    np.testing.assert_array_equal(alone.rows(alone.keys[:1]), extract_features(
        records[:1], target, extractors, 0, 1)[0].values)
    # Other batch sizes change only the float rounding of the convolution kernels (measured <= 1e-6).
    assert_features_close(batched.values, alone.values, alone.columns, atol=0)
    assert_features_close(reordered.rows(alone.keys), alone.values, alone.columns, atol=0)
    assert alone.columns == batched.columns and len(alone.columns) == column_count(PRESETS["fast"])


def test_gradient_features_do_not_depend_on_batch_or_micro_batch_size(target, records) -> None:
    extractors = resolve_extractors("gradient_masking,noise_optim")
    alone, summary = extract_features(records[:5], target, extractors, seed=0, batch_size=1)
    batched, _ = extract_features(records[:5], target, extractors, seed=0, batch_size=5, max_batch_grad=2)
    whole, _ = extract_features(records[:5], target, extractors, seed=0, batch_size=5, max_batch_grad=5)
    assert alone.columns[-3:] == ("noise_optim_loss_t100", "noise_optim_delta_t100", "noise_optim_gradient_t100")
    assert len(alone.columns) == column_count(["gradient_masking", "noise_optim"])
    # Other batch sizes change the float rounding of the model (~1e-7), which five optimisation
    # steps amplify a little in noise_optim (measured ~5e-6 relative).
    np.testing.assert_allclose(batched.values[:, :10], alone.values[:, :10], rtol=1e-5)
    np.testing.assert_allclose(whole.values[:, :10], alone.values[:, :10], rtol=1e-5)
    np.testing.assert_allclose(batched.values[:, 10:], alone.values[:, 10:], rtol=1e-4)
    np.testing.assert_allclose(whole.values[:, 10:], alone.values[:, 10:], rtol=1e-4)
    assert np.isfinite(alone.values).all() and (alone.values > 0).all()
    assert summary.model_calls >= 5 * (20 + 2)


def test_neighbours_in_an_equal_sized_batch_leave_an_image_unchanged(target, records) -> None:
    """Other neighbours in a batch of the same shape: the image's own noise and features, to float32 rounding
    (kernels choose their summation order by shape, which some CPUs split by content too)."""
    extractors = resolve_extractors("loss,pia")
    first, _ = extract_features(records[0:1] + records[1:4], target, extractors, 0, 4)
    second, _ = extract_features(records[0:1] + records[8:11], target, extractors, 0, 4)
    np.testing.assert_allclose(first.rows(first.keys[:1]), second.rows(first.keys[:1]), rtol=FLOAT32_RTOL,
                               atol=FLOAT32_ATOL)
    assert not np.allclose(first.rows(first.keys[1:2]), second.rows(second.keys[1:2]))


def test_a_different_seed_draws_different_noise(target, records) -> None:
    extractors = resolve_extractors("loss")
    seed0, _ = extract_features(records[:3], target, extractors, 0, 3)
    seed1, _ = extract_features(records[:3], target, extractors, 1, 3)
    assert not np.allclose(seed0.values, seed1.values)


def test_cached_features_are_reused_and_a_partial_run_resumes(target, records, tmp_path: Path) -> None:
    extractors = resolve_extractors("fast")
    store = FeatureStore(tmp_path)
    first, first_summary = extract_features(records[:5], target, extractors, 0, 2, store)
    assert first_summary.model_calls == 5 * noise_predictions(PRESETS["fast"])
    everything, summary = extract_features(records, target, extractors, 0, 4, store)
    assert summary.images_from_cache == 5
    assert summary.model_calls == (len(records) - 5) * noise_predictions(PRESETS["fast"])
    np.testing.assert_array_equal(everything.rows(first.keys), first.values)
    again, again_summary = extract_features(records, target, extractors, 0, 4, store)
    assert again_summary.model_calls == 0 and again_summary.images_from_cache == len(records)
    np.testing.assert_array_equal(again.values, everything.values)


def test_a_killed_write_leaves_no_partial_chunk(tmp_path: Path) -> None:
    section = FeatureStore(tmp_path).section({"extractor": "loss"})
    section.append(["a" * 64], np.array([[1.5]]))
    (section.folder / "tmpabc.tmp").write_bytes(b"half a chunk")  # what a kill during a write leaves
    assert set(section.load()) == {"a" * 64}
    np.testing.assert_array_equal(section.load()["a" * 64], [1.5])
    other = FeatureStore(tmp_path).section({"extractor": "loss", "seed": 1})
    assert other.folder != section.folder and other.load() == {}


def test_an_interrupted_run_resumes_without_recomputing_finished_batches(target, records, tmp_path: Path) -> None:
    from cdi_audit.features.loss import DenoisingLoss

    class InterruptedOnThirdBatch(DenoisingLoss):
        batches = 0

        def plan(self, target, batch, noise):
            type(self).batches += 1
            if type(self).batches == 3:
                raise KeyboardInterrupt
            return (yield from super().plan(target, batch, noise))

    store = FeatureStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract_features(records, target, [InterruptedOnThirdBatch()], seed=0, batch_size=4, store=store)
    resumed, summary = extract_features(records, target, [DenoisingLoss()], seed=0, batch_size=4, store=store)
    assert summary.images_from_cache == 8
    assert summary.model_calls == (len(records) - 8) * 5
    fresh, _ = extract_features(records, target, [DenoisingLoss()], seed=0, batch_size=4)
    np.testing.assert_array_equal(resumed.values, fresh.values)


def test_half_precision_applies_to_forward_passes_but_not_to_inversions(tiny_model: Path, records) -> None:
    """bfloat16 autocast (here on the CPU) changes noise-prediction features a little, leaves the DDIM
    inversion of SecMI in float32 (identical values), and keys the cache by precision."""
    from cdi_audit.pipeline.extraction import cache_key

    full = load_target(tiny_model, torch.device("cpu"))
    half = load_target(tiny_model, torch.device("cpu"), dtype=torch.bfloat16)
    assert (half.description.dtype, full.description.dtype) == ("bfloat16", "float32")
    extractors = resolve_extractors("loss,secmi")
    reference, _ = extract_features(records[:4], full, extractors, seed=0, batch_size=4)
    reduced, _ = extract_features(records[:4], half, extractors, seed=0, batch_size=4)
    loss, secmi = reference.columns.index("loss_t100"), reference.columns.index("secmi_t100")
    np.testing.assert_array_equal(reduced.values[:, secmi], reference.values[:, secmi])
    assert not np.array_equal(reduced.values[:, loss], reference.values[:, loss])
    np.testing.assert_allclose(reduced.values[:, loss], reference.values[:, loss], rtol=0.05)
    assert cache_key(half, extractors[0], 0) != cache_key(full, extractors[0], 0)


def test_a_truncated_cache_chunk_is_named_and_recomputed_once_deleted(target, records, tmp_path: Path) -> None:
    from cdi_audit.errors import InputProblem
    from cdi_audit.features.loss import DenoisingLoss

    store = FeatureStore(tmp_path)
    first, _ = extract_features(records[:4], target, [DenoisingLoss()], seed=0, batch_size=4, store=store)
    [chunk] = tmp_path.rglob("chunk-*.npz")
    chunk.write_bytes(chunk.read_bytes()[:-100])  # a partial copy of the cache
    with pytest.raises(InputProblem) as raised:
        extract_features(records[:4], target, [DenoisingLoss()], seed=0, batch_size=4, store=store)
    assert str(raised.value) == (f"The cache chunk {chunk} cannot be read (BadZipFile: damaged, perhaps copied only "
                                 "in part); delete it and its features are computed again.")
    assert raised.value.exit_code == 3
    chunk.unlink()
    again, summary = extract_features(records[:4], target, [DenoisingLoss()], seed=0, batch_size=4, store=store)
    assert summary.images_from_cache == 0 and summary.model_calls == 4 * 5
    np.testing.assert_array_equal(again.values, first.values)


def test_a_cache_dir_that_is_a_file_is_refused_as_a_setting(tmp_path: Path) -> None:
    from cdi_audit.errors import SettingsProblem

    (tmp_path / "cache").write_text("not a folder")
    for root, where in ((tmp_path / "cache", "is a file"),
                        (tmp_path / "cache" / "inner", f"lies inside {tmp_path / 'cache'}, which is a file")):
        with pytest.raises(SettingsProblem) as raised:
            FeatureStore(root)
        assert str(raised.value) == f"The cache folder {root} {where}, not a folder; give a folder for --cache-dir."
    assert FeatureStore(tmp_path / "new" / "cache").root == tmp_path / "new" / "cache"  # made when first written
