"""The pure optimizer steps of ``dit_core.optim`` against ``torch.optim``, step by step.

Each configuration runs ~20 steps on the flat parameters of a small model, with the
gradient of a different random minibatch at every step and a learning rate that changes
every step, in float64. After every step the parameters and the optimizer state (momentum
buffer, Adam's first and second moments) must equal torch's to ~1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vjp

from dit_core import TrainConfig
from dit_core.optim import OptimizerSpec, init_state, step, step_vjp

N_STEPS = 20
RTOL = 1e-12
ATOL = 1e-14

CONFIGS = {
    "sgd": dict(name="sgd"),
    "sgd_weight_decay": dict(name="sgd", weight_decay=0.05),
    "sgd_momentum": dict(name="sgd", momentum=0.9),
    "sgd_momentum_dampening": dict(name="sgd", momentum=0.8, dampening=0.3),
    "sgd_momentum_dampening_wd": dict(name="sgd", momentum=0.7, dampening=0.5, weight_decay=0.01),
    "sgd_nesterov": dict(name="sgd", momentum=0.9, nesterov=True),
    "sgd_nesterov_wd": dict(name="sgd", momentum=0.85, nesterov=True, weight_decay=0.02),
    "adam": dict(name="adam"),
    "adam_wd_betas_eps": dict(name="adam", weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6),
    "adamw": dict(name="adamw", weight_decay=0.01),
    "adamw_betas_eps": dict(name="adamw", weight_decay=0.1, betas=(0.7, 0.95), eps=1e-4),
}


def _torch_optimizer(spec: OptimizerSpec, params, lr: float) -> torch.optim.Optimizer:
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=spec.momentum, dampening=spec.dampening, nesterov=spec.nesterov,
            weight_decay=spec.weight_decay, foreach=False,
        )
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, foreach=False)


def _torch_state(spec: OptimizerSpec, opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    st = opt.state[p]
    if spec.name == "sgd":
        return st["momentum_buffer"].detach() if spec.momentum > 0 else p.new_zeros(0)
    return torch.cat([st["exp_avg"].detach(), st["exp_avg_sq"].detach()])


def _small_model_loss():
    """A tiny tanh MLP (6-7-3, 73 params) as a loss of its flat parameter vector."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 6), (7,), (3, 7), (3,)]
    numels = [math.prod(s) for s in shapes]

    def loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (part.view(s) for part, s in zip(torch.split(theta, numels), shapes))
        logits = torch.tanh(X @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(logits, y)

    theta0 = torch.randn(sum(numels), generator=gen, dtype=torch.float64) * 0.5
    return loss, theta0, gen


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_matches_torch_optim(name):
    spec = OptimizerSpec(**CONFIGS[name])
    loss, theta0, gen = _small_model_loss()
    p = torch.nn.Parameter(theta0.clone())
    opt = _torch_optimizer(spec, [p], lr=0.1)
    theta, state = theta0.clone(), init_state(spec, theta0)
    assert state.shape == (spec.state_size(theta0.numel()),)
    lrs = [0.1 * (0.5 + 0.5 * math.cos(0.3 * t)) + 0.01 for t in range(N_STEPS)]
    for t in range(N_STEPS):
        X = torch.randn(8, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (8,), generator=gen)
        theta_t = p.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(theta_t, X, y), theta_t)
        if t % 4 == 3:
            g = g * 0  # a whole-zero gradient now and then
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        p.grad = g.clone()
        opt.step()
        theta, state = step(spec, theta, state, g, lrs[t], t)
        torch.testing.assert_close(theta, p.detach(), rtol=RTOL, atol=ATOL, msg=f"{name}: theta differs at step {t}")
        torch.testing.assert_close(
            state, _torch_state(spec, opt, p), rtol=RTOL, atol=ATOL, msg=f"{name}: optimizer state differs at step {t}"
        )
    # the run really moved (a test on a frozen parameter vector would prove nothing)
    assert float((theta - theta0).abs().max()) > 1e-2


def test_step_float32_close_to_torch():
    """In float32 the steps agree with torch.optim to rounding (torch fuses some multiply-adds,
    so the last bit may differ; recording, sweep and replay all use dit_core.optim, so runs
    still replay bit for bit)."""
    for cfg in (dict(name="sgd", momentum=0.9, weight_decay=1e-3), dict(name="adamw", weight_decay=0.01)):
        spec = OptimizerSpec(**cfg)
        gen = torch.Generator().manual_seed(1)
        theta = torch.randn(50, generator=gen)
        p = torch.nn.Parameter(theta.clone())
        opt = _torch_optimizer(spec, [p], lr=0.05)
        state = init_state(spec, theta)
        for t in range(10):
            g = torch.randn(50, generator=gen)
            p.grad = g.clone()
            opt.step()
            theta, state = step(spec, theta, state, g, 0.05, t)
        assert theta.dtype == torch.float32
        torch.testing.assert_close(theta, p.detach(), rtol=1e-6, atol=1e-6)


