"""Command line: ``vaeconverge train | bbvi | bound | sweep | report | reproduce | data``. Invalid input exits with
status 2 and one line naming the option (or the sweep file's key or line)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from .. import config as cfg
from ..config import ConfigError, RunConfig, SyntheticConfig
from ..runtime import DEVICES, PRECISIONS, available_cores, graceful_stop

if TYPE_CHECKING:
    from ..sweeps import Executor, Store

EXIT_USAGE = 2
EXIT_INTERRUPT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
DEVICE_HELP = ("where the replicas train: auto (default) is CUDA where torch sees a GPU, else the CPU; the data "
               "stay on the host and go to the device a batch at a time")
PRECISION_HELP = ("float32 (default) | bf16: train the networks' products (linear, conv) in bfloat16 under torch's "
                  "autocast, for GPUs with bfloat16 arithmetic; weights, optimizer and diagnostics stay float32")
DENORMALS_HELP = ("flush (default): denormal floats are zero while training, which keeps Adam from slowing down "
                  "several-fold once moments of weights with zero gradients decay into them; keep: IEEE arithmetic")
OPTIMIZER_HELP = ("the update; sgd, adam-defossez and adagrad are the recursions a convergence bound covers (adam and "
                  "torch-adagrad are torch's, which differ from them)")
BETAS_HELP = "the decay rates of Adam's first and second moments"
SCHEDULE_HELP = "constant | sqrt: lr * n^-power per iteration | epoch-sqrt: lr / (epoch+1)^power"

# The built-in entries that options choose from, by (module, name) of their registry or list: written out so that
# building the parser (and so --help) imports no torch. tests/test_cli_help.py checks them against their sources.
BUILTIN_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("vaeconverge.nn", "MODELS"): ("linear", "mlp", "conv32", "conv64"),
    ("vaeconverge.nn", "ACTIVATIONS"): ("relu", "softclip"),
    ("vaeconverge.objectives", "OBJECTIVES"): ("elbo", "iwae", "vr-iwae"),
    ("vaeconverge.objectives", "ESTIMATORS"): ("standard", "dreg"),
    ("vaeconverge.optim", "OPTIMIZERS"): ("sgd", "adam", "adam-defossez", "amsgrad", "adamw", "nadam", "radam",
                                          "adamax", "rmsprop", "adagrad", "torch-adagrad", "adafactor"),
    ("vaeconverge.bbvi.targets", "BUILTIN_TARGETS"): ("linear-regression", "logistic-regression", "mixture"),
    ("vaeconverge.bbvi.families", "FAMILIES"): ("mean-field", "full-rank", "planar-flow"),
    ("vaeconverge.bbvi.objectives", "OBJECTIVES"): ("elbo", "iwae"),
}
DEFAULT_EPS = 1e-8  # optim.DEFAULT_EPS, the Defossez recursions' epsilon, for the same reason (and the same test)


def choices_of(module: str, name: str) -> list[str]:
    """The names ``module.name`` holds: read from the module where it is loaded, so that an entry a program
    registered is a choice, else its built-in ones (:data:`BUILTIN_CHOICES`)."""
    loaded = sys.modules.get(module)
    return list(getattr(loaded, name) if loaded is not None else BUILTIN_CHOICES[module, name])


def shown_default(action: argparse.Action) -> str | None:
    """An option's default as its help gives it; None where it has none worth showing (a flag, None, an empty list)
    or its help already speaks of it."""
    default = action.default
    if (action.nargs == 0 or default is None or default is argparse.SUPPRESS or default == []
            or "default" in (action.help or "")):
        return None
    return " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with its default, where :func:`shown_default` gives one; the CLI
    reference (``cli/reference.py``) reads an option's text and form from it too."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = shown_default(action)
        if default is None:
            return action.help
        return f"{action.help} (default: {default.replace('%', '%%')})"

    def help_text(self, action: argparse.Action) -> str:
        """The text ``--help`` gives ``action``, default included, unwrapped."""
        return self._expand_help(action) if action.help else ""

    def invocation(self, action: argparse.Action) -> str:
        """How ``action`` is written, as ``--help`` shows it: ``--adam-betas B1 B2``, ``--model {linear,mlp,...}``."""
        return self._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr, not the usage block, and every command's help gives the
    defaults (:class:`DefaultsFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=DefaultsFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# A value argparse would take for an option because it starts with '-' (it reads only -1 and -0.5 as numbers).
_NEGATIVE_VALUE = re.compile(r"-\.?\d[\d.,eE+-]*")
_ARGPARSE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")
MAX_SEED_COUNT = 10_000  # replicas of one run; more is a typo (their seeds alone would fill memory)


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--opt -1,2`` as ``--opt=-1,2``: argparse takes a value such as -1,2 or -1e-3 for an option flag."""
    out: list[str] = []
    for token in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUE.fullmatch(token)
                and not _ARGPARSE_NUMBER.fullmatch(token)):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _seeds(text: str) -> tuple[int, ...] | int:
    """``T`` (a count) or a comma-separated list of seeds."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count T or a list of seeds like 0,1,2 (got {text!r})") from None
    if len(values) == 1:
        if not 1 <= values[0] <= MAX_SEED_COUNT:
            raise argparse.ArgumentTypeError(f"the number of seeds must lie in [1, {MAX_SEED_COUNT}] "
                                             f"(got {values[0]})")
        return values[0]
    return values


def output_path(text: str) -> Path:
    """An output folder's path; an empty one names no folder (it would be the current one)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no folder")
    return Path(text)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    d, s = RunConfig(), SyntheticConfig()
    p = sub.add_parser("train", help="train a VAE (one or more seeds) and write metrics, summary, plot and checkpoint",
                       description="Train a VAE, one replica per seed; write metrics.csv, bands.csv, summary.json, "
                                   "convergence.png and "
                                   "checkpoint.pt into --out.")

    def recording(action: type[argparse.Action]) -> type[argparse.Action]:
        class Given(action):  # type: ignore[misc, valid-type]
            def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                         option_string: str | None = None) -> None:
                super().__call__(parser, namespace, values, option_string)
                namespace.given = namespace.given | {self.dest}

        return Given

    # Each option notes that the command line gave it (in args.given): those override --config's file, and with
    # --resume they must agree with the run's.
    for kind, action in ((None, argparse._StoreAction), ("store", argparse._StoreAction),
                         ("store_true", argparse._StoreTrueAction), ("store_false", argparse._StoreFalseAction)):
        p.register("action", kind, recording(action))
    p.set_defaults(given=frozenset())
    p.add_argument("--config", type=Path, metavar="RUN.toml",
                   help="read the options from this TOML file, whose keys are those of a sweep's [base] table "
                        "(batch_size = 64, seeds = 3, a [synthetic] table, ...); options given here override it")
    p.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the run in DIR from its checkpoint.pt up to --steps, the new total (default: the "
                        "run's own, which finishes an interrupted run), and write it back into DIR; every other "
                        "training option is the run's. It keeps the checkpoints DIR measured and then evaluates "
                        "where a run of the new total would, so it equals that run trained straight through when "
                        "their checkpoints agree up to where it stopped (e.g. --eval-every E, stopped at a multiple "
                        "of E) and the new total is at least twice the old (the constants are probed at 0, n/2 "
                        "and n)")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=d.data,
                   help="digits | synthetic-linear | mnist | fashion-mnist | cifar100 | celeba (from --data-dir) | "
                        "path to an N x D .npy, .npz or .csv file")
    g.add_argument("--data-dir", default=d.data_dir,
                   help="folder of the local data sets, one subfolder each (default: $VAECONVERGE_DATA or ./data)")
    g.add_argument("--n-samples", type=int, default=s.n_samples, help="synthetic-linear: examples N")
    g.add_argument("--data-dim", type=int, default=s.data_dim, help="synthetic-linear: dimension D")
    g.add_argument("--true-latent-dim", type=int, default=s.latent_dim, help="synthetic-linear: true k")
    g.add_argument("--noise-std", type=float, default=s.noise_std, help="synthetic-linear: true c")
    g.add_argument("--data-seed", type=int, default=s.seed, help="synthetic-linear: seed of the data")

    g = p.add_argument_group("model")
    g.add_argument("--model", choices=choices_of("vaeconverge.nn", "MODELS"), default=d.model,
                   help="the encoder and decoder networks: linear (the linear VAE, pPCA's), an MLP, or the "
                        "paper's convolutional networks of 32 x 32 and 64 x 64 colour images")
    g.add_argument("--latent-dim", type=int, default=d.latent_dim, help="dimension of the latent z")
    g.add_argument("--hidden", type=int, default=d.hidden, help="mlp: hidden units per layer")
    g.add_argument("--depth", type=int, default=d.depth, help="mlp: hidden layers in encoder and decoder")
    g.add_argument("--activation", choices=choices_of("vaeconverge.nn", "ACTIVATIONS"), default=d.activation,
                   help="of the hidden layers: softclip is smooth, as the convergence theorems assume; relu is not")
    g.add_argument("--softclip-s", type=float, default=d.softclip_s, help="soft-clipping sharpness s")
    g.add_argument("--softclip-s1", type=float, default=d.softclip_s1, help="soft-clipping lower bound")
    g.add_argument("--softclip-s2", type=float, default=d.softclip_s2, help="soft-clipping upper bound")
    g.add_argument("--likelihood", choices=cfg.LIKELIHOODS, default=d.likelihood,
                   help="the decoder's distribution of x given z")
    g.add_argument("--decoder-std", type=float, default=d.decoder_std,
                   help="gaussian: c (default 1); with --learn-variance its start (default: the data's std)")
    g.add_argument("--learn-variance", action="store_true", help="gaussian: learn c")

    g = p.add_argument_group("objective")
    g.add_argument("--objective", choices=choices_of("vaeconverge.objectives", "OBJECTIVES"), default=d.objective,
                   help="elbo | iwae: the importance-weighted bound | vr-iwae: its Renyi form (needs --alpha)")
    g.add_argument("--samples", type=int, default=d.samples, help="K, Monte Carlo samples per example")
    g.add_argument("--beta", type=float, default=d.beta, help="KL weight (elbo)")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help="vr-iwae (needed): Renyi order in [0, 1); 0 is IWAE, larger trades tightness for encoder SNR")
    g.add_argument("--estimator", choices=choices_of("vaeconverge.objectives", "ESTIMATORS"), default=d.estimator,
                   help="iwae: gradient estimator; dreg is doubly reparameterised (its encoder SNR grows with K)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="B")
    g.add_argument("--optimizer", choices=choices_of("vaeconverge.optim", "OPTIMIZERS"), default=d.optimizer,
                   help=OPTIMIZER_HELP)
    g.add_argument("--lr", type=float, default=d.lr, help="base step size (C_gamma)")
    g.add_argument("--momentum", type=float, default=d.momentum, help="sgd and rmsprop momentum")
    g.add_argument("--adam-betas", type=float, nargs=2, default=d.adam_betas, metavar=("B1", "B2"), help=BETAS_HELP)
    g.add_argument("--schedule", choices=cfg.SCHEDULES, default=d.schedule, help=SCHEDULE_HELP)
    g.add_argument("--schedule-power", type=float, default=d.schedule_power, help="the exponent alpha")
    g.add_argument("--steps", type=int, default=d.steps, help="iterations n")
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the run (the first seed with --seeds T)")
    g.add_argument("--seeds", type=_seeds, default=None, metavar="T|S1,S2,...",
                   help="train T replicas (seeds --seed .. --seed+T-1), or the listed seeds, in one pass")
    g.add_argument("--clip-grad-norm", type=float, default=d.clip_grad_norm, metavar="MAX",
                   help="clip each replica's gradient to this Euclidean norm")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="intra-op threads, fixed (default: 1 for a single small model; otherwise the cores other "
                        "processes leave idle, followed while the run trains)")
    g.add_argument("--denormals", choices=cfg.DENORMALS, default=d.denormals, help=DENORMALS_HELP)
    g.add_argument("--device", choices=DEVICES, default=d.device, help=DEVICE_HELP)
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision, help=PRECISION_HELP)

    g = p.add_argument_group("diagnostics and output")
    g.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between full-gradient evaluations (default: --eval-points checkpoints)")
    g.add_argument("--eval-points", type=int, default=d.eval_points,
                   help="number of checkpoints, half log-spaced over the first half of the run, half evenly over "
                        "the second (default: as many as keep their full-data passes within 5%% of the examples "
                        "training sees, from 6 to 40)")
    g.add_argument("--no-constants", dest="constants", action="store_false",
                   help="skip estimating L, sigma^2 and R (and hence the bound)")
    g.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="Monte Carlo draws of the full-objective gradient")
    _snr_options(g, d.snr_draws, "the encoder's and the decoder's")
    g.add_argument("--out", type=output_path, default=Path("runs/train"), help="output directory")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal; elsewhere, as in a log, one line per checkpoint)")
    g.add_argument("--tensorboard", type=output_path, metavar="DIR",
                   help="also write the scalars as TensorBoard events, one run per seed (DIR/seed-S) and their mean "
                        "(DIR/mean) (needs the tensorboard package)")
    g.add_argument("--mlflow", metavar="URI",
                   help="also log the run to MLflow at this tracking URI, e.g. sqlite:///mlruns.db (artifacts go "
                        "into mlartifacts/ beside it): the options, each checkpoint's metrics (one nested run per "
                        "seed), the readings and convergence.png (pip install 'vaeconverge[mlflow]')")
    p.set_defaults(handler=_run_train)


