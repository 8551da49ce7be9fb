"""Every fast-preset feature against a hand computation on a target whose noise prediction is known.

The analytic target predicts eps_theta(z, t) = c_t * z with c_t = 0.3 + t / 1000,
so every quantity can be written out in float64 numpy and compared.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from feature_checks import FLOAT32_ATOL, FLOAT32_RTOL

from cdi_audit.errors import AccessInsufficient, ExitCode
from cdi_audit.features.base import LatentBatch, NoiseSource
from cdi_audit.features.catalogue import CATALOGUE, PRESETS, column_count
from cdi_audit.features.gradient_masking import GradientMasking
from cdi_audit.features.loss import DenoisingLoss
from cdi_audit.features.multi_loss import MultiTimestepLoss
from cdi_audit.features.neighbour_loss import NeighbourLoss
from cdi_audit.features.noise_optim import NoiseOptimisation
from cdi_audit.features.pia import PIA
from cdi_audit.features.registry import extractor_names, require_access, resolve_extractors
from cdi_audit.features.secmi import SecMI
from cdi_audit.models.condition import Condition
from cdi_audit.models.schedule import DiscreteSchedule
from cdi_audit.models.target import Target
from cdi_audit.results.schema import ModelInfo


def linear_schedule(steps: int) -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class AnalyticTarget(Target):
    """eps_theta(z, t) = (0.3 + t / T) * z, exactly, in float64."""

    def __init__(self, steps: int = 1000, prediction_type: str = "epsilon") -> None:
        description = ModelInfo(path="analytic", fingerprint="0" * 64, family="analytic", sample_size=4,
                                num_train_timesteps=steps, prediction_type=prediction_type, device="cpu")
        schedule = DiscreteSchedule(linear_schedule(steps), "pixel")
        super().__init__(schedule, prediction_type, 3, torch.device("cpu"), description)

    def coefficient(self, t: int) -> float:
        return 0.3 + t / self.schedule.train_steps

    def _model_output(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition=None) -> torch.Tensor:
        return (0.3 + timesteps.double() / self.schedule.train_steps).view(-1, 1, 1, 1) * z_t.double()


@pytest.fixture
def batch() -> LatentBatch:
    z0 = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    return LatentBatch(z0, ("a" * 64, "b" * 64, "c" * 64))


def l2(values: np.ndarray) -> np.ndarray:
    return np.sqrt((values.reshape(len(values), -1) ** 2).sum(axis=1))


def test_every_image_gets_the_same_noise_and_its_features_do_not_depend_on_the_batch(batch: LatentBatch) -> None:
    """Common random numbers: one draw per (seed, extractor, purpose, draw), shared by every image, so an
    image's noise (and its features) is the same alone as in any batch; another purpose, draw or seed differs."""
    noise = NoiseSource(seed=3)
    eps = noise.draw(batch, "loss", "t100", 0)
    assert all(torch.equal(eps[0], row) for row in eps[1:])
    alone = batch.select([2])
    torch.testing.assert_close(noise.draw(alone, "loss", "t100", 0)[0], eps[2], rtol=0, atol=0)
    for other in (noise.draw(batch, "loss", "t200", 0), noise.draw(batch, "loss", "t100", 1),
                  NoiseSource(seed=4).draw(batch, "loss", "t100", 0)):
        assert not torch.equal(other[0], eps[0])
    target = AnalyticTarget()
    together = DenoisingLoss().extract(target, batch, noise)
    # float64 throughout; the per-image norm of a batch of one may sum in another order
    torch.testing.assert_close(DenoisingLoss().extract(target, alone, noise)[0], together[2], rtol=1e-12, atol=0)


def test_loss_matches_hand_computation(batch: LatentBatch) -> None:
    target, noise = AnalyticTarget(), NoiseSource(seed=3)
    a = float(target.schedule.alphas_cumprod[100])
    z0, c = batch.z0.double().numpy(), target.coefficient(100)
    expected = np.zeros(3)
    for draw in range(5):
        eps = noise.draw(batch, "loss", "t100", draw).double().numpy()
        z_t = math.sqrt(a) * z0 + math.sqrt(1 - a) * eps
        expected += l2(c * z_t - eps) / 5
    values = DenoisingLoss().extract(target, batch, noise)
    assert values.shape == (3, 1)
    np.testing.assert_allclose(values[:, 0].numpy(), expected, rtol=1e-6)
    assert target.forward_rows == 5 * 3


