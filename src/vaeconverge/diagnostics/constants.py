"""Estimates of the constants the convergence bounds need (THEORY.md sections 4-5), from a model and its data.

- L, the smoothness constant: the largest |eigenvalue| of the loss Hessian, by power iteration on
  Hessian-vector products (torch.func, forward-over-reverse).
- sigma_x^2 and sigma_eps^2, the between-example and Monte Carlo parts of the gradient noise
  sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K), from per-example gradients under repeated noise draws.
- R, the coordinate-wise bound on stochastic gradients that the Adam/Adagrad bounds assume, as a high
  quantile of the infinity norm of minibatch gradients.

``fixed_noise_loss`` and ``example_gradient_draws`` are what a VAE ensemble plugs into the measured-run core
(``engine/recorder.py``); BBVI and the ConvergenceMonitor plug in their own, and the estimators of L
(:func:`hvp_power_iteration`) and of the noise (:func:`noise_from_gradients`) are shared.

Every estimate works on a snapshot of the trainable parameters through ``torch.func.functional_call``: the
model is never modified and its parameters' ``.grad`` fields are left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..data.storage import as_float
from ..models.vae import VAE
from ..objectives import Objective, ObjectiveModule, draw_noise

Params = dict[str, Tensor]


def _split_state(module: nn.Module) -> tuple[Params, Params]:
    """(trainable parameters, everything else: frozen parameters and buffers), detached, in module order."""
    trainable: Params = {}
    fixed: Params = {}
    for name, p in module.named_parameters():
        (trainable if p.requires_grad else fixed)[name] = p.detach()
    for name, b in module.named_buffers():
        fixed[name] = b
    return trainable, fixed


def _subset(x: Tensor, max_examples: int, generator: torch.Generator) -> Tensor:
    """``x`` itself if it has at most ``max_examples`` rows, else a random subset of that many (from generator);
    rows as stored (the callers convert the subset to floats)."""
    if max_examples < 1:
        raise ValueError(f"max_examples must be positive, got {max_examples}")
    if len(x) <= max_examples:
        return x
    index = torch.randperm(len(x), generator=generator, device=generator.device)[:max_examples]
    return x[index.to(x.device)]


def _dot(a: Params, b: Params) -> Tensor:
    return sum((u * w).sum() for u, w in zip(a.values(), b.values(), strict=True))  # type: ignore[return-value]


def _forward_over_reverse_hvp(loss: Callable[[Params], Tensor], params: Params) -> Callable[[Params], Params]:
    grad_fn = grad(loss)

    def hvp(v: Params) -> Params:
        return jvp(grad_fn, (params,), (v,))[1]

    return hvp


def _reverse_over_reverse_hvp(loss: Callable[[Params], Tensor], params: Params) -> Callable[[Params], Params]:
    _, vjp_fn = vjp(grad(loss), params)  # the Hessian is symmetric: v^T H = (H v)^T

    def hvp(v: Params) -> Params:
        return vjp_fn(v)[0]

    return hvp


def hvp_power_iteration(
    loss: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    iters: int = 100,
    tol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> float:
    """|lambda| of the largest-magnitude eigenvalue of the Hessian of the scalar ``loss(params)`` at ``params``.

    Power iteration on Hessian-vector products computed forward-over-reverse,
    ``torch.func.jvp(torch.func.grad(loss), (params,), (v,))``: one HVP costs a few gradients and the Hessian
    is never formed. The start is a random unit vector drawn from ``generator``; the iteration stops after
    ``iters`` products or once the Rayleigh quotient v^T H v changes by less than ``tol`` relative, and the
    last Rayleigh quotient's absolute value is returned (its error shrinks like the square of the eigenvector's,
    about ``tol / (1 - (lambda_2 / lambda_1)^2)`` relative at the stop). Should forward-mode AD be unsupported
    by an op of ``loss`` (it was not for any model of this package: Linear VAE, MLP VAEs with ReLU and with
    soft-clipping, Gaussian and Bernoulli likelihoods), products fall back to reverse-over-reverse
    (``torch.func.vjp`` of the gradient), which gives the same values at a higher memory cost.
    """
    if iters < 1:
        raise ValueError(f"iters must be positive, got {iters}")
    params = {name: p.detach() for name, p in params.items()}
    v = {
        name: torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device) for name, p in params.items()
    }
    norm = _dot(v, v).sqrt()
    v = {name: t / norm for name, t in v.items()}

    hvp = _forward_over_reverse_hvp(loss, params)
    try:
        hv = hvp(v)
    except (RuntimeError, NotImplementedError):  # an op without a forward-mode derivative
        hvp = _reverse_over_reverse_hvp(loss, params)
        hv = hvp(v)

    previous = math.nan
    rayleigh = 0.0
    for step in range(iters):
        if step > 0:
            hv = hvp(v)
        rayleigh = _dot(v, hv).item()
        norm = _dot(hv, hv).sqrt().item()
        if norm == 0.0:  # v lies in the Hessian's null space; a zero Hessian has L = 0
            return abs(rayleigh)
        if abs(rayleigh - previous) <= tol * abs(rayleigh):
            break
        previous = rayleigh
        v = {name: t / norm for name, t in hv.items()}
    return abs(rayleigh)


def fixed_noise_loss(
    model: VAE,
    objective: Objective,
    x: Tensor,
    generator: torch.Generator,
    max_examples: int = 512,
) -> tuple[Callable[[Params], Tensor], Params]:
    """-(1/n) sum_i objective(x_i) as a function of the model's trainable parameters, with its Monte Carlo noise
    drawn once and held fixed (so that its Hessian is that of one smooth function), and those parameters.

    Draws from ``generator``, in order: the subset (``randperm``, only when ``x`` has more than ``max_examples``
    rows), then the noise ``draw_noise(objective.samples, n, latent_dim, generator, x.dtype)``.
    """
    x = as_float(_subset(x, max_examples, generator))
    eps = draw_noise(objective.samples, len(x), model.latent_dim, generator, x.dtype).to(x.device)
    wrapper = ObjectiveModule(model, objective)
    params, fixed = _split_state(wrapper)

    def loss(p: Params) -> Tensor:
        return -functional_call(wrapper, (p, fixed), (x, eps)).mean()

    return loss, params


def smoothness(
    model: VAE,
    objective: Objective,
    x: Tensor,
    generator: torch.Generator,
    max_examples: int = 512,
    iters: int = 100,
) -> float:
    """L at the model's current parameters: the top |eigenvalue| of the Hessian of :func:`fixed_noise_loss`,
    whose draws come first from ``generator``, then the power iteration's start vector."""
    loss, params = fixed_noise_loss(model, objective, x, generator, max_examples)
    return hvp_power_iteration(loss, params, iters=iters, generator=generator)