def _snr_options(group: argparse._ActionsContainer, draws: int, groups: str) -> None:
    """``--snr`` and ``--snr-draws``, for a kind of run whose parameter groups are ``groups``."""
    group.add_argument("--snr", action="store_true",
                       help=f"at every checkpoint, record {groups} gradient signal-to-noise ratio in metrics.csv "
                            "(snr_* columns; training is unchanged)")
    group.add_argument("--snr-draws", type=int, default=draws,
                       help="--snr: minibatch gradients per reading (default: %(default)s)")


def _bbvi_parser(sub: argparse._SubParsersAction) -> None:
    from ..bbvi.config import BBVIConfig

    d = BBVIConfig()
    p = sub.add_parser("bbvi", help="black-box variational inference of a posterior, measured like train",
                       description="Fit a variational family to a target posterior by stochastic gradient on the "
                                   "ELBO or the importance-weighted bound, one replica per seed; write metrics.csv, "
                                   "bands.csv, summary.json, convergence.png and checkpoint.pt into --out.")
    p.add_argument("--target", default=d.target,
                   help="the posterior: " + " | ".join(choices_of("vaeconverge.bbvi.targets", "BUILTIN_TARGETS")))
    p.add_argument("--family", default=d.family,
                   help="the variational family: " + " | ".join(choices_of("vaeconverge.bbvi.families", "FAMILIES")))
    p.add_argument("--flow-layers", type=int, default=d.flow_layers, help="planar-flow: planar maps")
    p.add_argument("--objective", choices=choices_of("vaeconverge.bbvi.objectives", "OBJECTIVES"), default=d.objective,
                   help="elbo | iwae: the importance-weighted bound")
    p.add_argument("--samples", type=int, default=d.samples, help="K, Monte Carlo samples of w per step")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="B data per step (default: all N)")
    p.add_argument("--optimizer", choices=choices_of("vaeconverge.optim", "OPTIMIZERS"), default=d.optimizer,
                   help=OPTIMIZER_HELP)
    p.add_argument("--lr", type=float, default=d.lr, help="base step size (C_gamma)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="sgd and rmsprop momentum")
    p.add_argument("--adam-betas", type=float, nargs=2, default=d.adam_betas, metavar=("B1", "B2"), help=BETAS_HELP)
    p.add_argument("--schedule", choices=cfg.SCHEDULES, default=d.schedule, help=SCHEDULE_HELP)
    p.add_argument("--schedule-power", type=float, default=d.schedule_power, help="the exponent alpha")
    p.add_argument("--steps", type=int, default=d.steps, help="iterations n")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the run (the first seed with --seeds T)")
    p.add_argument("--seeds", type=_seeds, default=None, metavar="T|S1,S2,...",
                   help="train T replicas (seeds --seed .. --seed+T-1), or the listed seeds, in one pass")
    p.add_argument("--threads", type=int, default=d.threads, help="intra-op threads (default 1)")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="where the family's replicas and the target's data live: auto (default) is CUDA where torch "
                        "sees a GPU, else the CPU")
    p.add_argument("--denormals", choices=cfg.DENORMALS, default=d.denormals, help=DENORMALS_HELP)
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between full-gradient evaluations (default: --eval-points checkpoints)")
    p.add_argument("--eval-points", type=int, default=d.eval_points, help="checkpoints of the full gradient")
    p.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="Monte Carlo groups of K samples in the full objective at a checkpoint")
    p.add_argument("--no-constants", dest="constants", action="store_false", help="skip L, sigma^2, R and the bound")
    _snr_options(p, d.snr_draws, "the variational parameters' (as snr_encoder; snr_decoder stays empty)")
    p.add_argument("--out", type=output_path, default=Path("runs/bbvi"), help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_bbvi)


