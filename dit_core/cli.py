"""The ``dit`` command line: train, compute, info, export (and more).

Run ``dit --help`` or ``dit COMMAND --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .config import TrainConfig as _TrainConfig
from .errors import DITError

_DEFAULTS = _TrainConfig()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _checkpoints(text: str):
    if text in ("epochs", "final"):
        return text
    return list(_ints(text))


# ----------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train and record a run on a built-in or user data set",
        description="Train a model with exactly recorded minibatch SGD/Adam and write a run directory.",
    )
    p.add_argument("data", help="built-in data set (digits, breast_cancer, wine, iris) or a path to .npz (X, y) / .csv")
    p.add_argument("--model", default="mlp", help="logreg, mlp, cnn, or a factory 'package.module:function' (default: mlp)")
    p.add_argument("--model-kwargs", default="{}",
                   help="JSON keyword arguments for a model factory, or options of a built-in model, e.g. "
                   "'{\"hidden\": [64, 32], \"activation\": \"relu\"}' (they override --hidden/--activation)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory (only once the new run is complete)")
    p.add_argument("--epochs", type=int, default=_DEFAULTS.epochs, help=f"passes over the training set (default {_DEFAULTS.epochs})")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help=f"minibatch size (default {_DEFAULTS.batch_size})")
    p.add_argument("--lr", type=float, default=_DEFAULTS.lr, help=f"base learning rate (default {_DEFAULTS.lr:g})")
    p.add_argument("--schedule", default="constant", choices=("constant", "step", "cosine"))
    p.add_argument("--step-every", type=int, default=10, help="epochs between decays (step schedule)")
    p.add_argument("--step-gamma", type=float, default=0.1)
    p.add_argument("--min-lr", type=float, default=_DEFAULTS.min_lr, help="final learning rate of the cosine schedule (default 0)")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"))
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--dampening", type=float, default=0.0)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("BETA1", "BETA2"))
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--seed", type=int, default=0, help="minibatch order and model initialisation")
    p.add_argument("--hidden", type=_ints, default=(32,), help="hidden sizes of the MLP, e.g. 64,32 (default 32)")
    p.add_argument("--activation", default="tanh", choices=("tanh", "relu"))
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--corruption", type=float, default=0.0, help="fraction of training labels to flip to another class")
    p.add_argument("--corruption-seed", type=int, default=0)
    p.add_argument("--label-column", default="label", help="label column of a CSV file")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--trajectory", default="auto", choices=("auto", "full", "checkpoint"),
        help="store the parameters after every step (full), every --checkpoint-every steps with exact replay in "
        "between (checkpoint), or full when it fits in --max-trajectory-mb (auto, default)",
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=None,
        help="steps between stored parameters in checkpoint mode (default: as many as fit in --replay-memory-mb)",
    )
    p.add_argument(
        "--max-trajectory-mb", type=float, default=_DEFAULTS.max_trajectory_mb,
        help=f"auto mode stores every step when the whole trajectory fits in this many MiB (default {_DEFAULTS.max_trajectory_mb:g})",
    )
    p.add_argument(
        "--replay-memory-mb", type=float, default=_DEFAULTS.replay_memory_mb,
        help="memory (MiB) the exact replay between stored checkpoints may keep during the sweep "
        f"(default {_DEFAULTS.replay_memory_mb:g})",
    )
    p.add_argument("--compute", action="store_true", help="also compute influence (epoch checkpoints, val_loss)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import torch  # noqa: F401  (imported here to keep `dit --help` fast)

    from ._modelspec import resolve_factory
    from .config import TrainConfig
    from .data import load_dataset
    from .errors import ConfigError
    from .models import BUILTIN_MODELS, build_model, describe_model
    from .record import record

    ds = load_dataset(
        args.data,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        corruption_rate=args.corruption,
        corruption_seed=args.corruption_seed,
        label_column=args.label_column,
    )
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--model-kwargs is not valid JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise ConfigError("--model-kwargs must be a JSON object")
    if args.model in BUILTIN_MODELS:
        # --model-kwargs may set any option of the built-in model (hidden, activation, channels) and
        # takes precedence over --hidden/--activation; an option no built-in model knows is refused
        options = {"hidden": args.hidden, "activation": args.activation, "seed": args.seed, **kwargs}
        if "hidden" in kwargs and isinstance(kwargs["hidden"], list):
            options["hidden"] = tuple(kwargs["hidden"])
        desc = describe_model(args.model, ds.input_shape, ds.n_classes, **options)
        model = build_model(**desc)
        model_description = {"kind": "builtin", **desc}
    elif ":" in args.model:
        torch.manual_seed(args.seed)
        model = resolve_factory(args.model)(**kwargs)
        model_description = {"kind": "factory", "factory": args.model, "kwargs": kwargs}
    else:
        raise ConfigError(f"unknown model {args.model!r}; use one of {', '.join(BUILTIN_MODELS)} or 'package.module:function'")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        schedule=args.schedule,
        step_every=args.step_every,
        step_gamma=args.step_gamma,
        min_lr=args.min_lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        dampening=args.dampening,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        betas=tuple(args.betas),
        eps=args.eps,
        seed=args.seed,
        trajectory=args.trajectory,
        checkpoint_every=args.checkpoint_every,
        max_trajectory_mb=args.max_trajectory_mb,
        replay_memory_mb=args.replay_memory_mb,
        dtype=args.dtype,
        device=args.device,
    )
    out = record(
        model,
        (ds.X_train, ds.y_train),
        (ds.X_val, ds.y_val),
        config,
        args.out,
        overwrite=args.overwrite,
        model_description=model_description,
        dataset_description=ds.describe(),
        original_labels=ds.original_y_train,
        is_corrupted=ds.is_corrupted,
        progress=not args.quiet,
    )
    from .run import load_run

    run = load_run(out)
    last = run.epochs.iloc[-1]
    print(
        f"recorded {out}: {run.n_train} training samples, {run.n_epochs} epochs, {run.n_steps} steps, "
        f"final val loss {last['val_loss']:.4f}, val accuracy {last['val_accuracy']:.3f} "
        f"({run.manifest['training_seconds']:.1f} s)"
    )
    first = run.manifest.get("initial_val_loss")
    if first is not None and np.isfinite(first) and float(last["val_loss"]) > 2 * max(float(first), 1e-12):
        print(
            f"dit train: warning: the validation loss rose from {first:.4g} before training to {last['val_loss']:.4g}; "
            "training may have diverged (try a lower --lr). Influence of such a run says little.",
            file=sys.stderr,
        )
    if args.compute:
        from .sweep import compute

        run = compute(out, progress=not args.quiet)
        print(f"influence computed at {len(run.checkpoints)} checkpoints ({run.influence_manifest['sweep_seconds']:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- compute
def _add_compute(sub) -> None:
    p = sub.add_parser("compute", help="compute the time-varying influence of a recorded run (one reverse sweep)")
    p.add_argument("run", help="run directory")
    p.add_argument("--checkpoints", type=_checkpoints, default="epochs", help="'epochs' (default), 'final', or steps like 100,200,300")
    p.add_argument(
        "--query",
        action="append",
        dest="queries",
        help="val_loss (default), class_loss=C, test_loss=I, test_logit=I[:C]; repeat for several",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--no-self-influence", action="store_true", help="skip per-sample gradient norms at checkpoints (TracIn)")
    p.add_argument("--overwrite", action="store_true", help="replace influence computed with other checkpoints/queries")
    p.add_argument(
        "--method", choices=["auto", "analytic", "reverse", "jvp"], default="auto",
        help="how each step's HVPs and per-sample dots are formed: closed form for Linear/Tanh/ReLU stacks with "
        "cross-entropy (analytic), one batched double-backward (reverse), or torch.func forward-mode JVPs (jvp); "
        "auto (default) takes analytic where the model allows it, else reverse; same numbers",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_compute)


def cmd_compute(args) -> int:
    from .sweep import compute

    run = compute(
        args.run,
        checkpoints=args.checkpoints,
        queries=tuple(args.queries or ("val_loss",)),
        device=args.device,
        self_influence=not args.no_self_influence,
        overwrite=args.overwrite,
        progress=not args.quiet,
        method=args.method,
    )
    im = run.influence_manifest
    print(
        f"influence of {run.n_train} samples at {len(run.checkpoints)} checkpoints for {', '.join(run.queries)} "
        f"written to {run.path / 'influence'} ({im['sweep_seconds']:.1f} s sweep)"
    )
    return 0


# ----------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise a run directory")
    p.add_argument("run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_info)


def run_summary(run) -> dict:
    m = run.manifest
    last = run.epochs.iloc[-1] if len(run.epochs) else None
    summary = {
        "path": str(run.path),
        "run_id": run.run_id,
        "dataset": m.get("dataset", {}).get("name"),
        "model": m["model"].get("name") or m["model"].get("factory") or m["model"].get("class"),
        "optimizer": m["optimizer"],
        "schedule": m["schedule"],
        "n_train": run.n_train,
        "n_val": run.n_val,
        "n_epochs": run.n_epochs,
        "n_steps": run.n_steps,
        "n_params": m["n_params"],
        "final_val_loss": None if last is None else float(last["val_loss"]),
        "final_val_accuracy": None if last is None else float(last["val_accuracy"]),
        "n_corrupted": int(run.samples["is_corrupted"].sum()) if "is_corrupted" in run.samples else None,
        "trajectory": m["trajectory"]["mode"] if run.has_trajectory else (
            "not stored (replayed from initial_params.npy when needed)" if run.replayable else "not stored"
        ),
        "influence": None,
        "sign_convention": m["sign_convention"],
    }
    if run.has_influence:
        im = run.influence_manifest
        summary["influence"] = {
            "checkpoints": len(run.checkpoints),
            "queries": run.queries,
            "sweep_seconds": im["sweep_seconds"],
        }
    return summary


def cmd_info(args) -> int:
    from .run import load_run

    run = load_run(args.run)
    s = run_summary(run)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    from .explore import run_summary as display_summary  # the dashboard's wording of optimizer and model

    shown = display_summary(run)
    opt = f"{shown['optimizer']}, learning rate {shown['learning_rate']}, batch size {shown['batch_size']}"
    model_txt = shown["model"]
    print(f"run {s['path']} (id {s['run_id']})")
    print(f"  data       {s['dataset'] or 'your own (dit_core.record)'}: {s['n_train']} train / {s['n_val']} val" + (f", {s['n_corrupted']} labels corrupted" if s["n_corrupted"] is not None else ""))
    print(f"  model      {model_txt} ({s['n_params']} parameters)")
    print(f"  training   {s['n_epochs']} epochs, {s['n_steps']} steps, {opt}")
    print(f"  result     val loss {s['final_val_loss']:.4f}, val accuracy {s['final_val_accuracy']:.3f}")
    print(f"  trajectory {s['trajectory']}")
    if s["influence"]:
        i = s["influence"]
        print(f"  influence  {i['checkpoints']} checkpoints, queries {', '.join(i['queries'])} ({i['sweep_seconds']:.1f} s)")
    else:
        print(f"  influence  not computed (run `dit compute {s['path']}`)")
    print(f"  sign       {s['sign_convention']}")
    return 0


# ----------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export the samples flagged as suspicious (CSV, JSON or Parquet)",
        description=(
            "Rank training samples by a suspicion signal (higher = more suspicious) and export the flagged ones "
            "with the dashboard's columns: sample_id, label, score, rank (among all samples, 1 = most suspicious), "
            "window_start, window_stop (the signal's window in steps, empty for signals without one), signal, run_id. "
            "The default signal is dit_core.signals.DEFAULT_FLAG_SIGNAL; --window ranks by harmful influence "
            "(-influence) in that window instead (signal dit_window). Signals are read from RUN/signals.parquet "
            "when present, else computed. The file is written atomically."
        ),
    )
    p.add_argument("run")
    p.add_argument("--out", required=True, help="file to write; the format follows the suffix (.csv, .json, .parquet)")
    p.add_argument(
        "--signal", default=None,
        help="signal to rank by: one of dit_core.signals.SIGNALS (e.g. aum, dit_convergence, dit_aum), dit_window, or "
        "another numeric column of signals.parquet (default: DEFAULT_FLAG_SIGNAL; dit_window when --window is given)",
    )
    p.add_argument(
        "--window", default=None,
        help="rank by harmful influence in this window (signal dit_window): 'convergence' (last 20%% of the epochs, "
        "at least one; the default for dit_window), 'full', 'last-epoch', or START:STOP in steps",
    )
    p.add_argument("--query", default=None,
                   help="influence query of the DIT signals (default: val_loss when computed, else the run's first query)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--top-k", type=int, default=None, help="flag the K highest scores")
    group.add_argument("--threshold", type=float, default=None, help="flag scores at or above this value")
    p.add_argument("--all", action="store_true", help="export every sample, with a `flagged` column")
    p.set_defaults(func=cmd_export)


def parse_window(text: str, run) -> tuple[int, int]:
    from .errors import ConfigError

    from .signals import signal_windows

    T = run.n_steps
    if text == "full":
        return 0, T
    if text in ("convergence", "last-epoch"):
        # whole epochs, as the signals and the dashboard: the last 20% of the epochs (at least one) / the last one
        w = signal_windows(run)["convergence" if text == "convergence" else "last_epoch"]
        return int(w["start"]), int(w["stop"])
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError as exc:
        raise ConfigError(f"--window {text!r}: use 'convergence', 'full', 'last-epoch' or START:STOP") from exc


def cmd_export(args) -> int:
    from . import explore
    from ._io import write_bytes
    from .errors import ConfigError
    from .run import load_run
    from .signals import DEFAULT_FLAG_SIGNAL

    out = Path(args.out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in explore.EXPORT_FORMATS:
        raise ConfigError(f"--out {out}: the suffix must be .csv, .json or .parquet")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError("--top-k must be >= 1")
    run = load_run(args.run)
    signal = args.signal
    if args.window is not None:
        if signal not in (None, "dit_window"):
            raise ConfigError(
                f"--window ranks by harmful influence in that window (signal dit_window); it cannot be combined with "
                f"--signal {signal} (whose window is its own)"
            )
        signal = "dit_window"
    signal = signal or DEFAULT_FLAG_SIGNAL
    available = explore.available_signals(run)
    if signal not in available:
        raise ConfigError(f"--signal {signal!r} is not available for this run; use one of {', '.join(available)}")
    window = None
    if signal == "dit_window":
        window = run._check_window(*parse_window(args.window or "convergence", run))
    query = args.query or run.default_query
    scores = explore.signal_scores(run, signal, window=window, query=query)
    if args.top_k is not None:
        flags = explore.select_flags(scores, method="top_k", k=args.top_k)
    elif args.threshold is not None:
        flags = explore.select_flags(scores, method="threshold", threshold=args.threshold)
    else:
        flags = explore.select_flags(scores, method="top_k", k=max(1, int(round(0.1 * run.n_train))))
    used_window = explore.signal_window(run, signal, window or (0, run.n_steps))  # the signal's own window, or None
    if args.all:
        table = explore.flag_table(run, np.ones(run.n_train, dtype=bool), scores, signal=signal, window=used_window)
        table["flagged"] = flags[table["sample_id"].to_numpy()]
    else:
        table = explore.flag_table(run, flags, scores, signal=signal, window=used_window)
    write_bytes(out, explore.export_bytes(table, fmt))
    where = f", window [{used_window[0]}, {used_window[1]})" if used_window is not None else ""
    print(
        f"wrote {len(table)} samples to {out} (signal {signal}{where}; {int(flags.sum())} flagged; "
        "higher score = more suspicious)"
    )
    return 0


# ----------------------------------------------------------------------------- strip
def _add_strip(sub) -> None:
    p = sub.add_parser(
        "strip",
        help="delete a run's stored trajectory to save space (influence and initial parameters stay)",
        description=(
            "Delete RUN/trajectory/. The computed influence stays usable, and so do the initial parameters "
            "(initial_params.npy, initial_state.npy): `dit compute` and `dit validate` then replay the recorded "
            "run from them (one extra pass over the training steps)."
        ),
    )
    p.add_argument("run")
    p.set_defaults(func=cmd_strip)


def cmd_strip(args) -> int:
    from .run import load_run, strip_trajectory

    run = load_run(args.run)
    if not run.has_trajectory:
        print(f"{run.path} has no stored trajectory (already stripped); nothing to remove")
        return 0
    freed = strip_trajectory(run.path)
    print(f"removed the trajectory of {run.path} ({freed / 2**20:.1f} MiB freed); initial parameters kept")
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dit",
        description=(
            "DIT - Dynamic Influence Tracker. Record a training run exactly, compute each sample's "
            "time-varying influence, validate it against exact replay. Positive influence = removing "
            "the sample would raise the query (for a loss: the sample helped)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
    _add_compute(sub)
    _add_info(sub)
    _add_export(sub)
    _add_strip(sub)
    from .validate import add_cli as _add_validate

    _add_validate(sub)
    from .signals import add_cli as _add_signals

    _add_signals(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DITError as exc:
        print(f"dit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `dit validate RUN --json | head`: the reader left, nothing to report
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as exc:  # a path that cannot be written or read: say which, in one line
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"dit {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
