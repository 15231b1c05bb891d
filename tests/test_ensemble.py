"""T seeds in one pass: each replica is the single-seed run of its seed, in either layout, and nothing couples
them."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import pytest
import torch

from vaeconverge.cli import main
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import load_dataset
from vaeconverge.diagnostics.posterior import ACTIVE_UNIT_VARIANCE
from vaeconverge.diagnostics.seeds import bands, seed_mean
from vaeconverge.engine import LoopedEnsemble, VectorisedEnsemble, load_model, plan, train
from vaeconverge.engine.ensemble import clip_replica_norms_
from vaeconverge.models import build_vae
from vaeconverge.objectives import ELBO, IWAE

DIGITS = RunConfig(data="digits", hidden=64, batch_size=32, eval_every=250, eval_samples=2, constants=False)
COMPARED = ("objective", "grad_sq_norm", "batch_grad_sq_norm", "kl", "active_units")


def rows_of(result, seed: int) -> list[dict[str, float]]:
    return [row for row in result.metrics if row["seed"] == seed]


@pytest.mark.parametrize(
    ("optimizer", "lr", "objective", "samples"),
    [("sgd", 0.05, "elbo", 1), ("adam", 1e-3, "elbo", 1), ("sgd", 0.05, "iwae", 3), ("adam", 1e-3, "iwae", 3)],
    ids=["sgd-elbo", "adam-elbo", "sgd-iwae", "adam-iwae"],
)
@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "looped"])
def test_replica_equals_the_single_seed_run(optimizer, lr, objective, samples, vectorised, monkeypatch):
    """After 500 steps, replica t of a 3-seed run has the full objective, full-gradient norm and minibatch
    gradient norm of the run of seed t alone (the issue asks 1e-4 relative; the kernels are the same).
    The digits MLP is small enough to be vectorised; the looped layout is forced by lowering its threshold."""
    if not vectorised:
        monkeypatch.setattr(plan, "LOOP_FLOPS", 0.0)
    config = replace(DIGITS, optimizer=optimizer, lr=lr, objective=objective, samples=samples, steps=500)
    dataset = load_dataset(config)
    together = train(replace(config, seeds=(4, 1, 7)), dataset, progress=False)
    alone = train(replace(config, seed=1), dataset, progress=False)
    assert together.summary["vectorised"] is alone.summary["vectorised"] is vectorised
    replica, single = rows_of(together, 1), rows_of(alone, 1)
    assert [row["step"] for row in replica] == [row["step"] for row in single] == [0, 250, 500]
    for key in COMPARED:
        assert replica[-1][key] == pytest.approx(single[-1][key], rel=1e-4), key
    # the replicas really are different runs, and they did train
    finals = {seed: rows_of(together, seed)[-1]["objective"] for seed in (4, 1, 7)}
    assert len({round(v, 6) for v in finals.values()}) == 3
    assert all(rows_of(together, s)[-1]["objective"] < rows_of(together, s)[0]["objective"] for s in (4, 1, 7))


def test_replica_weights_equal_the_single_seed_weights():
    """The trained weights themselves agree."""
    config = replace(DIGITS, steps=200)
    dataset = load_dataset(config)
    together = train(replace(config, seeds=(0, 3)), dataset, progress=False)
    alone = train(replace(config, seed=3), dataset, progress=False)
    replica, single = together.ensemble.replica(1).state_dict(), alone.model.state_dict()
    for name, value in single.items():
        torch.testing.assert_close(replica[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_an_option_that_couples_replicas_is_refused(capsys):
    """Adafactor factors a stacked bias over the replica dimension: refused for several seeds, with the reason."""
    with pytest.raises(ConfigError, match="adafactor would couple the replicas") as info:
        RunConfig(seeds=(0, 1), optimizer="adafactor").validate()
    assert info.value.option == "--seeds"
    RunConfig(seeds=(0,), optimizer="adafactor").validate()  # one seed: nothing to couple
    assert main(["train", "--seeds", "2", "--optimizer", "adafactor", "--steps", "3", "--quiet"]) == 2
    assert "would couple the replicas" in capsys.readouterr().err


@pytest.mark.parametrize("layout", [VectorisedEnsemble, LoopedEnsemble], ids=["vectorised", "looped"])
def test_clipping_is_applied_per_replica(layout):
    """Each replica's gradient is scaled to the norm bound alone; a replica within the bound is untouched."""
    torch.manual_seed(0)
    ensemble = layout([build_vae(RunConfig(latent_dim=2), 3) for _ in range(2)], ELBO())
    ensemble(torch.rand(4, 3), torch.randn(2, 1, 4, 2)).sum().backward()
    grads = [p.grad for p in ensemble.parameters()]  # rescaled to norms 5 and 0.5
    raw = ensemble.squared_norms(grads)
    factors = torch.tensor([5.0, 0.5]) / raw.sqrt()
    ensemble.scale_(grads, factors)
    squared = ensemble.squared_norms(grads)
    assert squared.tolist() == pytest.approx([25.0, 0.25], rel=1e-5)
    clip_replica_norms_(ensemble, grads, squared, max_norm=1.0)
    assert ensemble.squared_norms(grads).sqrt().tolist() == pytest.approx([1.0, 0.5], rel=1e-5)