def _run_bbvi(args: argparse.Namespace) -> int:
    from ..bbvi.config import BBVIConfig
    from ..bbvi.train import train
    from ..engine import TrainingDiverged
    from ..report.readings import bound_text, grad_text, rate_text
    from ..report.run_folder import check_output_folder, write_run

    fields = {k: v for k, v in vars(args).items() if k in BBVIConfig.__dataclass_fields__}
    fields["adam_betas"] = tuple(fields["adam_betas"])
    seeds = fields.pop("seeds")
    fields["seeds"] = tuple(range(args.seed, args.seed + seeds)) if isinstance(seeds, int) else seeds or ()
    config = BBVIConfig(**fields).validate()
    check_output_folder(args.out, "--out", overwrite=args.overwrite)
    with graceful_stop() as signals:
        try:
            result = train(config, progress=not args.quiet)
        except TrainingDiverged as exc:
            print(f"vaeconverge bbvi: {exc}; nothing written to {args.out}", file=sys.stderr)
            return 1
        out = write_run(args.out, result)
    s = result.summary
    gap = "" if s.get("evidence_gap") is None else f", gap to log evidence {s['evidence_gap']:.4g}"
    seeds_text = f" x {len(s['seeds'])} seeds (means)" if len(s["seeds"]) > 1 else ""
    print(f"{s['steps']} steps{seeds_text} in {s['seconds']:.1f}s: objective {s['objective']:.6g}, "
          f"{grad_text(s)}{gap}; wrote {out}")
    print(f"  rate: {rate_text(s['rate'])}")
    print(f"  bound: {bound_text(s['bound'])}")
    return EXIT_INTERRUPT if signals.received else 0


