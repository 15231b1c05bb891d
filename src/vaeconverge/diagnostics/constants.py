"""Estimates of the constants the convergence bounds need (docs/theory.md sections 4-5), from a model and its data.

Each estimate errs on the safe side, that is high, by a stated criterion, since a low constant lowers a bound:

- L, the smoothness constant: the largest |eigenvalue| of the loss Hessian, by Lanczos (ARPACK through
  ``scipy.sparse.linalg.eigsh``) on Hessian-vector products (torch.func, forward-over-reverse) run to
  convergence (:func:`hessian_norm`), times the safety factor :data:`L_MARGIN` (:func:`smoothness_estimate`).
- sigma_x^2 and sigma_eps^2, the between-example and Monte Carlo parts of the gradient noise
  sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K), from per-example gradients under repeated noise draws:
  upper confidence bounds, the estimates plus :data:`NOISE_UCB_Z` standard errors (:func:`decompose_variance`).
- R, the coordinate-wise bound on stochastic gradients that the Adam/Adagrad bounds assume: the largest
  |coordinate| of any gradient seen, which bounds every minibatch gradient made of those gradients.

All three remain estimates over what was not seen: L at the points probed, the noise and R on the examples
and noise draws used.

``fixed_noise_loss`` and ``example_gradient_draws`` are what a VAE ensemble plugs into the measured-run core
(``engine/recorder.py``); BBVI and the ConvergenceMonitor plug in their own, and the estimators of L
(:func:`smoothness_estimate`) and of the noise (:func:`noise_from_gradients`) are shared.

Every estimate works on a snapshot of the trainable parameters through ``torch.func.functional_call``: the
model is never modified and its parameters' ``.grad`` fields are left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..data.storage import as_float
from ..models.vae import VAE
from ..objectives import Objective, ObjectiveModule, draw_noise
from ..runtime import to_device

Params = dict[str, Tensor]
Loss = Callable[[Params], Tensor]
"""A scalar function of the trainable parameters, whose Hessian gives L."""

LANCZOS_VECTORS = 6
"""Lanczos vectors ARPACK keeps in :func:`hessian_norm` (``eigsh``'s ``ncv``; its default, 20, held 269 MB on
the 1.5M-parameter conv32 and needed more products to converge there, 21 against 16)."""
LANCZOS_COPIES = LANCZOS_VECTORS + 6
"""float64 copies of the parameters :func:`hessian_norm` holds at once: the Lanczos basis, ARPACK's work vectors
and one product's conversions."""

L_MARGIN = 1.02
"""Safety factor of :func:`smoothness_estimate` on the converged Lanczos value of :func:`hessian_norm`.

A Ritz value lies inside the spectrum, so Lanczos approaches the largest |eigenvalue| from below; at
convergence its relative error is within the residual tolerance (:data:`LANCZOS_TOL`). In float32 models each
Hessian-vector product is rounded to about 1e-7 relative per operation, accumulated over the sums of a
forward and backward pass; a 2% margin covers both by orders of magnitude, and costs the bounds that use L
at most 2% (Ghadimi-Lan's constant-step bound grows like sqrt(L) in its leading term)."""

LANCZOS_TOL = 1e-3
"""Relative residual tolerance of :func:`smoothness_estimate`'s Lanczos run: 20 times inside :data:`L_MARGIN`, and a
third less time than 1e-6 on the digits MLP VAE, whose value agreed to 7 digits."""

NOISE_UCB_Z = 2.0
"""Standard errors added to the noise estimates of :func:`noise_from_gradients`: under a normal sampling
distribution, a one-sided upper confidence bound at about 97.7% (Phi(2) = 0.9772) for each of sigma_x^2 and
sigma_eps^2. Variance estimates are skewed to the right, so their lower tail, the one that matters here, is
shorter than the normal's and the coverage higher."""


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


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are, and so where its data must go."""
    return next(model.parameters()).device


def _forward_over_reverse_hvp(terms: Sequence[Loss], params: Params) -> Callable[[Params], Params]:
    grad_fns = [grad(term) for term in terms]

    def hvp(v: Params) -> Params:
        return _summed(jvp(grad_fn, (params,), (v,))[1] for grad_fn in grad_fns)

    return hvp


def _reverse_over_reverse_hvp(terms: Sequence[Loss], params: Params) -> Callable[[Params], Params]:
    # the Hessian is symmetric: v^T H = (H v)^T. One term keeps its backward graph across products; several
    # rebuild theirs at each product, so that only one term's graph is held at a time.
    if len(terms) == 1:
        _, vjp_fn = vjp(grad(terms[0]), params)
        return lambda v: vjp_fn(v)[0]
    return lambda v: _summed(vjp(grad(term), params)[1](v)[0] for term in terms)


def _summed(products: Iterator[Params]) -> Params:
    """The sum of the terms' Hessian-vector products (at least one), each computed once the last is added."""
    total = next(products)
    for product in products:
        total = {name: total[name] + value for name, value in product.items()}
    return total


