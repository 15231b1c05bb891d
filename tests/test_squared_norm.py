"""The unbiased squared-norm estimate on gradients with a known mean and covariance: its average over many
independent draws is ||mean||^2, its standard error matches the draws' spread, and one replicate's squared norm
is biased by trace(Cov)."""

from __future__ import annotations

import math

import pytest
import torch

from vaeconverge.diagnostics.squared_norm import unbiased_squared_norm

GROUPS, P, DRAWS = 8, 12, 4000


def draws(mean_scale: float, seed: int = 0) -> tuple[torch.Tensor, list[tuple[float, float, float]], float]:
    """``DRAWS`` estimates from replicates g = sum_c (mu / m + A_c z_c), groups of unequal covariance."""
    generator = torch.Generator().manual_seed(seed)
    mu = mean_scale * torch.randn(P, generator=generator, dtype=torch.float64)
    factors = torch.randn(GROUPS, P, P, generator=generator, dtype=torch.float64) / P
    factors *= torch.linspace(0.5, 1.5, GROUPS, dtype=torch.float64)[:, None, None]  # unequal groups
    trace_cov = sum(torch.trace(a @ a.T).item() for a in factors)
    out = []
    for _ in range(DRAWS):
        z = torch.randn(2, GROUPS, P, 1, generator=generator, dtype=torch.float64)
        first, second = (mu / GROUPS + (factors @ z[h]).squeeze(-1) for h in range(2))
        estimate = unbiased_squared_norm(first, second)
        out.append((estimate.value.item(), estimate.se.item(), estimate.biased.item()))
    return mu, out, trace_cov


@pytest.mark.parametrize("mean_scale", [0.0, 0.3, 1.0])
def test_the_estimate_is_unbiased_and_its_standard_error_matches_the_spread(mean_scale: float) -> None:
    mu, out, _ = draws(mean_scale)
    values = torch.tensor([v for v, _, _ in out], dtype=torch.float64)
    truth = mu.square().sum().item()
    spread = values.std().item()
    assert abs(values.mean().item() - truth) < 4 * spread / math.sqrt(DRAWS)
    typical_se = math.sqrt(sum(se**2 for _, se, _ in out) / DRAWS)
    assert typical_se == pytest.approx(spread, rel=0.08)


def test_the_former_reading_is_biased_by_the_trace_of_the_covariance() -> None:
    mu, out, trace_cov = draws(0.3)
    biased = torch.tensor([b for _, _, b in out], dtype=torch.float64)
    expected = mu.square().sum().item() + trace_cov
    assert abs(biased.mean().item() - expected) < 4 * biased.std().item() / math.sqrt(DRAWS)
    assert trace_cov > 10 * biased.std().item() / math.sqrt(DRAWS)  # the bias is resolved by these draws


def test_a_batch_of_estimates_is_each_estimate_alone() -> None:
    generator = torch.Generator().manual_seed(3)
    first, second = torch.randn(2, GROUPS, 3, P, generator=generator, dtype=torch.float64)
    batched = unbiased_squared_norm(first, second)
    for t in range(3):
        alone = unbiased_squared_norm(first[:, t], second[:, t])
        for name in ("value", "se", "biased"):
            assert getattr(batched, name)[t].item() == pytest.approx(getattr(alone, name).item(), rel=1e-12)


def test_one_group_has_no_standard_error() -> None:
    estimate = unbiased_squared_norm(torch.ones(1, 3), 2 * torch.ones(1, 3))
    assert estimate.value.item() == 6.0 and math.isnan(estimate.se.item())


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="one shape"):
        unbiased_squared_norm(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="one shape"):
        unbiased_squared_norm(torch.zeros(2, 3), torch.zeros(2, 4))


def test_float32_terms_of_a_million_coordinates_give_the_float64_answer() -> None:
    generator = torch.Generator().manual_seed(5)
    first, second = 1.0 + torch.randn(2, GROUPS, 2, 1_000_003, generator=generator)
    estimate = unbiased_squared_norm(first, second)
    reference = unbiased_squared_norm(first.double(), second.double())
    assert torch.allclose(estimate.value, reference.value, rtol=1e-7, atol=0)
    assert torch.allclose(estimate.biased, reference.biased, rtol=1e-7, atol=0)
    # the standard error takes differences of the Gram entries; it is itself known to a few percent at best
    assert torch.allclose(estimate.se, reference.se, rtol=1e-4, atol=0)
