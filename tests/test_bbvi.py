"""Black-box variational inference: oracles from the conjugate target (exact posterior and evidence), the
closed-form ELBO of a Gaussian family against a Gaussian target, monotonicity of the importance-weighted
bound in K, replica t of a T-seed run against the single run of seed t, then the CLI and its errors."""

import csv
import itertools
import json
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence
from torch.func import jacrev

from vaeconverge.bbvi import BBVIConfig, FullRank, build_family, build_target, elbo, iwae, log_weights, train
from vaeconverge.bbvi.targets import DTYPE, linear_regression
from vaeconverge.cli import main
from vaeconverge.engine.recorder import METRIC_COLUMNS

OUTPUT_FILES = {"metrics.csv", "bands.csv", "summary.json", "convergence.png", "checkpoint.pt"}


@pytest.fixture(scope="module")
def conjugate():
    return linear_regression()


def _set_gaussian(family, mean, covariance):
    """Put every replica of a Gaussian family at N(mean, covariance) (mean-field: its diagonal)."""
    with torch.no_grad():
        family.loc.copy_(mean.expand_as(family.loc))
        if isinstance(family, FullRank):
            scale = torch.linalg.cholesky(covariance)
            family.log_diag.copy_(scale.diagonal().log().expand_as(family.log_diag))
            family.off_diag.copy_(scale.tril(-1).expand_as(family.off_diag))
        else:
            family.log_scale.copy_(covariance.diagonal().sqrt().log().expand_as(family.log_scale))


def _perturbed_posterior(target):
    """A Gaussian near, but not at, the exact posterior: shifted mean, inflated covariance."""
    shift = 0.3 * target.posterior_covariance.diagonal().sqrt()
    return target.posterior_mean + shift, 1.8 * target.posterior_covariance


def test_elbo_at_the_exact_posterior_is_the_log_evidence(conjugate):
    # with q the exact posterior, log p(w, y) - log q(w) = log p(y) for every sample w
    family = build_family("full-rank", (0,), conjugate.dim)
    _set_gaussian(family, conjugate.posterior_mean, conjugate.posterior_covariance)
    eps = torch.randn(1, 8, 3, conjugate.dim, dtype=DTYPE)
    assert elbo(family, conjugate, eps).item() == pytest.approx(conjugate.log_evidence, abs=1e-9)
    assert iwae(family, conjugate, eps).item() == pytest.approx(conjugate.log_evidence, abs=1e-9)


@pytest.mark.parametrize("name", ["full-rank", "planar-flow"])
def test_log_q_is_the_change_of_variables_density(name):
    # log q(w) = log N(eps; 0, I) - log |det dw/deps|, the Jacobian by automatic differentiation
    family = build_family(name, (3,), 3, flow_layers=3)
    with torch.no_grad():
        for p in family.parameters():
            p.add_(0.5 * torch.randn_like(p))
    eps = torch.randn(1, 4, 3, dtype=DTYPE)
    _, log_q = family.rsample(eps)
    for s in range(4):
        jacobian = jacrev(lambda e: family.rsample(e.view(1, 1, 3))[0].view(3))(eps[0, s])
        expected = MultivariateNormal(torch.zeros(3, dtype=DTYPE), torch.eye(3, dtype=DTYPE)).log_prob(eps[0, s])
        assert log_q[0, s].item() == pytest.approx((expected - torch.linalg.slogdet(jacobian)[1]).item(), abs=1e-9)


def test_full_rank_converges_to_the_exact_posterior_and_evidence(conjugate):
    # SGD, gamma_n = 0.02 / sqrt(n), K = 16, 3000 steps: measured mean error 0.3%, covariance error 3.8%, gap 0.004
    config = BBVIConfig(target="linear-regression", family="full-rank", optimizer="sgd", lr=0.02, schedule="sqrt",
                        samples=16, steps=3000, constants=False)
    result = train(config, progress=False)
    posterior = result.summary["posterior"][0]
    assert posterior["mean_error"] < 0.02  # ||mean - exact|| / ||exact||
    assert posterior["covariance_error"] < 0.08  # ||cov - exact||_F / ||exact||_F
    # the gap -ELBO - (-log p(y)) = KL(q || posterior) >= 0, estimated from 256 x 16 samples
    assert abs(result.summary["evidence_gap"]) < 0.02
    assert result.summary["log_evidence"] == pytest.approx(conjugate.log_evidence)