@pytest.mark.parametrize("seeds", [(0, 0), (-1, 2)], ids=["repeated", "negative"])
def test_bad_seed_lists_are_refused(seeds):
    with pytest.raises(ConfigError, match="--seeds"):
        RunConfig(seeds=seeds).validate()


def test_buffers_must_agree_across_replicas():
    first, second = build_vae(RunConfig(), 4), build_vae(RunConfig(), 4)
    second.encoder.input_shift.add_(1.0)
    with pytest.raises(ValueError, match="input_shift"):
        VectorisedEnsemble([first, second], ELBO())


def test_seed_mean_and_bands():
    rows = [{"seed": s, "step": step, "v": v} for s, values in ((0, (1.0, 4.0, 9.0)), (1, (3.0, 8.0)))
            for step, v in zip((0, 10, 20), values, strict=False)]
    mean = seed_mean(rows)  # seed 1 stopped at step 10: step 20 is not common to both
    assert [row["step"] for row in mean] == [0, 10]
    assert [row["v"] for row in mean] == [2.0, 6.0]
    band = bands(rows, "v")
    assert band["std"] == pytest.approx([math.sqrt(2.0), math.sqrt(8.0)])
    assert band["q50"] == pytest.approx([2.0, 6.0])
    assert band["q10"][1] == pytest.approx(4.0 + 0.1 * 4.0)


