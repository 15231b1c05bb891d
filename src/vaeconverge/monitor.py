"""ConvergenceMonitor: the convergence diagnostics of ``vaeconverge train`` for a user's own PyTorch loop.

The user keeps their model, loss and loop. The monitor is given the model, a loss function
``loss_fn(model, batch) -> per-example losses`` (shape (B,), to be minimised; the full objective is their
mean over all the data) and the data (a tensor, split into chunks, or any re-iterable such as a DataLoader,
whose batches reach ``loss_fn`` exactly as yielded). After every ``optimizer.step()`` it counts the
iteration, reads the step size used and the minibatch gradient's squared norm from ``.grad`` (no extra
backward pass); at checkpoints it computes the full objective and its gradient's squared norm with one pass
over the data. The end of the run gives what ``train`` gives: random iterate, rate, constants and the bound
for the optimizer in use, and the same metrics.csv, summary.json and convergence.png.

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
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.hooks import RemovableHandle

from .config import ConfigError, RunConfig
from .diagnostics import GradientNormTracker, hvp_power_iteration, noise_from_gradients, summed_gradient
from .engine.loop import METRIC_COLUMNS
from .engine.outputs import write_measurements
from .engine.train import (
    DIAGNOSTICS_SEED_OFFSET,
    Probe,
    constants_from_probes,
    default_eval_points,
    evaluation_steps,
)
from .optim import recognise_optimizer as optimizer_name
from .theory.assessment import assess_run

LossFn = Callable[[nn.Module, Any], Tensor]

# Examples the constants probes use, as in train: the Hessian's power iteration, and per-example gradients.
SMOOTHNESS_EXAMPLES = 512
NOISE_EXAMPLES = 256


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module's forward, so that ``torch.func.functional_call`` can swap the
    model's parameters (names prefixed ``model.``) whatever methods of the model the loss calls."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


class ConvergenceMonitor:
    """Full-objective gradient norms at checkpoints of a user's training loop, and the theory's verdict on them.

    ``steps`` is the planned number of iterations (checkpoints are placed as ``train`` places them: 0, n and
    ``eval_points`` in between, or every ``eval_every``); ``batch_size`` the training batch size B (default:
    the DataLoader's), used by the paper's proxy, the noise constants and the bounds; ``samples`` the K Monte
    Carlo samples of the loss, if any (splits sigma^2 into its parts); ``seed`` seeds torch's global RNG
    during evaluations (offset as ``train`` offsets its diagnostics). ``constants=True`` estimates L,
    sigma^2 and R at steps 0, n/2 and n (as ``train`` does), which the bound needs. Give ``optimizer`` to hook
    its steps; otherwise call :meth:`step` right after every ``optimizer.step()`` (before the scheduler's).
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
        seed: int = 0,
        chunk_size: int = 2048,
    ) -> None:
        for option, value in (("steps", steps), ("samples", samples), ("eval_samples", eval_samples),
                              ("chunk_size", chunk_size), ("eval_points", eval_points), ("eval_every", eval_every),
                              ("batch_size", batch_size)):
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ConfigError(option, f"must be a positive integer (got {value!r})")
        if not isinstance(data, Tensor):
            if not isinstance(data, Iterable):
                raise ConfigError("data", f"must be a tensor or a DataLoader, got {type(data).__name__}")
            if isinstance(data, Iterator):  # not iter(data): a DataLoader's iterator draws from the RNG
                raise ConfigError("data", "must be re-iterable (a tensor or a DataLoader), not a one-shot iterator")
            batch_size = batch_size or getattr(data, "batch_size", None)
        if batch_size is None:
            raise ConfigError("batch_size", "give the training batch size (a DataLoader would tell it)")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.steps, self.batch_size, self.samples = steps, batch_size, samples
        self.eval_samples, self.seed, self.chunk_size = eval_samples, seed, chunk_size
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("model", "has no trainable parameters")
        self._module = _LossModule(model, loss_fn)
        self._names = [f"model.{name}" for name, p in model.named_parameters() if p.requires_grad]
        self.metrics: list[dict[str, float]] = []
        self.iteration = 0
        self.seconds_in_monitor = 0.0
        self._lrs: list[float] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._hook: RemovableHandle | None = None
        self._probes: list[Probe] = []
        self._start = time.perf_counter()

        objective, grad_sq_norm, self.n_examples, self._dim = self._full_gradient()
        self.batches_per_epoch = max(self.n_examples // batch_size, 1)  # as train's epochs: floor(N / B) steps
        points = eval_points or default_eval_points(steps, batch_size, self.n_examples, eval_samples)
        self.checkpoints = evaluation_steps(steps, eval_every, points)
        self.probe_steps = {0, steps // 2, steps} if constants else set()
        self._tracker = GradientNormTracker(1, self.n_examples, sum(p.numel() for p in self.params), batch_size,
                                            device=self.params[0].device)
        if optimizer is not None:
            self.attach(optimizer)
        self._add_row(objective, grad_sq_norm)
        self.seconds_in_monitor = time.perf_counter() - self._start

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
            self._tracker.observe(torch.nn.utils.get_total_norm(grads).square().reshape(1))
        self._lrs.append(float(optimizer.param_groups[0]["lr"]))
        if math.isnan(self.metrics[0]["lr"]):
            self.metrics[0]["lr"] = self._lrs[0]
        self.iteration += 1
        if self.iteration % self.batches_per_epoch == 0:
            self._tracker.end_epoch()
        if self.iteration in self.checkpoints:
            self._add_row(*self._full_gradient()[:2])
        self.seconds_in_monitor += time.perf_counter() - start

    # ---------------------------------------------------------------------------------------- the results

    def summary(self) -> dict[str, Any]:
        """The run's summary, with the keys of ``train``'s summary.json where they apply; evaluates the current
        iterate first if it is not a checkpoint yet."""
        if self.metrics[-1]["step"] != self.iteration:
            start = time.perf_counter()
            self._add_row(*self._full_gradient()[:2])
            self.seconds_in_monitor += time.perf_counter() - start
        name = optimizer_name(self._optimizer) if self._optimizer is not None else "none"
        group = self._optimizer.param_groups[0] if self._optimizer is not None else {}
        betas = tuple(group.get("betas", (0.9, 0.999)))
        lr = self._lrs[0] if self._lrs else float(group.get("lr", math.nan))
        layers = sum(1 for m in self.model.modules() if getattr(m, "weight", None) is not None
                     and m.weight.dim() >= 2)
        # what the assessment reads of a run's configuration; paper_shape counts layers as depth + 1
        assessed = RunConfig(optimizer=name, lr=lr, momentum=float(group.get("momentum", 0.0)),
                             adam_betas=betas, batch_size=self.batch_size, samples=self.samples, seed=self.seed,
                             depth=max(layers - 1, 0))
        gammas = np.array([*self._lrs, float(group.get("lr", lr))])  # the last: the step after iterate n
        d = sum(p.numel() for p in self.params)
        constants = None
        if self._probes:
            best = min(row["objective"] for row in self.metrics)
            constants = constants_from_probes(self._probes, self.metrics[0]["objective"], best,
                                              "lowest objective measured", d, self.batch_size, self.samples)
        summary: dict[str, Any] = {
            "config": {"model": type(self.model).__name__,
                       "objective": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
                       "samples": self.samples, "optimizer": name, "lr": lr, "momentum": assessed.momentum,
                       "adam_betas": list(betas), "batch_size": self.batch_size, "steps": self.steps,
                       "eval_samples": self.eval_samples, "checkpoints": len(self.checkpoints),
                       "seed": self.seed},
            "seeds": [self.seed],
            "steps": self.iteration,
            "seconds": time.perf_counter() - self._start,
            "monitor_seconds": self.seconds_in_monitor,
            "interrupted": self.iteration < self.steps,
            "data": {"name": type(self.data).__name__, "n": self.n_examples, "dim": self._dim},
            "parameters": d,
            "torch": torch.__version__,
            "constants": None if constants is None else constants.to_dict(),
        }
        summary.update(assess_run(assessed, self.metrics, constants, self.batches_per_epoch, gammas))
        return summary

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

    # ------------------------------------------------------------------------------------- the evaluations

    def _add_row(self, objective: float, grad_sq_norm: float) -> None:
        step = self.iteration
        if not math.isfinite(objective):
            warnings.warn(f"ConvergenceMonitor: the full objective is not finite at step {step}", stacklevel=3)
        elif step in self.probe_steps:
            self._probe()
        (window,), (proxy,) = self._tracker.read_window(), self._tracker.paper_proxy
        row = {"seed": self.seed, "step": step, "epoch": (step - 1) // self.batches_per_epoch if step else 0,
               "lr": self._lrs[-1] if self._lrs else self._initial_lr(), "objective": objective,
               "grad_sq_norm": grad_sq_norm, "batch_grad_sq_norm": window, "paper_proxy": proxy,
               "log_likelihood": math.nan, "random_iterate": math.nan, "bound": math.nan,
               "seconds": time.perf_counter() - self._start}
        self.metrics.append({key: row[key] for key in METRIC_COLUMNS})

    def _initial_lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"]) if self._optimizer is not None else math.nan

    def _batches(self) -> Iterator[Any]:
        """The data once: chunks of a tensor, or the batches of a DataLoader as it yields them."""
        return iter(self.data.split(self.chunk_size) if isinstance(self.data, Tensor) else self.data)

    @contextlib.contextmanager
    def _isolated(self, seed: int) -> Iterator[None]:
        """Run the block with torch's global RNG seeded by ``seed``, the parameters' ``.grad`` set aside, and
        every RNG state (global, the data's own generators) and buffer it may touch restored afterwards."""
        grads = [p.grad for p in self.params]
        buffers = [b.clone() for b in self.model.buffers()]
        generators = [g for g in (getattr(self.data, "generator", None),
                                  getattr(getattr(self.data, "sampler", None), "generator", None))
                      if isinstance(g, torch.Generator)]
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

    def _losses(self, batch: Any) -> Tensor:
        losses = self.loss_fn(self.model, batch)
        if not isinstance(losses, Tensor) or losses.dim() != 1:
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ConfigError("loss_fn", f"must return one loss per example, a tensor of shape (B,); got {shape}")
        return losses

    def _full_gradient(self) -> tuple[float, float, int, int]:
        """(full objective, its gradient's squared norm, examples N, features per example) at the current
        parameters: ``eval_samples`` passes over the data, the objective being the mean of every loss seen."""
        counts: list[int] = []
        dims: list[int] = []

        seed = self.seed + DIAGNOSTICS_SEED_OFFSET

        def losses() -> Iterator[Tensor]:
            for draw in range(self.eval_samples):
                batches = self._batches()
                if draw == 0:  # after a DataLoader's iterator drew its base seed: the same noise as over a tensor
                    torch.manual_seed(seed)
                for batch in batches:
                    values = self._losses(batch)
                    counts.append(len(values))
                    if not dims:
                        first = batch if isinstance(batch, Tensor) else _first_tensor(batch)
                        dims.append(first[0].numel())
                    yield values.sum()

        with self._isolated(seed):
            value, total = summed_gradient(self.params, losses())
        count = sum(counts)
        grad_sq_norm = torch.nn.utils.get_total_norm(total).square().item() / count**2
        return value.item() / count, grad_sq_norm, count // self.eval_samples, dims[0]

    def _probe_batch(self, examples: int, generator: torch.Generator) -> Any:
        """At most ``examples`` examples as one batch: a random subset of a tensor, or the first batches of a
        DataLoader (in its own order)."""
        if isinstance(self.data, Tensor):
            if len(self.data) <= examples:
                return self.data
            return self.data[torch.randperm(len(self.data), generator=generator)[:examples].to(self.data.device)]
        taken: list[Any] = []
        count = 0
        for batch in self.data:
            taken.append(batch)
            count += len(batch if isinstance(batch, Tensor) else _first_tensor(batch))
            if count >= examples:
                break
        return _map_tensors(lambda *leaves: torch.cat(leaves)[:examples], *taken)

    def _probe(self) -> None:
        """Smoothness, gradient noise and largest weight at the current parameters (see ``diagnostics``)."""
        seed = self.seed + DIAGNOSTICS_SEED_OFFSET + 1 + self.iteration
        generator = torch.Generator().manual_seed(seed)
        params = {name: p.detach() for name, p in zip(self._names, self.params, strict=True)}
        with self._isolated(seed):
            batch = self._probe_batch(SMOOTHNESS_EXAMPLES, generator)

            def loss(p: dict[str, Tensor]) -> Tensor:
                torch.manual_seed(seed)  # the same noise at every evaluation: the Hessian of one function
                return functional_call(self._module, p, (batch,)).mean()

            try:
                L = hvp_power_iteration(loss, params, generator=generator)
                grads = self._per_example_gradients(params, self._probe_batch(NOISE_EXAMPLES, generator), seed)
            except RuntimeError as exc:  # e.g. BatchNorm in training mode mutates its statistics under torch.func
                raise ConfigError("constants", f"the constants need a loss that torch.func can transform (grad, "
                                  f"jvp, vmap), which this one is not ({exc}); pass constants=False") from exc
        noise = noise_from_gradients(grads, self.batch_size, self.samples, generator)
        weight_bound = max(p.detach().abs().max().item() for p in self.params)
        self._probes.append(Probe(L=L, noise=noise, weight_bound=weight_bound))

    def _per_example_gradients(self, params: dict[str, Tensor], batch: Any, seed: int) -> Tensor:
        """Per-example loss gradients under two independent noise draws, shape (n, 2, P), by ``torch.func.vmap``
        over examples of ``torch.func.grad`` (each example its own noise)."""

        def example_loss(p: dict[str, Tensor], example: Any) -> Tensor:
            return functional_call(self._module, p, (_map_tensors(lambda t: t.unsqueeze(0), example),)).sum()

        per_example = vmap(grad(example_loss), in_dims=(None, 0), randomness="different")
        draws = []
        for draw in range(2):
            torch.manual_seed(seed + draw)
            grads = per_example(params, batch)
            draws.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1))
        return torch.stack(draws, dim=1)


def _first_tensor(batch: Any) -> Tensor:
    """The first tensor of a batch (a tensor, or a tuple, list or dict holding tensors)."""
    leaves = batch.values() if isinstance(batch, dict) else batch
    for leaf in leaves if isinstance(leaves, Iterable) and not isinstance(leaves, Tensor) else [leaves]:
        if isinstance(leaf, Tensor):
            return leaf
    raise ConfigError("data", f"its batches hold no tensor (got {type(batch).__name__})")


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
