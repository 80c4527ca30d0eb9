"""Influence for momentum, Nesterov, weight decay, Adam and AdamW: fidelity and sweep cost.

Digits (8x8, 1437 training samples, 20% injected label corruption), built-in tanh MLP
64-32-10, batch 32, 10 epochs (450 steps), constant learning rate, one run per optimizer:

=============  ==========================================  =====  ===============
name           TrainConfig                                 lr     Pearson target
=============  ==========================================  =====  ===============
sgd            optimizer="sgd"                             0.1    >= 0.99
sgd_mom_wd     sgd, momentum=0.9, weight_decay=5e-4        0.01   >= 0.99
sgd_nesterov   sgd, momentum=0.9, nesterov=True            0.01   >= 0.99
adam           optimizer="adam" (betas 0.9/0.999, eps 1e-8)  1e-3   >= 0.95
adamw          optimizer="adamw", weight_decay=1e-2        1e-3   >= 0.95
=============  ==========================================  =====  ===============

The momentum runs use lr 0.01 so that their effective step, lr / (1 - momentum), equals
plain SGD's 0.1; Adam/AdamW use torch's default lr 1e-3 (AdamW: its default weight decay).
None of these were tuned to meet the targets.

1. **Fidelity** (float64 runs, so that rounding does not blur the comparison): record with
   ``trajectory="full"``, ``dit.compute(checkpoints="epochs")`` (query val_loss), then
   :func:`dit_core.validate.validate` against exact counterfactual replay on the windows
   ``full`` (removal during the whole run, measured at the end), ``last_epoch`` (removal
   during the last epoch) and ``accrued`` (the paper's I(c_b) - I(c_a) from the first
   checkpoint at or after the first quarter of training to the end); ``--samples`` samples
   per window, stratified. A configuration passes when Pearson meets its target on every window.

2. **Sweep cost** (float32 runs, the default precision and what users run; same model, data,
   steps and batch order for every optimizer): each repetition records every optimizer's run
   (wall time of ``dit.record`` = training with recording) and computes its influence with
   epoch checkpoints (wall time of ``dit.compute``), all in this one process, optimizers
   interleaved within a repetition so that background load hits all of them alike (after one
   small warm-up run per optimizer). Reported: medians over ``--reps`` of the training time,
   the sweep time, sweep / training, and sweep / plain-SGD sweep of the same repetition
   (target <= 1.5x).

Usage::

    python benchmarks/bench_optimizers.py                      # 10 epochs, 40 samples/window, 3 reps
    python benchmarks/bench_optimizers.py --quick              # smoke test (< 1 min), not the reported numbers
    python benchmarks/bench_optimizers.py --reps 5 --threads 2 --json out.json
    python benchmarks/bench_optimizers.py --only adam,adamw    # a subset (sgd is always kept for the cost ratio)

Exit status 1 when a target is missed (not in ``--quick`` mode, whose sizes are too small
for the targets to mean anything).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import dit_core as dit
from dit_core.data import load_dataset
from dit_core.models import build_model, describe_model
from dit_core.validate import validate

# name -> (TrainConfig keyword arguments, Pearson target)
OPTIMIZERS = {
    "sgd": (dict(optimizer="sgd", lr=0.1), 0.99),
    "sgd_mom_wd": (dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4), 0.99),
    "sgd_nesterov": (dict(optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True), 0.99),
    "adam": (dict(optimizer="adam", lr=1e-3), 0.95),
    "adamw": (dict(optimizer="adamw", lr=1e-3, weight_decay=1e-2), 0.95),
}
WINDOWS = ("full", "last_epoch", "accrued")
COST_TARGET = 1.5  # sweep time / plain-SGD sweep time
BATCH_SIZE = 32
HIDDEN = (32,)


def _describe(cfg: dict) -> str:
    parts = [cfg["optimizer"], f"lr={cfg['lr']:g}"]
    for k in ("momentum", "nesterov", "weight_decay"):
        if k in cfg:
            parts.append(f"{k}={cfg[k]}")
    return ", ".join(parts)


class Recorder:
    """Records runs of one data set/model with a given optimizer configuration."""

    def __init__(self, n_train: int | None):
        self.ds = load_dataset("digits", corruption_rate=0.2, corruption_seed=0)
        self.desc = describe_model("mlp", self.ds.input_shape, self.ds.n_classes, hidden=HIDDEN, seed=0)
        self.sl = slice(0, n_train)

    def record(self, path: Path, opt: dict, *, epochs: int, dtype: str, n: int | None = None) -> Path:
        ds, sl = self.ds, (slice(0, n) if n is not None else self.sl)
        cfg = dit.TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, dtype=dtype, seed=0, trajectory="full", **opt)
        return dit.record(
            build_model(**self.desc), (ds.X_train[sl], ds.y_train[sl]), (ds.X_val, ds.y_val), cfg, path,
            model_description={"kind": "builtin", **self.desc}, dataset_description=ds.describe(),
            original_labels=ds.original_y_train[sl], is_corrupted=ds.is_corrupted[sl],
            overwrite=True, progress=False,
        )


def measure_fidelity(rec: Recorder, name: str, *, epochs: int, samples: int, root: Path) -> dict:
    opt, target = OPTIMIZERS[name]
    path = root / f"fid_{name}"
    t0 = time.perf_counter()
    rec.record(path, opt, epochs=epochs, dtype="float64")
    t1 = time.perf_counter()
    dit.compute(path, checkpoints="epochs", progress=False)
    t2 = time.perf_counter()
    run = dit.load_run(path)
    rep = validate(run, n_samples=samples, windows=WINDOWS, seed=0, progress=False)
    row = {
        "optimizer": name,
        "config": _describe(opt),
        "dtype": "float64",
        "n_train": run.n_train,
        "epochs": run.n_epochs,
        "steps": run.n_steps,
        "target_pearson": target,
        "record_seconds": t1 - t0,
        "compute_seconds": t2 - t1,
        "replay_seconds": rep.replay_seconds,
        "trajectory_deviation": rep.trajectory_deviation,
        "reproduces_recording": rep.reproduces_recording,
        "final_val_loss": float(run.epochs["val_loss"].iloc[-1]),
        "final_val_accuracy": float(run.epochs["val_accuracy"].iloc[-1]),
        "windows": {},
    }
    for w in WINDOWS:
        v = rep[w]
        row["windows"][w] = {
            "pearson": v.pearson, "spearman": v.spearman, "kendall": v.kendall, "slope": v.slope,
            "relative_error": v.relative_error, "n": int(len(v.sample_ids)),
        }
    row["pass"] = all((row["windows"][w]["pearson"] or 0.0) >= target for w in WINDOWS)
    shutil.rmtree(path, ignore_errors=True)
    return row


def measure_cost(rec: Recorder, names: list[str], *, epochs: int, reps: int, root: Path) -> dict:
    # warm-up: lazy imports and first-call overheads of every optimizer's code path
    for name in names:
        w = rec.record(root / f"warm_{name}", OPTIMIZERS[name][0], epochs=1, dtype="float32", n=64)
        dit.compute(w, checkpoints="epochs", progress=False)
        shutil.rmtree(w, ignore_errors=True)
    per_rep = []
    for r in range(reps):
        row = {}
        for name in names:
            path = root / f"cost_{name}"
            t0 = time.perf_counter()
            rec.record(path, OPTIMIZERS[name][0], epochs=epochs, dtype="float32")
            t1 = time.perf_counter()
            dit.compute(path, checkpoints="epochs", overwrite=True, progress=False)
            t2 = time.perf_counter()
            row[name] = {"training_seconds": t1 - t0, "sweep_seconds": t2 - t1}
            shutil.rmtree(path, ignore_errors=True)
        for name in names:
            row[name]["sweep_over_training"] = row[name]["sweep_seconds"] / row[name]["training_seconds"]
            row[name]["sweep_over_sgd_sweep"] = row[name]["sweep_seconds"] / row["sgd"]["sweep_seconds"]
        per_rep.append(row)
        line = " | ".join(f"{n} {row[n]['sweep_seconds']:.2f}s ({row[n]['sweep_over_sgd_sweep']:.2f}x)" for n in names)
        print(f"  cost rep {r + 1}/{reps}: sweep {line}", file=sys.stderr, flush=True)
    keys = ("training_seconds", "sweep_seconds", "sweep_over_training", "sweep_over_sgd_sweep")
    median = {n: {k: statistics.median(rr[n][k] for rr in per_rep) for k in keys} for n in names}
    for n in names:
        median[n]["pass"] = median[n]["sweep_over_sgd_sweep"] <= COST_TARGET
    return {"median": median, "reps": per_rep}


def _f(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def print_tables(doc: dict) -> None:
    s = doc["setup"]
    print(f"\nFidelity: first-order estimate vs exact counterfactual replay "
          f"(digits, mlp tanh {s['model']}, {s['fidelity_epochs']} epochs, float64, {s['samples']} samples/window)")
    head = (f"{'optimizer':<14}{'window':<12}{'n':>4}{'pearson':>9}{'spearman':>9}{'kendall':>9}"
            f"{'slope':>7}{'target':>9}  result")
    print(head)
    print("-" * len(head))
    for r in doc["fidelity"]:
        for w, v in r["windows"].items():
            ok = "PASS" if (v["pearson"] or 0.0) >= r["target_pearson"] else "FAIL"
            print(f"{r['optimizer']:<14}{w:<12}{v['n']:>4}{_f(v['pearson']):>9}{_f(v['spearman']):>9}"
                  f"{_f(v['kendall']):>9}{_f(v['slope'], '{:.3f}'):>7}{'>= ' + str(r['target_pearson']):>9}  {ok}")
    print("configs: " + "; ".join(f"{r['optimizer']}: {r['config']} (val acc {r['final_val_accuracy']:.3f})" for r in doc["fidelity"]))

    c = doc["cost"]["median"]
    print(f"\nSweep cost (float32, {s['cost_epochs']} epochs = {s['cost_steps']} steps, epoch checkpoints, "
          f"medians over {s['reps']} reps, {s['threads']} thread(s), one process)")
    head = f"{'optimizer':<14}{'train s':>9}{'sweep s':>9}{'sweep/train':>13}{'sweep/SGD':>11}{'target':>9}  result"
    print(head)
    print("-" * len(head))
    for n, m in c.items():
        print(f"{n:<14}{m['training_seconds']:>9.2f}{m['sweep_seconds']:>9.2f}{m['sweep_over_training']:>13.2f}"
              f"{m['sweep_over_sgd_sweep']:>11.2f}{'<= ' + str(COST_TARGET):>9}  {'PASS' if m['pass'] else 'FAIL'}")
    print("train s = wall time of dit.record (training with recording); sweep s = wall time of dit.compute; "
          "sweep/SGD = this optimizer's sweep / plain SGD's sweep in the same repetition")
    print(f"\noverall: {'PASS' if doc['all_pass'] else 'FAIL'}" + ("  (--quick: sizes too small for the targets to mean anything)" if doc["mode"] == "quick" else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every run (default 10)")
    ap.add_argument("--samples", type=int, default=40, help="samples per validated window (default 40)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the cost measurement (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--only", default=None, help="comma-separated optimizer names (" + ", ".join(OPTIMIZERS) + ")")
    ap.add_argument("--quick", action="store_true", help="2 epochs, 256 training samples, 8 samples/window, 1 rep (a smoke test)")
    ap.add_argument("--json", default=None, help="also write every number as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(OPTIMIZERS)
    if args.only:
        want = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in want if x not in OPTIMIZERS]
        if unknown:
            ap.error(f"unknown optimizer(s) {unknown}; choose from {list(OPTIMIZERS)}")
        names = [n for n in OPTIMIZERS if n in want or n == "sgd"]
    epochs, samples, reps, n_train = (2, 8, 1, 256) if args.quick else (args.epochs, args.samples, args.reps, None)

    rec = Recorder(n_train)
    n = len(rec.ds.X_train[rec.sl])
    steps = epochs * -(-n // BATCH_SIZE)
    began = time.perf_counter()
    fidelity = []
    with tempfile.TemporaryDirectory(prefix="dit-optimizers-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            fidelity.append(measure_fidelity(rec, name, epochs=epochs, samples=samples, root=Path(tmp)))
            print(f"  fidelity {name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        cost = measure_cost(rec, names, epochs=epochs, reps=reps, root=Path(tmp))
    doc = {
        "mode": "quick" if args.quick else "full",
        "setup": {
            "data": f"digits ({n} train / {len(rec.ds.X_val)} val, 20% corrupted)",
            "model": "64-" + "-".join(str(h) for h in HIDDEN) + "-10",
            "batch_size": BATCH_SIZE,
            "fidelity_epochs": epochs, "fidelity_dtype": "float64", "samples": samples, "windows": list(WINDOWS),
            "cost_epochs": epochs, "cost_steps": steps, "cost_dtype": "float32", "reps": reps,
            "threads": args.threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "torch": torch.__version__,
            "optimizers": {n: {"config": OPTIMIZERS[n][0], "target_pearson": OPTIMIZERS[n][1]} for n in names},
            "cost_target": COST_TARGET,
        },
        "fidelity": fidelity,
        "cost": cost,
        "wall_seconds": None,
    }
    doc["all_pass"] = all(r["pass"] for r in fidelity) and all(m["pass"] for m in cost["median"].values())
    doc["wall_seconds"] = time.perf_counter() - began
    print_tables(doc)
    print(f"(wall time {doc['wall_seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0 if (doc["all_pass"] or args.quick) else 1


if __name__ == "__main__":
    sys.exit(main())