class _NonFiniteProduct(Exception):
    """A Hessian-vector product with a NaN or an infinity: the Hessian has no finite norm to find."""


def hessian_norm(
    loss: Loss | Sequence[Loss],
    params: dict[str, Tensor],
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
) -> float:
    """The largest |eigenvalue| of the Hessian of the scalar ``loss(params)`` at ``params``, by Lanczos run to
    convergence. ``loss`` may also be a sequence of terms whose sum is the loss: each product is then the sum of
    the terms' products, computed one after another, so that a large model holds one term's passes at a time.

    ``scipy.sparse.linalg.eigsh(k=1, which="LM", tol=tol)`` (implicitly restarted Lanczos, ARPACK) on a
    ``LinearOperator`` whose products are Hessian-vector products computed forward-over-reverse,
    ``torch.func.jvp(torch.func.grad(loss), (params,), (v,))``, in the parameters' dtype and device, with
    float64 vectors on the Lanczos side; the Hessian is never formed. ARPACK stops once the Ritz value's
    residual is within ``tol`` of it relative, which bounds its relative distance to an eigenvalue; being a
    Ritz value it lies inside the spectrum, below the largest |eigenvalue| (hence :data:`L_MARGIN` in
    :func:`smoothness_estimate`). ARPACK keeps :data:`LANCZOS_VECTORS` vectors; should it not converge within
    1000 restarts (about as many products each) a ``RuntimeError`` says so. With at most 2 parameters (too few
    for ARPACK) the Hessian is formed from the products with the basis vectors and its eigenvalues are exact
    (``numpy.linalg.eigvalsh``).

    The start vector, n standard normals for n parameters, is drawn first from ``generator`` (from torch's
    global generator without one) whatever n, so that the value is reproducible and the draws that follow on
    the same generator do not depend on the path taken. Should the Hessian map it to zero, which for a random
    start means a zero Hessian with probability 1, the value is 0 (ARPACK cannot start from there); a
    non-finite product gives NaN. Should forward-mode AD be unsupported by an op of ``loss`` (it was not for
    any model of this package: Linear VAE, MLP VAEs with ReLU and with soft-clipping, Gaussian and Bernoulli
    likelihoods), products fall back to reverse-over-reverse (``torch.func.vjp`` of the gradient), which gives
    the same values at a higher memory cost.
    """
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    params = {name: p.detach() for name, p in params.items()}
    sizes = [p.numel() for p in params.values()]
    n = sum(sizes)
    if n == 0:
        raise ValueError("the loss has no parameters to differentiate")
    device = generator.device if generator is not None else None
    start = torch.randn(n, generator=generator, dtype=torch.float64, device=device).cpu().numpy()

    terms = [loss] if callable(loss) else list(loss)
    if not terms:
        raise ValueError("the loss has no terms")
    products = [_forward_over_reverse_hvp(terms, params)]

    def matvec(v: np.ndarray) -> np.ndarray:
        pieces = torch.tensor(np.asarray(v, dtype=np.float64).reshape(-1)).split(sizes)
        tangent = {name: piece.view(p.shape).to(dtype=p.dtype, device=p.device)
                   for (name, p), piece in zip(params.items(), pieces, strict=True)}
        try:
            product = products[-1](tangent)
        except (RuntimeError, NotImplementedError):  # an op without a forward-mode derivative
            if len(products) > 1:
                raise
            products.append(_reverse_over_reverse_hvp(terms, params))
            product = products[-1](tangent)
        out = torch.cat([product[name].reshape(-1) for name in params]).to("cpu", torch.float64).numpy()
        if not np.isfinite(out).all():
            raise _NonFiniteProduct
        return out

    try:
        if not matvec(start).any():  # a random start in the null space: a zero Hessian, with probability 1
            return 0.0
        if n <= 2:
            dense = np.column_stack([matvec(column) for column in np.eye(n)])
            return float(np.abs(np.linalg.eigvalsh(0.5 * (dense + dense.T))).max())
        operator = LinearOperator((n, n), matvec=matvec, dtype=np.float64)
        top = eigsh(operator, k=1, which="LM", v0=start, tol=tol, maxiter=1000, ncv=min(LANCZOS_VECTORS, n),
                    return_eigenvectors=False)
    except _NonFiniteProduct:
        return math.nan
    except ArpackNoConvergence as error:
        raise RuntimeError(
            f"Lanczos (ARPACK eigsh) did not find the Hessian's largest |eigenvalue| to relative tolerance {tol} "
            f"within 1000 restarts on {n} parameters: its top eigenvalues may be clustered, or the "
            "Hessian-vector products too inexact for that tolerance"
        ) from error
    return float(abs(top[0]))


