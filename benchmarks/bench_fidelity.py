"""Fidelity of DIT's first-order influence against exact counterfactual replay.

For logreg and tanh-MLP on digits and breast_cancer, and the CNN on digits (20% injected
label noise, SGD, float64 runs — ``TrainConfig(dtype="float64")`` — so that rounding does
not blur the comparison), record a run, compute its influence (epoch checkpoints,
val_loss), and run :func:`dit_core.validate.validate` on the windows

- ``full``: removal during the whole run, measured at the end;
- ``last_epoch``: removal during the last epoch, measured at the end;
- ``accrued``: the paper's windowed influence I(c_b) - I(c_a) between the first checkpoint
  at or after the first quarter of training and the last one.

Prints Pearson / Spearman / Kendall τ with PASS/FAIL per target (Pearson >= 0.99 for
logreg and MLP, >= 0.95 for the CNN, on every window), and the cost of exact replay per
sample against one training run, with PASS/FAIL for the target "one replay costs no more
than one training run": a single un-vectorised replay (``replay(run, [j], chunk=1)``) of
the sample used at step 0 (so it replays every step; median of ``--replay-repeats``),
against a plain ``torch.optim`` training loop over the same minibatches and learning
rates (median of 3 after a warm-up), both in this process. The vectorised replay DIT's
validation uses (up to 64 replays batched with vmap), per sample, is shown beside it.

Usage::

    python benchmarks/bench_fidelity.py [--samples 40] [--epochs 10] [--json out.json]
    python benchmarks/bench_fidelity.py --quick     # 3 epochs, 400 samples, 12 per window (< 60 s; a smoke test)

Exit status 1 when a target is missed (not in ``--quick`` mode).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dit_core as dit
from dit_core._modelspec import build_from_description
from dit_core.data import load_dataset
from dit_core.models import build_model, describe_model
from dit_core.replay import replay
from dit_core.validate import validate

CONFIGS = [
    # (data set, model, learning rate, Pearson target)
    ("digits", "logreg", 0.1, 0.99),
    ("digits", "mlp", 0.1, 0.99),
    ("breast_cancer", "logreg", 0.1, 0.99),
    ("breast_cancer", "mlp", 0.1, 0.99),
    ("digits", "cnn", 0.1, 0.95),
]
WINDOWS = ("full", "last_epoch", "accrued")


REPLAY_COST_TARGET = 1.0  # one un-vectorised replay / one plain training run


def record_run(path: Path, data: str, kind: str, *, epochs: int, lr: float, dtype: str = "float64", n_train: int | None = None) -> Path:
    ds = load_dataset(data, corruption_rate=0.2, corruption_seed=0)
    sl = slice(0, n_train)
    kw = {"hidden": (32,)} if kind == "mlp" else {}
    desc = describe_model(kind, ds.input_shape, ds.n_classes, seed=0, **kw)
    cfg = dit.TrainConfig(epochs=epochs, batch_size=32, lr=lr, dtype=dtype, seed=0)
    dit.record(
        build_model(**desc),
        (ds.X_train[sl], ds.y_train[sl]),
        (ds.X_val, ds.y_val),
        cfg,
        path,
        model_description={"kind": "builtin", **desc},
        dataset_description=ds.describe(),
        original_labels=ds.original_y_train[sl],
        is_corrupted=ds.is_corrupted[sl],
        progress=False,
    )
    return path


def plain_training_seconds(run: dit.Run, repeats: int = 3) -> float:
    """Median wall time of an ordinary torch.optim.SGD training run over the recorded minibatches
    and per-step learning rates (after one warm-up run)."""
    times = [_plain_training_once(run) for _ in range(repeats + 1)][1:]
    return float(np.median(times))


def _plain_training_once(run: dit.Run) -> float:
    model = build_from_description(run.manifest["model"]).to(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=run.config.lr)
    X = torch.as_tensor(np.array(run.X_train), dtype=torch.float64)
    y = torch.as_tensor(np.array(run.y_train), dtype=torch.int64)
    batches = [torch.as_tensor(np.array(b)) for b in run.batches]
    lrs = [float(x) for x in run.learning_rates]
    group = opt.param_groups[0]
    began = time.perf_counter()
    for ids, lr in zip(batches, lrs):
        group["lr"] = lr
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[ids]), y[ids]).backward()
        opt.step()
    return time.perf_counter() - began


def single_replay_seconds(run: dit.Run, repeats: int) -> tuple[float, int, int]:
    """Median wall time of one un-vectorised replay (chunk=1) of the sample used first at step 0.

    Returns (seconds, sample id, replayed steps)."""
    j = int(run.batch(0)[0])
    times, steps = [], 0
    for _ in range(repeats):
        r = replay(run, [j], progress=False, chunk=1)
        times.append(r.seconds)
        steps = r.replayed_steps
    return float(np.median(times)), j, steps


def measure(data: str, kind: str, lr: float, target: float, *, epochs: int, samples: int, root: Path,
            n_train: int | None = None, replay_repeats: int = 3) -> dict:
    path = root / f"{data}_{kind}"
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    record_run(path, data, kind, epochs=epochs, lr=lr, n_train=n_train)
    t1 = time.perf_counter()
    dit.compute(path, checkpoints="epochs", progress=False)
    t2 = time.perf_counter()
    run = dit.load_run(path)
    rep = validate(run, n_samples=samples, windows=WINDOWS, seed=0, progress=False)
    plain = plain_training_seconds(run)
    single, single_id, single_steps = single_replay_seconds(run, replay_repeats)
    row = {
        "data": data,
        "model": kind,
        "n_train": run.n_train,
        "epochs": run.n_epochs,
        "steps": run.n_steps,
        "dtype": run.config.dtype,
        "target_pearson": target,
        "record_seconds": t1 - t0,
        "compute_seconds": t2 - t1,
        "training_seconds_recorded": float(run.manifest["training_seconds"]),
        "training_seconds_plain": plain,
        "replay_seconds_per_sample_vectorised": rep.replay_seconds_per_sample,
        "replay_seconds_single": single,
        "replay_single_sample_id": single_id,
        "replay_single_steps": single_steps,
        "replay_single_over_training": single / plain,
        "replay_vectorised_per_sample_over_training": (rep.replay_seconds_per_sample or float("nan")) / plain,
        "replay_cost_target": REPLAY_COST_TARGET,
        "trajectory_deviation": rep.trajectory_deviation,
        "final_val_accuracy": float(run.epochs["val_accuracy"].iloc[-1]),
        "windows": {},
    }
    for name in WINDOWS:
        w = rep[name]
        row["windows"][name] = {
            "pearson": w.pearson, "spearman": w.spearman, "kendall": w.kendall, "slope": w.slope, "n": len(w.sample_ids),
            "pass": (w.pearson or 0) >= target,
        }
    row["meets_target"] = all(row["windows"][n]["pass"] for n in WINDOWS)
    row["replay_cost_pass"] = row["replay_single_over_training"] <= REPLAY_COST_TARGET
    return row


def print_table(rows: list[dict]) -> None:
    print("\nFidelity: first-order estimate vs exact counterfactual replay (float64 runs, SGD, 20% label noise)")
    head = f"{'data':<14}{'model':<7}{'window':<11}{'n':>4}{'pearson':>9}{'spearman':>9}{'kendall':>9}{'slope':>7}  target"
    print(head)
    print("-" * len(head))
    for r in rows:
        for name, w in r["windows"].items():
            ok = "PASS" if w["pass"] else "FAIL"
            print(
                f"{r['data']:<14}{r['model']:<7}{name:<11}{w['n']:>4}{w['pearson']:>9.4f}{w['spearman']:>9.4f}"
                f"{w['kendall']:>9.4f}{w['slope']:>7.3f}  >= {r['target_pearson']} {ok}"
            )
    print("\nCost of exact replay of one sample (seconds; ratios are to one plain torch.optim training run in this process)")
    head = (f"{'data':<14}{'model':<7}{'steps':>6}{'train':>8}{'recorded':>9}{'1 replay':>9}{'ratio':>7}{'target':>8}  result"
            f"{'vmap/sample':>13}{'ratio':>7}{'deviation':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        plain = r["training_seconds_plain"]
        vec = r["replay_seconds_per_sample_vectorised"]
        one = r["replay_seconds_single"]
        ok = "PASS" if r["replay_cost_pass"] else "FAIL"
        print(
            f"{r['data']:<14}{r['model']:<7}{r['steps']:>6}{plain:>8.2f}{r['training_seconds_recorded']:>9.2f}"
            f"{one:>9.2f}{one / plain:>7.2f}{'<= ' + format(r['replay_cost_target'], 'g'):>8}  {ok:<6}"
            f"{vec:>13.3f}{vec / plain:>7.2f}{r['trajectory_deviation']:>11.1e}"
        )
    print(
        "train: a plain torch.optim loop over the recorded minibatches; recorded: dit.record's training time (manifest); "
        "1 replay: replay(run, [j], chunk=1) of the sample used at step 0 (every step replayed, beside the unmodified "
        "replica), median of repeats; vmap/sample: validation's whole-run replay, up to 64 replays batched with vmap, "
        "divided by the number of samples."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=40, help="samples per window (default 40)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--quick", action="store_true",
                    help="3 epochs, first 400 training samples, 12 samples per window, 1 replay repeat (a smoke test, < 60 s)")
    ap.add_argument("--n-train", type=int, default=None, help="use the first N training samples of each data set (default all)")
    ap.add_argument("--replay-repeats", type=int, default=3, help="repeats of the single-replay timing (median; default 3)")
    ap.add_argument("--only", default=None, help="comma-separated data:model pairs, e.g. digits:mlp")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    epochs, samples, n_train, repeats = (
        (3, 12, args.n_train or 400, 1) if args.quick else (args.epochs, args.samples, args.n_train, args.replay_repeats)
    )
    began_all = time.perf_counter()
    configs = CONFIGS
    if args.only:
        want = {tuple(x.split(":")) for x in args.only.split(",")}
        configs = [c for c in CONFIGS if (c[0], c[1]) in want]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dit-fidelity-") as tmp:
        for data, kind, lr, target in configs:
            began = time.perf_counter()
            rows.append(measure(data, kind, lr, target, epochs=epochs, samples=samples, root=Path(tmp),
                                n_train=n_train, replay_repeats=repeats))
            print(f"  {data}/{kind}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print_table(rows)
    fid_ok = all(r["meets_target"] for r in rows)
    cost_ok = all(r["replay_cost_pass"] for r in rows)
    print(f"\nPearson targets: {'PASS' if fid_ok else 'FAIL'}; one replay <= one training run: {'PASS' if cost_ok else 'FAIL'}"
          + ("  (--quick: sizes too small for the targets to mean much)" if args.quick else ""))
    doc = {
        "mode": "quick" if args.quick else "full",
        "setup": {"epochs": epochs, "samples": samples, "n_train": n_train, "windows": list(WINDOWS), "batch_size": 32,
                  "dtype": "float64", "corruption": 0.2, "replay_repeats": repeats, "torch_threads": torch.get_num_threads()},
        "targets": {"pearson": {f"{d}/{m}": t for d, m, _, t in configs}, "replay_over_training": REPLAY_COST_TARGET},
        "rows": rows,
        "pearson_pass": fid_ok,
        "replay_cost_pass": cost_ok,
        "all_pass": fid_ok and cost_ok,
        "wall_seconds": time.perf_counter() - began_all,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0 if (doc["all_pass"] or args.quick) else 1


if __name__ == "__main__":
    sys.exit(main())
