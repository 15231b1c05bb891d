"""Gradient-norm diagnostics: the full-objective gradient against the exact one, and the paper's proxy."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_linear_vae

from vaeconverge.diagnostics import GradientNormTracker, full_objective_gradient, replica_squared_norms
from vaeconverge.engine import LoopedEnsemble, VectorisedEnsemble
from vaeconverge.objectives import ELBO


def test_replica_squared_norms_sum_each_replica_alone() -> None:
    grads = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[[1.0], [2.0]], [[0.0], [0.0]]]),
             torch.tensor([0.0, 2.0])]
    assert replica_squared_norms(grads).tolist() == pytest.approx([30.0, 5.0], rel=1e-6)


LAYOUTS = pytest.mark.parametrize("layout", [VectorisedEnsemble, LoopedEnsemble], ids=["vectorised", "looped"])


@LAYOUTS
def test_full_gradient_approaches_the_exact_gradient_and_leaves_grads_alone(layout) -> None:
    model = make_linear_vae(data_dim=4, latent_dim=2, seed=2)
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact_loss = -model.exact_elbo(x).mean()
    exact_sq = sum(g.square().sum() for g in torch.autograd.grad(exact_loss, list(model.parameters()))).item()
    ensemble = layout([model], ELBO(1))
    for p in ensemble.parameters():
        p.grad = torch.full_like(p, 7.0)

    estimate = full_objective_gradient(ensemble, x, eval_samples=2000,
                                       generators=[torch.Generator().manual_seed(1)], chunk_size=128)
    # The Monte Carlo squared norm carries an upward bias of (variance / draws); with 2000 draws over
    # 300 examples it is far below 1% of the exact value here.
    assert abs(estimate.objective[0] - exact_loss.item()) < 1e-2 * abs(exact_loss.item())
    assert abs(estimate.grad_sq_norm[0] - exact_sq) < 1e-2 * exact_sq
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in ensemble.parameters())


@LAYOUTS
def test_full_gradient_does_not_depend_on_chunking(layout) -> None:
    model = make_linear_vae(data_dim=4, latent_dim=2, seed=2)
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ensemble = layout([model], ELBO(2))
    a = full_objective_gradient(ensemble, x, 3, [torch.Generator().manual_seed(5)], chunk_size=1000)
    b = full_objective_gradient(ensemble, x, 3, [torch.Generator().manual_seed(5)], chunk_size=100)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)
    assert a.grad_sq_norm == pytest.approx(b.grad_sq_norm, rel=1e-10)


@LAYOUTS
def test_full_gradient_of_each_replica_ignores_the_others(layout) -> None:
    """Replica 1 of a pair gives what it gives alone, with its own generator: nothing leaks across replicas."""
    first, second = make_linear_vae(data_dim=4, latent_dim=2, seed=2), make_linear_vae(data_dim=4, latent_dim=2, seed=3)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pair = full_objective_gradient(layout([first, second], ELBO(2)), x, 2,
                                   [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    alone = full_objective_gradient(layout([second], ELBO(2)), x, 2, [torch.Generator().manual_seed(6)])
    assert pair.objective[1] == pytest.approx(alone.objective[0], rel=1e-12)
    assert pair.grad_sq_norm[1] == pytest.approx(alone.grad_sq_norm[0], rel=1e-10)
    assert pair.grad_sq_norm[0] != pytest.approx(pair.grad_sq_norm[1], rel=1e-3)


def test_tracker_window_mean_and_paper_proxy() -> None:
    n_examples, batch = 12, 4
    tracker = GradientNormTracker(2, n_examples, n_parameters=2, batch_size=batch)
    for squared_norms in ([1.0, 10.0], [4.0, 0.0], [8.0, 2.0]):
        tracker.observe(torch.tensor(squared_norms))
    assert all(map(math.isnan, tracker.paper_proxy))
    tracker.end_epoch()
    # Window: mean over steps, per replica. Proxy: sum over batches of ||B g||^2 / (N * params).
    assert tracker.read_window() == pytest.approx([(1 + 4 + 8) / 3, 12 / 3], rel=1e-6)
    scale = batch**2 / (n_examples * 2)
    assert tracker.paper_proxy == pytest.approx([scale * 13, scale * 12], rel=1e-6)
    assert all(map(math.isnan, tracker.read_window()))
