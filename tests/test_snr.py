"""Gradient signal-to-noise ratio: the estimator against Gaussian draws of known mean and covariance (coverage of its
stated standard error over many repetitions, and its stated floor), the IWAE direction on a real VAE, and --snr in
the three kinds of run: measured per replica and group, leaving training and run identity as they were."""

from __future__ import annotations

import math

import pytest
import torch

from vaeconverge.bbvi.config import BBVIConfig
from vaeconverge.bbvi.train import train as train_bbvi
from vaeconverge.cli.main import build_parser, config_from_args
from vaeconverge.config import ConfigError, RunConfig
from vaeconverge.data import as_float, load_dataset
from vaeconverge.diagnostics.snr import gradient_snr, vae_gradient_draws
from vaeconverge.engine import train
from vaeconverge.engine.recorder import METRIC_COLUMNS, SNR_COLUMNS
from vaeconverge.models import build_vae
from vaeconverge.monitor import ConvergenceMonitor
from vaeconverge.objectives import build_objective
from vaeconverge.report.findings import check
from vaeconverge.report.page import write_report
from vaeconverge.report.snr import fit_slopes, lifts
from vaeconverge.sweeps import Outcome, SpecError, Store, parse_spec, run_id
from vaeconverge.sweeps.reproduce import paper_studies

Z_95 = 1.96


