"""Running feature plans: alone (one network call per request), or fused (all plans' requests in few calls).

An image costs tens of noise predictions (53 for the ``fast`` preset: ``features/catalogue.py``), most of them
independent of each other: five loss draws, ten timesteps of the multi-timestep loss, the neighbour loss's 24, the
first DDIM step of SecMI and PIA's first prediction. Run one at a time, each is a network call on one batch of
images; a GPU then idles between small calls. Fused, every plan of a batch advances in lockstep: each round gathers
what all of them ask for, drops exact repeats (SecMI's first step and PIA's first prediction are the same request),
and evaluates the rest as images x timesteps along the batch dimension in calls of at most ``max_rows`` rows,
halving ``max_rows`` whenever the device runs out of memory. The values are those of running each plan alone up to
float rounding (a network's kernels may sum in another order for another batch size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from cdi_audit.errors import ModelUnavailable, is_out_of_memory
from cdi_audit.features.base import Forward, Plan
from cdi_audit.models.condition import Condition, select_condition
from cdi_audit.models.target import Target

log = logging.getLogger(__name__)

# Rows per network call to start from: a tiny pixel UNet on a CPU is fastest at 64-128 rows; a GPU
# wants many more and backs off from there when a large model does not fit.
DEFAULT_MAX_ROWS = {"cpu": 128, "cuda": 2048}


def default_max_rows(device: torch.device) -> int:
    return DEFAULT_MAX_ROWS.get(device.type, DEFAULT_MAX_ROWS["cpu"])


@dataclass
class ForwardBatcher:
    """Evaluates lists of requests in as few network calls as ``max_rows`` allows; remembers a smaller
    ``max_rows`` once the device has run out of memory, for the rest of the extraction."""

    target: Target
    max_rows: int
    calls: int = 0
    backoffs: int = 0

    def predictions(self, requests: list[Forward], full_precision: list[bool]) -> list[torch.Tensor]:
        """The noise prediction of each request, in order. Requests on the same tensors at the same timestep
        and precision are evaluated once (identity of the tensors, which live for the whole round)."""
        full = [wanted or self.target.forward_dtype is None for wanted in full_precision]
        keys = [(id(r.z), r.t, id(r.condition), f) for r, f in zip(requests, full, strict=True)]
        first: dict[tuple, int] = {}
        unique: list[tuple[Forward, bool]] = []
        for request, precise, key in zip(requests, full, keys, strict=True):
            if key not in first:
                first[key] = len(unique)
                unique.append((request, precise))
        groups: dict[tuple, list[int]] = {}
        for index, (request, precise) in enumerate(unique):
            condition = request.condition
            kind = None if condition is None else condition.signature
            groups.setdefault((precise, kind), []).append(index)
        outputs: list[torch.Tensor | None] = [None] * len(unique)
        for (precise, kind), members in groups.items():
            chosen = [unique[i][0] for i in members]
            z = torch.cat([r.z for r in chosen])
            levels = torch.cat([self.target.schedule.level_rows(r.t, len(r.z)) for r in chosen])
            condition = None if kind is None else Condition.cat([r.condition for r in chosen])
            with self.target.precision(precise):
                predicted = self._evaluate(z, levels, condition)
            for index, part in zip(members, predicted.split([len(r.z) for r in chosen]), strict=True):
                outputs[index] = part
        return [outputs[first[key]] for key in keys]

    def _evaluate(self, z: torch.Tensor, levels: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        parts, start = [], 0
        while start < len(z):
            rows = slice(start, start + self.max_rows)
            try:
                parts.append(self.target.predict_noise(z[rows], levels[rows], select_condition(condition, rows)))
            except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if not is_out_of_memory(error):
                    raise
                self._back_off(error)
                continue
            self.calls += 1
            start = rows.stop
        return torch.cat(parts)

    def _back_off(self, error: BaseException) -> None:
        if self.max_rows == 1:
            raise ModelUnavailable(f"The model does not fit in the device's memory even one image at a time "
                                   f"({error}); use a larger device or --dtype bfloat16.") from error
        self.max_rows //= 2
        self.backoffs += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("out of memory: at most %d rows per network call from now on", self.max_rows)


def run_fused(plans: list[Plan], full_precision: list[bool], batcher: ForwardBatcher) -> list[torch.Tensor]:
    """The values of every plan, advancing them in lockstep so each round's requests share network calls."""
    results: list[torch.Tensor | None] = [None] * len(plans)
    pending: dict[int, list[Forward]] = {}

    def advance(index: int, answers: list[torch.Tensor] | None) -> None:
        plan = plans[index]
        try:
            pending[index] = next(plan) if answers is None else plan.send(answers)
        except StopIteration as finished:
            pending.pop(index, None)
            results[index] = finished.value

    for index in range(len(plans)):
        advance(index, None)
    while pending:
        asked = [(index, request) for index, requests in pending.items() for request in requests]
        predicted = batcher.predictions([request for _, request in asked],
                                        [full_precision[index] for index, _ in asked])
        answers: dict[int, list[torch.Tensor]] = {index: [] for index in pending}
        for (index, _), prediction in zip(asked, predicted, strict=True):
            answers[index].append(prediction)
        for index, answer in answers.items():
            advance(index, answer)
    return results
