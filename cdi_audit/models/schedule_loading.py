"""The noise schedule a model was trained with, read from its own scheduler config (never rebuilt by hand),
and the checks that keep a wrong config from auditing nonsense."""

from __future__ import annotations

from pathlib import Path

import torch

from cdi_audit.errors import ModelUnavailable, brief
from cdi_audit.models.components import read_json
from cdi_audit.models.family import Component, Family
from cdi_audit.models.prediction import SCHEDULER_PREDICTION_TYPES
from cdi_audit.models.schedule import DiscreteSchedule, FlowMatchSchedule, NoiseSchedule, NominalKind

# A schedule shorter than 2 steps has no noising to measure; one beyond 100,000 is no trained model's.
MIN_TRAIN_TIMESTEPS, MAX_TRAIN_TIMESTEPS = 2, 100_000
# A flow scheduler's static shift s moves its sigmas to s t / (1 + (s - 1) t), towards noise (s > 1) or towards
# the data (s < 1; 1 / s mirrors s). Published models train at 1 to about 20 (SD3 3). At 100 the least noisy of
# 1000 training levels is already sigma 0.09, so the low-noise levels the features are measured at are gone;
# far further out (or at 0, below it, or not finite) no sigma is left strictly between 0 and 1 at all.
MIN_FLOW_SHIFT, MAX_FLOW_SHIFT = 0.01, 100.0
# The scheduler of rectified-flow pipelines (SD3, Flux): its sigmas are the noise levels the model trained at.
FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def load_schedule(root: Path, family: Family, nominal: NominalKind) -> tuple[NoiseSchedule, str, int]:
    """The noise schedule, prediction type and number of training steps from the model's own scheduler config:
    variance-preserving from its ``alphas_cumprod``, or rectified flow from a ``FlowMatchEulerDiscreteScheduler``'s
    sigmas for a family whose denoiser predicts the velocity."""
    import diffusers

    config_path = root / "scheduler" / "scheduler_config.json"
    config = read_json(config_path)
    if "num_train_timesteps" in config:  # absent: the scheduler's default
        _check_timesteps(config["num_train_timesteps"], config_path)
    class_name = config.get("_class_name", "")
    if class_name == FLOW_SCHEDULER:
        _check_flow_shift(config, config_path)
    scheduler_class = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if scheduler_class is None:
        raise ModelUnavailable(f"{root}/scheduler names an unknown scheduler {class_name!r}.")
    try:
        scheduler = scheduler_class.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    except Exception as error:
        raise ModelUnavailable(f"The scheduler in {root} cannot be loaded ({brief(error)}).") from error
    if family.flow_time_scale is not None:
        if class_name != FLOW_SCHEDULER:
            raise ModelUnavailable(f"{root} is a {family.label} pipeline, whose transformer predicts a flow "
                                   f"velocity, but its scheduler is a {class_name}; expected a {FLOW_SCHEDULER}.")
        schedule = FlowMatchSchedule.from_scheduler(scheduler, family.flow_time_scale, nominal)
        return schedule, "flow", int(scheduler.config.num_train_timesteps)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        raise ModelUnavailable(f"The scheduler {class_name} in {root} has no alphas_cumprod schedule, and a "
                               f"{family.label} model is trained with one.")
    _check_timesteps(len(alphas_cumprod), config_path, "the length of its schedule (alphas_cumprod)")
    _check_signal_fractions(torch.as_tensor(alphas_cumprod), config_path)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in SCHEDULER_PREDICTION_TYPES:
        raise ModelUnavailable(
            f"The scheduler in {root} predicts {prediction_type!r}; expected one of "
            f"{', '.join(SCHEDULER_PREDICTION_TYPES)}."
        )
    return DiscreteSchedule(torch.as_tensor(alphas_cumprod), nominal), prediction_type, len(alphas_cumprod)


def nominal_kind(components: tuple[Component, ...]) -> NominalKind:
    """Latent models' levels are matched to Stable Diffusion's nominal DDPM, pixel models' to DDPM's."""
    return "latent" if any(c.role == "autoencoder" for c in components) else "pixel"


def _check_timesteps(value: object, config_path: Path, field: str = "num_train_timesteps") -> None:
    """The number of training timesteps must be an integer in [MIN_TRAIN_TIMESTEPS, MAX_TRAIN_TIMESTEPS]."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TRAIN_TIMESTEPS <= value <= MAX_TRAIN_TIMESTEPS:
        raise ModelUnavailable(f"{config_path}: {field} is {value!r}, not an integer from {MIN_TRAIN_TIMESTEPS} to "
                               f"{MAX_TRAIN_TIMESTEPS}; correct num_train_timesteps to the steps the model was "
                               "trained with.")


def _check_signal_fractions(alphas_cumprod: torch.Tensor, config_path: Path) -> None:
    """Each abar_t is the share of the signal left at step t, in (0, 1] (0 at the last step too: a zero
    terminal SNR schedule): betas that make one non-finite, negative or above 1, or 0 before the end (a beta
    outside [0, 1), or underflow), are no schedule, and an audit on them would measure nonsense."""
    abar = alphas_cumprod.double()
    before_the_end = torch.arange(len(abar)) < len(abar) - 1
    bad = ~torch.isfinite(abar) | (abar > 1) | (abar < 0) | ((abar == 0) & before_the_end)
    if bad.any():
        step = int(bad.nonzero()[0])
        raise ModelUnavailable(f"{config_path}: the schedule it gives has alphas_cumprod "
                               f"{float(alphas_cumprod[step]):g} at timestep {step}, not a share of signal in (0, 1]; "
                               "correct beta_start, beta_end or trained_betas to the model's.")


def _check_flow_shift(config: dict, config_path: Path) -> None:
    """A flow scheduler's static ``shift``, where it is applied (not with dynamic shifting, whose shift is an
    inference setting, as are ``base_shift`` and ``max_shift``, none of which the audit reads), must be a number
    from MIN_FLOW_SHIFT to MAX_FLOW_SHIFT: outside, the training sigmas leave the audit no levels to measure."""
    if config.get("use_dynamic_shifting", False):
        return
    shift = config.get("shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not MIN_FLOW_SHIFT <= shift <= MAX_FLOW_SHIFT:
        raise ModelUnavailable(f"{config_path}: shift is {shift!r}; it must be a positive number from {MIN_FLOW_SHIFT} "
                               f"to {MAX_FLOW_SHIFT:g} (published flow models use 1 to about 20, SD3 3); correct shift "
                               "to the one the model was trained with.")