def _bound_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bound", help="the convergence bound of a finished run, or computed from given constants",
                       description="With --from RUN_DIR: the bound for that run with its estimated constants, its "
                                   "random iterate and rate, and convergence.png redrawn with the bound. Without: "
                                   "a calculator of the bound from --L, --sigma2, --delta, --lr and --steps.")
    p.add_argument("--from", dest="run_dir", type=Path, help="a directory written by vaeconverge train")
    p.add_argument("--compare", type=Path, metavar="RUN_DIR",
                   help="with --from: a run at another (B, K); predicted and measured noise change side by side")
    p.add_argument("--json", action="store_true", help="print JSON")
    g = p.add_argument_group("calculator (without --from)")
    g.add_argument("--L", type=float, help="smoothness constant")
    g.add_argument("--sigma2", type=float, help="gradient noise variance at the run's (B, K)")
    g.add_argument("--sigma2-x", type=float, help="between-example variance (with --sigma2-eps, instead of --sigma2)")
    g.add_argument("--sigma2-eps", type=float, help="single-sample Monte Carlo variance")
    g.add_argument("--delta", type=float, help="objective at the start minus its infimum")
    g.add_argument("--lr", type=float, help="base step size")
    g.add_argument("--steps", type=int, help="iterations n")
    g.add_argument("--batch-size", type=int, default=1, help="B (scales --sigma2-x, --sigma2-eps)")
    g.add_argument("--samples", type=int, default=1, help="K (scales --sigma2-eps)")
    g.add_argument("--optimizer", choices=choices_of("vaeconverge.optim", "OPTIMIZERS"), default="sgd",
                   help="the bound of its recursion; refused where none applies (as for a run)")
    g.add_argument("--schedule", choices=("constant", "sqrt"), default="sqrt",
                   help="constant | sqrt: lr * n^-power at iteration n")
    g.add_argument("--schedule-power", type=float, default=0.5, help="the exponent alpha")
    g.add_argument("--R", type=float, help="adam/adagrad: bound on the gradients' coordinates")
    g.add_argument("--d", type=int, help="adam/adagrad: number of parameters")
    g.add_argument("--adam-betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"), help=BETAS_HELP)
    g.add_argument("--eps", type=float, default=DEFAULT_EPS,
                   help="adam-defossez/adagrad: the recursion's epsilon, inside the square root")
    p.set_defaults(handler=_run_bound)


