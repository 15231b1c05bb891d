"""Where the arithmetic runs: the cores this process may use, its memory and heap, intra-op threads, the device,
the networks' precision, and denormal floats.

The lowest floor of the package but for ``validation``: the engine, the data loaders and the commands ask it.

Denormals. Arithmetic on denormal floats (below 1.2e-38 in float32) takes a slow path on x86, and training
makes them: Adam's first moment of a weight whose gradient is exactly zero, as behind a dead ReLU unit, shrinks
by beta1 each step and enters that range after about 700 steps. Flushing them to zero changes only numbers in
that range, to zero (the README's performance section has the measurements).
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from .validation import ConfigError

if TYPE_CHECKING:  # torch is imported where used, so that reading DEVICES or the cores (--help) costs no torch
    import torch


def _allowed_cpus() -> list[int]:
    """The CPUs this process may run on, by number."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


# The cores granted by the enclosing :func:`core_budget` blocks, innermost last.
_BUDGETS: list[int] = []


def available_cores() -> int:
    """The cores this process may run on, no more than an enclosing :func:`core_budget` grants."""
    cores = len(_allowed_cpus())
    return min(cores, *_BUDGETS) if _BUDGETS else cores


@contextmanager
def core_budget(cores: int) -> Iterator[None]:
    """Within the block, :func:`available_cores` is at most ``cores``: a sweep's share of the machine per run."""
    _BUDGETS.append(max(1, cores))
    try:
        yield
    finally:
        _BUDGETS.pop()


# A core counts as taken when other processes used at least this share of it while the load was sampled.
TAKEN_SHARE = 0.5
# The shortest sampling of the load that /proc's clock ticks (USER_HZ, 100 per second) resolve usefully.
LOAD_WINDOW = 0.1


class LoadSample:
    """The CPU time the machine and this process have used since the sample was started, from which
    :meth:`idle_cores` tells how many of this process's cores other processes left free (Linux; elsewhere every
    core counts as free)."""

    def __init__(self) -> None:
        self.cpus = _allowed_cpus()[:available_cores()]
        self.start, self.ticks = time.monotonic(), self._ticks()

    def _ticks(self) -> tuple[int, int, int] | None:
        """(busy ticks summed over this process's CPUs, all their ticks, the ticks this process has run)."""
        try:
            with open("/proc/stat") as handle:
                lines = {line.split(maxsplit=1)[0]: line.split()[1:] for line in handle if line.startswith("cpu")}
            with open("/proc/self/stat") as handle:
                own = handle.read().rsplit(")", 1)[1].split()  # fields from the third on: state, ppid, ...
        except OSError:
            return None
        busy = total = 0
        for cpu in self.cpus:
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            fields = [int(v) for v in lines.get(f"cpu{cpu}", [])[:8]]
            if len(fields) < 8:
                return None
            total += sum(fields)
            busy += sum(fields) - fields[3] - fields[4]
        return busy, total, int(own[11]) + int(own[12])  # utime, stime: fields 14 and 15 of /proc/self/stat

    def idle_cores(self) -> int:
        """This process's cores less those that other processes kept busy since the sample began (at least
        one); waits until :data:`LOAD_WINDOW` has passed since then, so that the ticks resolve the load."""
        time.sleep(max(0.0, self.start + LOAD_WINDOW - time.monotonic()))
        end = self._ticks()
        if self.ticks is None or end is None or end[1] <= self.ticks[1]:
            return len(self.cpus)
        busy, total, own = (b - a for a, b in zip(self.ticks, end, strict=True))
        others = max(0, busy - own) * len(self.cpus) / total  # in cores
        return max(1, math.floor(len(self.cpus) - others + TAKEN_SHARE))


# Seconds between two looks at the load by a run whose thread count follows it (:class:`LoadFollower`).
RECHECK_SECONDS = 1.0


