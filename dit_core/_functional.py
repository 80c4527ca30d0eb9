"""A torch.nn.Module seen as a pure function of one flat parameter vector."""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import functional_call

from .errors import ModelError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of logits (B, C) against integer labels (B,) -> (B,)."""
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")


class FunctionalModel:
    """Wraps ``model`` and a per-sample ``loss_fn`` as functions of a flat vector theta (P,).

    ``loss_fn(outputs, targets)`` must return one loss per sample, shape (B,).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn | None, dtype: torch.dtype, device: torch.device):
        self.model = model.to(device=device, dtype=dtype)
        self.loss_fn = loss_fn or cross_entropy
        self.dtype = dtype
        self.device = device
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ModelError("the model has no trainable parameters")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.n_params = sum(self.numels)
        self.buffers = {n: b for n, b in self.model.named_buffers()}

    def describe_params(self) -> list[dict]:
        return [{"name": n, "shape": list(s)} for n, s in zip(self.names, self.shapes)]

    def initial_theta(self) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, shape, part in zip(self.names, self.shapes, torch.split(theta, self.numels)):
            out[name] = part.view(shape)
        out.update(self.buffers)
        return out

    def outputs(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.unflatten(theta), (X,))

    def losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (B,)."""
        return self.loss_fn(self.outputs(theta, X), y)

    def batch_loss_aux(self, theta, X, y, weights, divisor):
        """(sum_i w_i * loss_i / divisor, (per-sample losses, outputs)) — the training objective."""
        out = self.outputs(theta, X)
        losses = self.loss_fn(out, y)
        return (losses * weights).sum() / divisor, (losses, out)

    def grad_and_aux(self, theta, X, y, weights, divisor):
        """(∇θ batch_loss_aux, (per-sample losses, outputs)), by eager autograd.

        The same numbers as ``torch.func.grad(batch_loss_aux, has_aux=True)`` at about half
        its per-call overhead; used wherever one minibatch gradient is taken at a time
        (recording, and the sweep's and regeneration's replay of recorded steps), so they all
        run the same code. The vectorised counterfactual replay keeps ``torch.func``.
        """
        th = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, (losses, out) = self.batch_loss_aux(th, X, y, weights, divisor)
            (g,) = torch.autograd.grad(loss, th)
        return g, (losses.detach(), out.detach())