def _run_bound(args: argparse.Namespace) -> int:
    from ..engine.outputs import json_ready
    from .bound import bound_calculator, bound_from_run, format_report

    if args.compare and not args.run_dir:
        raise ConfigError("--compare", "needs --from RUN_DIR (the run to predict from)")
    report = bound_from_run(args.run_dir, args.compare) if args.run_dir else bound_calculator(args)
    print(json.dumps(json_ready(report), indent=2, allow_nan=False) if args.json else format_report(report))
    return 0


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run every configuration of a TOML sweep not yet in the store; "
                                     "'sweep status DB' counts runs by status",
                       description="vaeconverge sweep SPEC.toml --store results.db [--jobs N | --executor ray "
                                   "...]: run the sweep's configurations that the store has not finished, here or "
                                   "on a Ray cluster, resuming after any interruption. vaeconverge sweep status "
                                   "results.db [--json]: runs by status. "
                                   "Exit status 0 when every run of the sweep is done, 1 when some failed or "
                                   "diverged.")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep file (or 'status')")
    p.add_argument("database", nargs="?", type=Path, help=argparse.SUPPRESS)  # of 'sweep status DB'
    p.add_argument("--store", type=Path, help="the SQLite result store (created if absent)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this machine, as --jobs says; ray: Ray tasks, on a cluster with --address or "
                        "on a Ray instance started here (pip install 'vaeconverge[ray]')")
    p.add_argument("--jobs", type=int,
                   help="local: runs at once; 1 runs them in this process, more in a pool of worker processes "
                        "(default: the number of cores)")
    g = p.add_argument_group("ray (with --executor ray)")
    g.add_argument("--address", help="the cluster's head, HEAD:6379, or 'auto' for the cluster this machine "
                                     "belongs to (default: start a Ray instance here)")
    g.add_argument("--cpus-per-run", type=int, help="CPUs each run reserves and trains within (default: 1)")
    g.add_argument("--gpus-per-run", type=float, help="GPUs each run reserves (default: 0)")
    g.add_argument("--retries", type=int, help="times a run whose worker died is run again (default: 1)")
    p.add_argument("--retry-failed", action="store_true", help="run the sweep's failed runs again")
    p.add_argument("--tensorboard", type=output_path, metavar="DIR",
                   help="write each finished run as a TensorBoard run DIR/RUN_ID: its curve, and its varied options "
                        "with its final readings for the HParams tab (needs the tensorboard package)")
    p.add_argument("--mlflow", metavar="URI",
                   help="log each finished run to MLflow at this tracking URI, e.g. sqlite:///mlruns.db, in an "
                        "experiment named after the sweep: its options, curve and final readings "
                        "(pip install 'vaeconverge[mlflow]')")
    p.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from ..report.run_folder import check_output_folder
    from ..sweeps import SpecError, Store, StoreError, load_spec, run_sweep
    from ..sweeps.runner import check_data

    try:
        if args.spec == "status":
            if args.database is None:
                raise ConfigError("sweep status", "name the store: vaeconverge sweep status results.db")
            if not args.database.is_file():
                raise ConfigError("sweep status", f"no store at {args.database}")
            with Store(args.database, readonly=True) as store:
                return _print_status(store, args.json)
        if args.database is not None:
            raise ConfigError("sweep", f"unexpected argument {str(args.database)!r}; the store is --store DB")
        if args.store is None:
            raise ConfigError("--store", "name the SQLite result store, e.g. --store results.db")
        spec = load_spec(args.spec)
        executor = _sweep_executor(args)
        if args.executor == "local":  # a cluster's workers may read data this machine does not hold
            check_data([spec])
        finished = []
        if args.tensorboard is not None:
            from ..report.tensorboard import hparams_writer

            check_output_folder(args.tensorboard, "--tensorboard", holds_runs=False)
            finished.append(hparams_writer(args.tensorboard, spec.axes))
        if args.mlflow is not None:
            from ..report.mlflow_log import open_tracking

            finished.append(open_tracking(args.mlflow, spec.name).sweep_logger(spec))
        with Store(args.store) as store:
            try:
                counts = run_sweep(spec, store, executor, progress=not args.quiet, retry_failed=args.retry_failed,
                                   finished=finished)
            except KeyboardInterrupt:
                print(f"vaeconverge sweep: interrupted; {args.store} keeps the finished runs (those cut short are "
                      "queued again), and the same command resumes the sweep", file=sys.stderr)
                return EXIT_INTERRUPT
            _print_failures(store, [spec.name])
    except (SpecError, StoreError) as exc:
        raise ConfigError("sweep", str(exc)) from None
    print(f"sweep {spec.name}: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
          + f"; stored in {args.store}")
    return 0 if counts["done"] == sum(counts.values()) else 1


