"""AdamDefossez and AdagradDefossez step exactly the recursions Défossez et al. analyse: checked against the recursion
written out by hand in float64, elementwise (stacked replicas are independent optimizers), driven by lr schedulers,
restored from a state_dict, and refusing invalid arguments. Their distance from torch's Adam and RMSprop is the one the
registry's ``uncovered`` sentences state."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from vaeconverge.optim import DEFAULT_EPS, AdagradDefossez, AdamDefossez

STEPS = 10
SHAPES = [(3,), (2, 4), (1,)]  # the last one never gets a gradient in the hand tests


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    rng = np.random.default_rng(seed)
    return [torch.nn.Parameter(torch.tensor(rng.standard_normal(shape), dtype=torch.float64)) for shape in SHAPES]


def _gradients(seed: int = 1) -> list[list[np.ndarray]]:
    """Per step, one gradient for each of the first two parameters, spanning several orders of magnitude."""
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 2) for shape in SHAPES[:2]] for _ in range(STEPS)]


def _factor(n: int) -> float:
    """LambdaLR multiplier after n scheduler steps: the lr changes between every two steps."""
    return 1.0 / (1.0 + 0.5 * n) if n % 3 else 2.0


def _run(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], gradients) -> list[float]:
    """Step ``optimizer`` with the given gradients (the third parameter has none), a LambdaLR between steps;
    returns the lr each step used."""
    scheduler = LambdaLR(optimizer, _factor)
    used = []
    for step in gradients:
        for param, grad in zip(params, step, strict=False):
            param.grad = torch.tensor(grad)
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


def adam_by_hand(x0, gradients, lrs, beta1, beta2, eps):
    """m_n = b1 m + g, v_n = b2 v + g^2, x_n = x - lr (1 - b1) sqrt((1 - b2^n) / (1 - b2)) m_n / sqrt(eps + v_n)."""
    x = [np.array(a, dtype=np.float64) for a in x0]
    m = [np.zeros_like(a) for a in x]
    v = [np.zeros_like(a) for a in x]
    for n, (step, lr) in enumerate(zip(gradients, lrs, strict=True), start=1):
        alpha = lr * (1 - beta1) * math.sqrt((1 - beta2**n) / (1 - beta2))
        for i, g in enumerate(step):
            m[i] = beta1 * m[i] + g
            v[i] = beta2 * v[i] + g**2
            x[i] = x[i] - alpha * m[i] / np.sqrt(eps + v[i])
    return x, m, v


def adagrad_by_hand(x0, gradients, lrs, eps):
    """v_n = v + g^2, x_n = x - lr g / sqrt(eps + v_n)."""
    x = [np.array(a, dtype=np.float64) for a in x0]
    v = [np.zeros_like(a) for a in x]
    for step, lr in zip(gradients, lrs, strict=True):
        for i, g in enumerate(step):
            v[i] = v[i] + g**2
            x[i] = x[i] - lr * g / np.sqrt(eps + v[i])
    return x, v


def _close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().numpy(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("beta1", "beta2", "eps"), [(0.9, 0.999, DEFAULT_EPS), (0.0, 0.5, 1e-2), (0.5, 0.75, 0.3)])
def test_adam_defossez_is_the_analysed_recursion(beta1, beta2, eps) -> None:
    params = _params()
    x0 = [p.detach().numpy().copy() for p in params]
    gradients = _gradients()
    optimizer = AdamDefossez(params, lr=0.05, betas=(beta1, beta2), eps=eps)
    used = _run(optimizer, params, gradients)
    lrs = [lr for (lr,) in used]
    assert lrs[0] == 0.05 * _factor(0) and len(set(lrs)) > 3  # the scheduler did drive the step
    x, m, v = adam_by_hand(x0[:2], gradients, lrs, beta1, beta2, eps)
    for i in range(2):
        _close(params[i], x[i])
        state = optimizer.state[params[i]]
        assert state["step"] == STEPS
        _close(state["exp_avg"], m[i])
        _close(state["exp_avg_sq"], v[i])
    assert torch.equal(params[2].detach(), torch.tensor(x0[2])) and params[2] not in optimizer.state


def test_adam_defossez_reads_each_group_s_hyperparameters() -> None:
    params = _params()
    x0 = [p.detach().numpy().copy() for p in params]
    gradients = _gradients()
    optimizer = AdamDefossez([{"params": params[:1]}, {"params": params[1:], "lr": 0.2, "betas": (0.5, 0.9),
                                                        "eps": 1e-3}], lr=0.05)
    used = _run(optimizer, params, gradients)
    first, _, _ = adam_by_hand(x0[:1], [s[:1] for s in gradients], [a for a, _ in used], 0.9, 0.999, DEFAULT_EPS)
    second, _, _ = adam_by_hand(x0[1:2], [s[1:] for s in gradients], [b for _, b in used], 0.5, 0.9, 1e-3)
    _close(params[0], first[0])
    _close(params[1], second[0])
    assert used[0] == [0.05 * _factor(0), 0.2 * _factor(0)]


@pytest.mark.parametrize("eps", [DEFAULT_EPS, 0.5])
def test_adagrad_defossez_is_the_analysed_recursion(eps) -> None:
    params = _params()
    x0 = [p.detach().numpy().copy() for p in params]
    gradients = _gradients()
    optimizer = AdagradDefossez(params, lr=0.3, eps=eps)
    lrs = [lr for (lr,) in _run(optimizer, params, gradients)]
    x, v = adagrad_by_hand(x0[:2], gradients, lrs, eps)
    for i in range(2):
        _close(params[i], x[i])
        assert optimizer.state[params[i]]["step"] == STEPS
        _close(optimizer.state[params[i]]["sum"], v[i])
    assert torch.equal(params[2].detach(), torch.tensor(x0[2])) and params[2] not in optimizer.state


def test_defaults() -> None:
    param = [torch.nn.Parameter(torch.zeros(1))]
    assert AdamDefossez(param).defaults == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": DEFAULT_EPS}
    assert AdagradDefossez(param).defaults == {"lr": 1e-2, "eps": DEFAULT_EPS}
    assert DEFAULT_EPS == 1e-8


BUILD = [
    lambda p: AdamDefossez(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    lambda p: AdagradDefossez(p, lr=0.1, eps=1e-6),
]


@pytest.mark.parametrize("build", BUILD, ids=["adam", "adagrad"])
def test_replicas_stacked_in_one_tensor_are_independent_optimizers(build) -> None:
    replicas, size = 3, 5
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(replicas, size, 2, dtype=torch.float64, generator=generator)
    stacked = torch.nn.Parameter(start.clone())
    separate = [torch.nn.Parameter(start[r].clone()) for r in range(replicas)]
    together = build([stacked])
    apart = [build([p]) for p in separate]
    for _ in range(STEPS):
        grad = torch.randn(replicas, size, 2, dtype=torch.float64, generator=generator)
        grad[1] *= 1e3  # one replica's scale must not leak into another's step
        stacked.grad = grad
        together.step()
        for r in range(replicas):
            separate[r].grad = grad[r].clone()
            apart[r].step()
    for r in range(replicas):
        torch.testing.assert_close(stacked[r].detach(), separate[r].detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("build", BUILD, ids=["adam", "adagrad"])
def test_state_dict_round_trip_continues_identically(build) -> None:
    generator = torch.Generator().manual_seed(3)
    original = [torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=generator)),
                torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64, generator=generator))]
    optimizer = build(original)
    grads = [[torch.randn(p.shape, dtype=torch.float64, generator=generator) for p in original] for _ in range(8)]

    def step(params, opt, gs):
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()

    for gs in grads[:4]:
        step(original, optimizer, gs)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # as a checkpoint does: loaded back with weights_only=True
    buffer.seek(0)
    restored_params = [torch.nn.Parameter(p.detach().clone()) for p in original]
    restored = build(restored_params)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict()["state"][0]["step"] == 4
    snapshot = copy.deepcopy(optimizer.state_dict())
    for gs in grads[4:]:
        step(original, optimizer, gs)
        step(restored_params, restored, gs)
    for a, b in zip(original, restored_params, strict=True):
        assert torch.equal(a.detach(), b.detach())
    assert snapshot["state"][0]["step"] == 4 and optimizer.state_dict()["state"][0]["step"] == 8


def test_closure_is_evaluated_with_gradients_and_its_loss_returned() -> None:
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = AdagradDefossez([param], lr=0.1, eps=1.0)

    def closure():
        optimizer.zero_grad()
        loss = param.square().sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 5.0
    expected = np.array([1.0, -2.0]) - 0.1 * np.array([2.0, -4.0]) / np.sqrt(1.0 + np.array([4.0, 16.0]))
    _close(param, expected)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"lr": math.nan}, "lr"), ({"lr": math.inf}, "lr"),
    ({"lr": "0.1"}, "lr"), ({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"),
])
@pytest.mark.parametrize("cls", [AdamDefossez, AdagradDefossez])
def test_invalid_arguments_are_refused(cls, kwargs, name) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must"):
        cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)


@pytest.mark.parametrize("betas", [(0.9, 0.9), (0.99, 0.9), (-0.1, 0.5), (0.5, 1.0), (0.5, 1.5), (0.5,), "ab"])
def test_invalid_betas_are_refused(betas) -> None:
    with pytest.raises(ValueError, match=r"^betas must"):
        AdamDefossez([torch.nn.Parameter(torch.zeros(1))], betas=betas)


def test_an_invalid_param_group_is_refused_and_leaves_the_optimizer_as_it_was() -> None:
    optimizer = AdamDefossez([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match=r"^betas must"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "betas": (0.999, 0.9)})
    with pytest.raises(ValueError, match=r"^lr must"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": -1.0})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5})
    assert optimizer.param_groups[1]["betas"] == (0.9, 0.999) and optimizer.param_groups[1]["lr"] == 0.5


def test_sparse_and_complex_parameters_are_refused() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamDefossez([param]).step()
    complex_param = torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    complex_param.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="real"):
        AdagradDefossez([complex_param]).step()


# ------------------------------------------------------------------------------ what torch's optimizers step instead


def _steps(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter, gradients: np.ndarray) -> np.ndarray:
    """|x_n - x_{n-1}| for each step n, elementwise."""
    out = []
    for g in gradients:
        before = param.detach().clone()
        param.grad = torch.tensor(g)
        optimizer.step()
        out.append((param.detach() - before).abs().numpy())
    return np.array(out)


def test_torch_adam_steps_one_over_one_minus_beta1_to_the_n_times_further() -> None:
    # the registry's reason why no bound covers torch.optim.Adam: 1/(1 - b1^n), 10x at n = 1 with b1 = 0.9
    gradients = np.random.default_rng(5).uniform(0.5, 2.0, size=(STEPS, 4))  # one sign: no cancellation in m
    x0 = torch.zeros(4, dtype=torch.float64)
    ours = torch.nn.Parameter(x0.clone())
    theirs = torch.nn.Parameter(x0.clone())
    analysed = _steps(AdamDefossez([ours], lr=1e-3, betas=(0.9, 0.999), eps=1e-300), ours, gradients)
    stock = _steps(torch.optim.Adam([theirs], lr=1e-3, betas=(0.9, 0.999), eps=0.0), theirs, gradients)
    n = np.arange(1, STEPS + 1)[:, None]
    np.testing.assert_allclose(stock / analysed, np.broadcast_to(1 / (1 - 0.9**n), stock.shape), rtol=1e-10)
    assert stock[0] / analysed[0] == pytest.approx(np.full(4, 10.0))


def test_torch_rmsprop_steps_one_over_sqrt_one_minus_alpha_to_the_n_times_further() -> None:
    # the registry's reason for RMSprop: no bias correction, 1/sqrt(1 - alpha^n) times Adam's step with b1 = 0
    gradients = np.random.default_rng(6).standard_normal((STEPS, 4))
    ours = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    theirs = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    analysed = _steps(AdamDefossez([ours], lr=1e-2, betas=(0.0, 0.99), eps=1e-300), ours, gradients)
    stock = _steps(torch.optim.RMSprop([theirs], lr=1e-2, alpha=0.99, eps=0.0), theirs, gradients)
    n = np.arange(1, STEPS + 1)[:, None]
    ratio = stock / analysed
    np.testing.assert_allclose(ratio, np.broadcast_to(1 / np.sqrt(1 - 0.99**n), stock.shape), rtol=1e-10)
    assert ratio[0] == pytest.approx(np.full(4, 10.0)) and ratio[9] == pytest.approx(np.full(4, 3.2), abs=0.05)