def gaussian_draws(mean: torch.Tensor, root: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
    """``draws`` rows of N(mean, root root^T)."""
    z = torch.randn(draws, len(mean), generator=generator, dtype=torch.float64)
    return mean + z @ root.T


def known_group(p: int = 24) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """A group of ``p`` coordinates with correlated Gaussian gradients: its mean, covariance root, and true SNRs."""
    g = torch.Generator().manual_seed(123)
    scale = torch.linspace(0.5, 2.0, p, dtype=torch.float64)
    mean = scale * torch.linspace(0.6, 2.5, p, dtype=torch.float64) * torch.where(torch.arange(p) % 3 == 0, -1, 1)
    mixing = torch.eye(p, dtype=torch.float64) + 0.3 * torch.randn(p, p, generator=g, dtype=torch.float64)
    root = scale[:, None] * mixing / mixing.norm(dim=1, keepdim=True)  # row i has norm scale_i: std_i = scale_i
    covariance = root @ root.T
    coord = (mean.abs() / covariance.diagonal().sqrt()).mean().item()
    norm = (mean.norm() / covariance.trace().sqrt()).item()
    return mean, root, coord, norm


@pytest.mark.parametrize("draws", [32, 128])
def test_the_estimates_cover_the_true_snrs_at_their_stated_standard_errors(draws: int) -> None:
    """Over 400 independent sets of draws: each estimate lies within 1.96 of its own standard errors of the truth
    about 95% of the time (a little less for ``coord``, whose stated upward bias, about 3 / (4 M) relative for
    Gaussian draws whose means lie clear of zero, is half a standard error at M = 32), its mean is off by no more
    than that bias, and its standard error is the spread of the estimates."""
    mean, root, true_coord, true_norm = known_group()
    g = torch.Generator().manual_seed(0)
    estimates = [gradient_snr(gaussian_draws(mean, root, draws, g)) for _ in range(400)]
    for value, se, truth, bias in (("coord", "coord_se", true_coord, 0.75 / draws * true_coord),
                                   ("norm", "norm_se", true_norm, 0.0)):
        values = torch.tensor([getattr(e, value) for e in estimates])
        errors = torch.tensor([getattr(e, se) for e in estimates])
        covered = ((values - truth).abs() <= Z_95 * errors).double().mean().item()
        assert 0.88 <= covered <= 0.99, (value, covered)
        assert -0.25 * errors.mean().item() < values.mean().item() - truth < bias + 0.25 * errors.mean().item()
        assert errors.mean().item() == pytest.approx(values.std().item(), rel=0.2)


def test_pure_noise_reads_the_stated_floor_and_constant_coordinates_are_left_out() -> None:
    """Zero-mean draws: ``coord`` reads about sqrt(2 / pi) / sqrt(M), the fold of |mean| (the docstring's
    statement); ``norm``, estimated from an unbiased ||mean||^2, stays near 0. A coordinate that no draw moves has no
    ratio and does not count."""
    g = torch.Generator().manual_seed(1)
    m, p = 32, 400
    readings = [gradient_snr(torch.cat([torch.randn(m, p, generator=g, dtype=torch.float64),
                                        torch.zeros(m, 3, dtype=torch.float64)], dim=1)) for _ in range(50)]
    coord = sum(r.coord for r in readings) / len(readings)
    assert coord == pytest.approx(math.sqrt(2 / math.pi / m), rel=0.1)
    assert sum(r.norm for r in readings) / len(readings) < 0.05
    assert {r.coordinates for r in readings} == {p}
    with pytest.raises(ValueError, match="at least 3 draws"):
        gradient_snr(torch.randn(2, 5))


def test_iwae_samples_raise_the_decoder_snr_and_lower_the_encoder_snr() -> None:
    """Rainforth et al.: at the same weights, IWAE with K = 64 has a higher decoder SNR and a lower encoder SNR than
    K = 1 (their mean over three initialisations, each from 32 draws of B = 32)."""
    config = RunConfig(objective="iwae", hidden=64, batch_size=32)
    x = load_dataset(config, progress=False).x
    readings: dict[int, dict[str, list[float]]] = {k: {"encoder": [], "decoder": []} for k in (1, 64)}
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_vae(config, x.shape[1])
        model.init_from_data_(x)
        for k in readings:
            objective = build_objective(RunConfig(objective="iwae", samples=k))
            draws = vae_gradient_draws(model, objective, x, 32, 32, torch.Generator().manual_seed(seed))
            for group, own in draws.items():
                readings[k][group].append(gradient_snr(own).coord)
    mean = {k: {group: sum(v) / len(v) for group, v in groups.items()} for k, groups in readings.items()}
    assert mean[64]["decoder"] > 1.5 * mean[1]["decoder"]
    assert mean[64]["encoder"] < 0.7 * mean[1]["encoder"]


BASE = {"objective": "iwae", "samples": 4, "batch_size": 16, "hidden": 16, "steps": 12, "eval_every": 6,
        "constants": False}


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.fixture(scope="module")
def runs() -> dict[str, object]:
    """Two seeds with and without --snr, and seed 1 alone with it."""
    config = RunConfig(**BASE, seeds=(0, 1), snr=True, snr_draws=5)
    x = load_dataset(config, progress=False)
    return {"on": train(config, x, progress=False), "off": train(RunConfig(**BASE, seeds=(0, 1)), x, progress=False),
            "alone": train(RunConfig(**BASE, seed=1, snr=True, snr_draws=5), x, progress=False)}


def test_snr_leaves_training_as_it_was_bit_for_bit(runs) -> None:
    on, off = runs["on"], runs["off"]
    measured = [c for c in on.metrics[0] if c not in SNR_COLUMNS and c != "seconds"]
    assert all(same(a[c], b[c]) for a, b in zip(on.metrics, off.metrics, strict=True) for c in measured)
    for a, b in zip(on.ensemble.state_dicts(), off.ensemble.state_dicts(), strict=True):
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert all(math.isnan(row[c]) for row in off.metrics for c in SNR_COLUMNS) and off.summary["snr"] is None


def test_each_replica_reads_the_snr_of_its_seed_run_alone(runs) -> None:
    """Every checkpoint of every replica has both groups' readings; replica 1's are those of seed 1 trained alone,
    and the summary holds the seeds' first and last readings."""
    on, alone = runs["on"], runs["alone"]
    assert all(math.isfinite(row[c]) and row[c] >= 0 for row in on.metrics for c in SNR_COLUMNS)
    replica = [row for row in on.metrics if row["seed"] == 1]
    assert [[row[c] for c in SNR_COLUMNS] for row in replica] == [[row[c] for c in SNR_COLUMNS]
                                                                  for row in alone.metrics]
    summary = on.summary["snr"]
    assert summary["draws"] == 5 and summary["start"]["step"] == 0 and summary["end"]["step"] == 12
    first = [row["snr_encoder"] for row in on.metrics if row["step"] == 0]
    assert summary["start"]["encoder"] == pytest.approx(sum(first) / 2)
    assert on.summary["per_seed"][1]["snr"]["end"]["decoder"] == replica[-1]["snr_decoder"]
    assert on.summary["diagnostics_seconds"]["snr"] > 0


def test_snr_is_part_of_a_run_identity_only_when_on() -> None:
    assert run_id(RunConfig(snr=False)) == run_id(RunConfig())
    assert run_id(RunConfig(snr=True)) != run_id(RunConfig())
    assert run_id(RunConfig(snr=True, snr_draws=64)) != run_id(RunConfig(snr=True))
    with pytest.raises(ConfigError, match="--snr-draws: must be an integer of at least 3"):
        RunConfig(snr=True, snr_draws=2).validate()
    args = build_parser().parse_args(["train", "--snr", "--snr-draws", "16"])
    assert (config_from_args(args).snr, config_from_args(args).snr_draws) == (True, 16)
    assert build_parser().parse_args(["bbvi", "--snr"]).snr


def test_bbvi_reads_its_variational_parameters_as_the_encoder() -> None:
    result = train_bbvi(BBVIConfig(steps=6, eval_points=2, constants=False, batch_size=10, snr=True, snr_draws=6),
                        progress=False)
    assert all(math.isfinite(row["snr_encoder"]) and math.isfinite(row["snr_norm_encoder_se"])
               for row in result.metrics)
    assert all(math.isnan(row["snr_decoder"]) for row in result.metrics)
    assert result.summary["snr"]["end"]["decoder"] != result.summary["snr"]["end"]["decoder"]  # NaN: no decoder


def test_the_monitor_reads_the_groups_it_is_given_and_refuses_others() -> None:
    config = RunConfig(objective="iwae", samples=2, hidden=16)
    x = as_float(load_dataset(config, progress=False).x)
    torch.manual_seed(0)
    model = build_vae(config, x.shape[1])
    model.init_from_data_(x)
    objective = build_objective(config)

    def loss_fn(m, xb):
        return -objective.surrogate(m, xb, torch.randn(objective.samples, len(xb), m.latent_dim))

    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    monitor = ConvergenceMonitor(model, loss_fn, x, 4, optimizer=optimizer, batch_size=16, eval_every=4,
                                 snr_groups={"encoder": model.encoder.parameters()}, snr_draws=4)
    state = torch.get_rng_state()
    for _ in range(4):
        optimizer.zero_grad()
        loss_fn(model, x[:16]).mean().backward()
        optimizer.step()
    assert not torch.equal(state, torch.get_rng_state())  # the user's noise went on from the user's own stream
    rows = monitor.metrics
    assert all(math.isfinite(row["snr_encoder"]) and math.isnan(row["snr_decoder"]) for row in rows)
    for groups, message in (({"theta": model.decoder.parameters()}, "groups are 'encoder' and 'decoder'"),
                            ({"decoder": [torch.zeros(2, requires_grad=True)]}, "not a trainable parameter"),
                            ({"encoder": model.parameters(), "decoder": model.decoder.parameters()}, "shares"),
                            ({"encoder": []}, "holds no parameters")):
        with pytest.raises(ConfigError, match=message):
            ConvergenceMonitor(model, loss_fn, x, 4, batch_size=16, snr_groups=groups)


SCALING = """
name = "scaling"
seeds = 3
[base]
objective = "iwae"
snr = true
[grid]
samples = [1, 4, 16]
batch_size = [16, 64]
estimator = ["standard", "dreg"]
[finding]
statement = "IWAE's SNR scales as Rainforth et al. say."
metric = "snr"
expect = "snr-scaling"
"""


def scaling_summaries(spec, decoder_k: float = 0.5) -> list[dict]:
    """Summaries whose per-seed SNR at both checkpoints follow K^slope B^(1/2) exactly up to a per-seed factor and
    a little noise: IWAE's encoder K^-1/2 and decoder K^``decoder_k``; DReG's encoder flat and 4 times IWAE's at K=1."""
    g = torch.Generator().manual_seed(0)
    summaries = []
    for config in spec.runs():
        k, b, dreg = config.samples, config.batch_size, config.estimator == "dreg"
        per_seed = []
        for seed in config.seeds:
            noise = lambda: math.exp(0.02 * torch.randn(1, generator=g).item())  # noqa: E731
            encoder = (4.0 if dreg else k**-0.5) * b**0.5 * (1 + seed / 10) * noise()
            decoder = k**decoder_k * b**0.5 * (1 + seed / 10) * noise()
            reading = {"encoder": encoder, "decoder": decoder, "norm_encoder": encoder, "norm_decoder": decoder}
            per_seed.append({"seed": seed, "snr": {"draws": 32, "start": reading, "end": reading}})
        summaries.append({"config": config.to_dict(), "seeds": list(config.seeds), "per_seed": per_seed,
                          "snr": {"draws": 32, "start": {}, "end": {}}})
    return summaries


def test_the_snr_finding_fits_the_slopes_and_the_report_shows_them(tmp_path) -> None:
    spec = parse_spec(SCALING)
    labels = [spec.label(config) for config in spec.runs()]
    agreeing = scaling_summaries(spec)
    verdict = check(spec.finding, labels, agreeing)
    assert verdict.agrees is True and "encoder vs K: -0.49 [-0.50, -0.48] (predicted -0.5)" in verdict.detail
    slopes = {(s.variant, s.end, s.reading, s.axis): s for s in fit_slopes(agreeing)}
    for (name, reading, axis), slope in {("iwae", "encoder", "samples"): -0.5, ("iwae", "decoder", "samples"): 0.5,
                                         ("iwae", "norm_decoder", "batch_size"): 0.5,
                                         ("iwae, estimator=dreg", "encoder", "samples"): 0.0}.items():
        fitted = slopes[(name, "end", reading, axis)]
        assert fitted.mean == pytest.approx(slope, abs=0.02) and fitted.low < slope < fitted.high
        assert fitted.seeds == 3 and fitted.predicted == (slope if name == "iwae" else None)
    assert lifts(agreeing)["iwae, estimator=dreg"][0] == pytest.approx(16, rel=0.05)  # 4 / 16^-1/2 at K = 16
    assert check(spec.finding, labels, scaling_summaries(spec, decoder_k=-0.3)).agrees is False
    assert check(spec.finding, labels, scaling_summaries(spec, decoder_k=0.0)).agrees is None  # unresolved
    with Store(tmp_path / "r.db") as store:
        store.add_sweep(spec.name, SCALING, [(run_id(config), config) for config in spec.runs()])
        for config, summary in zip(spec.runs(), agreeing, strict=True):
            rows = [dict.fromkeys(METRIC_COLUMNS, 1.0) | {"seed": float(seed), "step": float(step)}
                    for seed in config.seeds for step in (0, 10)]
            store.record(Outcome(run_id(config), "done", 1.0, summary=summary, metrics=rows))
        page, verdicts = write_report(store, tmp_path / "report")
    assert verdicts["scaling"].agrees is True
    assert (tmp_path / "report" / "scaling" / "snr.png").is_file()
    text = page.read_text()
    assert "<td>iwae, estimator=dreg</td><td>last checkpoint</td><td>norm_encoder</td><td>log B</td>" in text
    with pytest.raises(SpecError, match="is 'snr' for expect = 'snr-scaling'"):
        parse_spec(SCALING.replace('metric = "snr"', 'metric = "objective"'))


def test_the_snr_studies_stay_out_of_the_demo_and_run_quick_when_named() -> None:
    quick = [spec.name for spec in paper_studies(quick=True)]
    assert "snr" not in quick and "snr-vr-iwae" not in quick and len(quick) == 6
    assert {"snr", "snr-vr-iwae"} <= {spec.name for spec in paper_studies()}
    (snr,) = paper_studies(quick=True, studies=["snr"])
    runs = snr.runs()
    assert {(c.steps, c.snr, c.seeds) for c in runs} == {(100, True, (0, 1, 2, 3))}  # its own [quick] options win
    assert sorted({c.samples for c in runs}) == [1, 4, 16] and {c.estimator for c in runs} == {"standard", "dreg"}
    with pytest.raises(ConfigError, match="--study: no study 'nope'"):
        paper_studies(studies=["nope"])
    with pytest.raises(SpecError, match=r"quick\.samples: is an axis"):
        parse_spec(SCALING + "[quick]\nsamples = 4\n")
