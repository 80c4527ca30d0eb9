"""The DIT paper's findings, measured on our runs.

Xu & Wu (arXiv 2502.10793) report that (a) a sample's influence early in training
correlates only weakly with its influence late in training (distinct learning phases),
(b) samples fall into patterns — stable, early influencers, late bloomers, fluctuating —
and (c) influence in the convergence period detects corrupted samples better than
influence over the whole run. This script measures each on runs with 20% injected label
noise (SGD, constant learning rate, float32 as the product records by default):

(a) Kendall τ between early-window and late-window influence, for

    - removal windows (remove the sample during the first / last 20% of epochs, measure
      the validation loss at the end: ``run.window_influence``),
    - accrued windows (the paper's definition: how much of the sample's effect built up
      between checkpoints — ``run.accrued_influence(0, c_early)`` vs
      ``run.accrued_influence(c_late, T)``),
    - first epoch vs last epoch (removal windows);

(b) the share of samples in each of the four patterns by the rule documented in
    :func:`dit_core.patterns.classify_patterns` (per-epoch robust z-scores, Mann–Kendall
    trend test for early/late, sign-flip ratio for fluctuating) applied to
    ``run.trajectories("window")``, and the share of corrupted samples in each pattern;

(c) AUROC of −influence (harm) for separating corrupted from clean samples, with the
    convergence window (last 20% of the epochs) against the full run (and, for context, the
    first and last epoch, and the sample's own loss in the last epoch).

Usage::

    python benchmarks/bench_findings.py [--quick] [--run RUN_DIR ...] [--json out.json]

It ends with one findings table, a line per run: (a) τ early vs late (removal and accrued),
(b) the four pattern shares, (c) detection AUROC of the convergence window vs the full run.
``--quick`` (8 epochs, digits MLP and logreg; about 15 s) is a smoke test.
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
from scipy.stats import kendalltau
from sklearn.metrics import roc_auc_score

import dit_core as dit
from dit_core.data import load_dataset
from dit_core.models import build_model, describe_model
from dit_core.patterns import PATTERNS, classify_patterns
from dit_core.signals import signal_windows

RUNS = [
    # (data set, model, epochs, learning rate)
    ("digits", "mlp", 30, 0.1),
    ("digits", "logreg", 30, 0.1),
    ("breast_cancer", "mlp", 30, 0.1),
    ("digits", "cnn", 15, 0.1),
]
PHASE = 0.2  # early = first 20% of epochs, late = last 20%


def record_run(path: Path, data: str, kind: str, *, epochs: int, lr: float) -> Path:
    ds = load_dataset(data, corruption_rate=0.2, corruption_seed=0)
    kw = {"hidden": (32,)} if kind == "mlp" else {}
    desc = describe_model(kind, ds.input_shape, ds.n_classes, seed=0, **kw)
    cfg = dit.TrainConfig(epochs=epochs, batch_size=32, lr=lr, seed=0)
    dit.record(
        build_model(**desc),
        (ds.X_train, ds.y_train),
        (ds.X_val, ds.y_val),
        cfg,
        path,
        model_description={"kind": "builtin", **desc},
        dataset_description=ds.describe(),
        original_labels=ds.original_y_train,
        is_corrupted=ds.is_corrupted,
        progress=False,
    )
    dit.compute(path, checkpoints="epochs", progress=False)
    return path


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(kendalltau(a, b).statistic)


def _auroc(score: np.ndarray, corrupted: np.ndarray) -> float | None:
    if corrupted.all() or not corrupted.any():
        return None
    return float(roc_auc_score(corrupted, score))


def findings(run: dit.Run, label: str) -> dict:
    E, T = run.n_epochs, run.n_steps
    ends = run.epoch_end_steps
    k = max(1, int(round(PHASE * E)))
    early_stop = int(ends[k - 1])  # end of the first k epochs
    late_start = int(ends[E - k - 1]) if E - k - 1 >= 0 else 0  # start of the last k epochs
    early = run.window_influence(0, early_stop)
    late = run.window_influence(late_start, T)
    acc_early = run.accrued_influence(0, early_stop)
    acc_late = run.accrued_influence(late_start, T)
    first = run.window_influence(0, int(ends[0]))
    last = run.window_influence(int(ends[-2]) if E > 1 else 0, T)

    traj = run.trajectories("window")
    labels = classify_patterns(traj)
    samples = run.samples
    corrupted = samples["is_corrupted"].to_numpy(dtype=bool) if "is_corrupted" in samples else np.zeros(run.n_train, bool)
    patterns = {}
    for p in PATTERNS:
        m = labels == p
        patterns[p] = {"share": float(m.mean()), "count": int(m.sum()), "corrupted_share": float(corrupted[m].mean()) if m.any() else None}

    # the convergence period of dit_core.signals: the last 20% of the epochs (at least one), in steps
    conv = signal_windows(run)["convergence"]
    conv_start = int(conv["start"])
    auroc = {
        "full": _auroc(-run.window_influence(0, T), corrupted),
        "convergence": _auroc(-run.window_influence(conv_start, T), corrupted),
        "convergence_accrued": _auroc(-run.accrued_influence(int(conv["accrued_start"]), T), corrupted)
        if conv_start > 0
        else None,
        "first_epoch": _auroc(-first, corrupted),
        "last_epoch": _auroc(-last, corrupted),
        "last_epoch_loss": _auroc(np.asarray(run.sample_loss[:, -1], dtype=np.float64), corrupted),
    }
    return {
        "run": label,
        "path": str(run.path),
        "n_train": run.n_train,
        "epochs": E,
        "steps": T,
        "corrupted_share": float(corrupted.mean()),
        "final_val_accuracy": float(run.epochs["val_accuracy"].iloc[-1]),
        "phase_epochs": k,
        "early_window": [0, early_stop],
        "late_window": [late_start, T],
        "tau_early_late_removal": _tau(early, late),
        "tau_early_late_accrued": _tau(acc_early, acc_late),
        "tau_first_last_epoch": _tau(first, last),
        "patterns": patterns,
        "auroc": auroc,
        "convergence_window": [conv_start, T],
    }


def print_tables(rows: list[dict]) -> None:
    print("\n(a) Kendall tau between early and late influence (early/late = first/last 20% of epochs)")
    head = f"{'run':<22}{'epochs':>7}{'removal':>9}{'accrued':>9}{'ep1 vs last':>12}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<22}{r['epochs']:>7}{r['tau_early_late_removal']:>9.3f}{r['tau_early_late_accrued']:>9.3f}{r['tau_first_last_epoch']:>12.3f}")

    print("\n(b) Influence patterns (share of samples; in brackets: share of corrupted labels among them)")
    head = f"{'run':<22}" + "".join(f"{p:>22}" for p in PATTERNS)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for p in PATTERNS:
            d = r["patterns"][p]
            c = "-" if d["corrupted_share"] is None else f"{d['corrupted_share']:.2f}"
            cells.append(f"{d['share'] * 100:>13.1f}% ({c:>4})")
        print(f"{r['run']:<22}" + "".join(cells))
    print("  (base rate of corrupted labels: " + ", ".join(f"{r['run']} {r['corrupted_share']:.2f}" for r in rows) + ")")

    print("\n(c) Corrupted-label detection: AUROC of -influence (harm) against is_corrupted")
    keys = ["full", "convergence", "convergence_accrued", "first_epoch", "last_epoch", "last_epoch_loss"]
    head = f"{'run':<22}" + "".join(f"{k:>20}" for k in keys)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<22}" + "".join(f"{'-' if r['auroc'][k] is None else format(r['auroc'][k], '.3f'):>20}" for k in keys))
    print(
        "  full = removal over the whole run; convergence = removal in the last 20% of the epochs; convergence_accrued = "
        "accrued influence over the last 20% of epochs; last_epoch_loss = the sample's own loss (a baseline, not influence)."
    )


def summary_rows(rows: list[dict]) -> list[dict]:
    """One line per run: the three findings side by side, with whether each matches the paper's claim."""
    out = []
    for r in rows:
        conv, full = r["auroc"]["convergence"], r["auroc"]["full"]
        out.append({
            "run": r["run"],
            "tau_early_late_removal": r["tau_early_late_removal"],
            "tau_early_late_accrued": r["tau_early_late_accrued"],
            "weak_early_late": abs(r["tau_early_late_removal"]) < 0.5 and abs(r["tau_early_late_accrued"]) < 0.5,
            "pattern_shares": {p: r["patterns"][p]["share"] for p in PATTERNS},
            "auroc_convergence": conv,
            "auroc_full": full,
            "convergence_minus_full": None if conv is None or full is None else conv - full,
            "convergence_beats_full": None if conv is None or full is None else conv > full,
        })
    return out