def per_example_gradients(
    model: VAE,
    objective: Objective,
    x: Tensor,
    draws: int,
    generator: torch.Generator,
) -> Tensor:
    """Gradients of the per-example loss -objective(x_i) for every example and noise draw: shape (n, draws, P).

    Draw d (d = 0, ..., draws - 1, in order) uses ``eps_d = draw_noise(objective.samples, n, latent_dim,
    generator, x.dtype)`` and example i its slice ``eps_d[:, i]`` (the objective's own K samples). Columns are
    the trainable parameters flattened in ``model.parameters()`` order. Computed by ``torch.func.vmap`` over
    draws and examples of ``torch.func.grad`` of a ``functional_call`` (buffers passed along unchanged).
    """
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    n = len(x)
    eps = torch.stack(
        [draw_noise(objective.samples, n, model.latent_dim, generator, x.dtype) for _ in range(draws)]
    ).to(x.device)  # (draws, K, n, latent)
    wrapper = ObjectiveModule(model, objective)
    params, fixed = _split_state(wrapper)

    def example_loss(p: Params, x_i: Tensor, eps_i: Tensor) -> Tensor:
        return -functional_call(wrapper, (p, fixed), (x_i.unsqueeze(0), eps_i.unsqueeze(1))).sum()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 1))  # over examples: eps (K, n, latent)
    per_draw = vmap(per_example, in_dims=(None, None, 0))  # over draws: eps (draws, K, n, latent)
    grads = per_draw(params, x, eps)  # name -> (draws, n, *shape)
    flat = torch.cat([g.reshape(draws, n, -1) for g in grads.values()], dim=-1)
    return flat.transpose(0, 1)


