"""The options of one BBVI run: a frozen dataclass validated before anything runs, with errors that name the
CLI flag (the same :class:`~vaeconverge.config.ConfigError` as ``vaeconverge train``). The targets, families,
objectives and optimizers are imported where a configuration is checked: reading the defaults costs no torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import (
    DENORMALS,
    SCHEDULES,
    ConfigError,
    check_choice,
    check_optimizer_options,
    check_positive,
    check_seeds,
    check_threads,
    list_options,
)
from ..runtime import DEVICES
from ..validation import check_snr_draws

if TYPE_CHECKING:
    from ..theory.run import AssessedRun

KIND = "bbvi"  # the ``kind`` key that marks a BBVI configuration in a sweep file and in a result store


@dataclass(frozen=True)
class BBVIConfig:
    """Every option of one BBVI run. Field names match the flags of ``vaeconverge bbvi`` (``_`` for ``-``)."""

    target: str = "linear-regression"
    family: str = "full-rank"
    flow_layers: int = 4  # planar-flow: number of planar maps
    objective: str = "elbo"
    samples: int = 1  # K
    batch_size: int | None = None  # B; None: all N data (no minibatching)
    optimizer: str = "adam-defossez"  # Adam as Defossez et al. analyse it, so that the default run has a bound
    lr: float = 1e-2
    momentum: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"
    schedule_power: float = 0.5
    steps: int = 2000
    seed: int = 0
    seeds: tuple[int, ...] = ()  # replicas trained together in one pass; () means (seed,)
    threads: int | None = None  # intra-op threads; None: one (BBVI's tensors are small)
    device: str = "auto"  # one of runtime.DEVICES: auto is CUDA where available
    denormals: str = "flush"  # one of DENORMALS (runtime.py)
    eval_every: int | None = None
    eval_points: int = 20  # checkpoints of the full-objective gradient (see engine.recorder.evaluation_steps)
    eval_samples: int = 256  # Monte Carlo groups of K samples in the full objective at a checkpoint
    constants: bool = True
    snr: bool = False  # the variational parameters' gradient SNR at every checkpoint, as the encoder's
    snr_draws: int = 32  # minibatch gradient draws per SNR reading

    @property
    def replica_seeds(self) -> tuple[int, ...]:
        """The seeds of the replicas trained together: ``seeds`` if given, else just ``seed``."""
        return self.seeds or (self.seed,)

    @property
    def layers(self) -> int:
        """Layers of the parameterisation (the N of the paper's N a^(2(N-1)) term): 1 for a location-scale map."""
        return self.flow_layers + 1 if self.family == "planar-flow" else 1

    def assessed(self) -> AssessedRun:
        """What the theory reads of this run. One draw of the parameters serves a whole minibatch, so the
        gradient noise lacks the VAE's per-example form (no (B, K) allocation is predicted)."""
        from ..optim import bound_family, uncovered_reason
        from ..theory.run import AssessedRun

        flow = self.family == "planar-flow"
        return AssessedRun(
            optimizer=self.optimizer, bound_family=bound_family(self.optimizer), lr=self.lr,
            uncovered=uncovered_reason(self.optimizer),
            momentum=self.momentum, betas=self.adam_betas, schedule=self.schedule,
            schedule_power=self.schedule_power, batch_size=self.batch_size or 0, samples=self.samples,
            layers=self.layers, objective=self.objective, activation="tanh" if flow else "none", smooth=True,
            per_example_noise=False, seed=self.seed,
        )

    def validate(self) -> BBVIConfig:
        """Raise :class:`ConfigError` naming the first invalid option; return ``self`` otherwise."""
        from ..optim import OPTIMIZERS
        from .families import FAMILIES
        from .objectives import OBJECTIVES
        from .targets import BUILTIN_TARGETS, build_target

        check_choice("--target", self.target, tuple(BUILTIN_TARGETS))
        check_choice("--family", self.family, FAMILIES)
        check_choice("--objective", self.objective, OBJECTIVES)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_choice("--denormals", self.denormals, DENORMALS)
        for option, value in (("--samples", self.samples), ("--steps", self.steps), ("--lr", self.lr),
                              ("--flow-layers", self.flow_layers), ("--eval-points", self.eval_points),
                              ("--eval-samples", self.eval_samples)):
            check_positive(option, value)
        for option, optional in (("--eval-every", self.eval_every), ("--threads", self.threads)):
            if optional is not None:
                check_positive(option, optional)
        if self.batch_size is not None:
            check_positive("--batch-size", self.batch_size)
            n = build_target(self.target).n_data
            if self.batch_size > n:
                raise ConfigError("--batch-size", f"must be at most N = {n}, the data of --target {self.target} "
                                                  f"(got {self.batch_size})")
        check_optimizer_options(self.momentum, self.adam_betas)
        check_threads(self.threads)
        check_choice("--device", self.device, DEVICES)
        check_snr_draws("--snr-draws", self.snr_draws)
        check_seeds(self.replica_seeds, self.optimizer, "--seeds" if self.seeds else "--seed")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary of every resolved option, with ``kind = "bbvi"``."""
        out = {"kind": KIND, **dataclasses.asdict(self)}
        out["adam_betas"] = list(self.adam_betas)
        out["seeds"] = list(self.seeds)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BBVIConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        values = {k: v for k, v in values.items() if k != "kind"}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(unknown[0], "unknown option")
        return cls(**list_options(values))