def test_spec_from_config_and_state_sizes():
    cfg = TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=0.01)
    spec = OptimizerSpec.from_config(cfg)
    assert (spec.name, spec.momentum, spec.nesterov, spec.weight_decay) == ("sgd", 0.9, True, 0.01)
    assert spec.state_size(10) == 10 and spec.is_linear
    assert OptimizerSpec("sgd").state_size(10) == 0
    adam = OptimizerSpec.from_config(TrainConfig(optimizer="adamw", betas=(0.8, 0.9), eps=1e-5, weight_decay=0.1))
    assert (adam.name, adam.betas, adam.eps, adam.weight_decay) == ("adamw", (0.8, 0.9), 1e-5, 0.1)
    assert adam.state_size(10) == 20 and not adam.is_linear
    assert adam.describe()["betas"] == [0.8, 0.9]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_vjp_finite_with_zero_gradient_coordinates(name):
    """A coordinate whose gradient has always been 0 has v = 0: sqrt'(0) = inf must not leak NaN."""
    spec = OptimizerSpec(name=name, weight_decay=0.0)
    gen = torch.Generator().manual_seed(2)
    P = 12
    zero = torch.zeros(P, dtype=torch.bool)
    zero[[0, 5, 11]] = True
    theta = torch.randn(P, generator=gen, dtype=torch.float64)
    state = init_state(spec, theta)
    for t in range(6):
        g = torch.randn(P, generator=gen, dtype=torch.float64).masked_fill(zero, 0.0)
        if t in (0, 3):  # the vjp at the very first step (state = 0) and at a later one
            (new_theta, new_state), vjp_fn = vjp(lambda th, st, gg, _t=t: step(spec, th, st, gg, 0.01, _t), theta, state, g)
            assert float(new_state[P:][zero].abs().max()) == 0.0  # v is exactly 0 there
            ct = (torch.randn(P, generator=gen, dtype=torch.float64), torch.randn(2 * P, generator=gen, dtype=torch.float64))
            d_theta, d_state, d_grad = vjp_fn(ct)
            for what, d in (("theta", d_theta), ("state", d_state), ("grad", d_grad)):
                assert torch.isfinite(d).all(), f"{name}: non-finite VJP w.r.t. {what} at step {t}"

            # on the coordinates with v > 0 the VJP is the ordinary one (plain torch.sqrt)
            def plain(th, st, gg, _t=t):
                m, v = st[:P], st[P:]
                b1, b2 = spec.betas
                m = m + (1 - b1) * (gg - m)
                v = b2 * v + (1 - b2) * gg * gg
                denom = torch.sqrt(v) / math.sqrt(1 - b2 ** (_t + 1)) + spec.eps
                return th - 0.01 / (1 - b1 ** (_t + 1)) * m / denom, torch.cat([m, v])

            _, vjp_plain = vjp(plain, theta, state, g)
            ref_grad = vjp_plain(ct)[2]
            torch.testing.assert_close(d_grad[~zero], ref_grad[~zero], rtol=1e-12, atol=0)
        theta, state = step(spec, theta, state, g, 0.01, t)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_closed_form_vjp_equals_autodiff(name):
    """``step_vjp`` (closed form, many rows) equals ``torch.func.vjp`` of ``step`` row by row."""
    spec = OptimizerSpec(**CONFIGS[name])
    gen = torch.Generator().manual_seed(4)
    P = 9
    S = spec.state_size(P)
    theta = torch.randn(P, generator=gen, dtype=torch.float64)
    state = init_state(spec, theta)
    for t in range(5):
        g = torch.randn(P, generator=gen, dtype=torch.float64)
        if spec.name != "sgd":
            g[2] = 0.0  # a coordinate whose v stays exactly 0
        if t in (0, 1, 4):
            a_theta = torch.randn(3, P, generator=gen, dtype=torch.float64)
            a_state = torch.randn(3, S, generator=gen, dtype=torch.float64)
            got = step_vjp(spec, theta, state, g, 0.07, t, a_theta, a_state)
            _, fn = vjp(lambda th, st, gg, _t=t: step(spec, th, st, gg, 0.07, _t), theta, state, g)
            for r in range(3):
                want = fn((a_theta[r], a_state[r]))
                for what, x, y in zip(("theta", "state", "grad"), got, want):
                    assert x.shape == (3, *y.shape), (what, x.shape)
                    torch.testing.assert_close(x[r], y, rtol=1e-12, atol=1e-14, msg=f"{name} step {t}: d_{what}")
        theta, state = step(spec, theta, state, g, 0.07, t)
