"""Record a training run exactly: ``record(model, train, val, config, out)``.

The run is trained here, by minibatch SGD / Adam / AdamW written as pure functions
(:mod:`dit_core.optim`), so that it can be replayed bit for bit by the influence sweep
and by counterfactual replay.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from . import __version__
from ._functional import FunctionalModel, LossFn, torch_dtype
from ._io import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    SIGN_CONVENTION,
    commit_npy,
    open_npy_for_writing,
    save_npy,
    save_parquet,
    write_json,
)
from ._progress import progress_bar
from .config import TrainConfig
from .errors import ConfigError, DataError, ModelError, RunExistsError, TrainingDivergedError
from .optim import OptimizerSpec, init_state, step as optimizer_step
from .run import INITIAL_PARAMS, INITIAL_STATE

DataLike = Any  # (X, y) tensors/arrays, or a torch.utils.data.Dataset of (x, y)


# ----------------------------------------------------------------------------- data
def as_arrays(data: DataLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn ``(X, y)`` or a map-style Dataset of ``(x, y)`` pairs into NumPy arrays."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, (tuple, list)):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError(f"{name}: the Dataset must have a length (map-style)") from exc
        if n == 0:
            raise DataError(f"{name}: the Dataset is empty")
        xs, ys = [], []
        for i in range(n):
            item = data[i]
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError(f"{name}: Dataset item {i} must be an (x, y) pair, got {type(item).__name__}")
            xs.append(torch.as_tensor(item[0]))
            ys.append(torch.as_tensor(item[1]))
        X = torch.stack(xs).numpy()
        y = torch.stack(ys).numpy()
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = data
        X = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    else:
        raise DataError(f"{name} must be an (X, y) pair of tensors/arrays or a torch Dataset, got {type(data).__name__}")
    if X.ndim < 1 or X.shape[0] == 0:
        raise DataError(f"{name}: X is empty")
    if y.shape[0] != X.shape[0]:
        raise DataError(f"{name}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{name}: X must be numeric, got dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        bad = int(np.argwhere(~np.isfinite(X.reshape(len(X), -1)))[0, 0])
        raise DataError(f"{name}: X contains NaN or inf (first at row {bad})")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise DataError(f"{name}: y contains NaN or inf")
    return X, y


def _labels_tensor(y: np.ndarray, device) -> torch.Tensor:
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return torch.as_tensor(y.astype(np.int64), device=device)
    return torch.as_tensor(y, device=device)


# ----------------------------------------------------------------------------- checks
def check_layers(fm: FunctionalModel) -> None:
    """Refuse layers known to make the per-sample loss batch-dependent or random (BatchNorm, dropout)."""
    for name, module in fm.model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training:
            raise ModelError(
                f"layer {name or type(module).__name__!r} ({type(module).__name__}) is in training mode: its output "
                "depends on the other samples in the batch, so per-sample influence is undefined. "
                "Use GroupNorm/LayerNorm, or call .eval() on it to use fixed statistics."
            )
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ModelError(
                f"layer {name!r} ({type(module).__name__}, p={module.p}) draws random masks that DIT cannot "
                "replay exactly; set p=0 or call .eval() on it"
            )


def check_model(fm: FunctionalModel, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse models whose per-sample loss is random or depends on the rest of the batch."""
    check_layers(fm)
    k = min(4, X.shape[0])
    try:
        out = fm.outputs(theta, X[:k])
        losses = fm.loss_fn(out, y[:k])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"the model or loss failed on a batch of training data: {type(exc).__name__}: {exc}") from exc
    if losses.shape != (k,):
        raise ModelError(
            f"the loss must return one value per sample (shape ({k},)), got shape {tuple(losses.shape)}; "
            "use reduction='none'"
        )
    again = fm.losses(theta, X[:k], y[:k])
    if not torch.equal(losses, again):
        raise ModelError("the model's output is not deterministic (two evaluations differ): dropout or another random layer?")
    alone = torch.cat([fm.losses(theta, X[i : i + 1], y[i : i + 1]) for i in range(k)])
    tol = 1e-4 if fm.dtype == torch.float32 else 1e-9
    if not torch.allclose(losses, alone, rtol=tol, atol=tol):
        raise ModelError(
            "a sample's loss depends on the other samples in its batch (e.g. BatchNorm in training mode): "
            "per-sample influence is undefined for such a model"
        )