def _print_failures(store: Store, sweeps: Sequence[str]) -> None:
    """Why runs failed or diverged: each distinct reason once, with its count, on stderr."""
    reasons = Counter((run.status, run.error or "no reason recorded") for name in sweeps for run in store.runs(name)
                      if run.status in ("failed", "diverged"))
    for (status, reason), count in reasons.most_common():
        print(f"  {count} run{'s' if count > 1 else ''} {status}: {reason}", file=sys.stderr)


def _sweep_executor(args: argparse.Namespace) -> Executor:
    """The executor that ``sweep``'s options ask for; an option of the other executor is an error."""
    from ..sweeps import build_executor

    ray_options = {"cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run, "retries": args.retries}
    if args.executor == "ray":
        if args.jobs is not None:
            raise ConfigError("--jobs", "is for --executor local; on Ray, --cpus-per-run sizes each run and the "
                                        "cluster's nodes how many run at once")
        from ..sweeps.ray_executor import RayExecutor

        return RayExecutor(args.address, **{name: value for name, value in ray_options.items() if value is not None})
    for name, value in {"address": args.address, **ray_options}.items():
        if value is not None:
            raise ConfigError("--" + name.replace("_", "-"), "is for --executor ray")
    jobs = available_cores() if args.jobs is None else args.jobs
    if jobs < 1:
        raise ConfigError("--jobs", f"must be at least 1 (got {jobs})")
    return build_executor(jobs)


def _print_status(store: Store, as_json: bool) -> int:
    sweeps = {name: store.counts(name) for name, _ in store.sweeps()}
    total = store.counts()
    if as_json:
        print(json.dumps({"total": total, "sweeps": sweeps}, indent=2))
    else:
        for name, counts in [*sweeps.items(), ("all runs", total)]:
            print(f"{name}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and index.html of every sweep in a store",
                       description="Regenerate, from the database alone, each sweep's figures and index.html "
                                   "(figures embedded, readable offline; per study, whether the measured trend "
                                   "agrees with its stated finding).")
    p.add_argument("database", type=Path, metavar="results.db",
                   help="the result store of vaeconverge sweep or reproduce")
    p.add_argument("--out", type=Path, default=Path("runs/report"), help="output directory")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ..report.page import write_report
    from ..report.run_folder import check_output_folder
    from ..sweeps import Store, StoreError

    if not args.database.is_file():
        raise ConfigError("report", f"no store at {args.database}")
    check_output_folder(args.out, "--out", holds_runs=False)
    try:
        with Store(args.database, readonly=True) as store:
            page, verdicts = write_report(store, args.out)
    except StoreError as exc:
        raise ConfigError("report", str(exc)) from None
    _print_verdicts(verdicts)
    print(f"wrote {page}")
    return 0


def _print_verdicts(verdicts: dict[str, object]) -> None:
    for name, verdict in verdicts.items():
        print(f"{name}: " + ("no finding stated" if verdict is None else f"{verdict.word} ({verdict.detail})"))


def _reproduce_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's studies and write their report",
                       description="Run the studies of vaeconverge/experiments (batch size, IWAE samples, beta, "
                                   "activation, optimizer, depth, and the gradient SNR of IWAE and its remedies) as "
                                   "sweeps into OUT/results.db, resuming what it already holds, then write "
                                   "OUT/index.html.")
    p.add_argument("--quick", action="store_true",
                   help="short runs: the six hyperparameter studies in minutes on 2 cores (the SNR studies only "
                        "when named by --study)")
    p.add_argument("--study", dest="studies", action="append", default=[], metavar="NAME",
                   help="run only this study (repeatable), e.g. --study snr")
    p.add_argument("--paper", action="store_true",
                   help="instead, the paper's own protocol: its CelebA activation and CIFAR-100 IWAE studies (conv "
                        "nets, latent 100, B = 256, 100 epochs) on the data in --data-dir; prints each run's "
                        "estimated time first and, on a CPU, stops above 2 hours unless --yes")
    p.add_argument("--epochs", type=int, help="--paper: epochs per run (default: 100, the paper's)")
    p.add_argument("--yes", action="store_true", help="--paper: run even when the estimate exceeds the CPU limit")
    p.add_argument("--data", help="data for every study instead of the embedded digits (as train's --data)")
    p.add_argument("--data-dir", help="folder of the local data sets (default: $VAECONVERGE_DATA or ./data)")
    p.add_argument("--device", choices=DEVICES, help=DEVICE_HELP)
    p.add_argument("--precision", choices=PRECISIONS, help="--paper: " + PRECISION_HELP)
    p.add_argument("--out", type=Path, help="output directory (default: runs/reproduce, runs/reproduce-quick, "
                                            "runs/reproduce-paper)")
    p.add_argument("--jobs", type=int, help="runs at once (default: the number of cores; 1 with --paper, "
                                            "whose runs each fill the device)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_reproduce)


def _run_reproduce(args: argparse.Namespace) -> int:
    from ..report.page import write_report
    from ..report.run_folder import check_output_folder
    from ..sweeps import SpecError, StoreError
    from ..sweeps.reproduce import reproduce

    jobs = args.jobs if args.jobs is not None else 1 if args.paper else available_cores()
    if jobs < 1:
        raise ConfigError("--jobs", f"must be at least 1 (got {jobs})")
    out = args.out or Path("runs/reproduce-paper" if args.paper else "runs/reproduce-quick" if args.quick
                           else "runs/reproduce")
    check_output_folder(out, "--out", holds_runs=False)
    try:
        with reproduce(out, args.quick, args.data, jobs, progress=not args.quiet, device=args.device,
                       studies=args.studies, data_dir=args.data_dir, paper=args.paper, epochs=args.epochs,
                       yes=args.yes, precision=args.precision) as store:
            page, verdicts = write_report(store, out)
            counts = store.counts()
            _print_failures(store, [name for name, _ in store.sweeps()])
    except KeyboardInterrupt:
        print(f"vaeconverge reproduce: interrupted; run the same command to resume ({out / 'results.db'})",
              file=sys.stderr)
        return 130
    except (SpecError, StoreError) as exc:
        raise ConfigError("reproduce", str(exc)) from None
    _print_verdicts(verdicts)
    print(f"{counts['done']} of {sum(counts.values())} runs done; report: {page}")
    return 0 if counts["done"] == sum(counts.values()) else 1


def _data_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="the local data sets: where they are looked for, whether they are there; "
                                    "fetch one from a mirror",
                       description="vaeconverge data list: each local data set, the files it is read from, and "
                                   "whether they are present. vaeconverge data download NAME --mirror URL: fetch "
                                   "NAME's standard files from URL into the data folder, checked against their "
                                   "published MD5 (a mismatch or an interrupted transfer keeps nothing).")
    p.add_argument("action", choices=("list", "download"), help="list the local data sets, or download one")
    p.add_argument("name", nargs="?", help="download: the data set")
    p.add_argument("--mirror", help="download: base URL holding the standard files")
    p.add_argument("--data-dir", help="folder of the local data sets (default: $VAECONVERGE_DATA or ./data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from ..data.download import REMOTE_FILES, download
    from ..data.local_files import LOCAL_DATA, data_root, expected_files, find_local

    if args.action == "download":
        if args.name not in REMOTE_FILES:
            raise ConfigError("data download", f"name one of {', '.join(REMOTE_FILES)} (got {args.name!r})")
        if not args.mirror:
            raise ConfigError("--mirror", "give the base URL of a mirror holding the standard files")
        kept = download(REMOTE_FILES[args.name], args.mirror, data_root(args.data_dir), progress=not args.quiet)
        print(f"{args.name}: " + ", ".join(str(path) for path in kept) + " (MD5 verified)")
        return 0
    if args.name is not None:
        raise ConfigError("data list", f"takes no data set name (got {args.name!r})")
    print(f"local data sets under {data_root(args.data_dir)}:")
    for name in LOCAL_DATA:
        found = find_local(name, args.data_dir)
        files = expected_files(name, args.data_dir)
        state = f"present ({found})" if found else "absent; looked for " + " | ".join(str(f) for f in files)
        print(f"  {name:<14} {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaeconverge", description="Train VAEs with convergence guarantees you can see.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (torch {torch_version()})")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub)
    _bbvi_parser(sub)
    _bound_parser(sub)
    _sweep_parser(sub)
    _report_parser(sub)
    _reproduce_parser(sub)
    _data_parser(sub)
    return parser