@pytest.mark.parametrize("name", ["mean-field", "full-rank"])
@pytest.mark.parametrize("batch_size", [None, 7])
def test_stochastic_elbo_gradient_is_unbiased(conjugate, name, batch_size):
    # the conjugate log-joint is log p(y) + log N(w; posterior), so ELBO(q) = log p(y) - KL(q || posterior)
    draws = 10000  # as replicas with equal parameters: one backward gives each draw's gradient
    family = build_family(name, tuple(range(draws)), conjugate.dim)
    _set_gaussian(family, *_perturbed_posterior(conjugate))
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn(draws, 1, 1, conjugate.dim, generator=generator, dtype=DTYPE)
    index = None
    if batch_size is not None:
        index = torch.stack([torch.randperm(conjugate.n_data, generator=generator)[:batch_size] for _ in range(draws)])
    stochastic = torch.autograd.grad(elbo(family, conjugate, eps, index).sum(), list(family.parameters()))

    exact_family = build_family(name, (0,), conjugate.dim)
    _set_gaussian(exact_family, *_perturbed_posterior(conjugate))
    q = MultivariateNormal(exact_family.loc[0], scale_tril=exact_family.scale_tril()[0])
    posterior = MultivariateNormal(conjugate.posterior_mean, conjugate.posterior_covariance)
    exact = torch.autograd.grad(-kl_divergence(q, posterior), list(exact_family.parameters()), allow_unused=True)
    assert exact[0].norm() > 5 * stochastic[0].std(0).norm() / math.sqrt(draws)  # the test has power
    for g, e in zip(stochastic, exact, strict=True):
        e = torch.zeros_like(g[0]) if e is None else e[0]
        mean, stderr = g.mean(0), g.std(0) / math.sqrt(draws)
        if name == "full-rank" and g.dim() == 3:  # only the strictly lower triangle is a parameter in use
            mean, stderr, e = mean.tril(-1), stderr.tril(-1), e.tril(-1)
        assert torch.all((mean - e).abs() <= 4 * stderr + 1e-9), (mean, e, stderr)


def test_importance_weighted_bound_rises_with_k_and_stays_below_the_evidence(conjugate):
    family = build_family("mean-field", (0,), conjugate.dim)
    _set_gaussian(family, *_perturbed_posterior(conjugate))
    generator = torch.Generator().manual_seed(1)
    groups, means = 4000, []
    with torch.no_grad():
        for k in (1, 2, 5, 20):
            eps = torch.randn(1, groups, k, conjugate.dim, generator=generator, dtype=DTYPE)
            per_group = torch.logsumexp(log_weights(family, conjugate, eps), -1).flatten() - math.log(k)
            assert iwae(family, conjugate, eps).item() == pytest.approx(per_group.mean().item())
            means.append((per_group.mean().item(), per_group.std().item() / math.sqrt(groups)))
    for (low, low_se), (high, high_se) in itertools.pairwise(means):
        assert high - low > -3 * math.hypot(low_se, high_se)
    assert means[-1][0] - means[0][0] > 10 * math.hypot(means[0][1], means[-1][1])  # it does rise
    for mean, stderr in means:
        assert mean + 3 * stderr < conjugate.log_evidence


@pytest.mark.parametrize("family", ["planar-flow", "mean-field"])
def test_replica_t_is_the_single_run_of_seed_t(family):
    common = {"target": "linear-regression", "family": family, "batch_size": 10, "samples": 3, "steps": 150,
              "eval_points": 6, "eval_samples": 32, "constants": False, "lr": 0.01}
    together = train(BBVIConfig(seeds=(0, 1, 2), **common), progress=False)
    for t, seed in enumerate((0, 1, 2)):
        alone = train(BBVIConfig(seed=seed, **common), progress=False)
        rows = [row for row in together.metrics if row["seed"] == seed]
        assert [row["step"] for row in rows] == [row["step"] for row in alone.metrics]
        for mine, theirs in zip(rows, alone.metrics, strict=True):
            for key in ("objective", "grad_sq_norm", "batch_grad_sq_norm"):
                if math.isfinite(theirs[key]):
                    assert mine[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12)
        for (name, p), q in zip(together.family.named_parameters(), alone.family.parameters(), strict=True):
            torch.testing.assert_close(p[t], q[0], rtol=1e-9, atol=1e-12, msg=name)
    different = [row["objective"] for row in together.metrics if row["step"] == 150]
    assert len(set(different)) == 3  # the seeds do differ


