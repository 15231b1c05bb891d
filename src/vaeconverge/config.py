"""Run configuration: one frozen dataclass holding every option, validated before anything runs.

The registries the options name (networks, objectives, optimizers) are imported where a configuration is checked,
not here: reading the defaults (the command line's ``--help``) costs no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .registry import lazy_exports
from .runtime import DEVICES, PRECISIONS
from .validation import (
    ConfigError,
    as_tuple,
    check_choice,
    check_nonnegative,
    check_optimizer_options,
    check_positive,
    check_seed,
    check_snr_draws,
    check_threads,
)

if TYPE_CHECKING:
    from .nn import ACTIVATIONS as ACTIVATIONS
    from .nn import MODELS as MODELS
    from .objectives import OBJECTIVES as OBJECTIVES
    from .optim import OPTIMIZERS as OPTIMIZERS
    from .theory.run import AssessedRun

# The registries the options name, importable from here too: loaded on first use.
lazy_exports(__name__, {"ACTIVATIONS": ".nn", "MODELS": ".nn", "OBJECTIVES": ".objectives", "OPTIMIZERS": ".optim"})

LIKELIHOODS = ("gaussian", "bernoulli")
SCHEDULES = ("constant", "sqrt", "epoch-sqrt")
DENORMALS = ("flush", "keep")  # denormal floats flushed to zero while training, or kept (IEEE)


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the ``synthetic-linear`` data set: x = W z + b + c * noise, z ~ N(0, I)."""

    n_samples: int = 2000
    data_dim: int = 20
    latent_dim: int = 3
    noise_std: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    """Every option of one training run. Field names match the CLI flags (``_`` for ``-``)."""

    # data
    data: str = "digits"
    data_dir: str | None = None  # folder of the local data sets (mnist, ...); None: $VAECONVERGE_DATA or ./data
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # model
    model: str = "mlp"
    latent_dim: int = 10
    hidden: int = 200
    depth: int = 2
    activation: str = "softclip"
    softclip_s: float = 5.0
    softclip_s1: float = 0.0
    softclip_s2: float = 50.0
    likelihood: str = "bernoulli"
    decoder_std: float | None = None  # c; None: 1 when fixed, the data's pooled std when learned
    learn_variance: bool = False
    # objective
    objective: str = "elbo"
    samples: int = 1
    beta: float = 1.0
    alpha: float | None = None  # vr-iwae's Renyi order in [0, 1), which it needs; no other objective takes one
    estimator: str = "standard"  # iwae's gradient: one of objectives.ESTIMATORS ("dreg": doubly reparameterised)
    # optimisation
    batch_size: int = 64
    optimizer: str = "adam-defossez"  # Adam as Defossez et al. analyse it, so that the default run has a bound
    lr: float = 1e-3
    momentum: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    schedule_power: float = 0.5
    steps: int = 3000
    seed: int = 0
    seeds: tuple[int, ...] = ()  # replicas trained together in one pass; () means (seed,)
    clip_grad_norm: float | None = None  # clip each replica's gradient to this Euclidean norm
    threads: int | None = None  # intra-op threads; None: chosen from the step's size (engine/plan.py)
    denormals: str = "flush"  # one of DENORMALS (runtime.py)
    device: str = "auto"  # one of runtime.DEVICES: auto is CUDA where available
    precision: str = "float32"  # one of runtime.PRECISIONS: bf16 trains the networks under autocast
    # diagnostics
    eval_every: int | None = None  # None: ``eval_points`` checkpoints (see engine.recorder.evaluation_steps)
    eval_points: int | None = None  # None: as many as the checkpoint budget allows (engine.recorder)
    eval_samples: int = 1
    constants: bool = True  # estimate L, sigma^2, R at the start, middle and end of the run
    snr: bool = False  # measure the encoder's and decoder's gradient SNR at every checkpoint (engine.recorder)
    snr_draws: int = 32  # minibatch gradient draws per SNR reading

    @property
    def replica_seeds(self) -> tuple[int, ...]:
        """The seeds of the replicas trained together: ``seeds`` if given, else just ``seed``."""
        return self.seeds or (self.seed,)

    @property
    def layers(self) -> int:
        """Layers of the encoder and decoder networks (the N of the paper's N a^(2(N-1)) term)."""
        from .nn import model_spec

        return 1 if model_spec(self.model).linear else self.depth + 1

    def validate(self) -> RunConfig:
        """Raise :class:`ConfigError` naming the first invalid option; return ``self`` otherwise."""
        from .nn import ACTIVATIONS, MODELS, model_spec
        from .objectives import OBJECTIVES, objective_options
        from .optim import OPTIMIZERS

        check_choice("--model", self.model, MODELS)
        check_choice("--activation", self.activation, ACTIVATIONS)
        check_choice("--likelihood", self.likelihood, LIKELIHOODS)
        check_choice("--objective", self.objective, OBJECTIVES)
        objective_options(self.objective, self.alpha, self.estimator)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--denormals", self.denormals, DENORMALS)
        check_choice("--device", self.device, DEVICES)
        check_choice("--precision", self.precision, PRECISIONS)
        for option, value in (
            ("--latent-dim", self.latent_dim),
            ("--hidden", self.hidden),
            ("--depth", self.depth),
            ("--samples", self.samples),
            ("--batch-size", self.batch_size),
            ("--steps", self.steps),
            ("--eval-samples", self.eval_samples),
            ("--n-samples", self.synthetic.n_samples),
            ("--data-dim", self.synthetic.data_dim),
            ("--true-latent-dim", self.synthetic.latent_dim),
        ):
            check_positive(option, value)
        for option, optional in (("--eval-every", self.eval_every), ("--eval-points", self.eval_points)):
            if optional is not None:
                check_positive(option, optional)
        check_positive("--lr", self.lr)
        if self.decoder_std is not None:
            check_positive("--decoder-std", self.decoder_std)
        check_positive("--noise-std", self.synthetic.noise_std)
        check_positive("--softclip-s", self.softclip_s)
        check_nonnegative("--beta", self.beta)
        check_nonnegative("--schedule-power", self.schedule_power)
        check_optimizer_options(self.momentum, self.adam_betas)
        if not self.softclip_s1 < self.softclip_s2:
            raise ConfigError(
                "--softclip-s1", f"must be below --softclip-s2 (got {self.softclip_s1} >= {self.softclip_s2})"
            )
        if self.precision != "float32" and model_spec(self.model).linear:
            raise ConfigError("--precision", f"{self.precision} is for the networks' products; the linear model is "
                                             "probabilistic PCA, computed exactly in float32")
        if not self.data:
            raise ConfigError("--data", "must name a built-in data set or a file")
        if self.clip_grad_norm is not None:
            check_positive("--clip-grad-norm", self.clip_grad_norm)
        check_threads(self.threads)
        check_snr_draws("--snr-draws", self.snr_draws)
        check_seed("--data-seed", self.synthetic.seed)
        check_seeds(self.replica_seeds, self.optimizer, "--seeds" if self.seeds else "--seed")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary of every resolved option."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], "unknown option")
        if "synthetic" in values and isinstance(values["synthetic"], dict):
            values["synthetic"] = SyntheticConfig(**values["synthetic"])
        return cls(**list_options(values))

    def assessed(self) -> AssessedRun:
        """What the theory reads of this run."""
        from .nn import ACTIVATIONS, model_spec
        from .objectives import OBJECTIVES
        from .optim import bound_family, uncovered_reason
        from .theory.run import AssessedRun

        linear = model_spec(self.model).linear
        return AssessedRun(
            optimizer=self.optimizer, bound_family=bound_family(self.optimizer), lr=self.lr,
            uncovered=uncovered_reason(self.optimizer),
            momentum=self.momentum, betas=self.adam_betas, schedule=self.schedule,
            schedule_power=self.schedule_power, batch_size=self.batch_size, samples=self.samples,
            layers=self.layers, objective=OBJECTIVES[self.objective].family,
            activation="none" if linear else self.activation, smooth=linear or ACTIVATIONS[self.activation].smooth,
            seed=self.seed,
        )


def list_options(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (read from TOML or JSON) with the list-valued options as tuples, checked to be lists."""
    values = dict(values)
    if "adam_betas" in values:
        values["adam_betas"] = as_tuple("adam_betas", values["adam_betas"], 2, "[0.9, 0.999]")
    if "seeds" in values:
        values["seeds"] = as_tuple("seeds", values["seeds"], example="[0, 1, 2]")
    return values


def check_seeds(seeds: tuple[int, ...], optimizer: str, option: str = "--seeds") -> None:
    """Replica seeds must be distinct integers in torch's range, and the optimizer must not couple several;
    ``option`` is the flag that gave them (``--seed`` for a single one)."""
    from .optim import optimizer_spec

    for seed in seeds:
        check_seed(option, seed)
    if len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", f"seeds must be distinct (got {list(seeds)})")
    couples = optimizer_spec(optimizer).couples
    if len(seeds) > 1 and couples is not None:
        raise ConfigError(
            "--seeds", f"--optimizer {optimizer} would couple the replicas "
            f"({couples}); train its seeds one at a time or choose an elementwise optimizer")
