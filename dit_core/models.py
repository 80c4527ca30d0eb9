"""Built-in models for DIT: small, deterministic, batch-independent.

Every model maps a batch ``(B, *input_shape)`` to raw logits ``(B, n_classes)``.
None uses BatchNorm or Dropout, so a sample's loss does not depend on the rest
of its batch, and the forward pass is deterministic.

``describe_model`` returns a JSON-serialisable dict from which
``build_model(**desc)`` rebuilds the same architecture (and, with a seed, the
same initial parameters).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dit_core.errors import ConfigError, ModelError

BUILTIN_MODELS = ("logreg", "mlp", "cnn")

ACTIVATIONS = ("relu", "tanh")

# Options each built-in model uses, with their defaults. ``hidden`` is also a
# named argument of build_model; options that belong to another built-in model
# are accepted and ignored, options no model knows are an error.
_MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "logreg": {},
    # tanh by default: first-order influence is faithful on smooth models; ReLU's kinks
    # lowered the Pearson correlation with exact replay from 0.998 to 0.90 on digits.
    "mlp": {"hidden": (32,), "activation": "tanh"},
    "cnn": {"channels": (8, 16), "activation": "tanh"},
}
_ALL_OPTIONS = sorted({k for opts in _MODEL_OPTIONS.values() for k in opts})


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    n_classes: int,
    *,
    hidden: tuple[int, ...] = (32,),
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a built-in classifier returning raw logits ``(B, n_classes)``.

    Parameters
    ----------
    name : {"logreg", "mlp", "cnn"}
        - "logreg": Flatten, Linear(d, C).
        - "mlp": Flatten, then Linear + activation per entry of ``hidden``, then Linear(C).
        - "cnn": for images ``(C_in, H, W)``: Conv2d(C_in, c1, 3, padding=1), activation,
          Conv2d(c1, c2, 3, padding=1), activation, AvgPool2d down to about 4x4,
          Flatten, Linear(C). ``(c1, c2)`` is ``channels``, default (8, 16).
    input_shape : tuple of int
        Shape of one sample, e.g. ``(30,)`` or ``(1, 8, 8)``.
    n_classes : int
        At least 2.
    hidden : tuple of int, default (32,)
        Hidden layer widths of "mlp" (may be empty). Ignored by other models.
    seed : int or None, default None
        Seeds the initial parameters through a local ``torch.Generator``; the
        global torch RNG is left unchanged. None: torch's global RNG, as usual.
    **kwargs
        ``activation`` : {"relu", "tanh"}, default "tanh" (mlp, cnn): smooth models keep
          first-order influence faithful to exact replay.
        ``channels`` : tuple of 2 int, default (8, 16) (cnn).

    Returns
    -------
    torch.nn.Module
        float32, on the CPU.

    Raises
    ------
    ModelError
        Unknown model name, or "cnn" on input that is not ``(C_in, H, W)``.
    ConfigError
        A bad option value, or an option no built-in model knows.
    """
    name, input_shape, n_classes, options, seed = _normalise(
        name, input_shape, n_classes, hidden, seed, kwargs
    )
    if seed is None:
        return _construct(name, input_shape, n_classes, options)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        model = _construct(name, input_shape, n_classes, options)
    _reset_parameters(model, generator)
    return model


