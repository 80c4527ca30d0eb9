"""Optimizer steps as pure functions on flat parameter vectors.

``step(spec, theta, state, grad, lr, t) -> (theta', state')`` reproduces one step of
``torch.optim.SGD`` / ``Adam`` / ``AdamW`` (single-tensor code path) on a flat
parameter vector ``theta`` (P,), a flat optimizer state ``state`` (S,), and the mean
minibatch gradient ``grad`` (P,). ``t`` is the number of steps taken before this one.

Being pure functions of tensors, the steps can be differentiated with ``torch.func``:
the influence sweep propagates adjoints through their vector-Jacobian product.

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


__all__ = ["OptimizerSpec", "init_state", "step"]
