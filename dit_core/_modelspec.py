"""Describe a model so that a run can rebuild it, and rebuild it from that description."""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from .errors import ConfigError, ModelError


def resolve_factory(spec: str) -> Callable[..., torch.nn.Module]:
    """Import ``"package.module:function"`` and return the function."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"model factory {spec!r} must look like 'package.module:function'")
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure clearly
        raise ConfigError(f"cannot import module {mod_name!r} of model factory {spec!r}: {exc}") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"module {mod_name!r} has no attribute {attr!r} (model factory {spec!r})")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"model factory {spec!r} is not callable")
    return fn


def build_from_description(desc: dict[str, Any]) -> torch.nn.Module:
    kind = desc.get("kind")
    if kind == "builtin":
        from .models import build_model

        kwargs = {k: v for k, v in desc.items() if k != "kind"}
        if "hidden" in kwargs:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        if "input_shape" in kwargs:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        return build_model(**kwargs)
    if kind == "factory":
        model = resolve_factory(desc["factory"])(**desc.get("kwargs", {}))
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"model factory {desc['factory']!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise ModelError(
        f"this run was recorded with a user model ({desc.get('class', '?')}) that DIT cannot rebuild; "
        "pass model=<an instance of the same architecture> (and loss_fn=... if a custom loss was used)"
    )


def check_param_layout(expected: list[dict], actual: list[dict]) -> None:
    if [(p["name"], list(p["shape"])) for p in expected] != [(p["name"], list(p["shape"])) for p in actual]:
        exp = ", ".join(f"{p['name']}{tuple(p['shape'])}" for p in expected)
        act = ", ".join(f"{p['name']}{tuple(p['shape'])}" for p in actual)
        raise ModelError(f"the model's parameters do not match the recorded run: run has [{exp}] but model has [{act}]")
