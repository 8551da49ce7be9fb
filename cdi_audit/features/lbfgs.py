"""L-BFGS for a batch of independent problems, advanced in lockstep so the model sees batches.

Each problem keeps its own curvature history, step and line search, so its
iterates are exactly those it would have alone: nothing couples problems
(unlike optimising a batch as one vector, as the CDI reference code does).
Only the function evaluations are shared: every line-search trial of every
unfinished problem goes to the model in one call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# loss_and_gradient(points (P, D), rows (P,)) -> (losses (P,), gradients (P, D)) for problems ``rows``.
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

HISTORY = 10  # curvature pairs kept (scipy's maxcor default)
MAX_LINE_SEARCH = 20  # halvings per iteration (scipy's maxls default)
SUFFICIENT_DECREASE = 1e-4  # Armijo constant c1
GRADIENT_TOLERANCE = 1e-5
RELATIVE_GRADIENT_CHANGE = 1e-6  # stop once max |gradient| is below this (scipy's pgtol default)


def _direction(gradient: torch.Tensor, steps: list[torch.Tensor], changes: list[torch.Tensor]) -> torch.Tensor:
    """-H g by the two-loop recursion for one problem, H from its (s, y) pairs (oldest first)."""
    q = gradient.clone()
    alphas = []
    for s, y in reversed(list(zip(steps, changes, strict=True))):
        alpha = torch.dot(s, q) / torch.dot(y, s)
        q -= alpha * y
        alphas.append(alpha)
    if steps:
        q *= torch.dot(steps[-1], changes[-1]) / torch.dot(changes[-1], changes[-1])
    for (s, y), alpha in zip(zip(steps, changes, strict=True), reversed(alphas), strict=True):
        beta = torch.dot(y, q) / torch.dot(y, s)
        q += (alpha - beta) * s
    return -q


def _shorter_step(step: torch.Tensor, start: torch.Tensor, slope: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """The minimiser of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5] x step."""
    curvature = reached - start - slope * step
    interpolated = -slope * step**2 / (2 * curvature.clamp_min(1e-300))
    return torch.minimum(torch.maximum(interpolated, 0.1 * step), 0.5 * step)


def minimise(objective: Objective, start: torch.Tensor, max_iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise P independent functions from ``start`` (P, D), float64; returns (points, losses).

    At most ``max_iterations`` L-BFGS iterations per problem; each takes the
    quasi-Newton direction (steepest descent first, with a step of length 1)
    and shortens the step (safeguarded quadratic interpolation) until the
    Armijo condition holds. A problem stops early when its gradient vanishes
    or not even steepest descent decreases it.
    """
    problems = start.shape[0]
    x = start.clone()
    f, g = objective(x, torch.arange(problems))
    history: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in range(problems)]
    active = g.abs().amax(dim=1) > GRADIENT_TOLERANCE
    for _ in range(max_iterations):
        rows = torch.nonzero(active).flatten()
        if len(rows) == 0:
            break
        directions = torch.stack([_direction(g[i], *history[i]) for i in rows.tolist()])
        slopes = (directions * g[rows]).sum(dim=1)
        not_descent = slopes >= 0  # a stale history: fall back to steepest descent
        directions[not_descent] = -g[rows][not_descent]
        slopes[not_descent] = -(g[rows][not_descent] ** 2).sum(dim=1)
        first = torch.tensor([not history[i][0] for i in rows.tolist()])
        step = torch.where(first, 1.0 / directions.norm(dim=1), torch.ones(len(rows), dtype=x.dtype))
        accepted = torch.zeros(len(rows), dtype=torch.bool)
        new_f, new_g = f[rows].clone(), g[rows].clone()
        for _ in range(MAX_LINE_SEARCH):
            trying = torch.nonzero(~accepted).flatten()
            if len(trying) == 0:
                break
            points = x[rows[trying]] + step[trying, None] * directions[trying]
            trial_f, trial_g = objective(points, rows[trying])
            start_f, slope, tried = f[rows[trying]], slopes[trying], step[trying]
            good = trial_f <= start_f + SUFFICIENT_DECREASE * tried * slope
            new_f[trying[good]], new_g[trying[good]] = trial_f[good], trial_g[good]
            accepted[trying[good]] = True
            step[trying[~good]] = _shorter_step(tried, start_f, slope, trial_f)[~good]
        for position, i in enumerate(rows.tolist()):
            if not accepted[position]:
                # No decrease along this direction. A quasi-Newton direction may be spoilt by its
                # history: forget it and try steepest descent next; if that failed, stop here.
                active[i] = bool(history[i][0])
                history[i] = ([], [])
                continue
            s = step[position] * directions[position]
            y = new_g[position] - g[i]
            # Keep only pairs with positive curvature and a gradient change above float32 rounding
            # (~1e-7 of |g|): a pair made of rounding noise would scale the next step by 1/noise.
            if torch.dot(s, y) > 1e-10 and y.norm() > RELATIVE_GRADIENT_CHANGE * g[i].norm():
                steps, changes = history[i]
                steps.append(s)
                changes.append(y)
                del steps[:-HISTORY], changes[:-HISTORY]
            x[i] += s
            f[i], g[i] = new_f[position], new_g[position]
            active[i] = bool(g[i].abs().max() > GRADIENT_TOLERANCE)
    return x, f