def test_multi_loss_shares_one_noise_draw_across_timesteps(batch: LatentBatch) -> None:
    target, noise = AnalyticTarget(), NoiseSource(seed=3)
    eps = noise.draw(batch, "multi_loss", "shared").double().numpy()
    z0 = batch.z0.double().numpy()
    expected = []
    for t in range(0, 1000, 100):
        a = float(target.schedule.alphas_cumprod[t])
        expected.append(l2(target.coefficient(t) * (math.sqrt(a) * z0 + math.sqrt(1 - a) * eps) - eps))
    extractor = MultiTimestepLoss()
    values = extractor.extract(target, batch, noise)
    assert extractor.columns[0] == "multi_loss_t000" and extractor.columns[-1] == "multi_loss_t900"
    np.testing.assert_allclose(values.numpy(), np.stack(expected, axis=1), rtol=1e-6)


def neighbour_losses(target: AnalyticTarget, x: np.ndarray, noise: NoiseSource, batch: LatentBatch, t: int,
                     draws: int) -> np.ndarray:
    """The loss ||c_t z_t - eps|| of pixel images ``x``, averaged over the extractor's draws at ``t``."""
    a, c = float(target.schedule.alphas_cumprod[t]), target.coefficient(t)
    total = np.zeros(len(x))
    for draw in range(draws):
        eps = noise.draw(batch, "neighbour_loss", f"t{t:03d}", draw).double().numpy()
        total += l2(c * (math.sqrt(a) * x + math.sqrt(1 - a) * eps) - eps) / draws
    return total


def test_neighbour_loss_matches_hand_computation() -> None:
    """Columns loss(x) - loss(T x), the same noise for both, for T = mirror (the columns reversed), shift (right
    by 2 and down by 1 pixel on a 16 px image, the edge repeated) and a JPEG re-encode at quality 90."""
    from PIL import Image

    rng = np.random.default_rng(7)
    uint8 = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)  # images as decoded: 8-bit steps
    images = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1
    batch = LatentBatch(images.clone(), ("a" * 64, "b" * 64, "c" * 64), images=images)
    target, noise = AnalyticTarget(), NoiseSource(seed=6)
    x = images.double().numpy()
    padded = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 0)), mode="edge")
    jpeg = []
    for image in uint8:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        jpeg.append(np.asarray(Image.open(buffer)).transpose(2, 0, 1) / 127.5 - 1)
    neighbours = {"mirror": x[..., ::-1], "shift": padded[..., :16, :16], "jpeg": np.stack(jpeg)}
    extractor = NeighbourLoss(timesteps=(50, 200), neighbours=("mirror", "shift", "jpeg"), draws=2)
    values = extractor.extract(target, batch, noise).numpy()
    assert extractor.columns == ("neighbour_mirror_t050", "neighbour_shift_t050", "neighbour_jpeg_t050",
                                 "neighbour_mirror_t200", "neighbour_shift_t200", "neighbour_jpeg_t200")
    expected = [neighbour_losses(target, x, noise, batch, t, 2) - neighbour_losses(target, y, noise, batch, t, 2)
                for t in (50, 200) for y in neighbours.values()]
    # z_t is formed in float32: each loss, a norm over 768 values, carries a rounding of a few 1e-6
    np.testing.assert_allclose(values, np.stack(expected, axis=1), rtol=0, atol=1e-5)
    assert target.forward_rows == 2 * 2 * 4 * 3  # timesteps x draws x (image and 3 neighbours) x images
    assert np.abs(values).min() > 0  # no neighbour equals its image


def test_an_image_equal_to_its_mirror_scores_zero_in_the_mirror_columns(batch: LatentBatch) -> None:
    """The same computation twice: a left-right symmetric image and its mirror get bit-equal losses."""
    symmetric = torch.cat([batch.z0[..., :2], batch.z0[..., :2].flip(-1)], dim=-1)
    batch = LatentBatch(symmetric, batch.hashes, images=symmetric)
    values = NeighbourLoss(neighbours=("mirror",)).extract(AnalyticTarget(), batch, NoiseSource(seed=2))
    assert values.shape == (3, 2) and torch.equal(values, torch.zeros_like(values))


