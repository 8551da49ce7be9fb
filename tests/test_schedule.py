"""The noise process as data: a and b against diffusers' own schedulers, levels by signal-to-noise ratio,
the deterministic step against DDIMScheduler, and conditions as named tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdi_audit.models.condition import Condition
from cdi_audit.models.prediction import to_noise
from cdi_audit.models.primitives import add_noise, clean_estimate, deterministic_step
from cdi_audit.models.schedule import DiscreteSchedule, FlowMatchSchedule

SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def noise_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)


@pytest.mark.parametrize("scheduler_name,config", [
    ("DDPMScheduler", {}),
    ("DDIMScheduler", SD_BETAS),
    ("DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 400}),
])
def test_a_and_b_are_the_schedulers_own_add_noise(scheduler_name: str, config: dict) -> None:
    import diffusers

    scheduler = getattr(diffusers, scheduler_name)(**config)
    schedule = DiscreteSchedule(torch.as_tensor(scheduler.alphas_cumprod), "latent")
    z0, eps = noise_pair()
    for level in (0, 17, schedule.train_steps // 2, schedule.train_steps - 1):
        expected = scheduler.add_noise(z0, eps, torch.tensor([level, level]))
        torch.testing.assert_close(add_noise(schedule, z0, eps, level), expected, rtol=1e-5, atol=1e-6)


def test_a_and_b_are_eulers_add_noise_in_its_scaled_form() -> None:
    """SDXL's EulerDiscreteScheduler noises as x0 + sigma eps and feeds the UNet that divided by
    sqrt(sigma^2 + 1): exactly a z0 + b eps with sigma = b / a."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(**SD_BETAS)
    schedule = DiscreteSchedule(torch.as_tensor(scheduler.alphas_cumprod), "latent")
    z0, eps = noise_pair(1)
    for level in (1, 250, 999):
        sigma = float(((1 - scheduler.alphas_cumprod[level]) / scheduler.alphas_cumprod[level]) ** 0.5)
        unscaled = scheduler.add_noise(z0, eps, torch.tensor([level, level]))
        torch.testing.assert_close(add_noise(schedule, z0, eps, level), unscaled / (sigma**2 + 1) ** 0.5,
                                   rtol=1e-5, atol=1e-6)


def test_levels_of_a_latent_schedule_match_the_scaled_linear_nominal_by_snr() -> None:
    """A 500-step linear schedule on a latent model: each nominal step (1000-step scaled-linear DDPM) maps to
    the step whose log(abar / (1 - abar)) is nearest, computed here in numpy."""
    own = np.cumprod(1 - np.linspace(1e-4, 0.02, 500))
    nominal = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    schedule = DiscreteSchedule(torch.from_numpy(own), "latent")
    for t in (0, 100, 450, 999):
        target = np.log(nominal[t] / (1 - nominal[t]))
        assert schedule.level(t) == int(np.argmin(np.abs(np.log(own / (1 - own)) - target)))
    a, b = schedule.coefficients(schedule.level(450))
    assert abs(np.log(a**2 / b**2) - np.log(nominal[450] / (1 - nominal[450]))) < 0.02
    assert schedule.level(0) > 0  # scaled-linear starts noisier than linear's first step


def test_the_deterministic_step_is_ddim_with_eta_zero() -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SD_BETAS, set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(20)
    schedule = DiscreteSchedule(torch.as_tensor(scheduler.alphas_cumprod), "latent")
    z, eps = noise_pair(2)
    for t in (999, 499, 99):
        expected = scheduler.step(eps, t, z).prev_sample
        torch.testing.assert_close(deterministic_step(schedule, z, eps, t, t - 50), expected, rtol=1e-5, atol=1e-5)
    # Inverting and denoising by the same eps is the identity, and the clean estimate is the step to a = 1.
    up = deterministic_step(schedule, z, eps, 100, 300)
    torch.testing.assert_close(deterministic_step(schedule, up, eps, 300, 100), z, rtol=1e-4, atol=1e-4)
    a, b = schedule.coefficients(300)
    torch.testing.assert_close(clean_estimate(schedule, a * z + b * eps, eps, 300), z, rtol=1e-5, atol=1e-5)