def torch_version() -> str:
    """The installed torch's version, read from its package metadata (torch itself need not be imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The validated :class:`RunConfig` of parsed ``train`` arguments: the options the command line gave over
    ``base``, else over --config's file; without either, every option as parsed, defaults included."""
    from ..api import read_config, run_config

    if base is None and getattr(args, "config", None) is not None:
        base = read_config(args.config)
    given = vars(args) if base is None else {k: v for k, v in vars(args).items() if k in args.given}
    synthetic = {field: given[flag] for flag, field in (("n_samples", "n_samples"), ("data_dim", "data_dim"),
                                                        ("true_latent_dim", "latent_dim"),
                                                        ("noise_std", "noise_std"), ("data_seed", "seed"))
                 if flag in given}
    fields = {k: v for k, v in given.items() if k in RunConfig.__dataclass_fields__}
    return run_config(base, synthetic=synthetic, **fields)  # --seeds T as a count, as the Python API takes it


def _run_train(args: argparse.Namespace) -> int:
    from ..api import fit, resume
    from ..engine import CheckpointError, TrainingDiverged
    from ..engine.checkpoint import load_resumable
    from ..report.readings import bound_text, grad_text, rate_text
    from ..report.run_folder import check_output_folder

    out_dir, overwrite = args.out, args.overwrite
    if args.resume is None:
        config = config_from_args(args)
    else:  # the run's own configuration, and the options given here, which must be its own
        for option in ("config", "out", "overwrite"):
            if option in args.given:
                raise ConfigError(f"--{option}", "not with --resume, which continues the run in its own folder")
        try:
            config = config_from_args(args, base=load_resumable(args.resume / "checkpoint.pt")[1])
        except CheckpointError as exc:
            raise ConfigError("--resume", str(exc)) from None
        out_dir, overwrite = args.resume, True
    check_output_folder(out_dir, "--out" if args.resume is None else "--resume", overwrite=overwrite)
    if args.tensorboard is not None:
        from ..report.tensorboard import require_tensorboard

        require_tensorboard()
        check_output_folder(args.tensorboard, "--tensorboard", holds_runs=False)
    tracking = None
    if args.mlflow is not None:
        from ..report.mlflow_log import open_tracking

        tracking = open_tracking(args.mlflow)
    with graceful_stop() as signals:
        try:
            if args.resume is None:
                run = fit(config, progress=not args.quiet)
            else:
                options = {name: getattr(config, name) for name in RunConfig.__dataclass_fields__ if name != "steps"}
                run = resume(args.resume, config.steps if "steps" in args.given else None,
                             progress=not args.quiet, **options)
        except CheckpointError as exc:
            raise ConfigError("--resume", str(exc)) from None
        except TrainingDiverged as exc:
            print(f"vaeconverge train: {exc}; nothing written to {out_dir}", file=sys.stderr)
            return 1
        out = run.save(out_dir, overwrite=overwrite)
        if args.tensorboard is not None:
            from ..report.tensorboard import write_scalars

            write_scalars(args.tensorboard, run.metrics)
        if tracking is not None:
            tracking.log_train(run.summary["config"], run.metrics, run.summary, out)
    s = run.summary
    log_lik = "n/a" if s["log_likelihood"] is None else f"{s['log_likelihood']:.6g}"
    state = " (interrupted)" if s["interrupted"] else ""
    seeds = f" x {len(s['seeds'])} seeds (means)" if len(s["seeds"]) > 1 else ""
    print(f"{s['steps']} steps{seeds} in {s['seconds']:.1f}s{state}: objective {s['objective']:.6g}, "
          f"{grad_text(s)}, log_likelihood {log_lik}; wrote {out}")
    print(f"  rate: {rate_text(s['rate'])}")
    print(f"  bound: {bound_text(s['bound'])}")
    return EXIT_INTERRUPT if signals.received else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vaeconverge`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # usage errors, --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"vaeconverge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before a command's own handling (a run's first checkpoint): nothing was saved
        print(f"vaeconverge {args.command}: interrupted before anything was saved", file=sys.stderr)
        return EXIT_INTERRUPT


if __name__ == "__main__":
    sys.exit(main())