def test_neighbour_loss_refuses_an_unknown_neighbour() -> None:
    with pytest.raises(ValueError, match="unknown neighbours \\['rotate'\\]; known: mirror, shift, jpeg"):
        NeighbourLoss(neighbours=("mirror", "rotate"))


def ddim_factor(target: AnalyticTarget, s: int, s_next: int) -> float:
    """For eps = c_s z, one DDIM step is a scalar map: Phi(z; s -> s') = k z."""
    abar = target.schedule.alphas_cumprod
    a, a_next, c = float(abar[s]), float(abar[s_next]), target.coefficient(s)
    return math.sqrt(a_next) * (1 - math.sqrt(1 - a) * c) / math.sqrt(a) + math.sqrt(1 - a_next) * c


def test_secmi_matches_closed_form_round_trip(batch: LatentBatch) -> None:
    target = AnalyticTarget()
    forward = np.prod([ddim_factor(target, s, s + 10) for s in range(0, 100, 10)])
    round_trip = ddim_factor(target, 100, 110) * ddim_factor(target, 110, 100)
    z_det = forward * batch.z0.double().numpy()
    expected = abs(1 - round_trip) * l2(z_det)
    values = SecMI().extract(target, batch, NoiseSource(0))
    # The value is a small difference of two fp32 states (cancellation): ~1e-4 relative, not 1e-7.
    np.testing.assert_allclose(values[:, 0].numpy(), expected, rtol=5e-4)
    assert target.forward_rows == 12 * 3


def test_pia_and_pian_match_hand_computation(batch: LatentBatch) -> None:
    target = AnalyticTarget()
    z0 = batch.z0.double().numpy()
    a, c_t = float(target.schedule.alphas_cumprod[200]), target.coefficient(200)

    def l5(values: np.ndarray) -> np.ndarray:
        return (np.abs(values.reshape(len(values), -1)) ** 5).sum(axis=1) ** (1 / 5)

    e0 = target.coefficient(0) * z0
    rescaled = e0 * math.sqrt(2 / math.pi) / np.abs(e0).reshape(3, -1).mean(axis=1).reshape(-1, 1, 1, 1)
    expected = [l5(start - c_t * (math.sqrt(a) * z0 + math.sqrt(1 - a) * start)) for start in (e0, rescaled)]
    extractor = PIA()
    values = extractor.extract(target, batch, NoiseSource(0))
    assert extractor.columns == ("pia_t200", "pian_t200")
    np.testing.assert_allclose(values.numpy(), np.stack(expected, axis=1), rtol=1e-6)
    assert np.abs(rescaled).reshape(3, -1).mean(axis=1) == pytest.approx([math.sqrt(2 / math.pi)] * 3)
    assert target.forward_rows == 3 * 3


def test_each_extractor_asks_for_the_noise_predictions_the_catalogue_states(batch: LatentBatch) -> None:
    """Run alone (one network call per request), each extractor made of noise predictions asks for as many per
    image as its catalogue entry says; the fast preset's columns are unique and as many as the catalogue counts
    (the neighbour loss: the image, its mirror and its shift x 2 timesteps x 4 draws)."""
    batch = LatentBatch(batch.z0, batch.hashes, images=batch.z0)
    counted = [name for name, entry in CATALOGUE.items() if entry.noise_predictions is not None]
    assert set(PRESETS["fast"]) <= set(counted)
    for name in counted:
        target = AnalyticTarget()
        resolve_extractors(name)[0].extract(target, batch, NoiseSource(0))
        assert target.forward_rows == CATALOGUE[name].noise_predictions * len(batch.hashes), name
    columns = [column for extractor in resolve_extractors("fast") for column in extractor.columns]
    assert len(columns) == len(set(columns)) == column_count(PRESETS["fast"])
    assert [c for c in columns if c.startswith("neighbour_")] == [
        "neighbour_mirror_t050", "neighbour_shift_t050", "neighbour_mirror_t100", "neighbour_shift_t100"]