def decompose_variance(grads: Tensor) -> tuple[float, float]:
    """(between-example variance, Monte Carlo variance per draw) of gradients ``grads`` of shape (n, draws, P),
    each summed over the P coordinates.

    Law of total variance for g = g(x, eps), x uniform over examples and eps the noise:
    Var g = Var_x E[g | x] + E_x Var[g | x]. The second term, the Monte Carlo variance of one draw, is estimated
    without bias by the mean over examples of the unbiased variance across draws. The variance across examples
    of the per-example mean over draws estimates Var_x E[g | x] + E_x Var[g | x] / draws, so the between-example
    part is that minus (Monte Carlo variance) / draws, clamped at 0.
    """
    if grads.dim() != 3:
        raise ValueError(f"grads must have shape (n, draws, P), got {tuple(grads.shape)}")
    n, draws, _ = grads.shape
    if n < 2 or draws < 2:
        raise ValueError(f"need at least 2 examples and 2 draws, got n={n}, draws={draws}")
    # Written out rather than Tensor.var: torch's variance over a short middle dimension is several times
    # slower on CPU, and these tensors hold n x draws x (all parameters) entries.
    mean = grads.mean(dim=1)
    within = torch.zeros_like(mean)
    for d in range(draws):
        within += (grads[:, d] - mean).square_()
    mc = within.sum(dim=-1).mean().item() / (draws - 1)
    between = (mean - mean.mean(dim=0)).square_().sum().item() / (n - 1) - mc / draws
    return max(between, 0.0), mc


@dataclass(frozen=True)
class GradientNoise:
    """Gradient-noise constants: sigma_x^2 (between examples), sigma_eps^2 (Monte Carlo, per single noise
    sample) and R, the coordinate-wise bound on minibatch gradients."""

    sigma2_x: float
    sigma2_eps: float
    R: float

    def at(self, batch_size: int, samples: int) -> float:
        """sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K): the noise of a minibatch of B examples with K
        noise samples each (THEORY.md section 4)."""
        return self.sigma2_x / batch_size + self.sigma2_eps / (batch_size * samples)


def gradient_noise(
    model: VAE,
    objective: Objective,
    x: Tensor,
    batch_size: int,
    generator: torch.Generator,
    max_examples: int = 256,
    quantile: float = 0.99,
) -> GradientNoise:
    """sigma_x^2, sigma_eps^2 and R at the model's current parameters, from two noise draws per example.

    On a random subset of at most ``max_examples`` examples, :func:`per_example_gradients` with two draws and
    :func:`noise_from_gradients` (which see).
    """
    grads = example_gradient_draws(model, objective, x, generator, max_examples)
    return noise_from_gradients(grads, batch_size, objective.samples, generator, quantile)


def example_gradient_draws(model: VAE, objective: Objective, x: Tensor, generator: torch.Generator,
                           max_examples: int = 256) -> Tensor:
    """Per-example gradients under two noise draws, (n, 2, P), on a random subset of at most ``max_examples``
    examples (drawn first from ``generator``)."""
    x = as_float(_subset(x, max_examples, generator))
    return per_example_gradients(model, objective, x, draws=2, generator=generator)


def noise_from_gradients(grads: Tensor, batch_size: int, samples: int, generator: torch.Generator,
                         quantile: float = 0.99, examples_per_row: int = 1) -> GradientNoise:
    """sigma_x^2, sigma_eps^2 and R from gradients ``grads`` of shape (rows, draws, P): row r holds independent
    Monte Carlo draws of the gradient of one unit of ``examples_per_row`` examples (1: per-example gradients of
    a VAE; B: a BBVI minibatch, whose examples share one draw of the noise), each with ``samples`` samples.

    :func:`decompose_variance` splits the variance of one draw into its between-unit and Monte Carlo parts,
    which give sigma_x^2 = ``examples_per_row`` x (between) and sigma_eps^2 = ``examples_per_row`` x ``samples`` x
    (Monte Carlo), so that sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K). R, the stochastic gradients'
    coordinate-wise bound that the Adam/Adagrad bounds assume, is the ``quantile`` of ||g_B||_inf over 200
    minibatch gradients g_B, each the mean of the first-draw gradients of batch_size / examples_per_row units
    drawn without replacement (from generator).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}")
    between, mc_per_draw = decompose_variance(grads)
    n = len(grads)
    batch = min(max(batch_size // examples_per_row, 1), n)
    n_batches = 200
    # Row r of `select` averages a uniformly random subset of `batch` units: ranks of i.i.d. uniforms.
    chosen = torch.rand(n_batches, n, generator=generator, device=generator.device).argsort(dim=1)[:, :batch]
    select = torch.zeros(n_batches, n, dtype=grads.dtype, device=generator.device)
    select.scatter_(1, chosen, 1.0 / batch)
    minibatch = select.to(grads.device) @ grads[:, 0]
    sup_norms = minibatch.abs().amax(dim=1)
    R = torch.quantile(sup_norms.double(), quantile).item()
    return GradientNoise(sigma2_x=examples_per_row * between,
                         sigma2_eps=examples_per_row * samples * mc_per_draw, R=R)