class LoadFollower:
    """Keeps torch's intra-op thread count at the cores other processes leave idle while a run trains: between
    two steps, at most every :data:`RECHECK_SECONDS`, :meth:`poll` reads the load since its last look. A new count
    is taken once two looks in a row agree on it, so that one noisy look does not resize the pool; a process that
    starts (or ends) beside the run changes the count within about two looks. Leaving it as a context sets the
    largest count it used, so that an enclosing :func:`flush_denormals` restores every thread it reached."""

    def __init__(self, threads: int, sample: Callable[[], LoadSample] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threads = threads
        self.changes: list[tuple[int, int]] = []  # (step, count) at each change
        self._sample, self._clock = sample or LoadSample, clock
        self._since, self._due = self._sample(), clock() + RECHECK_SECONDS
        self._seen: int | None = None
        self.most = threads

    def __enter__(self) -> LoadFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.most)

    def poll(self, step: int) -> int | None:
        """Look at the load if it is time; the new count if it changed now (torch already uses it), else None."""
        now = self._clock()
        if now < self._due:
            return None
        idle = self._since.idle_cores()
        self._since, self._due = self._sample(), now + RECHECK_SECONDS
        agreed, self._seen = idle == self._seen, idle
        if idle == self.threads or not agreed:
            return None
        import torch

        self.threads, self._seen = idle, None
        torch.set_num_threads(idle)
        if flushes_denormals():  # threads the pool gains must flush too
            _set_flush_denormal_everywhere(True)
        self.changes.append((step, idle))
        self.most = max(self.most, idle)
        return idle


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The device ``--device`` names: ``auto`` is CUDA where torch sees a GPU, else the CPU; ``cuda`` without
    one is a :class:`ConfigError`."""
    import torch

    if name not in DEVICES:
        raise ConfigError("--device", f"unknown value {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda: this machine has no CUDA device that torch can use (torch "
                                      f"{torch.__version__}); use --device cpu or auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


PRECISIONS = ("float32", "bf16")


def network_precision(name: str, device: torch.device) -> AbstractContextManager[object]:
    """Where training runs the networks: ``float32`` changes nothing; ``bf16`` is torch's autocast to bfloat16 on
    ``device``, under which the networks' products (linear, conv) run in bfloat16 while the weights, the optimizer
    and the objective's arithmetic after the networks (``models/vae.py`` casts their outputs back) stay float32.
    A GPU without bfloat16 is a :class:`ConfigError`."""
    import torch

    if name not in PRECISIONS:
        raise ConfigError("--precision", f"unknown value {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "float32":
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision", f"bf16: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; "
                                         "use --precision float32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def precision_note(name: str, device: torch.device) -> str | None:
    """A line for the user where ``name`` will run slowly on ``device``: bfloat16 on a CPU without bfloat16
    arithmetic (oneDNN's test, which needs AVX-512 or newer), which torch then emulates."""
    import torch

    if name != "bf16" or device.type != "cpu":
        return None
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    return None if supported else ("--precision bf16: this CPU has no bfloat16 arithmetic, so torch emulates it, many "
                                   "times slower than float32 (bf16 is for GPUs that have it)")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` (a batch gathered on the host) on ``device``; to a GPU through pinned memory, without waiting."""
    if x.device == device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes that a new allocation on ``device`` can have now: a GPU's free memory (``torch.cuda.mem_get_info``),
    else the host's (Linux's MemAvailable); None where unknown."""
    if device is not None and device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def require_memory(option: str, needed: float, what: str, device: torch.device | None = None) -> None:
    """Refuse, before allocating, what needs more memory than ``device`` (default: the host) has available: a
    :class:`ConfigError` for ``option`` that gives the estimate. ``what`` says what needs it (and which options
    size it)."""
    free = available_memory(device)
    if free is not None and needed > free:
        where = f"{device}'s memory" if device is not None and device.type == "cuda" else "memory"
        raise ConfigError(option, f"{what} needs about {_size(needed)}, more than the {_size(free)} of {where} "
                                  "available")


def _size(nbytes: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = min(int(math.log(max(nbytes, 1.0), 1024)), len(units) - 1)
    return f"{nbytes / 1024**power:.3g} {units[power]}"


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)``, restoring the previous count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The signature of the body of an OpenMP parallel region, as GNU OpenMP's GOMP_parallel takes it.
_TEAM_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@cache
def _gomp_parallel() -> Callable[..., None] | None:
    """GNU OpenMP's entry point for a parallel region, where torch's intra-op threads are GNU OpenMP's (the
    Linux wheels); None elsewhere."""
    try:
        parallel = ctypes.CDLL(None).GOMP_parallel
    except (AttributeError, OSError, TypeError):  # not loaded, or no process-wide symbol table (Windows)
        return None
    parallel.argtypes = [_TEAM_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    return parallel


def _set_flush_denormal_everywhere(on: bool) -> None:
    """``torch.set_flush_denormal(on)`` on the calling thread and on each of its intra-op threads.

    The flush-to-zero bits live in each thread's floating-point control register, so torch's call sets only the
    thread that makes it; OpenMP threads inherit them only when created afterwards, and the pool usually exists
    by then. With GNU OpenMP the call is run once on every thread of a team the size of the pool; elsewhere
    only the calling thread is set.
    """
    import torch

    torch.set_flush_denormal(on)
    parallel, threads = _gomp_parallel(), torch.get_num_threads()
    if parallel is not None and threads > 1:
        # A Ctrl-C handled while the main thread runs the callback would be swallowed by ctypes, which reports
        # a callback's exceptions as unraisable: catch it there and raise it once the team is done.
        interrupts: list[BaseException] = []
        report = sys.unraisablehook

        def hold(unraisable: sys.UnraisableHookArgs) -> None:
            if isinstance(unraisable.exc_value, KeyboardInterrupt):
                interrupts.append(unraisable.exc_value)
            else:
                report(unraisable)

        sys.unraisablehook = hold
        try:
            parallel(_TEAM_BODY(lambda _: torch.set_flush_denormal(on)), None, threads, 0)
        finally:
            sys.unraisablehook = report
        if interrupts:
            raise KeyboardInterrupt


def flushes_denormals() -> bool:
    """Whether the calling thread flushes denormal floats to zero."""
    import torch

    return torch.tensor(torch.finfo(torch.float32).tiny / 2).mul(1.0).item() == 0.0


@contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Run the block with denormal floats flushed to zero on every intra-op thread (see the module's
    docstring), and with IEEE arithmetic again afterwards if the calling thread had it; ``enabled=False`` changes
    nothing. Enter it inside :func:`intra_op_threads`, so that it reaches the threads the block uses."""
    if not enabled:
        yield
        return
    before = flushes_denormals()
    _set_flush_denormal_everywhere(True)
    try:
        yield
    finally:
        if not before:
            _set_flush_denormal_everywhere(False)


# glibc's malloc parameters (malloc.h): a freed block at the top of the heap larger than the trim threshold is handed
# back to the kernel; an allocation larger than the mmap threshold gets pages of its own, handed back when freed.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# While a run computes, allocations up to this size come from the heap, and what is freed stays there.
RETAINED_BLOCK = 1 << 30
# Afterwards: the largest thresholds glibc's own adaptive policy reaches (on 64-bit: 32 MiB, twice that to trim).
ADAPTIVE_MMAP_MAX = 32 << 20


@cache
def _glibc_malloc() -> ctypes.CDLL | None:
    """The C library where it is glibc (whose malloc has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no process-wide symbol table (Windows)
        return None
    return libc if all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")) else None


_retaining = 0  # blocks of retained_heap entered and not yet left, in any thread
_retaining_lock = threading.Lock()


@contextmanager
def retained_heap() -> Iterator[None]:
    """Run the block with the memory it frees kept in the process for its next allocations. glibc's malloc hands
    a large freed block back to the kernel, and the next allocation of it is faulted in again a page at a time:
    a conv step's activations every step, and a checkpoint's passes every checkpoint (docs/performance.md has
    the measurements). Once every such block (nested, or in other threads) is left, what they freed is
    handed back (``malloc_trim``) and the thresholds are left at the largest values glibc's adaptive policy would
    reach. Elsewhere than glibc nothing changes."""
    global _retaining
    libc = _glibc_malloc()
    with _retaining_lock:
        if libc is not None and not _retaining:
            libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_BLOCK)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * RETAINED_BLOCK)
        _retaining += 1
    try:
        yield
    finally:
        with _retaining_lock:
            _retaining -= 1
            if libc is not None and not _retaining:
                libc.mallopt(_M_MMAP_THRESHOLD, ADAPTIVE_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * ADAPTIVE_MMAP_MAX)
                libc.malloc_trim(0)


@contextmanager
def computing(threads: int, flush: bool = True) -> Iterator[None]:
    """How a run computes on the host: on ``threads`` intra-op threads, with denormal floats flushed to zero
    where ``flush`` (:func:`flush_denormals`), and its freed memory kept for reuse (:func:`retained_heap`); what
    it changed is restored afterwards."""
    with intra_op_threads(threads), flush_denormals(flush), retained_heap():
        yield


@dataclass
class Interrupts:
    """The stop signals (SIGINT, SIGTERM) a run received, and whether it is finishing (writing what it
    measured), from when on they are only counted."""

    received: int = 0
    finishing: bool = False


_ACTIVE: list[Interrupts] = []


@contextmanager
def graceful_stop() -> Iterator[Interrupts]:
    """SIGINT (Ctrl-C) and SIGTERM stop a run alike: the first raises KeyboardInterrupt where the run is, which
    the stepping loop turns into an early stop; after it, and once the loop has ended (:func:`finishing`),
    signals are only counted, so that what was measured is written whole. The previous handlers come back on
    exit. Outside the main thread signals cannot be caught, and nothing changes."""
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: object) -> None:
        state.received += 1
        if state.received == 1 and not state.finishing:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    _ACTIVE.append(state)
    try:
        yield state
    finally:
        _ACTIVE.remove(state)
        for sig, old in previous.items():
            signal.signal(sig, old)


def finishing() -> None:
    """The stepping loop has ended: from here on the signals of :func:`graceful_stop` are held, not raised."""
    for state in _ACTIVE:
        state.finishing = True
