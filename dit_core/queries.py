"""Queries: the differentiable scalars f(θ) whose change the influence measures.

Allowed query strings (default ``"val_loss"``):

- ``"val_loss"``: mean loss over the validation set.
- ``"class_loss=C"``: mean validation loss over the validation samples of class C.
- ``"test_loss=I"``: loss of validation (test) sample I.
- ``"test_logit=I"``: the logit of validation sample I's own label;
  ``"test_logit=I:C"``: its logit for class C.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError

_PATTERN = re.compile(r"^(val_loss|class_loss=(\d+)|test_loss=(\d+)|test_logit=(\d+)(?::(\d+))?)$")


@dataclass(frozen=True)
class Query:
    name: str  # canonical string
    kind: str  # val_loss | class_loss | test_loss | test_logit
    index: int | None = None  # class (class_loss) or validation sample (test_*)
    cls: int | None = None  # class for test_logit

    @property
    def is_loss(self) -> bool:
        return self.kind != "test_logit"

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name)


def parse_query(text: str) -> Query:
    if isinstance(text, Query):
        return text
    m = _PATTERN.match(str(text).strip())
    if not m:
        raise ConfigError(
            f"unknown query {text!r}; use 'val_loss', 'class_loss=C', 'test_loss=I', 'test_logit=I' or 'test_logit=I:C'"
        )
    name = m.group(1)
    if name == "val_loss":
        return Query("val_loss", "val_loss")
    if m.group(2) is not None:
        return Query(name, "class_loss", int(m.group(2)))
    if m.group(3) is not None:
        return Query(name, "test_loss", int(m.group(3)))
    cls = int(m.group(5)) if m.group(5) is not None else None
    return Query(name, "test_logit", int(m.group(4)), cls)


def query_function(query: Query, fm, X_val: torch.Tensor, y_val: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(θ) -> scalar for this query, checked against the validation set."""
    n_val = X_val.shape[0]
    if query.kind == "val_loss":
        return lambda theta: fm.losses(theta, X_val, y_val).mean()
    if query.kind == "class_loss":
        mask = y_val == query.index
        count = int(mask.sum())
        if count == 0:
            raise ConfigError(f"query {query.name!r}: the validation set has no sample of class {query.index}")
        Xc, yc = X_val[mask], y_val[mask]
        return lambda theta: fm.losses(theta, Xc, yc).mean()
    if not 0 <= query.index < n_val:
        raise ConfigError(f"query {query.name!r}: validation sample {query.index} does not exist (n_val = {n_val})")
    i = query.index
    Xi, yi = X_val[i : i + 1], y_val[i : i + 1]
    if query.kind == "test_loss":
        return lambda theta: fm.losses(theta, Xi, yi)[0]
    cls = query.cls if query.cls is not None else int(yi[0])
    with torch.no_grad():  # the model's output width, to check the class before any sweep starts
        probe = fm.outputs(fm.initial_theta().to(device=X_val.device, dtype=X_val.dtype), Xi)
    if probe.ndim != 2:
        raise ConfigError(f"query {query.name!r}: logits need a model with (batch, classes) outputs, got shape {tuple(probe.shape)}")
    if not 0 <= cls < probe.shape[1]:
        raise ConfigError(
            f"query {query.name!r}: class {cls} does not exist; the model has {probe.shape[1]} outputs (classes 0..{probe.shape[1] - 1})"
        )
    return lambda theta: fm.outputs(theta, Xi)[0, cls]