def _cli(argv):
    return main([str(a) for a in argv])


@pytest.mark.parametrize(("target", "family", "extra"), [
    ("linear-regression", "full-rank", ["--seeds", "2"]),
    ("logistic-regression", "mean-field", ["--batch-size", "32", "--eval-samples", "16"]),
    ("mixture", "planar-flow", ["--objective", "iwae", "--samples", "4"]),
])
def test_cli_trains_each_builtin_target(tmp_path, target, family, extra):
    out = tmp_path / "run"
    assert _cli(["bbvi", "--target", target, "--family", family, "--steps", 60, "--eval-every", 10,
                 "--optimizer", "adam-defossez", "--lr", 0.02, "--out", out, "--quiet", *extra]) == 0
    assert {p.name for p in out.iterdir()} >= OUTPUT_FILES
    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seeds = 2 if "--seeds" in extra else 1
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert len(rows) == 7 * seeds  # steps 0, 10, ..., 60 per seed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["target"] == target and summary["config"]["family"] == family
    assert summary["data"]["n"] == build_target(target).n_data
    for key in ("constants", "bound", "random_iterate", "rate"):
        assert summary[key] is not None, key
    assert summary["constants"]["d"] == summary["parameters"]
    assert summary["bound"]["name"] == "defossez-adam" and summary["bound"]["status"] == "applicable"
    if target != "logistic-regression":  # a known evidence bounds the objective: -objective <= log p(data)
        assert summary["evidence_gap"] == pytest.approx(summary["objective"] + summary["log_evidence"])
        assert summary["evidence_gap"] > -0.05
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["seeds"] == summary["seeds"]


@pytest.mark.parametrize(("argv", "flag"), [
    (["--samples", "0"], "--samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "51"], "--batch-size"),  # N = 50
    (["--target", "nope"], "--target"),
    (["--family", "nope"], "--family"),
    (["--lr", "-1"], "--lr"),
    (["--target", "mixture", "--batch-size", "2"], "--batch-size"),  # a density without data: N = 1
])
def test_cli_errors_name_the_flag(tmp_path, capsys, argv, flag):
    out = tmp_path / "never"
    assert _cli(["bbvi", "--steps", 5, "--out", out, "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"vaeconverge bbvi: error: {flag}:")
    assert not out.exists()


BBVI_SPEC = """
name = "bbvi-k"
seeds = 2
[base]
kind = "bbvi"
target = "mixture"
family = "mean-field"
steps = 30
eval_every = 10
eval_samples = 8
constants = false
[grid]
samples = [1, 4]
"""


def test_a_bbvi_study_runs_through_the_sweep_store_and_report(tmp_path, capsys):
    from vaeconverge.sweeps import InProcess, Store, parse_spec, run_sweep

    spec = parse_spec(BBVI_SPEC)
    assert [config.samples for config in spec.runs()] == [1, 4]
    with Store(tmp_path / "r.db") as store:
        assert run_sweep(spec, store, InProcess(), progress=False)["done"] == 2
        stored = store.runs("bbvi-k")
        for run in stored:  # the store gives back the BBVI configuration, and the run trained from it
            alone = train(run.config, progress=False)
            assert [row["objective"] for row in store.metrics(run.id)] == pytest.approx(
                [row["objective"] for row in sorted(alone.metrics, key=lambda r: (r["seed"], r["step"]))])
            assert run.summary["config"] == {**run.config.to_dict(), "batch_size": 1}  # B resolved to N = 1
    assert _cli(["report", tmp_path / "r.db", "--out", tmp_path / "report"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "bbvi-k" in page and "samples=4" in page


def test_a_bbvi_study_refuses_vae_options():
    from vaeconverge.sweeps import SpecError, parse_spec

    with pytest.raises(SpecError, match=r"base\.model: unknown option"):
        parse_spec(BBVI_SPEC.replace('family = "mean-field"', 'model = "mlp"'))
    with pytest.raises(SpecError, match=r"base\.kind"):
        parse_spec(BBVI_SPEC.replace('kind = "bbvi"', 'kind = "gan"'))
