"""Closed-form sweep kernels for multilayer perceptrons with cross-entropy.

For a model that is an ``nn.Sequential`` of ``Linear`` layers with ``Tanh``, ``ReLU`` or no
activation between them (optionally after a ``Flatten``), trained with DIT's built-in
per-sample cross-entropy, every quantity the sweep needs at a step has a closed form made
of a handful of (batched) matrix products:

- the per-sample directional derivatives ⟨∇ℓⱼ, u⟩ for every adjoint column u (a forward
  pass of the directional derivative, "R-forward");
- the Hessian-vector products H u of the minibatch loss (Pearlmutter's R-backward pass);
- the mean minibatch gradient (for Adam's step) and each sample's squared gradient norm
  (TracIn self-influence), from one ordinary backward pass.

Autograd computes the same numbers by building and walking a graph for every step, which
on the small models DIT is used with on a CPU costs more than the arithmetic itself. The
built-in logistic regression and MLP take this path by default (``compute(method="auto")``);
``tests/test_engine.py`` checks it against the explicit-Jacobian reference and against the
autograd method. Anything else (the CNN, a user's model or loss) uses autograd.

Notation for one layer l = 1..L: ``z_l = a_{l-1} W_lᵀ + b_l``, ``a_l = σ_l(z_l)`` (σ_L is the
identity: z_L are the logits), ``a_0`` the flattened input. With p = softmax(z_L), Y the
one-hot labels and the minibatch loss ``L = Σ_j ℓ_j / B``: ``δ_L = (p − Y) / B``,
``δ_{l-1} = (δ_l W_l) ⊙ σ'(z_{l-1})``, ``∇_{W_l} L = δ_lᵀ a_{l-1}``, ``∇_{b_l} L = Σ_j δ_l``.
For a direction u = (dW_l, db_l) the R-operator R{·} = d/dε ·(θ + εu) gives
``R z_l = R a_{l-1} W_lᵀ + a_{l-1} dW_lᵀ + db_l``, ``R a_l = σ'(z_l) ⊙ R z_l``,
``R ℓ_j = ⟨p_j − Y_j, R z_{L,j}⟩``, ``R δ_L = p ⊙ (R z_L − ⟨p, R z_L⟩) / B``,
``R δ_{l-1} = (R δ_l W_l + δ_l dW_l) ⊙ σ'(z_{l-1}) + (δ_l W_l) ⊙ σ''(z_{l-1}) ⊙ R z_{l-1}``,
and H u = (R ∇_{W_l} L, R ∇_{b_l} L) = (R δ_lᵀ a_{l-1} + δ_lᵀ R a_{l-1}, Σ_j R δ_l).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._functional import FunctionalModel, cross_entropy

_ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Identity: None}


@dataclass(frozen=True)
class _Layer:
    w_slice: slice
    w_shape: tuple[int, int]
    b_slice: slice | None
    activation: str | None  # applied after this layer; None for the last layer or no activation


def _why_not(fm: FunctionalModel) -> tuple[str | None, list[_Layer]]:
    """(reason the closed form does not apply or None, the layers when it does)."""
    if fm.loss_fn is not cross_entropy:
        return "the run uses a custom loss", []
    model = fm.model
    if type(model) is not nn.Sequential:
        return f"the model is a {type(model).__name__}, not an nn.Sequential of Linear layers", []
    if fm.buffers:
        return "the model has buffers", []
    if sum(1 for _ in model.parameters()) != len(fm.names):
        return "some parameters are frozen", []
    offsets = {name: (start, numel) for name, start, numel in _param_offsets(fm)}
    layers: list[_Layer] = []
    pending: tuple | None = None  # the last Linear, waiting for its activation
    for pos, (idx, m) in enumerate(model.named_children()):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return f"module {idx} has hooks", []
        kind = type(m)
        if kind is nn.Flatten:
            if pos != 0 or (m.start_dim, m.end_dim) != (1, -1):
                return f"module {idx} is a Flatten that is not the first module flattening everything after the batch", []
        elif kind is nn.Linear:
            if pending is not None:
                layers.append(_Layer(*pending, activation=None))
            ws, wn = offsets[f"{idx}.weight"]
            b = None
            if m.bias is not None:
                bs, bn = offsets[f"{idx}.bias"]
                b = slice(bs, bs + bn)
            pending = (slice(ws, ws + wn), (m.out_features, m.in_features), b)
        elif kind is nn.Identity:
            continue
        elif kind in _ACTIVATIONS:
            if pending is None:
                return f"module {idx} ({kind.__name__}) does not follow a Linear layer", []
            layers.append(_Layer(*pending, activation=_ACTIVATIONS[kind]))
            pending = None
        else:
            return f"module {idx} is a {kind.__name__}", []
    if pending is None:
        return "the model does not end with a Linear layer", []
    layers.append(_Layer(*pending, activation=None))
    for a, b in zip(layers, layers[1:]):
        if a.w_shape[0] != b.w_shape[1]:
            return "layer sizes do not chain", []
    return None, layers


def _param_offsets(fm: FunctionalModel):
    start = 0
    for name, numel in zip(fm.names, fm.numels):
        yield name, start, numel
        start += numel


def _act(kind: str | None, z: torch.Tensor) -> torch.Tensor:
    if kind == "tanh":
        return torch.tanh(z)
    if kind == "relu":
        return torch.relu(z)
    return z


def _d1(kind: str | None, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """σ'(z), given a = σ(z)."""
    if kind == "tanh":
        return 1 - a * a
    if kind == "relu":
        return (a > 0).to(z.dtype)  # autograd's convention: derivative 0 at z = 0
    return torch.ones_like(z)


