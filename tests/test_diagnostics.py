"""Gradient-norm diagnostics: the full-objective gradient against the exact one, and the paper's proxy."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_linear_vae

from vaeconverge.diagnostics import GradientNormTracker, full_objective_gradient, replica_squared_norms
from vaeconverge.diagnostics.grad_norms import EVAL_GROUPS, evaluation_chunks
from vaeconverge.engine import LoopedEnsemble, VectorisedEnsemble
from vaeconverge.objectives import ELBO


def test_replica_squared_norms_sum_each_replica_alone() -> None:
    grads = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[[1.0], [2.0]], [[0.0], [0.0]]]),
             torch.tensor([0.0, 2.0])]
    assert replica_squared_norms(grads).tolist() == pytest.approx([30.0, 5.0], rel=1e-6)


LAYOUTS = pytest.mark.parametrize("layout", [VectorisedEnsemble, LoopedEnsemble], ids=["vectorised", "looped"])


def exact_squared_norm(model, x: torch.Tensor) -> tuple[float, float]:
    """The Linear VAE's exact full objective and the squared norm of its exact gradient."""
    loss = -model.exact_elbo(x).mean()
    return loss.item(), sum(g.square().sum() for g in torch.autograd.grad(loss, list(model.parameters()))).item()


@LAYOUTS
def test_full_gradient_approaches_the_exact_gradient_and_leaves_grads_alone(layout) -> None:
    model = make_linear_vae(data_dim=4, latent_dim=2, seed=2)
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact_loss, exact_sq = exact_squared_norm(model, x)
    ensemble = layout([model], ELBO(1))
    for p in ensemble.parameters():
        p.grad = torch.full_like(p, 7.0)

    estimate = full_objective_gradient(ensemble, x, eval_samples=200,
                                       generators=[torch.Generator().manual_seed(1)], chunk_size=128)
    assert abs(estimate.objective[0] - exact_loss) < 1e-2 * abs(exact_loss)
    assert abs(estimate.grad_sq_norm[0] - exact_sq) < max(4 * estimate.grad_sq_norm_se[0], 1e-3 * exact_sq)
    assert estimate.grad_sq_norm_se[0] < 1e-2 * exact_sq
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in ensemble.parameters())


@LAYOUTS
def test_the_squared_norm_is_unbiased_where_one_replicate_is_not(layout) -> None:
    """Over many independent single-draw evaluations of a Linear VAE, the mean estimate is the exact squared norm
    (within four standard errors of that mean), its standard error matches the spread of the estimates, and the
    single-replicate reading sits above the exact value by more than that; the objective's standard error matches
    its spread too."""
    model = make_linear_vae(data_dim=4, latent_dim=2, seed=2)
    with torch.no_grad():  # few examples from the model itself: a small gradient next to its Monte Carlo noise
        x = model.marginal().sample((10,))
    _, exact_sq = exact_squared_norm(model, x)
    ensemble = layout([model], ELBO(1))
    runs = [full_objective_gradient(ensemble, x, 1, [torch.Generator().manual_seed(seed)]) for seed in range(200)]
    values = torch.tensor([r.grad_sq_norm[0] for r in runs], dtype=torch.float64)
    biased = torch.tensor([r.grad_sq_norm_biased[0] for r in runs], dtype=torch.float64)
    se = torch.tensor([r.grad_sq_norm_se[0] for r in runs], dtype=torch.float64)
    error_of_mean = values.std().item() / math.sqrt(len(runs))
    assert abs(values.mean().item() - exact_sq) < 4 * error_of_mean
    assert biased.mean().item() - exact_sq > 10 * error_of_mean  # the former reading's bias is resolved here
    assert se.square().mean().sqrt().item() == pytest.approx(values.std().item(), rel=0.2)
    objective = torch.tensor([r.objective[0] for r in runs], dtype=torch.float64)
    objective_se = torch.tensor([r.objective_se[0] for r in runs], dtype=torch.float64)
    assert objective_se.square().mean().sqrt().item() == pytest.approx(objective.std().item(), rel=0.2)


def test_evaluation_chunks_cover_the_data_once_in_eval_groups() -> None:
    x = torch.arange(103)
    for chunk_size, chunks in ((1000, 8), (5, 21)):
        pieces = list(evaluation_chunks(x, chunk_size))
        assert len(pieces) == chunks and torch.equal(torch.cat([c for _, c in pieces]), x)
        assert [g for g, _ in pieces] == [j % EVAL_GROUPS for j in range(chunks)]
    assert [len(c) for _, c in evaluation_chunks(torch.arange(3), 100)] == [1, 1, 1]


@LAYOUTS
def test_full_gradient_of_each_replica_ignores_the_others(layout) -> None:
    """Replica 1 of a pair gives what it gives alone, with its own generator: nothing leaks across replicas."""
    first, second = make_linear_vae(data_dim=4, latent_dim=2, seed=2), make_linear_vae(data_dim=4, latent_dim=2, seed=3)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pair = full_objective_gradient(layout([first, second], ELBO(2)), x, 2,
                                   [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])
    alone = full_objective_gradient(layout([second], ELBO(2)), x, 2, [torch.Generator().manual_seed(6)])
    assert pair.objective[1] == pytest.approx(alone.objective[0], rel=1e-12)
    for key in ("grad_sq_norm", "grad_sq_norm_se", "grad_sq_norm_biased"):
        assert getattr(pair, key)[1] == pytest.approx(getattr(alone, key)[0], rel=1e-10)
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


def test_chunks_in_one_vectorised_pass_give_each_chunk_its_own_gradient() -> None:
    """The stacked pass over padded chunks equals evaluating the chunks one after another, and equals the looped
    layout's chunk by chunk."""
    models = [make_linear_vae(data_dim=4, latent_dim=2, seed=s) for s in (2, 3)]
    ensemble = VectorisedEnsemble(models, ELBO(2))
    generator = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 4, generator=generator, dtype=torch.float64) for n in (7, 5, 7)]
    eps = [torch.randn(2, 2, len(c), 2, generator=generator, dtype=torch.float64) for c in chunks]
    values, grads = ensemble.chunk_gradients(chunks, eps, 0.1)
    for chunk, noise, got, want in zip(chunks, eps, values, grads, strict=True):
        [value], [grad] = ensemble.chunk_gradients([chunk], [noise], 0.1)
        assert got.shape == (2,) and torch.allclose(got, value, rtol=1e-12)
        assert want.shape == grad.shape and torch.allclose(want, grad, rtol=1e-10, atol=1e-12)
    looped_values, looped_grads = LoopedEnsemble(models, ELBO(2)).chunk_gradients(chunks, eps, 0.1)
    for got, want, mine, theirs in zip(values, looped_values, grads, looped_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-12)
        assert torch.allclose(mine.square().sum(1), theirs.square().sum(1), rtol=1e-10)
        assert torch.allclose(mine.sum(1), theirs.sum(1), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(grads[0], grads[2])  # chunks of equal size, different data