def test_cli_seeds_write_per_seed_rows_bands_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--hidden", "16", "--depth", "1", "--steps", "30", "--eval-every", "10",
            "--eval-samples", "1", "--seeds", "3", "--seed", "5", "--no-constants", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert "x 3 seeds" in capsys.readouterr().out
    with (out / "metrics.csv").open(newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert sorted({row["seed"] for row in rows}) == [5.0, 6.0, 7.0]
    with (out / "bands.csv").open(newline="") as handle:
        band_rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    assert [row["step"] for row in band_rows] == [0, 10, 20, 30]
    last = [row["grad_sq_norm"] for row in rows if row["step"] == 30]
    assert band_rows[-1]["grad_sq_norm_mean"] == pytest.approx(sum(last) / 3, rel=1e-9)
    assert band_rows[-1]["grad_sq_norm_q10"] <= band_rows[-1]["grad_sq_norm_q50"] <= band_rows[-1]["grad_sq_norm_q90"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [5, 6, 7] and summary["config"]["seeds"] == [5, 6, 7]
    assert [entry["seed"] for entry in summary["per_seed"]] == [5, 6, 7]
    assert summary["grad_sq_norm"] == pytest.approx(sum(last) / 3, rel=1e-9)
    assert summary["bands"]["grad_sq_norm"]["std"] > 0
    model, _ = load_model(out / "checkpoint.pt", seed=6)
    assert model.encoder.body[0].weight.shape == (16, 64)


@pytest.mark.parametrize(("value", "problem"), [("0", "must lie in [1, 10000]"), ("a,b", "list of seeds")])
def test_cli_rejects_bad_seeds(capsys, value, problem):
    assert main(["train", "--seeds", value, "--quiet"]) == 2
    assert problem in capsys.readouterr().err


def test_adafactor_trains_a_single_seed_in_natural_shapes():
    """Adafactor factors a matrix over its rows and columns, so it gets the looped layout, whose leaves are the
    parameters themselves."""
    config = replace(DIGITS, optimizer="adafactor", lr=1e-2, steps=60, eval_every=60, eval_samples=1)
    result = train(config, load_dataset(config), progress=False)
    assert isinstance(result.ensemble, LoopedEnsemble)
    assert [p.shape for p in result.ensemble.parameters()] == [p.shape for p in result.model.parameters()]
    assert result.metrics[-1]["objective"] < result.metrics[0]["objective"]


def test_the_flat_parameters_hold_every_replica_in_an_aligned_row_whose_padding_stays_zero():
    models = [build_vae(RunConfig(latent_dim=3), 5) for _ in range(2)]
    stacked, looped = VectorisedEnsemble(models, ELBO()), LoopedEnsemble(models, ELBO())
    [flat] = stacked.parameters()
    size = sum(p.numel() for p in models[0].parameters())
    assert flat.shape == (2, -(-size // 64) * 64) and flat.is_leaf
    for t in range(2):
        for (name, value), (_, mine) in zip(models[t].state_dict().items(), stacked.replica(t).state_dict().items(),
                                            strict=True):
            torch.testing.assert_close(mine, value, rtol=0, atol=0, msg=name)
    x, eps = torch.rand(2, 4, 5), torch.randn(2, 1, 4, 3)
    torch.testing.assert_close(stacked(x, eps), looped(x, eps), rtol=1e-6, atol=1e-5)  # layouts round apart
    stacked(x, eps).sum().backward()
    looped(x, eps).sum().backward()
    assert torch.count_nonzero(flat.grad[:, size:]) == 0  # the padding never moves
    torch.testing.assert_close(stacked.squared_norms([flat.grad]),
                               looped.squared_norms([p.grad for p in looped.parameters()]), rtol=1e-5, atol=0)
    with torch.no_grad():  # the optimizer steps the flat tensor: the model sees its new values
        flat.add_(1.0)
    assert all(torch.equal(mine, value + 1.0) for mine, value in zip(stacked.replica(1).parameters(),
                                                                       models[1].parameters(), strict=True))
    stacked.zero_grad()
    assert torch.count_nonzero(flat.grad) == 0
    stacked(x, eps).sum().backward()  # gradients accumulate into the zeroed flat gradient, not elsewhere
    assert torch.count_nonzero(flat.grad[:, :size]) > 0


@pytest.mark.parametrize(
    ("options", "objective"),
    [({"model": "linear", "likelihood": "gaussian", "learn_variance": True}, ELBO(samples=2, beta=0.5)),
     ({"model": "mlp", "activation": "softclip", "likelihood": "gaussian", "learn_variance": True}, IWAE(samples=3)),
     ({"model": "mlp", "likelihood": "bernoulli", "depth": 1}, ELBO(samples=1))],
    ids=["linear-learned-c", "softclip-gaussian-iwae", "bernoulli-elbo"],
)
def test_stacked_layers_give_every_replica_its_plain_forward_and_gradient(options, objective):
    """The stacked layout evaluates replica t's parameters on replica t's batch and noise only: per-replica
    values and gradients equal those of the plain modules, including parameters that are one number per
    replica (a learned decoder scale) and the Linear VAE's shared Cholesky factor."""
    config = RunConfig(latent_dim=3, hidden=8, **options)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_vae(config, 5)
        with torch.no_grad():  # move every parameter off its initial value, so replicas differ everywhere
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        models.append(model)
    stacked = VectorisedEnsemble(models, objective)
    x, eps = torch.rand(3, 4, 5), torch.randn(3, objective.samples, 4, 3)
    values = stacked(x, eps)
    values.sum().backward()
    grads = [p.grad for p in stacked.parameters()]
    shared = stacked(x[0], eps)  # one batch for every replica
    for t, model in enumerate(models):
        plain = objective(model, x[t], eps[t])
        torch.testing.assert_close(values[t], plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared[t], objective(model, x[0], eps[t]), rtol=1e-5, atol=1e-5)
        expected = torch.autograd.grad(plain.sum(), list(model.parameters()))
        for (name, _), got, want in zip(model.named_parameters(), replica_views(stacked, grads, t), expected,
                                        strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def replica_views(stacked: VectorisedEnsemble, grads, t: int) -> list[torch.Tensor]:
    """Replica t's gradients in the parameters' natural shapes, read from its row of the flat gradient: the
    parameters one after another, a matrix stored transposed."""
    [row], views, start = grads, [], 0
    for p in stacked.template.parameters():
        part = row[t, start:start + p.numel()]
        views.append(part.view(p.shape[1], p.shape[0]).T if p.dim() == 2 else part.view(p.shape))
        start += p.numel()
    return views


@pytest.mark.parametrize("options", [{"model": "linear", "likelihood": "gaussian"}, {"model": "mlp"}],
                         ids=["linear", "mlp"])
@pytest.mark.parametrize("layout", [VectorisedEnsemble, LoopedEnsemble], ids=["vectorised", "looped"])
def test_each_replicas_posterior_usage_is_its_plain_models(options, layout):
    """The encoders' use of the latent space, taken for every replica at once, is each plain model's over all
    the data: the mean KL to the prior and the count of latent means whose variance over the data passes the
    threshold, here computed by hand."""
    config = RunConfig(latent_dim=3, hidden=8, **options)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_vae(config, 5)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        models.append(model)
    x = torch.rand(37, 5)
    usages = layout(models, ELBO()).posterior_usage(x, chunk_size=8)  # several chunks, the last one short
    assert len(usages) == 3
    for model, usage in zip(models, usages, strict=True):
        with torch.no_grad():
            q = model.encode(x)
        assert usage.kl == pytest.approx(q.kl_to_prior().double().mean().item(), rel=1e-5)
        assert usage.active_units == int((q.mean.double().var(0, correction=0) > ACTIVE_UNIT_VARIANCE).sum())
    assert len({round(usage.kl, 6) for usage in usages}) == 3
