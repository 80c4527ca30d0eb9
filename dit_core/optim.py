"""Optimizer steps as pure functions on flat parameter vectors.

``step(spec, theta, state, grad, lr, t) -> (theta', state')`` reproduces one step of
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (single-tensor code path) on a flat
parameter vector ``theta`` (P,), a flat optimizer state ``state`` (S,), and the mean
minibatch gradient ``grad`` (P,). ``t`` is the number of steps taken before this one.

Being pure functions of tensors, the steps can be differentiated with ``torch.func``:
the influence sweep propagates adjoints through their vector-Jacobian product, which
``step_vjp`` computes in closed form for many cotangent rows at once (it equals
``torch.func.vjp`` of ``step``; tests check this).

State layout (S values):

- SGD without momentum: empty (S = 0).
- SGD with momentum: the momentum buffer (S = P).
- Adam / AdamW: first moment ``m`` then second moment ``v`` (S = 2P).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import TrainConfig


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer's hyper-parameters (learning rate excluded: it is per step)."""

    name: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def from_config(cls, config: TrainConfig) -> "OptimizerSpec":
        return cls(
            name=config.optimizer,
            momentum=config.momentum,
            dampening=config.dampening,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
            betas=tuple(config.betas),
            eps=config.eps,
        )

    @property
    def is_linear(self) -> bool:
        """True when the step is linear in (theta, state, grad): SGD in all its variants."""
        return self.name == "sgd"

    def state_size(self, n_params: int) -> int:
        if self.name == "sgd":
            return n_params if self.momentum > 0 else 0
        return 2 * n_params

    def describe(self) -> dict:
        d = {"name": self.name, "weight_decay": self.weight_decay}
        if self.name == "sgd":
            d.update(momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov)
        else:
            d.update(betas=list(self.betas), eps=self.eps)
        return d


def init_state(spec: OptimizerSpec, theta: torch.Tensor) -> torch.Tensor:
    """The optimizer state before the first step: zeros of shape (S,)."""
    return theta.new_zeros(spec.state_size(theta.numel()))


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    # sqrt whose derivative at 0 is 0 instead of inf (so 0 * inf never makes NaN
    # in the adjoint); identical values to torch.sqrt.
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def step(
    spec: OptimizerSpec,
    theta: torch.Tensor,
    state: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    t: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step. Shapes: theta (P,), state (S,), grad (P,); returns the same."""
    if spec.name == "sgd":
        g = grad + spec.weight_decay * theta if spec.weight_decay else grad
        if spec.momentum <= 0:
            return theta - lr * g, state
        if t == 0:
            buf = g  # torch.optim.SGD starts the buffer at the first gradient, undamped
        else:
            buf = spec.momentum * state + (1 - spec.dampening) * g
        d = g + spec.momentum * buf if spec.nesterov else buf
        return theta - lr * d, buf

    p = theta.numel()
    m, v = state[:p], state[p:]
    beta1, beta2 = spec.betas
    if spec.name == "adamw":
        theta = theta * (1 - lr * spec.weight_decay) if spec.weight_decay else theta
        g = grad
    else:
        g = grad + spec.weight_decay * theta if spec.weight_decay else grad
    m = m + (1 - beta1) * (g - m)  # torch's lerp
    v = beta2 * v + (1 - beta2) * g * g
    k = t + 1
    bias1 = 1 - beta1**k
    bias2_sqrt = math.sqrt(1 - beta2**k)
    denom = _safe_sqrt(v) / bias2_sqrt + spec.eps
    theta = theta - (lr / bias1) * (m / denom)
    return theta, torch.cat([m, v])


def step_vjp(
    spec: OptimizerSpec,
    theta: torch.Tensor,
    state: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    t: int,
    a_theta: torch.Tensor,
    a_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vector-Jacobian products of :func:`step` at ``(theta, state, grad)`` for N cotangent rows.

    Shapes: theta (P,), state (S,), grad (P,); the cotangents of (theta', state') are
    a_theta (N, P) and a_state (N, S). Returns the cotangents of (theta, state, grad):
    (N, P), (N, S), (N, P) — what ``torch.func.vjp(step)`` gives row by row, in closed form.
    """
    wd = spec.weight_decay
    if spec.name == "sgd":
        if spec.momentum <= 0:
            d_grad = -lr * a_theta
            d_theta = a_theta + wd * d_grad if wd else a_theta
            return d_theta, a_state, d_grad
        mu = spec.momentum
        # theta' = theta - lr * (d + mu * buf') [nesterov] or theta - lr * buf';  d = grad + wd * theta
        # buf' = d at t = 0, else mu * buf + (1 - dampening) * d
        d_buf_new = a_state - (lr * mu if spec.nesterov else lr) * a_theta
        through_buf = d_buf_new if t == 0 else (1 - spec.dampening) * d_buf_new
        d_grad = through_buf - lr * a_theta if spec.nesterov else through_buf
        d_state = torch.zeros_like(a_state) if t == 0 else mu * d_buf_new
        d_theta = a_theta + wd * d_grad if wd else a_theta
        return d_theta, d_state, d_grad

    p = theta.numel()
    m, v = state[:p], state[p:]
    beta1, beta2 = spec.betas
    g = grad if (spec.name == "adamw" or not wd) else grad + wd * theta
    m_new = m + (1 - beta1) * (g - m)
    v_new = beta2 * v + (1 - beta2) * g * g
    k = t + 1
    step_size = lr / (1 - beta1**k)
    bias2_sqrt = math.sqrt(1 - beta2**k)
    root = _safe_sqrt(v_new)
    denom = root / bias2_sqrt + spec.eps
    # per-parameter coefficients (P,) first, so the N cotangent rows take only a few batched ops:
    # ∂θ'/∂m' = -step_size / denom;  ∂θ'/∂v' = step_size m' / denom² · ∂√v'/∂v' / bias2_sqrt (0 where v' = 0)
    pos = v_new > 0
    droot_dv = torch.where(pos, 0.5 / torch.where(pos, root, torch.ones_like(root)), torch.zeros_like(root))
    c_m = step_size / denom
    c_v = (step_size / bias2_sqrt) * m_new * droot_dv / (denom * denom)
    d_m_new = a_state[:, :p] - c_m * a_theta
    d_v_new = torch.addcmul(a_state[:, p:], c_v, a_theta)
    d_g = torch.addcmul((1 - beta1) * d_m_new, (2 * (1 - beta2)) * g, d_v_new)
    d_state = torch.cat([beta1 * d_m_new, beta2 * d_v_new], dim=1)
    if spec.name == "adamw":
        d_theta = a_theta * (1 - lr * wd) if wd else a_theta
    else:
        d_theta = a_theta + wd * d_g if wd else a_theta
    return d_theta, d_state, d_g


__all__ = ["OptimizerSpec", "init_state", "step", "step_vjp"]