def smoothness_estimate(
    loss: Loss | Sequence[Loss],
    params: dict[str, Tensor],
    generator: torch.Generator | None = None,
) -> float:
    """L for the convergence bounds: :data:`L_MARGIN` x :func:`hessian_norm` (which see; same draws), an upper
    bound on the Hessian's largest |eigenvalue| at ``params`` up to the Lanczos tolerance and rounding."""
    return L_MARGIN * hessian_norm(loss, params, generator=generator, tol=LANCZOS_TOL)


def fixed_noise_loss(
    model: VAE,
    objective: Objective,
    x: Tensor,
    generator: torch.Generator,
    max_examples: int = 512,
    chunk: int | None = None,
) -> tuple[list[Loss], Params]:
    """-(1/n) sum_i objective(x_i) as a function of the model's trainable parameters, with its Monte Carlo noise
    drawn once and held fixed (so that its Hessian is that of one smooth function), as the terms it sums over
    chunks of at most ``chunk`` examples (one term without ``chunk``: see :func:`hessian_norm`), and those
    parameters.

    Draws from ``generator``, in order: the subset (``randperm``, only when ``x`` has more than ``max_examples``
    rows), then the noise ``draw_noise(objective.samples, n, latent_dim, generator, x.dtype)``, whatever the chunks.
    """
    x = as_float(to_device(_subset(x, max_examples, generator), _device(model)))
    n = len(x)
    eps = draw_noise(objective.samples, n, model.latent_dim, generator, x.dtype).to(x.device)
    wrapper = ObjectiveModule(model, objective)
    params, fixed = _split_state(wrapper)

    def term(rows: slice) -> Loss:
        return lambda p: -functional_call(wrapper, (p, fixed), (x[rows], eps[:, rows])).sum() / n

    size = n if chunk is None else chunk
    return [term(slice(start, start + size)) for start in range(0, n, size)], params


def smoothness(
    model: VAE,
    objective: Objective,
    x: Tensor,
    generator: torch.Generator,
    max_examples: int = 512,
    chunk: int | None = None,
) -> float:
    """L at the model's current parameters: :func:`smoothness_estimate` of :func:`fixed_noise_loss` (in terms of
    at most ``chunk`` examples), whose draws come first from ``generator``, then the Lanczos start vector."""
    terms, params = fixed_noise_loss(model, objective, x, generator, max_examples, chunk)
    return smoothness_estimate(terms, params, generator=generator)


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


@dataclass(frozen=True)
class VarianceParts:
    """The two parts of the variance of one gradient draw, each summed over the coordinates, with standard
    errors: ``between`` (between examples, Var_x E[g | x]) and ``mc`` (Monte Carlo, E_x Var[g | x])."""

    between: float
    mc: float
    between_se: float
    mc_se: float

    def upper(self, z: float) -> tuple[float, float]:
        """(between, mc) upper confidence bounds: each estimate plus ``z`` standard errors."""
        return self.between + z * self.between_se, self.mc + z * self.mc_se


