"""Lockstep per-problem L-BFGS: each problem solved as if alone, against closed forms."""

from __future__ import annotations

import torch

from cdi_audit.features.lbfgs import minimise


def quadratics(count: int, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """f_i(x) = x' A_i x / 2 - b_i' x with A_i symmetric positive definite (condition number up to ~50)."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(count, size, size, generator=generator, dtype=torch.float64)).Q
    spectrum = torch.rand(count, size, generator=generator, dtype=torch.float64) * 49 + 1
    matrices = basis @ torch.diag_embed(spectrum) @ basis.transpose(1, 2)
    return matrices, torch.randn(count, size, generator=generator, dtype=torch.float64) * 5


def objective_for(matrices: torch.Tensor, offsets: torch.Tensor, calls: list[int]):
    def objective(points: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(rows))
        products = torch.einsum("pij,pj->pi", matrices[rows], points)
        return 0.5 * (points * products).sum(1) - (offsets[rows] * points).sum(1), products - offsets[rows]
    return objective


def test_each_problem_converges_to_its_own_minimiser() -> None:
    matrices, offsets = quadratics(5)
    points, losses = minimise(objective_for(matrices, offsets, []), torch.zeros(5, 6, dtype=torch.float64), 60)
    expected = torch.linalg.solve(matrices, offsets)
    torch.testing.assert_close(points, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses, -0.5 * (offsets * expected).sum(1), rtol=1e-8, atol=1e-8)


def test_a_problem_follows_the_same_path_alone_and_in_a_batch() -> None:
    matrices, offsets = quadratics(4, seed=1)
    together, together_losses = minimise(objective_for(matrices, offsets, []), torch.zeros(4, 6,
                                         dtype=torch.float64), 5)
    for i in range(4):
        alone, alone_loss = minimise(objective_for(matrices[i : i + 1], offsets[i : i + 1], []),
                                     torch.zeros(1, 6, dtype=torch.float64), 5)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(alone_loss[0], together_losses[i], rtol=1e-12, atol=1e-12)


def test_the_first_iteration_is_a_unit_steepest_descent_step() -> None:
    """f(x) = |x|^2 - b'x: g(0) = -b, so one iteration from 0 lands on b / |b| (Armijo holds for |b| > 1)."""
    offsets = torch.tensor([[3.0, 4.0, 0.0], [0.0, -2.0, 2.0]], dtype=torch.float64)
    matrices = 2 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    calls: list[int] = []
    points, _ = minimise(objective_for(matrices, offsets, calls), torch.zeros(2, 3, dtype=torch.float64), 1)
    torch.testing.assert_close(points, offsets / offsets.norm(dim=1, keepdim=True))
    assert calls == [2, 2]  # the start, then one accepted trial for both problems in one call