def test_levels_of_a_shorter_schedule_have_the_nominal_signal_to_noise_ratio() -> None:
    """A 250-step linear schedule noises 4x faster per step: nominal t (1000-step linear DDPM) maps to the step
    whose abar / (1 - abar) is nearest, computed here in numpy."""
    target = AnalyticTarget(steps=250)
    own = np.cumprod(1 - np.linspace(1e-4, 0.02, 250))
    nominal = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    expected = [int(np.argmin(np.abs(np.log(own / (1 - own)) - np.log(nominal[t] / (1 - nominal[t])))))
                for t in (0, 100, 200, 900)]
    assert [target.schedule.level(t) for t in (0, 100, 200, 900)] == expected == [0, 51, 101, 249]
    nominal_schedule = AnalyticTarget().schedule
    assert [nominal_schedule.level(t) for t in range(1000)] == list(range(1000))


def test_v_prediction_and_sample_outputs_are_converted_to_noise() -> None:
    z = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = 300
    for prediction_type in ("v_prediction", "sample"):
        target = AnalyticTarget(prediction_type=prediction_type)
        a = float(target.schedule.alphas_cumprod[t])
        raw = target.coefficient(t) * z
        expected = (math.sqrt(a) * raw + math.sqrt(1 - a) * z if prediction_type == "v_prediction"
                    else (z - math.sqrt(a) * raw) / math.sqrt(1 - a))
        torch.testing.assert_close(target.predict_noise(z, t).double(), expected.float().double(), rtol=1e-6, atol=1e-6)


def test_learned_variance_output_keeps_the_noise_half() -> None:
    class VarianceTarget(AnalyticTarget):
        def _model_output(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition=None) -> torch.Tensor:
            return torch.cat([super()._model_output(z_t, timesteps, condition), torch.full_like(z_t, 99.0)], dim=1)

    z = torch.ones(1, 3, 2, 2)
    assert torch.allclose(VarianceTarget().predict_noise(z, 0), torch.full((1, 3, 2, 2), 0.3))


def test_unknown_feature_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=f"known: auto, {', '.join(PRESETS)}, {', '.join(CATALOGUE)}, pian"):
        resolve_extractors("fast,nonsense")
    assert [e.name for e in resolve_extractors("pia,pian,loss")] == ["pia", "loss"]
    assert [e.name for e in resolve_extractors("auto")] == list(PRESETS["fast"])
    assert extractor_names("auto", "text", "black") == extractor_names("blackbox", "text") == ["rediffuse"]


def test_gradient_masking_matches_hand_computation(batch: LatentBatch) -> None:
    """For eps_theta = c z the loss gradient is c r / ||r|| with r = c z_t - eps, so the mask is the top 20% of |r|."""
    target, noise = AnalyticTarget(), NoiseSource(seed=4)
    eps = noise.draw(batch, "gradient_masking", "shared").double().numpy()
    z0 = batch.z0.double().numpy()
    k = int(z0[0].size * 0.2)
    expected = np.zeros((3, 10))
    for column, t in enumerate(range(0, 1000, 100)):
        a, c = float(target.schedule.alphas_cumprod[t]), target.coefficient(t)
        residual = c * (math.sqrt(a) * z0 + math.sqrt(1 - a) * eps) - eps
        for image in range(3):
            mask = np.zeros(z0[image].size, dtype=bool)
            mask[np.argsort(-np.abs(residual[image]).ravel())[:k]] = True
            mask = mask.reshape(z0[image].shape)
            z_masked = np.where(mask, eps[image], z0[image])
            expected[image, column] = np.linalg.norm((mask * ((eps[image] - z0[image]) - c * z_masked)).ravel())
    extractor = GradientMasking()
    with torch.enable_grad():
        values = extractor.extract(target, batch, noise)
    assert extractor.columns[0] == "gradient_masking_t000" and len(extractor.columns) == 10
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-5)
    assert target.forward_rows == 20 * 3


