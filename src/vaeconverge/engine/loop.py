"""The stepping loop shared by every kind of run (VAE ensembles, BBVI): draw a batch's losses, step, and report
minibatch gradient norms, epochs and checkpoints to the run's :class:`~.recorder.Recorder`; and :class:`Progress`,
how runs and sweeps show how far they are."""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType

import torch
from tqdm.auto import tqdm

from ..data import PermutationBatches
from ..runtime import LoadFollower, finishing
from .recorder import Recorder


class Progress:
    """How far a run (or a sweep) is, on stderr: a tqdm bar on a terminal; elsewhere (a log file, a CI job, a pipe)
    one plain line per :meth:`report`; nothing unless ``enabled``. The one place that makes this choice."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done = initial
        self.plain = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled or self.plain,
                        leave=False)

    def advance(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        self.bar.update(n)

    def report(self, line: str, **postfix: object) -> None:
        """A reading: on a terminal ``postfix`` beside the bar; elsewhere one line, ``desc: line``."""
        if self.plain:
            print(f"{self.desc}: {line}", file=sys.stderr, flush=True)
        elif postfix:
            self.bar.set_postfix(postfix)

    def note(self, line: str) -> None:
        """One line, above the bar on a terminal (e.g. before a slow step, so that its silence is explained)."""
        if self.enabled:
            tqdm.write(line, file=sys.stderr)
            sys.stderr.flush()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


class _HeldSignals:
    """While a step changes the run's state (draws its batches and noise, steps the weights, the optimizer and the
    schedule, closes an epoch), SIGINT and SIGTERM wait for the step's end: a run then stops between two steps, and
    what it saves resumes exactly. Wraps the Python handlers in place (the default Ctrl-C one, or
    ``runtime.graceful_stop``'s), in the main thread only, and puts them back on exit."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: tuple[int, FrameType | None] | None = None
        self.previous: dict[int, Callable[[int, FrameType | None], object]] = {}

    def __enter__(self) -> _HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if callable(handler):
                    self.previous[signum] = handler
                    signal.signal(signum, self._receive)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            self.pending = self.pending or (signum, frame)
        else:
            self.previous[signum](signum, frame)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """Stop holding; a signal received meanwhile reaches its handler now (which may raise KeyboardInterrupt)."""
        self.holding = False
        if self.pending is not None:
            (signum, frame), self.pending = self.pending, None
            self.previous[signum](signum, frame)


CONSTANTS_NOTE = "estimating L, sigma^2 and R at step 0 (--no-constants skips this)..."


def take_step(batch_losses: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
              optimizer: torch.optim.Optimizer,
              squared_norms: Callable[[list[torch.Tensor]], torch.Tensor],
              zero_grad: Callable[[], None] | None = None) -> torch.Tensor:
    """One optimisation step of every replica: the *sum* of their losses (T,) on their next batches is
    differentiated, so that each replica's gradient stays its own; returns each replica's squared minibatch
    gradient norm (T,), taken (and clipped, if ``squared_norms`` clips) before the optimizer steps.
    ``zero_grad`` clears the gradients (``Ensemble.zero_grad``; the optimizer's by default)."""
    loss = batch_losses()
    if zero_grad is None:
        optimizer.zero_grad(set_to_none=True)
    else:
        zero_grad()
    loss.sum().backward()
    norms = squared_norms([p.grad for p in params])
    optimizer.step()
    return norms


def run_steps(
    steps: int,
    batch_losses: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    recorder: Recorder,
    epochs: PermutationBatches,
    squared_norms: Callable[[list[torch.Tensor]], torch.Tensor],
    desc: str = "train",
    progress: bool = True,
    start: int = 0,
    threads: LoadFollower | None = None,
    notes: Sequence[str] = (),
    zero_grad: Callable[[], None] | None = None,
) -> bool:
    """Steps ``start`` + 1 .. ``steps`` of :func:`take_step`: ``batch_losses()`` gives every replica's loss (T,) on its
    next batch, ``squared_norms`` returns each replica's squared gradient norm (and may clip in place), the
    scheduler steps after the optimizer, and the recorder records its checkpoints (step 0 too, unless
    the run resumes from ``start``, which it recorded). Ctrl-C (or SIGTERM, under ``runtime.graceful_stop``) stops
    at the end of the step it arrives in, recorded; returns whether it did. Once the loop has ended, further
    signals are held until the run is written. ``threads``, if given, fits the intra-op thread count to the load
    between steps. ``notes``: lines shown before the first step. ``zero_grad``: as :func:`take_step`'s."""
    bar = Progress(steps, desc, "step", progress, initial=start)

    def record(step: int, lr: float) -> int:
        rows = recorder.record(step, lr, max(epochs.epoch, 0))
        objective = math.fsum(row["objective"] for row in rows) / len(rows)
        grad = math.fsum(row["grad_sq_norm"] for row in rows) / len(rows)
        seeds = f" (means of {len(rows)} seeds)" if len(rows) > 1 else ""
        bar.report(f"step {step}/{steps}: objective {objective:.5g}, grad_sq_norm {grad:.3g}{seeds}, "
                   f"{rows[0]['seconds']:.1f}s", objective=f"{objective:.5g}", grad_sq=f"{grad:.3g}")
        return step

    lr = optimizer.param_groups[0]["lr"]
    done = recorded = start
    with bar:
        for line in notes:
            bar.note(line)
        if start == 0:
            if 0 in recorder.probe_steps:
                bar.note(CONSTANTS_NOTE)
            recorded = record(0, lr)
        held = _HeldSignals()
        try:
            with held:
                for step in range(start + 1, steps + 1):
                    held.hold()
                    lr = optimizer.param_groups[0]["lr"]
                    recorder.observe(take_step(batch_losses, params, optimizer, squared_norms, zero_grad))
                    scheduler.step()
                    if epochs.epoch_finished:
                        recorder.end_epoch()
                    done = step
                    held.release()
                    if threads is not None and (count := threads.poll(step)) is not None:
                        bar.note(f"step {step}: now on {count} intra-op thread{'s' if count > 1 else ''}, as other "
                                 "processes took or left cores (--threads N fixes the count)")
                    if step in recorder.checkpoints:
                        recorded = record(step, lr)
                    bar.advance()
        except KeyboardInterrupt:
            if done > recorded:
                record(done, lr)
            return True
        finally:
            finishing()
    return False