def check_labels(y: np.ndarray, n_outputs: int, name: str) -> None:
    """Refuse integer labels outside ``[0, n_outputs)``, naming the first bad value and its row."""
    y = np.asarray(y)
    bad = np.flatnonzero((y < 0) | (y >= n_outputs))
    if bad.size:
        row = int(bad[0])
        more = f" ({bad.size} rows in all)" if bad.size > 1 else ""
        raise DataError(
            f"{name}: label {y[row].item()!r} at row {row} is outside [0, {n_outputs}): the model has {n_outputs} "
            f"output{'s' if n_outputs != 1 else ''}{more}"
        )


def _is_class_labels(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.integer) or y.dtype == bool


# ----------------------------------------------------------------------------- margins
def margins(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit of the assigned label minus the largest other logit (B,); NaN if not a classifier."""
    if outputs.ndim != 2 or y.ndim != 1 or y.dtype != torch.int64 or outputs.shape[1] < 2:
        return torch.full((outputs.shape[0],), float("nan"), dtype=outputs.dtype, device=outputs.device)
    own = outputs.gather(1, y[:, None])[:, 0]
    others = outputs.scatter(1, y[:, None], float("-inf"))
    return own - others.max(dim=1).values


# ----------------------------------------------------------------------------- recording
def replay_step_values(n_params: int, state_size: int, linear: bool) -> int:
    """Values the sweep's exact replay caches per step in checkpoint mode.

    Each replayed step keeps θₜ (P values) and the optimizer state sₜ (S values); for
    optimizers that are not linear in the gradient (Adam/AdamW) also the mean gradient ḡₜ
    (P values), which their step's vector-Jacobian product needs.
    """
    return n_params + state_size + (0 if linear else n_params)


def plan_trajectory(config: TrainConfig, n_steps: int, row_values: int, cache_values: int, itemsize: int) -> tuple[str, int]:
    """Choose the trajectory mode and checkpoint spacing: returns (mode, every).

    ``row_values`` is what one stored row holds (θ and the optimizer state, P + S values):
    ``"auto"`` stores every step when ``n_steps + 1`` rows fit in ``max_trajectory_mb``.
    ``cache_values`` is what the replay between stored rows keeps per step
    (:func:`replay_step_values`): in checkpoint mode without ``checkpoint_every``, a
    segment holds as many steps as fit in ``replay_memory_mb``.
    """
    row_bytes = max(row_values, 1) * itemsize
    cache_bytes = max(cache_values, 1) * itemsize
    mode = config.trajectory
    if mode == "auto":
        mode = "full" if (n_steps + 1) * row_bytes <= config.max_trajectory_mb * 2**20 else "checkpoint"
    if mode == "full":
        return "full", 1
    every = config.checkpoint_every
    if every is None:
        every = int(config.replay_memory_mb * 2**20 // cache_bytes)
        if every < 1:
            raise ConfigError(
                f"TrainConfig.replay_memory_mb={config.replay_memory_mb} cannot hold even one replayed step of "
                f"{cache_values} values ({cache_bytes} bytes); raise it"
            )
    return "checkpoint", max(1, min(every, n_steps))


def stored_rows(mode: str, every: int, n_steps: int) -> np.ndarray:
    if mode == "full":
        return np.arange(n_steps + 1, dtype=np.int64)
    rows = list(range(0, n_steps, every)) + [n_steps]
    return np.asarray(sorted(set(rows)), dtype=np.int64)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise RunExistsError(f"run directory {out} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"cannot create the run directory {out}: {blocker} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
        work.mkdir()
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {out}: {exc.strerror or exc}") from exc
    return work


def _publish(work: Path, out: Path) -> Path:
    """Move the finished work directory to ``out``, replacing an old run only now."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)
    return out


def record(
    model: torch.nn.Module,
    train: DataLike,
    val: DataLike,
    config: TrainConfig | None = None,
    out: str | os.PathLike = "dit_run",
    *,
    loss_fn: LossFn | None = None,
    overwrite: bool = False,
    model_description: dict | None = None,
    dataset_description: dict | None = None,
    original_labels: Sequence[int] | None = None,
    is_corrupted: Sequence[bool] | None = None,
    progress: bool = True,
) -> Path:
    """Train ``model`` on ``train`` and record the run exactly into the directory ``out``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module mapping a batch of inputs to outputs. Its current parameters are the
        initial parameters θ₀. It must not contain batch-dependent layers in training mode
        (BatchNorm) nor active dropout: DIT refuses them with :class:`ModelError`.
    train, val : (X, y) pair of tensors/arrays, or a map-style ``torch.utils.data.Dataset``
        of ``(x, y)`` items. X has shape (n, *input_shape); y (n,).
    config : TrainConfig
        Epochs, batch size, learning rate and schedule, optimizer, seed, trajectory mode.
    out : path
        The run directory to write. An existing non-empty directory is only replaced with
        ``overwrite=True``, and only once the new run is complete.
    loss_fn : callable, optional
        ``loss_fn(outputs, targets) -> (B,)`` per-sample losses. Default: cross-entropy.
    model_description : dict, optional
        How to rebuild the model later (``{"kind": "builtin", ...}`` or
        ``{"kind": "factory", "factory": "pkg.mod:fn", "kwargs": {...}}``). Without it,
        ``compute``/``replay`` need the model passed in again.
    dataset_description : dict, optional
        Stored in the manifest (data set name, split, corruption settings).
    original_labels, is_corrupted : (n_train,) arrays, optional
        True labels and injected-corruption flags, kept in the per-sample table.
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path of the run directory.

    Raises
    ------
    DataError, ModelError, ConfigError, RunExistsError
        Bad input, before anything is written.
    TrainingDivergedError
        The loss became NaN/inf at some step; what was recorded so far is kept (marked
        incomplete) and the error names the step.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    X_train, y_train = as_arrays(train, "train")
    X_val, y_val = as_arrays(val, "val")
    if X_train.shape[1:] != X_val.shape[1:]:
        raise DataError(f"train samples have shape {X_train.shape[1:]} but val samples have shape {X_val.shape[1:]}")
    n = X_train.shape[0]
    for arr, label in ((original_labels, "original_labels"), (is_corrupted, "is_corrupted")):
        if arr is not None and len(arr) != n:
            raise DataError(f"{label} has {len(arr)} entries but train has {n} samples")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig.device={config.device!r} but CUDA is not available on this machine")

    device = torch.device(config.device)
    dtype = torch_dtype(config.dtype)
    fm = FunctionalModel(model, loss_fn, dtype, device)
    Xt = torch.as_tensor(X_train, dtype=dtype, device=device)
    yt = _labels_tensor(y_train, device)
    Xv = torch.as_tensor(X_val, dtype=dtype, device=device)
    yv = _labels_tensor(y_val, device)
    theta = fm.initial_theta()
    check_layers(fm)
    try:
        with torch.no_grad():
            probe = fm.outputs(theta, Xt[: min(4, n)])
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"the model failed on a batch of training data: {type(exc).__name__}: {exc}") from exc
    # integer labels index the outputs: cross-entropy (the default loss) and the recorded margins need them in range
    if probe.ndim == 2 and (loss_fn is None or probe.shape[1] >= 2):
        for arr, label in ((y_train, "train"), (y_val, "val")):
            if _is_class_labels(arr):
                check_labels(arr, int(probe.shape[1]), label)
    check_model(fm, theta, Xt, yt)
    check_model(fm, theta, Xv, yv)

    spec = OptimizerSpec.from_config(config)
    B = config.batch_size
    steps_per_epoch = math.ceil(n / B)
    n_steps = config.epochs * steps_per_epoch
    lrs = config.learning_rates(steps_per_epoch)
    P = fm.n_params
    S = spec.state_size(P)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    mode, every = plan_trajectory(
        config, n_steps, P + S, replay_step_values(P, S, spec.is_linear), np.dtype(np_dtype).itemsize
    )
    rows = stored_rows(mode, every, n_steps)
    row_index = {int(s): i for i, s in enumerate(rows)}

    out = Path(out)
    work = _prepare_out(out, overwrite)
    try:
        return _train_and_write(
            fm, Xt, yt, Xv, yv, X_train, y_train, X_val, y_val, theta, spec, config, lrs, steps_per_epoch,
            n_steps, mode, every, rows, row_index, np_dtype, work, out, loss_fn, model_description,
            dataset_description, original_labels, is_corrupted, progress,
        )
    except TrainingDivergedError:
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _train_and_write(
    fm, Xt, yt, Xv, yv, X_train, y_train, X_val, y_val, theta, spec, config, lrs, steps_per_epoch,
    n_steps, mode, every, rows, row_index, np_dtype, work, out, loss_fn, model_description,
    dataset_description, original_labels, is_corrupted, progress,
) -> Path:
    n = Xt.shape[0]
    E = config.epochs
    B = config.batch_size
    P = fm.n_params
    S = spec.state_size(P)
    save_npy(work / "train_X.npy", X_train)
    save_npy(work / "train_y.npy", y_train)
    save_npy(work / "val_X.npy", X_val)
    save_npy(work / "val_y.npy", y_val)
    # θ₀ and the initial optimizer state on their own, so that a stripped run keeps them
    save_npy(work / INITIAL_PARAMS, theta.detach().cpu().numpy().astype(np_dtype, copy=False))
    if S:
        save_npy(work / INITIAL_STATE, init_state(spec, theta).detach().cpu().numpy().astype(np_dtype, copy=False))

    traj_dir = work / "trajectory"
    traj_dir.mkdir()
    params_mm, params_tmp = open_npy_for_writing(traj_dir / "params.npy", (len(rows), P), np_dtype)
    state_mm, state_tmp = (open_npy_for_writing(traj_dir / "state.npy", (len(rows), S), np_dtype) if S else (None, None))

    rng = np.random.default_rng(config.seed)
    batch_ids = np.empty(E * n, dtype=np.int64)
    offsets = np.zeros(n_steps + 1, dtype=np.int64)
    sample_step = np.full((n, E), -1, dtype=np.int64)
    sample_loss = np.full((n, E), np.nan, dtype=np_dtype)
    sample_margin = np.full((n, E), np.nan, dtype=np_dtype)
    batch_loss = np.full(n_steps, np.nan)
    epoch_rows = []
    grad_fn = fm.grad_and_aux
    state = init_state(spec, theta)

    def eval_val(th):
        with torch.no_grad():
            out_v = fm.outputs(th, Xv)
            lv = fm.loss_fn(out_v, yv)
            acc = float((out_v.argmax(1) == yv).double().mean()) if out_v.ndim == 2 and yv.dtype == torch.int64 else float("nan")
        return float(lv.mean()), acc

    def store_row(t, th, st):
        if t in row_index:
            params_mm[row_index[t]] = th.detach().cpu().numpy()
            if S:
                state_mm[row_index[t]] = st.detach().cpu().numpy()

    initial_val_loss, initial_val_acc = eval_val(theta)
    store_row(0, theta, state)
    started = _dt.datetime.now(_dt.timezone.utc)
    bar = progress_bar(total=n_steps, desc="training", disable=not progress, unit="step")
    t = 0
    diverged_at = None
    for e in range(E):
        perm = rng.permutation(n)
        batch_ids[e * n : (e + 1) * n] = perm
        for b in range(steps_per_epoch):
            ids_np = perm[b * B : (b + 1) * B]
            ids = torch.as_tensor(ids_np, device=Xt.device)
            Xb, yb = Xt[ids], yt[ids]
            ones = torch.ones(len(ids_np), dtype=fm.dtype, device=Xt.device)
            g, (losses, outputs) = grad_fn(theta, Xb, yb, ones, len(ids_np))
            loss_value = float(losses.sum() / len(ids_np))
            offsets[t + 1] = offsets[t] + len(ids_np)
            sample_step[ids_np, e] = t
            sample_loss[ids_np, e] = losses.detach().cpu().numpy()
            sample_margin[ids_np, e] = margins(outputs.detach(), yb).cpu().numpy()
            batch_loss[t] = loss_value
            if not math.isfinite(loss_value) or not bool(torch.isfinite(g).all()):
                diverged_at = t
                break
            theta, state = optimizer_step(spec, theta, state, g, lrs[t], t)
            t += 1
            store_row(t, theta, state)
            bar.update(1)
        if diverged_at is not None:
            break
        vl, va = eval_val(theta)
        epoch_rows.append(
            {"epoch": e, "end_step": t, "train_loss": float(np.mean(batch_loss[t - steps_per_epoch : t])), "val_loss": vl, "val_accuracy": va}
        )
        bar.set_postfix(epoch=e + 1, val_loss=f"{vl:.4f}")
    bar.close()

    commit_npy(params_mm, params_tmp, traj_dir / "params.npy")
    if S:
        commit_npy(state_mm, state_tmp, traj_dir / "state.npy")
    save_npy(traj_dir / "steps.npy", rows)

    done_steps = n_steps if diverged_at is None else diverged_at
    n_logged = n_steps if diverged_at is None else diverged_at + 1
    steps_df = pd.DataFrame(
        {
            "step": np.arange(n_logged),
            "epoch": np.arange(n_logged) // steps_per_epoch,
            "lr": np.asarray(lrs[:n_logged]),
            "batch_size": np.diff(offsets[: n_logged + 1]),
            "batch_loss": batch_loss[:n_logged],
        }
    )
    save_parquet(work / "steps.parquet", steps_df)
    save_parquet(work / "epochs.parquet", pd.DataFrame(epoch_rows, columns=["epoch", "end_step", "train_loss", "val_loss", "val_accuracy"]))
    save_npy(work / "batch_ids.npy", batch_ids[: offsets[n_logged]])
    save_npy(work / "batch_offsets.npy", offsets[: n_logged + 1])
    save_npy(work / "sample_step.npy", sample_step)
    save_npy(work / "sample_loss.npy", sample_loss)
    save_npy(work / "sample_margin.npy", sample_margin)
    y_int = y_train.astype(np.int64) if np.issubdtype(y_train.dtype, np.integer) else None
    samples = pd.DataFrame({"sample_id": np.arange(n)})
    if y_int is not None:
        samples["label"] = y_int
    if original_labels is not None:
        samples["original_label"] = np.asarray(original_labels, dtype=np.int64)
    if is_corrupted is not None:
        samples["is_corrupted"] = np.asarray(is_corrupted, dtype=bool)
    save_parquet(work / "samples.parquet", samples)

    if model_description is None:
        model_description = {"kind": "user", "class": f"{type(fm.model).__module__}.{type(fm.model).__qualname__}"}
    loss_description = {"kind": "builtin", "name": "cross_entropy"} if loss_fn is None else {"kind": "user", "name": getattr(loss_fn, "__qualname__", repr(loss_fn))}
    n_classes = None
    with torch.no_grad():
        probe = fm.outputs(theta, Xv[:1])
    if probe.ndim == 2:
        n_classes = int(probe.shape[1])
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dit_version": __version__,
        "run_id": uuid.uuid4().hex[:12],
        "created": started.isoformat(timespec="seconds"),
        "complete": diverged_at is None,
        "status": "complete" if diverged_at is None else "diverged",
        "diverged_at_step": diverged_at,
        "n_train": n,
        "n_val": int(Xv.shape[0]),
        "n_epochs": config.epochs if diverged_at is None else len(epoch_rows),
        "n_steps": done_steps,
        "steps_per_epoch": steps_per_epoch,
        "n_params": P,
        "n_classes": n_classes,
        "input_shape": list(X_train.shape[1:]),
        "config": config.to_dict(),
        "optimizer": spec.describe(),
        "schedule": {"name": config.schedule, "lr": config.lr},
        "trajectory": {"mode": mode, "every": every, "n_rows": int(len(rows)), "state_size": S},
        "initial_val_loss": initial_val_loss,
        "initial_val_accuracy": initial_val_acc,
        "model": model_description,
        "params": fm.describe_params(),
        "loss": loss_description,
        "dataset": dataset_description or {},
        "sign_convention": SIGN_CONVENTION,
        "training_seconds": (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(),
    }
    write_json(work / MANIFEST, manifest)
    if diverged_at is not None:
        target = out if not out.exists() else work
        if target == out:
            _publish(work, out)
        raise TrainingDivergedError(
            f"the training loss became {batch_loss[diverged_at]} at step {diverged_at} "
            f"(epoch {diverged_at // steps_per_epoch + 1} of {E}); lower the learning rate. What was recorded up to that step is "
            f"kept in {target} and marked incomplete.",
            step=diverged_at,
            run_dir=str(target),
        )
    return _publish(work, out)