def test_noise_optimisation_moves_along_the_residual_and_lowers_the_loss(batch: LatentBatch) -> None:
    """For eps_theta = c z every gradient is parallel to r0 = c z_t - eps, so delta = -beta r0 / ||r0|| and the
    final loss is exactly | ||r0|| - c ||delta|| |; the gradient of ||r|| at delta = 0 is c r0 / ||r0||, of norm c."""
    target, noise = AnalyticTarget(), NoiseSource(seed=4)
    eps = noise.draw(batch, "noise_optim", "t100").double().numpy()
    a, c = float(target.schedule.alphas_cumprod[100]), target.coefficient(100)
    initial = l2(c * (math.sqrt(a) * batch.z0.double().numpy() + math.sqrt(1 - a) * eps) - eps)
    extractor = NoiseOptimisation()
    with torch.enable_grad():
        values = extractor.extract(target, batch, noise).numpy()
    loss, delta_norm, gradient_norm = values[:, 0], values[:, 1], values[:, 2]
    assert extractor.columns == ("noise_optim_loss_t100", "noise_optim_delta_t100", "noise_optim_gradient_t100")
    np.testing.assert_allclose(gradient_norm, c, rtol=1e-6)
    np.testing.assert_allclose(loss, np.abs(initial - c * delta_norm), rtol=1e-4, atol=1e-5)
    # The first iteration is a steepest-descent step of length 1, which lowers this loss by exactly c.
    assert (delta_norm >= 1 - 1e-6).all() and (loss <= initial - c + 1e-5).all()
    # At most 5 L-BFGS iterations, each with a line search of at most 20 evaluations (scipy's maxls).
    assert 3 * 2 <= target.forward_rows <= 3 * (1 + 5 * 20)