def _d2(kind: str | None, z: torch.Tensor, a: torch.Tensor, d1: torch.Tensor) -> torch.Tensor | None:
    """σ''(z) (None where it is zero almost everywhere)."""
    if kind == "tanh":
        return -2 * a * d1
    return None


class AnalyticMLP:
    """The closed-form kernels for one supported model (see the module docstring).

    Build with :meth:`for_model`, which returns None (and a reason) for unsupported models.
    All methods take the flat parameter vector θ (P,), a minibatch X (B, ...) and labels y (B,).
    """

    def __init__(self, fm: FunctionalModel, layers: list[_Layer]):
        self.fm = fm
        self.layers = layers
        self.n_params = fm.n_params

    @classmethod
    def for_model(cls, fm: FunctionalModel, input_shape: tuple[int, ...]) -> tuple["AnalyticMLP | None", str | None]:
        """The kernels for ``fm`` on inputs of shape ``input_shape`` (batch first), or (None, why not)."""
        reason, layers = _why_not(fm)
        if reason is None and len(input_shape) != 2 and not any(type(m) is nn.Flatten for m in fm.model.children()):
            reason = f"its input has shape {tuple(input_shape[1:])} per sample and no Flatten in front of the first Linear layer"
        if reason is not None:
            return None, reason
        return cls(fm, layers), None

    # ------------------------------------------------------------------ pieces
    # Each takes one parameter vector θ (P,) or a batch of them Θ (R, P): the leading
    # dimensions ride along through every matrix product.
    def _weights(self, theta: torch.Tensor):
        lead = theta.shape[:-1]
        return [
            (theta[..., L.w_slice].reshape(*lead, *L.w_shape), None if L.b_slice is None else theta[..., L.b_slice])
            for L in self.layers
        ]

    def _forward(self, theta, X):
        """Weights, pre-activations z_l, activations a_l (a_0 = flattened X), σ'(z_l)."""
        Ws = self._weights(theta)
        a = X.reshape(X.shape[0], -1)
        acts, zs, d1s = [a], [], []
        for (W, b), L in zip(Ws, self.layers):
            if W.dim() == 2:
                z = torch.nn.functional.linear(a, W, b)
            else:  # (B, in) or (R, B, in) times (R, in, out) -> (R, B, out)
                z = torch.matmul(a, W.transpose(-1, -2))
                if b is not None:
                    z = z + b.unsqueeze(-2)
            a = _act(L.activation, z)
            zs.append(z)
            acts.append(a)
            d1s.append(_d1(L.activation, z, a) if L.activation is not None else None)
        return Ws, zs, acts, d1s

    def _backward(self, Ws, zs, acts, d1s, y, scale):
        """δ_l for every layer (list, first to last), the softmax p and e_l = δ_{l+1} W_{l+1},
        for the loss Σ_j ℓ_j · scale (``scale`` a number, or per-sample weights shaped like p's rows)."""
        p = torch.softmax(zs[-1], dim=-1)
        delta = (p - torch.nn.functional.one_hot(y, p.shape[-1]).to(p.dtype)) * scale
        deltas = [delta]
        es = []
        for l in range(len(self.layers) - 1, 0, -1):
            e = delta @ Ws[l][0]
            es.append(e)
            delta = e if d1s[l - 1] is None else e * d1s[l - 1]
            deltas.append(delta)
        return p, deltas[::-1], es[::-1]

    def _grad(self, deltas, acts, lead: tuple[int, ...]) -> torch.Tensor:
        """∇θ of the loss the δ_l belong to: (δ_lᵀ a_{l-1}, Σ_j δ_l) per layer, flat (*lead, P)."""
        return self._flat([d.transpose(-1, -2) @ a for d, a in zip(deltas, acts)], [d.sum(-2) for d in deltas], lead)

    def _flat(self, gW: list[torch.Tensor], gb: list[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
        out = torch.empty(*lead, self.n_params, dtype=gW[0].dtype, device=gW[0].device)
        for L, w, b in zip(self.layers, gW, gb):
            out[..., L.w_slice] = w.reshape(*lead, -1)
            if L.b_slice is not None:
                out[..., L.b_slice] = b
        return out

    # ------------------------------------------------------------------ public
    def prepare(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> "_Step":
        """The forward and backward pass of one minibatch at θ, shared by :meth:`_Step.mean_grad`
        and :meth:`_Step.hvp_and_dots` (an optimizer with state needs both at every step)."""
        return _Step(self, theta, X, y)

    def mean_grad(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """∇θ of the minibatch's mean loss, (P,)."""
        return self.prepare(theta, X, y).mean_grad()

    def grad_norm2(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each sample's squared gradient norm ‖∇θ ℓ_j‖², (B,).

        A linear layer's per-sample weight gradient is the outer product δ_j a_jᵀ, so its
        squared norm is ‖δ_j‖² ‖a_j‖²; no per-sample gradient is formed.
        """
        Ws, zs, acts, d1s = self._forward(theta, X)
        _, deltas, _ = self._backward(Ws, zs, acts, d1s, y, 1.0)
        out = torch.zeros(X.shape[0], dtype=theta.dtype, device=theta.device)
        for L, d, a in zip(self.layers, deltas, acts):
            dd = (d * d).sum(1)
            out += dd * (a * a).sum(1)
            if L.b_slice is not None:
                out += dd
        return out

    def batched_grad(self, Theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, divisor: float) -> torch.Tensor:
        """Minibatch gradients of R models at once: row r is ∇θ Σ_j weights[r, j] ℓ_j(Theta[r]) / divisor.

        Theta (R, P), X (B, ...), y (B,), weights (R, B) -> (R, P). This is what exact
        counterfactual replay takes at every step for its replicas (each with one sample's
        weight set to 0), as batched matrix products instead of a vmapped autograd graph.
        """
        Ws, zs, acts, d1s = self._forward(Theta, X)
        _, deltas, _ = self._backward(Ws, zs, acts, d1s, y, (weights / divisor)[:, :, None])
        return self._grad(deltas, acts, (Theta.shape[0],))

    def hvp_and_dots(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, U: torch.Tensor):
        """(H U, J U / B) for the rows u of U (K, P): what ``sweep._batched_vjp`` returns.

        H is the Hessian of the minibatch's mean loss; (J U)[k, j] = ⟨∇ℓ_j, u_k⟩ / B.
        Returns ((K, P), (K, B)).
        """
        return self.prepare(theta, X, y).hvp_and_dots(U)


class _Step:
    """One minibatch's forward and backward pass at θ (see :meth:`AnalyticMLP.prepare`)."""

    def __init__(self, mlp: AnalyticMLP, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor):
        self.mlp = mlp
        self.B = X.shape[0]
        self.Ws, self.zs, self.acts, self.d1s = mlp._forward(theta, X)
        self.p, self.deltas, self.es = mlp._backward(self.Ws, self.zs, self.acts, self.d1s, y, 1.0 / self.B)

    def mean_grad(self) -> torch.Tensor:
        """∇θ of the minibatch's mean loss, (P,)."""
        return self.mlp._grad(self.deltas, self.acts, ())

    def hvp_and_dots(self, U: torch.Tensor):
        """(H U (K, P), J U / B (K, B)) for the rows u of U (K, P)."""
        mlp, B, K = self.mlp, self.B, U.shape[0]
        Ws, zs, acts, d1s, p, deltas, es = self.Ws, self.zs, self.acts, self.d1s, self.p, self.deltas, self.es
        dWs = [U[:, L.w_slice].reshape(K, *L.w_shape) for L in mlp.layers]
        dbs = [None if L.b_slice is None else U[:, L.b_slice] for L in mlp.layers]

        # R-forward: R z_l (K, B, out), R a_l
        Rzs, Ras = [], [None]
        Ra = None
        for l, (L, (W, _), dW, db) in enumerate(zip(mlp.layers, Ws, dWs, dbs)):
            Rz = torch.matmul(acts[l], dW.transpose(1, 2))  # (B, in) x (K, in, out) -> (K, B, out)
            if Ra is not None:
                Rz = Rz + torch.matmul(Ra, W.T)
            if db is not None:
                Rz = Rz + db[:, None, :]
            Rzs.append(Rz)
            Ra = Rz * d1s[l] if L.activation is not None else Rz
            Ras.append(Ra)
        RzL = Rzs[-1]
        # per-sample dots: ⟨p_j − Y_j, R z_L,j⟩ = B ⟨δ_L,j, R z_L,j⟩
        dots = (RzL * deltas[-1]).sum(2)  # (K, B), already divided by B through δ_L

        # R-backward
        Rdelta = p * (RzL - (p * RzL).sum(2, keepdim=True)) / B
        RgW: list[torch.Tensor] = [None] * len(mlp.layers)  # type: ignore[list-item]
        Rgb: list[torch.Tensor | None] = [None] * len(mlp.layers)
        for l in range(len(mlp.layers) - 1, -1, -1):
            a_prev, Ra_prev = acts[l], Ras[l]
            gw = torch.matmul(Rdelta.transpose(1, 2), a_prev)  # (K, out, in)
            if Ra_prev is not None:
                gw = gw + torch.matmul(deltas[l].T, Ra_prev)
            RgW[l] = gw
            Rgb[l] = Rdelta.sum(1) if mlp.layers[l].b_slice is not None else None
            if l > 0:
                below = mlp.layers[l - 1]
                Re = torch.matmul(Rdelta, Ws[l][0]) + torch.matmul(deltas[l], dWs[l])  # (K, B, in)
                if below.activation is None:
                    Rdelta = Re
                else:
                    Rdelta = Re * d1s[l - 1]
                    d2 = _d2(below.activation, zs[l - 1], acts[l], d1s[l - 1])
                    if d2 is not None:
                        Rdelta = Rdelta + es[l - 1] * d2 * Rzs[l - 1]
        return mlp._flat(RgW, Rgb, (K,)), dots
