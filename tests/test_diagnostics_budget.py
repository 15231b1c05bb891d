"""Diagnostics sized to the model (engine/plan.py): a checkpoint's chunks and a constants probe's examples hold
about DIAGNOSTICS_BYTES at most, so that a conv network's diagnostics fit where its training does, while a small
MLP keeps the large chunks that make its checkpoints fast."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from vaeconverge import RunConfig
from vaeconverge.data import Dataset
from vaeconverge.engine import plan as plan_module
from vaeconverge.engine.plan import step_cost
from vaeconverge.engine.train import EnsembleSubject, build_ensemble
from vaeconverge.models import build_vae
from vaeconverge.objectives import build_objective


def cost_of(config: RunConfig, data_dim: int):
    objective = build_objective(config)
    with torch.device("meta"):
        model = build_vae(config, data_dim)
        return step_cost(model, partial(objective, model), config.batch_size,
                         torch.empty(config.batch_size, data_dim),
                         torch.empty(objective.samples, config.batch_size, model.latent_dim))


def test_a_small_mlp_keeps_the_largest_chunks_and_probes():
    cost = cost_of(RunConfig(batch_size=128), 64)
    assert cost.eval_chunk() == plan_module.EVAL_CHUNK
    assert cost.probe_examples() == plan_module.PROBE_EXAMPLES


def test_the_papers_conv_net_is_chunked_to_the_budget():
    config = RunConfig(model="conv32", latent_dim=100, batch_size=256)
    cost = cost_of(config, 3 * 32 * 32)
    assert cost.eval_chunk() == config.batch_size  # its training batch already holds more than the budget
    probe = cost.probe_examples()
    assert plan_module.MIN_PROBE_EXAMPLES <= probe < plan_module.PROBE_EXAMPLES
    held = probe * 2 * (2 * 4 * cost.parameters + cost.example_bytes)
    assert held <= plan_module.DIAGNOSTICS_BYTES
    hvp = cost.hvp_chunk()  # the smoothness probe's 512 examples go in terms of a forward-over-reverse pass each
    assert 1 <= hvp < 512 and 2 * hvp * cost.example_bytes + cost.lanczos_bytes() <= plan_module.DIAGNOSTICS_BYTES


@pytest.mark.parametrize("budget", [2**20, 2**40])
def test_the_budget_moves_the_chunk_between_a_batch_and_the_cap(monkeypatch, budget):
    monkeypatch.setattr(plan_module, "DIAGNOSTICS_BYTES", budget)
    cost = cost_of(RunConfig(batch_size=32), 64)
    expected = 32 if budget == 2**20 else plan_module.EVAL_CHUNK
    assert cost.eval_chunk() == expected


def test_a_run_takes_its_chunk_and_probe_sizes_from_its_plan():
    x = torch.rand(300, 3 * 32 * 32)
    _, chosen = build_ensemble(RunConfig(model="conv32", latent_dim=8, batch_size=16), x)
    cost = cost_of(RunConfig(model="conv32", latent_dim=8, batch_size=16), 3 * 32 * 32)
    assert (chosen.eval_chunk, chosen.hvp_chunk, chosen.probe_examples) == (
        cost.eval_chunk(), cost.hvp_chunk(), cost.probe_examples())


def test_a_conv_runs_smoothness_probe_goes_in_terms_of_its_hvp_chunk(monkeypatch):
    monkeypatch.setattr(plan_module, "DIAGNOSTICS_BYTES", 2**20)
    x = torch.rand(40, 3 * 32 * 32)
    config = RunConfig(model="conv32", latent_dim=8, batch_size=4, seeds=(0, 1))
    ensemble, chosen = build_ensemble(config, x)
    subject = EnsembleSubject(ensemble, Dataset("random", x), config, chosen)
    terms, params = subject.fixed_noise_loss(1, torch.Generator().manual_seed(0), seed=1)
    assert len(terms) == math.ceil(len(x) / chosen.hvp_chunk) > 1
    assert set(params) == {f"model.{name}" for name, p in ensemble.replica(1).named_parameters() if p.requires_grad}
    assert torch.isfinite(terms[-1](params))
