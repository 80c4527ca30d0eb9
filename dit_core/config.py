"""Training configuration (frozen dataclass)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")
TRAJECTORY_MODES = ("auto", "full", "checkpoint")
DTYPES = ("float32", "float64")


_INT_FIELDS = ("epochs", "batch_size", "step_every", "seed", "checkpoint_every")
_OPTIONAL_FIELDS = ("checkpoint_every",)
_NUMBER_FIELDS = ("lr", "step_gamma", "min_lr", "momentum", "dampening", "weight_decay", "eps", "max_trajectory_mb", "replay_memory_mb")
_STR_FIELDS = ("schedule", "optimizer", "trajectory", "dtype", "device")


@dataclass(frozen=True)
class TrainConfig:
    """How a run is trained and recorded.

    Parameters
    ----------
    epochs : int
        Number of passes over the training set. Each sample is used exactly once
        per epoch (the last minibatch of an epoch may be smaller).
    batch_size : int
        Minibatch size. The minibatch gradient is the *sum* of per-sample gradients
        divided by the batch's size.
    lr : float
        Base learning rate.
    schedule : {"constant", "step", "cosine"}
        Learning-rate schedule, evaluated per step. ``"step"`` multiplies the rate by
        ``step_gamma`` every ``step_every`` epochs; ``"cosine"`` anneals from ``lr`` to
        ``min_lr`` over all steps.
    optimizer : {"sgd", "adam", "adamw"}
        ``"sgd"`` honours ``momentum``, ``dampening``, ``nesterov`` and ``weight_decay``
        exactly like ``torch.optim.SGD``; ``"adam"``/``"adamw"`` honour ``betas``, ``eps``
        and ``weight_decay`` like ``torch.optim.Adam``/``AdamW``.
    seed : int
        Seeds the minibatch order (the model's initial parameters are the model's own).
    trajectory : {"auto", "full", "checkpoint"}
        ``"full"`` stores the parameters after every step (small models). ``"checkpoint"``
        stores them every ``checkpoint_every`` steps; the sweep replays exactly in between
        and checks the replay against the stored checkpoints. ``"auto"`` picks ``"full"``
        when the whole trajectory fits in ``max_trajectory_mb``.
    checkpoint_every : int or None
        Steps between stored checkpoints in checkpoint mode. ``None`` derives it from
        ``replay_memory_mb``, so that one replayed segment fits in it.
    max_trajectory_mb : float
        ``"auto"`` stores every step when the whole trajectory (parameters and optimizer
        state, ``n_steps + 1`` rows) fits in this many MiB, else it uses checkpoint mode.
    replay_memory_mb : float
        The most memory (MiB) the exact replay between stored checkpoints keeps in the
        sweep: per replayed step the parameters, the optimizer state and, for Adam/AdamW,
        the mean gradient. A segment longer than fits (``checkpoint_every`` set by hand) is
        replayed in pieces that do.
    dtype : {"float32", "float64"}
        Precision of training, the sweep and replay.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    schedule: str = "constant"
    step_every: int = 10
    step_gamma: float = 0.1
    min_lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    trajectory: str = "auto"
    checkpoint_every: int | None = None
    max_trajectory_mb: float = 256.0
    replay_memory_mb: float = 256.0
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        # types first, so that every later check compares numbers with numbers
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if v is None and name in _OPTIONAL_FIELDS:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                bad(name, "must be an integer")
            object.__setattr__(self, name, int(v))
        for name in _NUMBER_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                bad(name, "must be a finite number")
            object.__setattr__(self, name, float(v))
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                bad(name, "must be a string")
        if not isinstance(self.nesterov, (bool, np.bool_)):
            bad("nesterov", "must be True or False")
        object.__setattr__(self, "nesterov", bool(self.nesterov))
        try:
            betas = tuple(self.betas)
        except TypeError:
            bad("betas", "must be two numbers in [0, 1)")
        if len(betas) != 2 or not all(isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool) for b in betas):
            bad("betas", "must be two numbers in [0, 1)")

        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "must be a positive integer")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad("batch_size", "must be a positive integer")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "must be a positive finite number")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.step_every < 1:
            bad("step_every", "must be >= 1 epoch")
        if not 0 < self.step_gamma <= 1:
            bad("step_gamma", "must lie in (0, 1]")
        if not 0 <= self.min_lr <= self.lr:
            bad("min_lr", "must lie in [0, lr]")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            bad("momentum", "must lie in [0, 1)")
        if not 0 <= self.dampening < 1:
            bad("dampening", "must lie in [0, 1)")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            bad("nesterov", "needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)")
        if self.optimizer != "sgd" and (self.momentum or self.nesterov or self.dampening):
            bad("momentum", f"momentum/nesterov/dampening apply to sgd only, not {self.optimizer}")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if len(tuple(self.betas)) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.eps <= 0:
            bad("eps", "must be > 0")
        if self.trajectory not in TRAJECTORY_MODES:
            bad("trajectory", f"must be one of {', '.join(TRAJECTORY_MODES)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            bad("checkpoint_every", "must be >= 1 or None")
        if self.max_trajectory_mb <= 0 or self.replay_memory_mb <= 0:
            bad("replay_memory_mb", "memory bounds must be > 0")
        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {', '.join(DTYPES)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            bad("device", "must be 'cpu', 'cuda' or 'cuda:N'")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def learning_rates(self, steps_per_epoch: int) -> list[float]:
        """The learning rate of every step, ``epochs * steps_per_epoch`` values."""
        n_steps = self.epochs * steps_per_epoch
        out = []
        for t in range(n_steps):
            if self.schedule == "constant":
                lr = self.lr
            elif self.schedule == "step":
                lr = self.lr * self.step_gamma ** ((t // steps_per_epoch) // self.step_every)
            else:
                lr = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / n_steps))
            out.append(float(lr))
        return out


__all__ = ["TrainConfig", "SCHEDULES", "OPTIMIZERS"]