def print_summary(summary: list[dict]) -> None:
    print("\nFindings table: (a) Kendall tau early vs late, (b) pattern shares, (c) detection, convergence window vs full run")
    short = {"stable": "stable", "early influencer": "early", "late bloomer": "late", "fluctuating": "fluct."}
    head = (f"{'run':<22}{'tau rem.':>9}{'tau acc.':>9}{'weak?':>7}"
            + "".join(f"{short.get(p, p)[:7]:>8}" for p in PATTERNS)
            + f"{'AUROC conv':>11}{'AUROC full':>11}{'conv-full':>10}{'conv>full?':>11}")
    print(head)
    print("-" * len(head))
    for s in summary:
        d = s["convergence_minus_full"]
        beats = "-" if s["convergence_beats_full"] is None else ("yes" if s["convergence_beats_full"] else "no")
        print(f"{s['run']:<22}{s['tau_early_late_removal']:>9.3f}{s['tau_early_late_accrued']:>9.3f}"
              f"{'yes' if s['weak_early_late'] else 'no':>7}"
              + "".join(f"{s['pattern_shares'][p] * 100:>7.1f}%" for p in PATTERNS)
              + f"{_fmt(s['auroc_convergence']):>11}{_fmt(s['auroc_full']):>11}{_fmt(d, '+.3f'):>10}{beats:>11}")
    print("  weak? = |tau| < 0.5 for both removal and accrued windows (the paper: distinct learning phases); "
          "conv>full? = the convergence window (last 20% of the epochs) detects corrupted labels better than the whole run "
          "(the paper's claim)")


def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 epochs, digits MLP and logreg only (a smoke test)")
    ap.add_argument("--run", action="append", default=[], help="also analyse this existing run directory (with influence)")
    ap.add_argument("--no-record", action="store_true", help="only analyse the --run directories")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    for p in args.run:
        rows.append(findings(dit.load_run(p), Path(p).name))
    if not args.no_record:
        specs = [(d, m, 8, lr) for d, m, _, lr in RUNS[:2]] if args.quick else RUNS
        with tempfile.TemporaryDirectory(prefix="dit-findings-") as tmp:
            for data, kind, epochs, lr in specs:
                began = time.perf_counter()
                path = Path(tmp) / f"{data}_{kind}"
                shutil.rmtree(path, ignore_errors=True)
                record_run(path, data, kind, epochs=epochs, lr=lr)
                rows.append(findings(dit.load_run(path), f"{data}/{kind}"))
                print(f"  {data}/{kind}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print_tables(rows)
    summary = summary_rows(rows)
    print_summary(summary)
    if args.json:
        doc = {"mode": "quick" if args.quick else "full", "phase_fraction": PHASE, "patterns": list(PATTERNS),
               "rows": rows, "summary": summary}
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
