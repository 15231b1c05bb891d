"""ConvergenceMonitor: the convergence diagnostics of ``vaeconverge train`` for a user's own PyTorch loop.

The user keeps their model, loss and loop. The monitor is given the model, a loss function
``loss_fn(model, batch) -> per-example losses`` (shape (B,), to be minimised; the full objective is their
mean over all the data) and the data (a tensor, split into chunks, or any re-iterable such as a DataLoader,
whose batches reach ``loss_fn`` exactly as yielded). After every ``optimizer.step()`` it counts the
iteration, reads the step size used and the minibatch gradient's squared norm from ``.grad`` (no extra
backward pass); at checkpoints it computes the full objective and the unbiased squared norm of its gradient
from two independent passes over the data. The end of the run gives what ``train`` gives: random iterate,
rate, constants and the bound for the optimizer in use, and the same metrics.csv, summary.json and convergence.png.

It never changes the training: gradients come from ``torch.autograd.grad`` with the parameters' ``.grad``
set aside meanwhile, buffers (BatchNorm statistics) are restored after each evaluation, and the evaluations
run under ``torch.random.fork_rng`` seeded from the monitor's own seed, so the user's random streams (a VAE's
reparameterisation noise, dropout, a DataLoader's shuffling) continue as if the monitor were not there, and
every checkpoint sees the same noise (common random numbers, as in ``train``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.hooks import RemovableHandle

from .config import ConfigError
from .diagnostics import unbiased_squared_norm
from .diagnostics.constants import Loss
from .diagnostics.grad_norms import EVAL_GROUPS, add_to_group, evaluation_chunks
from .engine.plan import StepCost, step_cost
from .engine.recorder import SNR_GROUPS, ObjectiveFloor, Recorder, Subject, diagnostics_seed
from .nn.activations import non_smooth_activation
from .optim import DEFAULT_EPS, bound_family, uncovered_reason
from .optim import recognise_optimizer as optimizer_name
from .report.run_folder import write_measurements
from .runtime import to_device
from .theory.run import AssessedRun
from .validation import check_snr_draws

LossFn = Callable[[nn.Module, Any], Tensor]

# Examples the smoothness probe's Lanczos iteration uses, as in train (in terms sized by the model's StepCost).
SMOOTHNESS_EXAMPLES = 512


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, so that ``torch.func.functional_call`` can swap the
    model's parameters (names prefixed ``model.``) whatever methods of the model the loss calls."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class _UserLoop(Subject):
    """A user's model, per-example loss and data as the recorder measures them: full-data passes under the
    monitor's own seed, and torch.func per-example gradients, all isolated from the user's RNG, ``.grad`` and
    buffers."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Tensor | Iterable[Any], batch_size: int,
                 samples: int, eval_samples: int, seed: int, chunk_size: int | None) -> None:
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.seeds, self.batch_size, self.samples = (seed,), batch_size, samples
        self.eval_samples = eval_samples
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("model", "has no trainable parameters")
        self.parameters = sum(p.numel() for p in self.params)
        self._module = _LossModule(model, loss_fn)
        self._names = [f"model.{name}" for name, p in model.named_parameters() if p.requires_grad]
        self.n_examples = self.dim = 0
        self.floor: ObjectiveFloor | None = None
        self.snr_groups: dict[str, list[int]] = {}  # group -> positions in ``params`` (ConvergenceMonitor's snr_groups)
        cost = self._step_cost()
        self.chunk_size, self.hvp_chunk, self.probe_examples = (
            chunk_size or cost.eval_chunk(), cost.hvp_chunk(), cost.probe_examples())

    def _step_cost(self) -> StepCost:
        """The cost of the loss on one training batch (its forward run once, without gradients, isolated), which
        sizes the checkpoints' chunks and the probes as ``train``'s plan does (``engine/plan.py``)."""
        with self._isolated(diagnostics_seed(self.seeds[0])):
            batch = self._probe_batch(self.batch_size, torch.Generator().manual_seed(self.seeds[0]))
            rows = _rows(batch)
            return step_cost(self.model, self._losses, rows, batch)

    def objective_floor(self) -> ObjectiveFloor | None:
        return self.floor

    def measure(self) -> list[dict[str, float]]:
        """The full objective and the unbiased squared norm of its gradient (``diagnostics/squared_norm.py``): two
        independent replicates of ``eval_samples`` passes over the data, every pass in one order (a shuffling
        DataLoader is rewound), the batches dealt into :data:`EVAL_GROUPS` groups; the objective is the mean of
        every loss seen, with its standard error from the groups' differences between the replicates (as in
        :func:`~vaeconverge.diagnostics.full_objective_gradient`; also sets ``n_examples`` and ``dim``)."""
        seed = diagnostics_seed(self.seeds[0])
        count, dims = 0, []
        with self._isolated(seed):
            order = torch.get_rng_state(), [g.get_state() for g in self._data_generators()]
            noise: Tensor | None = None
            terms, values = [], []
            for _ in range(2):
                groups: list[Tensor] = []
                group_values: list[Tensor] = []
                for _ in range(self.eval_samples):
                    batches = self._batches(order)
                    if noise is None:
                        torch.manual_seed(seed)  # after a DataLoader drew its base seed: as over a tensor
                    else:
                        torch.set_rng_state(noise)
                    for c, batch in batches:
                        losses = self._losses(batch)
                        grads = torch.autograd.grad(losses.sum(), self.params, allow_unused=True,
                                                    materialize_grads=True)
                        flat = torch.cat([g.reshape(-1) for g in grads])
                        add_to_group(groups, c, flat)
                        add_to_group(group_values, c, losses.detach().double().sum().cpu())
                        count += len(losses)
                        if not dims:
                            dims.append(_first_tensor(batch)[0].numel())
                    noise = torch.get_rng_state()
                terms.append(torch.stack(groups))
                values.append(torch.stack(group_values))
        per_replicate = count // 2
        estimate = unbiased_squared_norm(*(t / per_replicate for t in terms))
        self.n_examples, self.dim = per_replicate // self.eval_samples, dims[0]
        objective, objective_se = (values[0] + values[1]).sum() / count, (values[0] - values[1]).norm() / count
        return [{"objective": objective.item(), "objective_se": objective_se.item(),
                 "grad_sq_norm": estimate.value.item(),
                 "grad_sq_norm_se": estimate.se.item(), "grad_sq_norm_biased": estimate.biased.item(),
                 "log_likelihood": math.nan}]

    @contextlib.contextmanager
    def probing(self, t: int, seed: int) -> Iterator[None]:
        with self._isolated(seed):
            try:
                yield
            except RuntimeError as exc:  # e.g. BatchNorm in training mode mutates its statistics under torch.func
                raise ConfigError("constants", f"the constants need a loss that torch.func can transform (grad, "
                                  f"jvp, vmap), which this one is not ({exc}); pass constants=False") from exc

    def fixed_noise_loss(self, t: int, generator: torch.Generator, seed: int
                         ) -> tuple[list[Loss], dict[str, Tensor]]:
        """The mean loss over the probe's examples as terms of at most ``hvp_chunk`` examples, term c's noise
        seeded by ``seed + c`` at every evaluation (the Hessian of one function)."""
        batch = self._probe_batch(SMOOTHNESS_EXAMPLES, generator)
        n = _rows(batch)

        def term(c: int, rows: slice) -> Loss:
            part = _map_tensors(lambda t: t[rows], batch)

            def loss(p: dict[str, Tensor]) -> Tensor:
                torch.manual_seed(seed + c)
                return functional_call(self._module, p, (part,)).sum() / n

            return loss

        starts = range(0, n, self.hvp_chunk)
        return [term(c, slice(start, start + self.hvp_chunk)) for c, start in enumerate(starts)], self._snapshot()

    def gradient_draws(self, t: int, generator: torch.Generator, seed: int) -> Tensor:
        """Per-example loss gradients under two independent noise draws, shape (n, 2, P), by ``torch.func.vmap``
        over examples of ``torch.func.grad`` (each example its own noise)."""
        batch = self._probe_batch(self.probe_examples, generator)

        def example_loss(p: dict[str, Tensor], example: Any) -> Tensor:
            return functional_call(self._module, p, (_map_tensors(lambda t: t.unsqueeze(0), example),)).sum()

        per_example = vmap(grad(example_loss), in_dims=(None, 0), randomness="different")
        draws = []
        for draw in range(2):
            torch.manual_seed(seed + draw)
            grads = per_example(self._snapshot(), batch)
            draws.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))
        return torch.stack(draws, dim=1)

    def weights(self, t: int) -> list[Tensor]:
        return self.params

    def snr_gradients(self, t: int, generator: torch.Generator, seed: int, draws: int) -> dict[str, Tensor]:
        """Gradients of the mean loss of ``draws`` minibatches (:meth:`_minibatches`), isolated under ``seed`` as
        the checkpoints are (the loss's own noise from torch's RNG seeded so), per group of ``snr_groups``."""
        rows: dict[str, list[Tensor]] = {group: [] for group in self.snr_groups}
        with self._isolated(seed):
            for _, batch in zip(range(draws), self._minibatches(generator), strict=False):
                grads = torch.autograd.grad(self._losses(batch).mean(), self.params, allow_unused=True,
                                            materialize_grads=True)
                for group, members in self.snr_groups.items():
                    rows[group].append(torch.cat([grads[i].reshape(-1) for i in members]))
        return {group: torch.stack(own) for group, own in rows.items()}

    def _minibatches(self, generator: torch.Generator) -> Iterator[Any]:
        """Training-sized minibatches without end: B random rows of a tensor at a time (from ``generator``), or a
        DataLoader's batches, pass after pass, in its own order."""
        while True:
            if isinstance(self.data, Tensor):
                index = torch.randperm(len(self.data), generator=generator)[:self.batch_size]
                yield self.data[index.to(self.data.device)]
            else:
                yield from self.data

    def _snapshot(self) -> dict[str, Tensor]:
        return {name: p.detach() for name, p in zip(self._names, self.params, strict=True)}

    def _batches(self, order: tuple[Tensor, list[Tensor]]) -> Iterator[tuple[int, Any]]:
        """The data once, each batch with its group: a tensor in chunks as ``train`` splits it
        (:func:`~vaeconverge.diagnostics.grad_norms.evaluation_chunks`), or the batches of a DataLoader dealt round
        the groups alike, in the order that the global RNG state and the data's generators' states ``order`` give."""
        if isinstance(self.data, Tensor):
            return evaluation_chunks(self.data, self.chunk_size)
        torch.set_rng_state(order[0])
        for g, state in zip(self._data_generators(), order[1], strict=True):
            g.set_state(state)
        return ((b % EVAL_GROUPS, batch) for b, batch in enumerate(self.data))

    def _data_generators(self) -> list[torch.Generator]:
        """The generators a DataLoader shuffles with, if it has its own."""
        return [g for g in (getattr(self.data, "generator", None),
                            getattr(getattr(self.data, "sampler", None), "generator", None))
                if isinstance(g, torch.Generator)]

    @contextlib.contextmanager
    def _isolated(self, seed: int) -> Iterator[None]:
        """Run the block with torch's global RNG seeded by ``seed``, the parameters' ``.grad`` set aside, and
        every RNG state (global, the data's own generators) and buffer it may touch restored afterwards."""
        grads = [p.grad for p in self.params]
        buffers = [b.clone() for b in self.model.buffers()]
        generators = self._data_generators()
        states = [g.get_state() for g in generators]
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        try:
            for p in self.params:
                p.grad = None
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield
        finally:
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers, strict=True):
                    b.copy_(saved)
            for g, state in zip(generators, states, strict=True):
                g.set_state(state)

    def _on_model(self, batch: Any) -> Any:
        """``batch``'s tensors where the model's parameters are (the data may stay on the host)."""
        device = self.params[0].device
        return _map_tensors(lambda t: to_device(t, device), batch)

    def _losses(self, batch: Any) -> Tensor:
        batch = self._on_model(batch)
        losses = self.loss_fn(self.model, batch)
        examples = _rows(batch)
        if not isinstance(losses, Tensor) or tuple(losses.shape) != (examples,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ConfigError("loss_fn", f"must return one loss per example, a tensor of shape ({examples},) for "
                                         f"a batch of {examples}; got {shape}")
        return losses

    def _probe_batch(self, examples: int, generator: torch.Generator) -> Any:
        """At most ``examples`` examples as one batch: a random subset of a tensor, or the first batches of a
        DataLoader (in its own order)."""
        if isinstance(self.data, Tensor):
            if len(self.data) <= examples:
                return self._on_model(self.data)
            index = torch.randperm(len(self.data), generator=generator)[:examples]
            return self._on_model(self.data[index.to(self.data.device)])
        taken: list[Any] = []
        count = 0
        for batch in self.data:
            taken.append(batch)
            count += _rows(batch)
            if count >= examples:
                break
        return self._on_model(_map_tensors(lambda *leaves: torch.cat(leaves)[:examples], *taken))


class ConvergenceMonitor:
    """Full-objective gradient norms at checkpoints of a user's training loop, and the theory's verdict on them.

    ``steps`` is the planned number of iterations (checkpoints are placed as ``train`` places them: 0, n and
    ``eval_points`` in between, or every ``eval_every``); ``batch_size`` the training batch size B (default:
    the DataLoader's), used by the paper's proxy, the noise constants and the bounds; ``samples`` the K Monte
    Carlo samples of the loss, if any (splits sigma^2 into its parts); ``seed`` seeds torch's global RNG
    during evaluations (offset as ``train`` offsets its diagnostics). ``constants=True`` estimates L,
    sigma^2 and R at steps 0, n/2 and n (as ``train`` does), which the bound needs; ``objective_floor``, a value
    the full objective provably cannot go below (0 for a cross-entropy or a squared error), makes the bound's
    delta provable (without it delta is measured against the lowest objective seen, an estimate). Give
    ``optimizer`` to hook
    its steps; otherwise call :meth:`step` right after every ``optimizer.step()`` (before the scheduler's).
    ``chunk_size`` is the rows of a tensor evaluated at once at a checkpoint (default: as many as the memory
    budget holds for this model and loss, measured on one training batch, as ``train`` sizes its chunks).
    ``snr_groups`` names parameter groups, ``{"encoder": model.encoder.parameters(), "decoder": ...}`` (either or
    both keys), whose gradient signal-to-noise ratio is recorded at every checkpoint from ``snr_draws`` minibatch
    gradients (the ``snr_*`` columns; those of a group not given stay NaN).
    The step-0 checkpoint is evaluated here, so build the monitor before the first step.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Tensor | Iterable[Any],
        steps: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        batch_size: int | None = None,
        samples: int = 1,
        eval_points: int | None = None,
        eval_every: int | None = None,
        eval_samples: int = 1,
        constants: bool = False,
        objective_floor: float | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        snr_groups: Mapping[str, Iterable[Tensor]] | None = None,
        snr_draws: int = 32,
    ) -> None:
        for option, value in (("steps", steps), ("samples", samples), ("eval_samples", eval_samples),
                              ("chunk_size", chunk_size), ("eval_points", eval_points), ("eval_every", eval_every),
                              ("batch_size", batch_size)):
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ConfigError(option, f"must be a positive integer (got {value!r})")
        if isinstance(data, Tensor) and len(data) == 0:
            raise ConfigError("data", "holds no examples")
        if not isinstance(data, Tensor):
            if not isinstance(data, Iterable):
                raise ConfigError("data", f"must be a tensor or a DataLoader, got {type(data).__name__}")
            if isinstance(data, Iterator):  # not iter(data): a DataLoader's iterator draws from the RNG
                raise ConfigError("data", "must be re-iterable (a tensor or a DataLoader), not a one-shot iterator")
            batch_size = batch_size or getattr(data, "batch_size", None)
        if objective_floor is not None and not (isinstance(objective_floor, int | float)
                                                and math.isfinite(objective_floor)):
            raise ConfigError("objective_floor", f"must be a finite number (got {objective_floor!r})")
        if batch_size is None:
            raise ConfigError("batch_size", "give the training batch size (a DataLoader would tell it)")
        check_snr_draws("snr_draws", snr_draws)
        self._start = time.perf_counter()
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.steps, self.batch_size, self.samples = steps, batch_size, samples
        self.eval_samples, self.seed = eval_samples, seed
        self._subject = _UserLoop(model, loss_fn, data, batch_size, samples, eval_samples, seed, chunk_size)
        self.chunk_size = self._subject.chunk_size
        if objective_floor is not None:
            self._subject.floor = ObjectiveFloor(float(objective_floor), f"objective_floor={objective_floor:g}, "
                                                 "given to the monitor")
        self.params = self._subject.params
        self._subject.snr_groups = _snr_positions(snr_groups or {}, self.params)
        self.iteration = 0
        self._lrs: list[float] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._hook: RemovableHandle | None = None

        began = time.perf_counter()
        first = self._subject.measure()  # before the recorder: its budget needs the number of examples
        measuring = time.perf_counter() - began
        self.n_examples = self._subject.n_examples
        self.batches_per_epoch = max(self.n_examples // batch_size, 1)  # as train's epochs: floor(N / B) steps
        self._recorder = Recorder(self._subject, steps, self.n_examples, eval_every=eval_every,
                                  eval_points=eval_points, eval_samples=eval_samples, constants=constants,
                                  strict=False, device=self.params[0].device,
                                  snr_draws=snr_draws if snr_groups else None)
        self._recorder.start = self._start
        self._recorder.diagnostics_seconds["checkpoints"] += measuring
        self.checkpoints = self._recorder.checkpoints
        self.probe_steps = self._recorder.probe_steps
        if optimizer is not None:
            self.attach(optimizer)
        self._record(first)
        self.seconds_in_monitor = time.perf_counter() - self._start

    @property
    def metrics(self) -> list[dict[str, float]]:
        """One row per checkpoint, the columns of ``train``'s metrics.csv."""
        return self._recorder.metrics

    # ------------------------------------------------------------------------------------------ the loop

    def attach(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Call :meth:`step` after every ``optimizer.step()`` (``register_step_post_hook``); returns the handle."""
        if self._hook is not None:
            self._hook.remove()
        self._optimizer = optimizer
        self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.step(opt))
        return self._hook

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Record one iteration just taken by ``optimizer``: its step size, its minibatch gradient's squared
        norm (of ``.grad`` as the optimizer used it), and, at a checkpoint, the full-objective gradient."""
        optimizer = optimizer or self._optimizer
        if optimizer is None:
            raise ConfigError("optimizer", "step() needs the optimizer (or give it to the monitor to hook)")
        self._optimizer = optimizer
        start = time.perf_counter()
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            self._recorder.observe(torch.nn.utils.get_total_norm(grads).square().reshape(1))
        self._lrs.append(float(optimizer.param_groups[0]["lr"]))
        if math.isnan(self.metrics[0]["lr"]):
            self.metrics[0]["lr"] = self._lrs[0]
        self.iteration += 1
        if self.iteration % self.batches_per_epoch == 0:
            self._recorder.end_epoch()
        if self.iteration in self.checkpoints:
            self._record()
        self.seconds_in_monitor += time.perf_counter() - start

    # ---------------------------------------------------------------------------------------- the results

    def summary(self) -> dict[str, Any]:
        """The run's summary, with the keys of ``train``'s summary.json where they apply; evaluates the current
        iterate first if it is not a checkpoint yet."""
        if self.metrics[-1]["step"] != self.iteration:
            start = time.perf_counter()
            self._record()
            self.seconds_in_monitor += time.perf_counter() - start
        summary = self._recorder.summary(
            self.assessed(), config=self._config(), interrupted=self.iteration < self.steps,
            data={"name": type(self.data).__name__, "n": self.n_examples, "dim": self._subject.dim},
            batches_per_epoch=self.batches_per_epoch,
            gammas=np.array([*self._lrs, self._group().get("lr", self._first_lr())]),  # the last: after iterate n
        )
        return summary.with_extras(monitor_seconds=self.seconds_in_monitor).to_dict()

    def assessed(self) -> AssessedRun:
        """What the theory reads of this run: the optimizer in use and its hyperparameters, the measured B and
        K, the model's layers (its modules with a weight matrix) and whether a module of it is not smooth."""
        name = optimizer_name(self._optimizer) if self._optimizer is not None else "none"
        group = self._group()
        layers = sum(1 for m in self.model.modules() if getattr(m, "weight", None) is not None
                     and m.weight.dim() >= 2)
        kink = non_smooth_activation(self.model)
        return AssessedRun(optimizer=name, bound_family=bound_family(name), lr=self._first_lr(),
                           momentum=float(group.get("momentum", 0.0)), betas=tuple(group.get("betas", (0.9, 0.999))),
                           eps=float(group.get("eps", DEFAULT_EPS)), batch_size=self.batch_size, samples=self.samples,
                           layers=max(layers, 1), activation=kink or "none", smooth=kink is None,
                           uncovered=uncovered_reason(name), seed=self.seed)

    def write(self, out_dir: str | Path, tensorboard: str | Path | None = None) -> Path:
        """Write metrics.csv, bands.csv, summary.json and convergence.png into ``out_dir`` (as ``train`` does),
        and the scalars as TensorBoard events into ``tensorboard`` if given; return ``out_dir``."""
        summary = self.summary()
        c = summary["config"]
        title = f"{c['model']}, {c['objective']}, {c['optimizer']}, B={c['batch_size']} (ConvergenceMonitor)"
        out = write_measurements(out_dir, self.metrics, summary, title)
        if tensorboard is not None:
            from .report.tensorboard import write_scalars

            write_scalars(tensorboard, self.metrics)
        return out

    # ------------------------------------------------------------------------------------------- helpers

    def _record(self, measured: list[dict[str, float]] | None = None) -> None:
        step = self.iteration
        lr = self._lrs[-1] if self._lrs else self._initial_lr()
        self._recorder.record(step, lr, (step - 1) // self.batches_per_epoch if step else 0, measured)

    def _group(self) -> dict[str, Any]:
        return self._optimizer.param_groups[0] if self._optimizer is not None else {}

    def _first_lr(self) -> float:
        return self._lrs[0] if self._lrs else float(self._group().get("lr", math.nan))

    def _initial_lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"]) if self._optimizer is not None else math.nan

    def _config(self) -> dict[str, Any]:
        run = self.assessed()
        return {"model": type(self.model).__name__,
                "objective": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
                "samples": self.samples, "optimizer": run.optimizer, "lr": run.lr, "momentum": run.momentum,
                "adam_betas": list(run.betas), "batch_size": self.batch_size, "steps": self.steps,
                "eval_samples": self.eval_samples, "checkpoints": len(self.checkpoints), "seed": self.seed}


def _snr_positions(groups: Mapping[str, Iterable[Tensor]], params: list[Tensor]) -> dict[str, list[int]]:
    """The positions in ``params`` (the model's trainable parameters) of each group's tensors, checked: the groups
    are among :data:`~vaeconverge.engine.recorder.SNR_GROUPS`, not empty, disjoint, and hold trainable parameters."""
    if not isinstance(groups, Mapping):
        raise ConfigError("snr_groups", f"must map group names to parameters (got {type(groups).__name__})")
    position = {id(p): i for i, p in enumerate(params)}
    out: dict[str, list[int]] = {}
    taken: set[int] = set()
    for name, members in groups.items():
        if name not in SNR_GROUPS:
            raise ConfigError("snr_groups", f"groups are {' and '.join(map(repr, SNR_GROUPS))} (got {name!r})")
        if isinstance(members, Tensor) or not isinstance(members, Iterable):
            raise ConfigError("snr_groups", f"{name!r} must be an iterable of parameters, such as "
                                            f"model.{name}.parameters()")
        indices = list(dict.fromkeys(position.get(id(p), -1) for p in members))
        if not indices:
            raise ConfigError("snr_groups", f"{name!r} holds no parameters")
        if -1 in indices:
            raise ConfigError("snr_groups", f"{name!r} holds a tensor that is not a trainable parameter of the model")
        if taken & set(indices):
            raise ConfigError("snr_groups", f"{name!r} shares parameters with another group")
        taken |= set(indices)
        out[name] = indices
    return out


def _first_tensor(batch: Any) -> Tensor:
    """The first tensor of a batch (a tensor, or a tuple, list or dict holding tensors)."""
    leaves = batch.values() if isinstance(batch, dict) else batch
    for leaf in leaves if isinstance(leaves, Iterable) and not isinstance(leaves, Tensor) else [leaves]:
        if isinstance(leaf, Tensor):
            return leaf
    raise ConfigError("data", f"its batches hold no tensor (got {type(batch).__name__})")


def _rows(batch: Any) -> int:
    """Examples in a batch: the length of its first tensor."""
    return len(_first_tensor(batch))


def _map_tensors(fn: Callable[..., Tensor], *batches: Any) -> Any:
    """``fn`` applied to corresponding tensors of batches of one structure (a tensor, tuple, list or dict)."""
    first = batches[0]
    if isinstance(first, Tensor):
        return fn(*batches)
    if isinstance(first, dict):
        return {key: _map_tensors(fn, *(b[key] for b in batches)) for key in first}
    if isinstance(first, tuple | list):
        return type(first)(_map_tensors(fn, *parts) for parts in zip(*batches, strict=True))
    return first