def test_every_parameterisation_converts_to_the_noise() -> None:
    z0, eps = noise_pair(3)
    a, b = torch.tensor(0.8), torch.tensor(0.6)
    z_t = a * z0 + b * eps
    for kind, output in (("epsilon", eps), ("v_prediction", a * eps - b * z0), ("sample", z0)):
        torch.testing.assert_close(to_noise(output, z_t, a, b, kind), eps, rtol=1e-5, atol=1e-5)
    sigma = torch.tensor(0.3)  # rectified flow: z_t = (1 - sigma) z0 + sigma eps, velocity eps - z0
    torch.testing.assert_close(to_noise(eps - z0, (1 - sigma) * z0 + sigma * eps, 1 - sigma, sigma, "flow"), eps,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unsupported"):
        to_noise(eps, z_t, a, b, "velocity")


def test_conditions_select_repeat_and_concatenate_every_named_tensor() -> None:
    states = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)
    condition = Condition({"encoder_hidden_states": states, "time_ids": torch.arange(18.0).view(3, 6)})
    assert len(condition) == 3 and "time_ids" in condition
    picked = condition.select([2, 0])
    torch.testing.assert_close(picked["encoder_hidden_states"], states[[2, 0]])
    torch.testing.assert_close(picked["time_ids"], condition["time_ids"][[2, 0]])
    repeated = condition.repeat(2)
    assert len(repeated) == 6
    torch.testing.assert_close(repeated["time_ids"], torch.cat([condition["time_ids"]] * 2))
    joined = Condition.cat([condition, picked])
    torch.testing.assert_close(joined["encoder_hidden_states"], torch.cat([states, states[[2, 0]]]))
    assert condition.signature == picked.signature
    other = condition.replaced(encoder_hidden_states=torch.zeros(3, 5, 4))
    assert other.signature != condition.signature and other["time_ids"] is condition["time_ids"]
    with pytest.raises(ValueError, match="unequal lengths"):
        Condition({"a": torch.zeros(2), "b": torch.zeros(3)})


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_flow_schedule_noises_as_the_flow_schedulers_scale_noise(shift: float) -> None:
    """a = 1 - sigma, b = sigma at the scheduler's own training sigmas (SD3's static shift 3 included), sigma = 1
    left out, and the time input sigma x 1000 (SD3) or sigma (Flux)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    schedule = FlowMatchSchedule.from_scheduler(scheduler, time_scale=1000.0)
    assert schedule.train_steps == 999 and float(schedule.sigmas.max()) < 1.0
    assert schedule.identity() == {"kind": "flow", "nominal": "latent", "steps": 999, "shift": shift,
                                   "time_scale": 1000.0}
    z0, eps = noise_pair(4)
    for level in (0, 123, 500, 998):
        sigma = schedule.sigmas[level]
        index = int(torch.argmin((scheduler.sigmas.double() - sigma).abs()))
        expected = scheduler.scale_noise(z0, scheduler.timesteps[index].repeat(2), eps)
        torch.testing.assert_close(add_noise(schedule, z0, eps, level), expected, rtol=1e-5, atol=1e-6)
        time = schedule.model_time(torch.tensor([level]))
        torch.testing.assert_close(time, scheduler.timesteps[index].view(1), rtol=1e-6, atol=1e-4)
    flux = FlowMatchSchedule.from_scheduler(scheduler, time_scale=1.0)
    torch.testing.assert_close(flux.model_time(torch.tensor([500])), schedule.sigmas[500].float().view(1))


def test_the_deterministic_step_on_a_flow_schedule_is_the_euler_step() -> None:
    """With the velocity converted to eps, the (a, b) step equals FlowMatchEulerDiscreteScheduler.step from one
    of its inference sigmas to the next (both on the training grid: 10 steps of an unshifted 1000-step grid)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    schedule = FlowMatchSchedule.from_scheduler(scheduler, time_scale=1000.0)
    scheduler.set_timesteps(10)
    z, velocity = noise_pair(5)
    level_of = {round(float(sigma), 6): level for level, sigma in enumerate(schedule.sigmas)}
    for index in range(1, 9):
        sigma, following = (round(float(scheduler.sigmas[i]), 6) for i in (index, index + 1))
        scheduler._step_index = index  # step from this inference sigma, as the pipeline's loop would
        expected = scheduler.step(velocity, scheduler.timesteps[index], z).prev_sample
        a, b = schedule.coefficients(level_of[sigma])
        eps = to_noise(velocity, z, torch.tensor(a), torch.tensor(b), "flow")
        torch.testing.assert_close(deterministic_step(schedule, z, eps, level_of[sigma], level_of[following]),
                                   expected, rtol=1e-5, atol=1e-5)


def test_flow_levels_match_the_nominal_ddpm_by_snr() -> None:
    """Each nominal step maps to the grid sigma whose log((1 - sigma)^2 / sigma^2) is nearest the nominal
    log(abar / (1 - abar)), computed here in numpy, with SD3's shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    schedule = FlowMatchSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), time_scale=1000.0)
    sigmas = schedule.sigmas.numpy()
    nominal = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
    own = np.log((1 - sigmas) ** 2 / sigmas**2)
    for t in (0, 100, 500, 999):
        assert schedule.level(t) == int(np.argmin(np.abs(own - np.log(nominal[t] / (1 - nominal[t])))))
    assert schedule.level(0) < schedule.level(500) < schedule.level(999)


def test_the_side_sampler_on_a_flow_schedule_follows_the_straight_path_to_the_data() -> None:
    """For data that is one point c, the exact velocity is v = (z_t - c) / sigma and every flow path is a
    straight line, so the sampler's Euler steps (the DDIM step in (a, b) form: docs/architecture.md, "The
    primitives") land on c from any noise, at any number of steps; a sampler that fed the network the wrong
    time or stepped by a VP rule would not."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from cdi_audit.evidence.sampling import ddim_sample
    from cdi_audit.models.target import Target
    from cdi_audit.results.schema import ModelInfo

    schedule = FlowMatchSchedule.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), time_scale=1000.0)
    point = torch.linspace(-0.9, 0.9, 4 * 8 * 8).view(1, 4, 8, 8)  # within [-1, 1], where pixel samples are clipped

    class PointMass(Target):
        def _model_output(self, z_t, time, condition):
            sigma = (time / 1000.0).view(-1, 1, 1, 1)
            return (z_t - point) / sigma

    info = ModelInfo(path="-", fingerprint="-", family="flow", sample_size=8, num_train_timesteps=1000,
                     prediction_type="flow", device="cpu")
    target = PointMass(schedule, "flow", 4, torch.device("cpu"), info)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    # float32 rounding of z_t is amplified by 1 / (1 - sigma) in the clean estimate, about 3,000 at the noisiest
    # level of a shift-3 grid (sigma 0.9997): errors of about 1e-3, against O(1) for a wrong time input.
    for steps in (1, 7, 50):
        torch.testing.assert_close(ddim_sample(target, noise, steps), point.expand(3, -1, -1, -1), rtol=0, atol=1e-2)