def test_noise_optimisation_of_an_image_ignores_its_batch(batch: LatentBatch) -> None:
    target, noise = AnalyticTarget(), NoiseSource(seed=4)
    with torch.enable_grad():
        together = NoiseOptimisation().extract(target, batch, noise)
        alone = NoiseOptimisation().extract(target, LatentBatch(batch.z0[1:2], batch.hashes[1:2]), noise)
    # Another batch shape: the same optimisation, to float32 rounding.
    np.testing.assert_allclose(together[1:2].numpy(), alone.numpy(), rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


def test_full_preset_has_thirty_one_columns() -> None:
    extractors = resolve_extractors("full")
    columns = [column for extractor in extractors for column in extractor.columns]
    assert len(columns) == len(set(columns)) == column_count(PRESETS["full"])
    assert [e.name for e in extractors if e.access == "white"] == ["gradient_masking", "noise_optim"]
    assert [e.name for e in resolve_extractors("loss, noise_optim")] == ["loss", "noise_optim"]


def test_features_beyond_the_targets_access_are_refused_with_what_is_missing() -> None:
    require_access("white", resolve_extractors("full"))
    require_access("grey", resolve_extractors("fast"))
    with pytest.raises(AccessInsufficient) as refused:
        require_access("grey", resolve_extractors("full"))
    message = str(refused.value)
    assert "gradient_masking, noise_optim need white-box access" in message
    assert "only grey-box access" in message and "--features fast" in message
    assert refused.value.exit_code == ExitCode.USAGE
    with pytest.raises(AccessInsufficient, match="loss need grey-box access"):
        require_access("black", resolve_extractors("loss"))


class AnalyticClassTarget(AnalyticTarget):
    """eps_theta(z, t, c) = (0.3 + t / T + 0.1 c) z for class ids c = 0..3; the null class is 4."""

    conditioning = "class"

    def _model_output(self, z_t: torch.Tensor, timesteps: torch.Tensor, condition=None) -> torch.Tensor:
        labels = condition["class_labels"].double().view(-1, 1, 1, 1)
        return super()._model_output(z_t, timesteps) + 0.1 * labels * z_t.double()

    def null_condition(self, condition: Condition) -> Condition:
        return Condition({"class_labels": torch.full_like(condition["class_labels"], 4)})


def test_clid_matches_hand_computation_for_a_class_conditional_model(batch: LatentBatch) -> None:
    from cdi_audit.features.clid import CLiD

    target, noise = AnalyticClassTarget(), NoiseSource(seed=6)
    labelled = LatentBatch(batch.z0, batch.hashes, condition=Condition({"class_labels": torch.tensor([0, 1, 3])}))
    extractor = CLiD.for_target(target)
    assert extractor.columns == ("clid_d_null", "clid_l") and extractor.timesteps == (90, 100, 110)
    z0 = batch.z0.double().numpy()
    differences, likelihoods = np.zeros(3), np.zeros(3)
    for t in (90, 100, 110):
        eps = noise.draw(batch, "clid", f"t{t}").double().numpy()
        a = float(target.schedule.alphas_cumprod[t])
        z_t = math.sqrt(a) * z0 + math.sqrt(1 - a) * eps
        for image, label in enumerate((0, 1, 3)):
            own, null = (float((((0.3 + t / 1000 + 0.1 * c) * z_t[image] - eps[image]) ** 2).sum())
                         for c in (label, 4))
            differences[image] += (null - own) / 3
            likelihoods[image] -= own / 3
    values = extractor.extract(target, labelled, noise)
    np.testing.assert_allclose(values.numpy(), np.stack([differences, likelihoods], axis=1), rtol=1e-5)
    assert target.forward_rows == 3 * 2 * 3  # 3 draws x (condition + null) x 3 images


def test_clid_does_not_apply_to_unconditional_models() -> None:
    from cdi_audit.features.clid import CLiD

    assert "unconditional" in CLiD().not_applicable(AnalyticTarget())
    assert CLiD().not_applicable(AnalyticClassTarget()) is None


def test_caption_thirds_are_clipped_token_by_token() -> None:
    from cdi_audit.features.clid import clipped_tokens

    bos, eos, pad = 100, 101, 0
    ids = torch.tensor([[bos, 1, 2, 3, 4, 5, 6, 7, eos, eos, eos], [bos, 8, 9, eos, eos, eos, eos, eos, eos, eos, eos]])
    # 7 tokens split at round(7/3) = 2 and round(14/3) = 5; 2 tokens at round(2/3) = 1 and round(4/3) = 1.
    assert clipped_tokens(ids, 0, eos, pad).tolist() == [[bos, 0, 0, 3, 4, 5, 6, 7, eos, eos, eos],
                                                         [bos, 0, 9, eos, eos, eos, eos, eos, eos, eos, eos]]
    assert clipped_tokens(ids, 1, eos, pad)[0].tolist() == [bos, 1, 2, 0, 0, 0, 6, 7, eos, eos, eos]
    assert clipped_tokens(ids, 1, eos, pad)[1].tolist() == ids[1].tolist()  # an empty middle third
    assert clipped_tokens(ids, 2, eos, pad).tolist() == [[bos, 1, 2, 3, 4, 5, 0, 0, eos, eos, eos],
                                                         [bos, 8, 0, eos, eos, eos, eos, eos, eos, eos, eos]]


def test_ssim_agrees_with_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    from cdi_audit.features.structural import ssim

    rng = np.random.default_rng(0)
    first = rng.random((3, 3, 24, 32))
    second = np.clip(first + rng.normal(0, [[[[0.05]]], [[[0.2]]], [[[0.5]]]], first.shape), 0, 1)
    ours = ssim(torch.from_numpy(second), torch.from_numpy(first)).numpy()
    oracle = [structural_similarity(first[i], second[i], win_size=7, data_range=1.0, channel_axis=0,
                                    use_sample_covariance=False) for i in range(3)]
    np.testing.assert_allclose(ours, oracle, atol=1e-9)
    assert ours[0] > ours[1] > ours[2]


def test_structural_on_a_pixel_model_compares_the_image_with_its_predicted_clean_image(batch: LatentBatch) -> None:
    """For eps = c z every DDIM step scales z, so the predicted clean image is m z0 for a scalar m."""
    from cdi_audit.features.structural import Structural, ssim

    target = AnalyticTarget()
    z0 = batch.z0.double()
    images = LatentBatch(batch.z0, batch.hashes, images=batch.z0)
    expected, factor, state = [], 1.0, 0
    for nominal in (50, 100, 150, 200):
        factor *= ddim_factor(target, state, nominal)
        state = nominal
        if nominal in (100, 200):
            a, c = float(target.schedule.alphas_cumprod[nominal]), target.coefficient(nominal)
            clean = (factor * (1 - math.sqrt(1 - a) * c) / math.sqrt(a) * z0).clamp(-1, 1)
            expected.append(ssim((clean + 1) / 2, (z0 + 1) / 2).numpy())
    values = Structural().extract(target, images, NoiseSource(0))
    np.testing.assert_allclose(values.numpy(), np.stack(expected, axis=1), rtol=1e-4)
    assert target.forward_rows == 6 * 3