def decompose_variance(grads: Tensor) -> VarianceParts:
    """Between-example and Monte Carlo variance per draw of gradients ``grads`` of shape (n, draws, P), each
    summed over the P coordinates, with their standard errors.

    Law of total variance for g = g(x, eps), x uniform over examples and eps the noise:
    Var g = Var_x E[g | x] + E_x Var[g | x]. The second term, the Monte Carlo variance of one draw, is estimated
    without bias by ``mc``, the mean over examples of m_i, example i's unbiased variance across draws. The
    variance across examples of the per-example means over draws, sum_i s_i / (n - 1) with s_i the squared
    deviation of example i's mean from the overall mean, estimates Var_x E[g | x] + E_x Var[g | x] / draws, so
    ``between`` is that minus ``mc`` / draws, clamped at 0.

    Standard errors, for independent examples: ``mc_se`` = std(m_i) / sqrt(n), exact for a mean of i.i.d.
    terms. ``between`` before clamping is the mean of t_i = s_i n / (n - 1) - m_i / draws; by the delta method,
    which holds the overall mean fixed (its variation is of order 1 / n relative), ``between_se`` =
    std(t_i) / sqrt(n): the standard error of the squared deviations' part combined with ``mc_se`` / draws,
    their covariance included.
    """
    if grads.dim() != 3:
        raise ValueError(f"grads must have shape (n, draws, P), got {tuple(grads.shape)}")
    n, draws, _ = grads.shape
    if n < 2 or draws < 2:
        raise ValueError(f"need at least 2 examples and 2 draws, got n={n}, draws={draws}")
    # One example at a time: these tensors hold n x draws x (all parameters) entries, and a temporary of their
    # size would double a large model's probe memory (engine/plan.py budgets one copy).
    overall = grads.mean(dim=(0, 1))
    mc_terms, spread = (torch.empty(n, dtype=torch.float64, device=grads.device) for _ in range(2))
    for i, rows in enumerate(grads):
        mean = rows.mean(dim=0)
        mc_terms[i] = (rows - mean).square_().sum().double() / (draws - 1)  # its variance across draws
        spread[i] = (mean - overall).square_().sum().double()  # its mean's squared deviation
    between_terms = spread * (n / (n - 1)) - mc_terms / draws
    root_n = math.sqrt(n)
    return VarianceParts(
        between=max(between_terms.mean().item(), 0.0),
        mc=mc_terms.mean().item(),
        between_se=between_terms.std().item() / root_n,
        mc_se=mc_terms.std().item() / root_n,
    )


@dataclass(frozen=True)
class GradientNoise:
    """Gradient-noise constants: sigma_x^2 (between examples), sigma_eps^2 (Monte Carlo, per single noise
    sample) and R, the coordinate-wise bound on minibatch gradients; as :func:`noise_from_gradients` makes
    them, upper confidence bounds and the largest coordinate seen."""

    sigma2_x: float
    sigma2_eps: float
    R: float

    def at(self, batch_size: int, samples: int) -> float:
        """sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K): the noise of a minibatch of B examples with K
        noise samples each (docs/theory.md section 4)."""
        return self.sigma2_x / batch_size + self.sigma2_eps / (batch_size * samples)


def gradient_noise(
    model: VAE,
    objective: Objective,
    x: Tensor,
    generator: torch.Generator,
    max_examples: int = 256,
) -> GradientNoise:
    """sigma_x^2, sigma_eps^2 and R at the model's current parameters, from two noise draws per example.

    On a random subset of at most ``max_examples`` examples, :func:`per_example_gradients` with two draws and
    :func:`noise_from_gradients` (which see).
    """
    grads = example_gradient_draws(model, objective, x, generator, max_examples)
    return noise_from_gradients(grads, objective.samples)


def example_gradient_draws(model: VAE, objective: Objective, x: Tensor, generator: torch.Generator,
                           max_examples: int = 256) -> Tensor:
    """Per-example gradients under two noise draws, (n, 2, P), on a random subset of at most ``max_examples``
    examples (drawn first from ``generator``)."""
    x = as_float(to_device(_subset(x, max_examples, generator), _device(model)))
    return per_example_gradients(model, objective, x, draws=2, generator=generator)


def noise_from_gradients(grads: Tensor, samples: int, examples_per_row: int = 1) -> GradientNoise:
    """sigma_x^2, sigma_eps^2 and R from gradients ``grads`` of shape (rows, draws, P): row r holds independent
    Monte Carlo draws of the gradient of one unit of ``examples_per_row`` examples (1: per-example gradients of
    a VAE; B: a BBVI minibatch, whose examples share one draw of the noise), each with ``samples`` samples.

    :func:`decompose_variance` splits the variance of one draw into its between-unit and Monte Carlo parts;
    their upper confidence bounds at :data:`NOISE_UCB_Z` standard errors give sigma_x^2 = ``examples_per_row``
    x (between) and sigma_eps^2 = ``examples_per_row`` x ``samples`` x (Monte Carlo), so that
    sigma^2(B, K) = sigma_x^2 / B + sigma_eps^2 / (B K) errs high with the stated confidence.

    R, the stochastic gradients' coordinate-wise bound that the Adam/Adagrad bounds assume, is the largest
    |coordinate| of any gradient in ``grads``, every row and every draw. A minibatch gradient is a mean of such
    gradients, so none made of those seen can exceed it; it is the largest seen, not a quantile, and still an
    estimate for examples and noise draws not seen.
    """
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    if examples_per_row < 1:
        raise ValueError(f"examples_per_row must be positive, got {examples_per_row}")
    between, mc_per_draw = decompose_variance(grads).upper(NOISE_UCB_Z)
    return GradientNoise(sigma2_x=examples_per_row * between,
                         sigma2_eps=examples_per_row * samples * mc_per_draw,
                         R=max(grads.amax().item(), -grads.amin().item()))
