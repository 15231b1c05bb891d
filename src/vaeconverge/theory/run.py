"""What the theory reads of a run: a frozen value that a VAE configuration, a BBVI configuration and the
ConvergenceMonitor each produce, so that the theory never sees a configuration, a file or a command line."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..optim import DEFAULT_EPS, schedule_factor

# The optimizer recursions a bound of this package covers (``OptimizerSpec.bound``): plain SGD (Ghadimi-Lan),
# and the Adam and Adagrad recursions of Defossez et al. (``optim/defossez.py``).
BOUND_FAMILIES = ("sgd", "adam", "adagrad")


@dataclass(frozen=True)
class AssessedRun:
    """The optimizer, its step sizes and the model facts that the bounds and the paper's rate shapes depend on.

    ``bound_family`` names the recursion a theorem covers (one of :data:`BOUND_FAMILIES`; None: no bound, and
    ``uncovered`` says why); ``eps`` is the adaptive recursions' epsilon (inside the square root);
    ``objective`` the paper's shape family ("elbo" or "iwae"); ``layers`` the N of the paper's N a^(2(N-1))
    term; ``smooth``: every activation has a Lipschitz derivative (``activation`` names the one in use);
    ``per_example_noise``: the gradient noise has the VAE's form sigma_x^2 / B + sigma_eps^2 / (B K), so
    that another allocation of (B, K) can be predicted; ``seed`` draws the random iterate.
    """

    optimizer: str
    bound_family: str | None
    lr: float
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = DEFAULT_EPS
    schedule: str = "constant"
    schedule_power: float = 0.5
    batch_size: int = 1
    samples: int = 1
    layers: int = 1
    objective: str = "elbo"
    activation: str = "none"
    smooth: bool = True
    per_example_noise: bool = True
    uncovered: str | None = None
    seed: int = 0

    def step_sizes(self, steps: int, batches_per_epoch: int) -> np.ndarray:
        """gamma_{t+1}, the step size applied at iterate t, for t = 0..steps, from the schedule."""
        factor = schedule_factor(self.schedule, self.schedule_power, batches_per_epoch)
        t = np.arange(steps + 1, dtype=np.float64)
        return self.lr * np.broadcast_to(factor(t), t.shape).astype(np.float64)