def describe_model(name: str, input_shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> dict[str, Any]:
    """JSON-serialisable description such that ``build_model(**desc)`` rebuilds the model.

    Accepts the same arguments as ``build_model`` (``hidden``, ``seed``,
    ``activation``, ``channels``). Defaults are filled in and options the model
    does not use are dropped, e.g.
    ``{"name": "mlp", "input_shape": [64], "n_classes": 10, "seed": 0,
    "hidden": [32], "activation": "tanh"}``.
    """
    hidden = kwargs.pop("hidden", _MODEL_OPTIONS["mlp"]["hidden"])
    seed = kwargs.pop("seed", None)
    name, input_shape, n_classes, options, seed = _normalise(
        name, input_shape, n_classes, hidden, seed, kwargs
    )
    if name == "cnn":
        _check_image_shape(input_shape)
    desc: dict[str, Any] = {
        "name": name,
        "input_shape": list(input_shape),
        "n_classes": n_classes,
        "seed": seed,
    }
    for key, value in options.items():
        desc[key] = list(value) if isinstance(value, tuple) else value
    return desc


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- #
# Internals
# --------------------------------------------------------------------------- #


def _normalise(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    hidden: Sequence[int],
    seed: int | None,
    kwargs: dict[str, Any],
) -> tuple[str, tuple[int, ...], int, dict[str, Any], int | None]:
    """Validate arguments; return the options ``name`` uses, with defaults filled in."""
    if name not in BUILTIN_MODELS:
        raise ModelError(f"unknown model {name!r}; valid names are {', '.join(BUILTIN_MODELS)}")
    unknown = sorted(set(kwargs) - set(_ALL_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown model option(s) {', '.join(unknown)}; "
            f"options are hidden, seed, {', '.join(k for k in _ALL_OPTIONS if k != 'hidden')}"
        )
    input_shape = _check_int_tuple("input_shape", input_shape, min_len=1)
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 2:
        raise ConfigError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    seed = None if seed is None else int(seed)

    given = dict(kwargs, hidden=hidden)
    options: dict[str, Any] = {}
    for key, default in _MODEL_OPTIONS[name].items():
        options[key] = given.get(key, default)
    if "hidden" in options:
        options["hidden"] = _check_int_tuple("hidden", options["hidden"], min_len=0)
    if "activation" in options and options["activation"] not in ACTIVATIONS:
        raise ConfigError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {options['activation']!r}"
        )
    if "channels" in options:
        options["channels"] = _check_int_tuple("channels", options["channels"], min_len=2)
        if len(options["channels"]) != 2:
            raise ConfigError(f"channels must have 2 entries (c1, c2), got {list(options['channels'])}")
    return name, input_shape, int(n_classes), options, seed


def _check_int_tuple(field_name: str, value: Any, *, min_len: int) -> tuple[int, ...]:
    if hasattr(value, "tolist"):  # numpy arrays / tensors
        value = value.tolist()
    if isinstance(value, (numbers.Integral, str)) or not isinstance(value, Sequence):
        raise ConfigError(f"{field_name} must be a sequence of positive integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ConfigError(f"{field_name} must contain positive integers, got {list(value)!r}")
        out.append(int(v))
    if len(out) < min_len:
        raise ConfigError(f"{field_name} must have at least {min_len} entries, got {list(value)!r}")
    return tuple(out)


def _check_image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError(
            f"model 'cnn' needs image input of shape (C_in, H, W), got input_shape "
            f"{tuple(input_shape)}; use 'logreg' or 'mlp' for tabular data"
        )
    return input_shape  # type: ignore[return-value]


def _construct(
    name: str, input_shape: tuple[int, ...], n_classes: int, options: dict[str, Any]
) -> nn.Module:
    d = math.prod(input_shape)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(d, n_classes))
    if name == "mlp":
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[options["activation"]]
        layers: list[nn.Module] = [nn.Flatten()]
        width = d
        for h in options["hidden"]:
            layers += [nn.Linear(width, h), act()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    # cnn
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[options["activation"]]
    c_in, height, width_ = _check_image_shape(input_shape)
    c1, c2 = options["channels"]
    kh, kw = max(1, height // 4), max(1, width_ // 4)
    out_h, out_w = height // kh, width_ // kw
    return nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1),
        act(),
        nn.Conv2d(c1, c2, 3, padding=1),
        act(),
        nn.AvgPool2d(kernel_size=(kh, kw), stride=(kh, kw)),
        nn.Flatten(),
        nn.Linear(c2 * out_h * out_w, n_classes),
    )


def _reset_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-draw Linear/Conv2d parameters with torch's default distribution from ``generator``.

    torch's default init (kaiming_uniform with a=sqrt(5), and the matching bias
    init) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both weight and bias.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)


__all__ = ["BUILTIN_MODELS", "ACTIVATIONS", "build_model", "describe_model", "count_parameters"]
