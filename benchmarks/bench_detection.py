"""Benchmark: finding injected label noise with DIT's windowed influence vs. established baselines.

For every data set, corruption rate, seed and model, this records a training run with a
known fraction of flipped labels, computes DIT's influence (checkpoints at every epoch),
and scores every training sample with each signal of :mod:`dit_core.signals` (higher =
more suspicious). The external baseline is cleanlab: ``cleanlab.rank.get_label_quality_scores``
(self-confidence) on out-of-sample predicted probabilities from 5-fold
``sklearn.model_selection.cross_val_predict`` of the same kind of model in scikit-learn
(``LogisticRegression`` for logreg, ``MLPClassifier`` with the same hidden layer and tanh for
mlp); its score is ``1 - label quality``. A second cleanlab row,
``cleanlab_find_label_issues``, is confident learning's own flagged set
(``cleanlab.filter.find_label_issues`` on the same probabilities): flagged samples first, each
group ordered by self-confidence; the size, precision and recall of its flagged set are
reported too.

Metrics (:func:`dit_core.signals.detection_metrics`): AUROC, precision at k (k = number
corrupted), recall when inspecting the top 10% / 20% of the training set; mean ± std over
seeds. Nothing is fitted on the corruption labels: they are used only for scoring.

    python benchmarks/bench_detection.py                 # full: 2 data sets x 3 rates x 3 seeds x 2 models
    python benchmarks/bench_detection.py --quick         # one data set, one rate, one seed, fewer epochs
    python benchmarks/bench_detection.py --json out.json # also write every number as JSON

cleanlab is a benchmark extra (``pip install -e ".[bench]"``); dit_core never imports it.
"""

from __future__ import annotations

import os

# One BLAS/OpenMP thread per process: the benchmark parallelises over worker processes, and
# multi-threaded BLAS in two workers on a 2-core machine made sklearn's
# LogisticRegression take 63 s instead of 0.7 s here. Set before numpy is imported (workers fork).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Training hyper-parameters (recorded in the output): plain SGD, batch 32, 25 epochs, cosine
# schedule from lr down to lr/10. The rate per data set was chosen by the final *validation*
# loss (clean labels) over {0.03, 0.1, 0.3} at seed 0 — never by the corruption flags.
TRAINING = {"epochs": 25, "batch_size": 32, "optimizer": "sgd", "schedule": "cosine", "min_lr_fraction": 0.1}
LEARNING_RATES = {"digits": 0.3, "breast_cancer": 0.1}
MODEL_OPTIONS = {"logreg": {}, "mlp": {"hidden": [32], "activation": "tanh"}}
FULL = {"datasets": ["digits", "breast_cancer"], "rates": [0.1, 0.2, 0.3], "seeds": [0, 1, 2], "models": ["logreg", "mlp"]}
QUICK = {"datasets": ["breast_cancer"], "rates": [0.2], "seeds": [0], "models": ["logreg", "mlp"], "epochs": 10}
METRICS = [("auroc", "AUROC"), ("precision_at_k", "P@k"), ("recall_top10", "R@10%"), ("recall_top20", "R@20%")]
CV_FOLDS = 5


def cleanlab_scores(X: np.ndarray, y: np.ndarray, model: str, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """cleanlab's scores from out-of-sample CV probabilities: ``{"cleanlab": 1 - label quality
    (self-confidence), "cleanlab_find_label_issues": its flagged set first}``, each (n,)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neural_network import MLPClassifier

    X2 = X.reshape(len(X), -1).astype(np.float64)
    if model == "logreg":
        clf = LogisticRegression(max_iter=2000)
    else:
        hp = MODEL_OPTIONS["mlp"]
        clf = MLPClassifier(hidden_layer_sizes=tuple(hp["hidden"]), activation=hp["activation"], max_iter=500, random_state=seed)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probs = cross_val_predict(clf, X2, y, cv=folds, method="predict_proba")
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    issues = find_label_issues(y, probs)  # confident learning, cleanlab's defaults (prune_by_noise_rate)
    scores = {"cleanlab": 1.0 - quality, "cleanlab_find_label_issues": issues.astype(np.float64) + (1.0 - quality)}
    return scores, {"classifier": repr(clf), "cv_folds": CV_FOLDS, "method": "self_confidence", "issues": issues}


def hyperparameters(dataset: str, model: str, epochs: int | None = None) -> dict:
    lr = LEARNING_RATES[dataset]
    hp = {k: v for k, v in TRAINING.items() if k != "min_lr_fraction"}
    hp.update(lr=lr, min_lr=lr * TRAINING["min_lr_fraction"], model_options=MODEL_OPTIONS[model])
    if epochs:
        hp["epochs"] = epochs
    return hp


def run_one(task: dict) -> dict:
    """Record, compute and score one (data set, rate, seed, model) setting."""
    import torch

    torch.set_num_threads(1)
    import dit_core as dit
    from dit_core.data import load_dataset
    from dit_core.models import build_model, describe_model
    from dit_core.signals import SIGNALS, compute_signals, detection_metrics

    hp = hyperparameters(task["dataset"], task["model"], task.get("epochs"))
    ds = load_dataset(task["dataset"], corruption_rate=task["rate"], corruption_seed=task["seed"], split_seed=task["seed"])
    desc = describe_model(task["model"], ds.input_shape, ds.n_classes, seed=task["seed"], **hp["model_options"])
    cfg = dit.TrainConfig(
        epochs=hp["epochs"], batch_size=hp["batch_size"], lr=hp["lr"], optimizer=hp["optimizer"],
        schedule=hp["schedule"], min_lr=hp["min_lr"], seed=task["seed"],
    )
    out: dict = {**task, "n_train": int(len(ds.y_train)), "n_corrupted": int(ds.is_corrupted.sum())}
    with tempfile.TemporaryDirectory(prefix="dit-bench-") as tmp:
        t0 = time.perf_counter()
        path = dit.record(
            build_model(**desc), (ds.X_train, ds.y_train), (ds.X_val, ds.y_val), cfg, Path(tmp) / "run",
            model_description={"kind": "builtin", **desc}, dataset_description=ds.describe(),
            original_labels=ds.original_y_train, is_corrupted=ds.is_corrupted, progress=False,
        )
        t1 = time.perf_counter()
        run = dit.compute(path, checkpoints="epochs", progress=False)
        t2 = time.perf_counter()
        sig = compute_signals(run)
        out["val_accuracy"] = float(run.epochs["val_accuracy"].iloc[-1])
        out["train_loss"] = float(run.epochs["train_loss"].iloc[-1])
    out["seconds"] = {"record": t1 - t0, "compute": t2 - t1}
    t3 = time.perf_counter()
    cl, cl_info = cleanlab_scores(ds.X_train, ds.y_train, task["model"], task["seed"])
    out["seconds"]["cleanlab"] = time.perf_counter() - t3
    flagged = cl_info.pop("issues")
    tp = int((flagged & ds.is_corrupted).sum())
    out["cleanlab"] = cl_info
    out["cleanlab_flagged"] = {
        "n_flagged": int(flagged.sum()),
        "precision": tp / max(int(flagged.sum()), 1),
        "recall": tp / max(int(ds.is_corrupted.sum()), 1),
    }
    scores = {name: sig[name].to_numpy() for name in SIGNALS}
    scores.update(cl)
    out["metrics"] = {name: detection_metrics(s, ds.is_corrupted) for name, s in scores.items()}
    return out


def summarise(results: list[dict], signals: list[str]) -> dict:
    """Mean ± std over seeds per setting, and the average over settings."""
    settings: dict[tuple, list[dict]] = {}
    for r in results:
        settings.setdefault((r["dataset"], r["model"], r["rate"]), []).append(r)
    per_setting = {}
    for key, rs in sorted(settings.items()):
        per_setting[key] = {
            s: {m: (float(np.mean(v := [r["metrics"][s][m] for r in rs])), float(np.std(v))) for m, _ in METRICS}
            for s in signals
        }
    overall = {}
    for s in signals:
        overall[s] = {}
        for m, _ in METRICS:
            means = [per_setting[k][s][m][0] for k in per_setting]
            stds = [per_setting[k][s][m][1] for k in per_setting]
            overall[s][m] = (float(np.mean(means)), float(np.mean(stds)))
        overall[s]["best_auroc_settings"] = sum(
            per_setting[k][s]["auroc"][0] >= max(per_setting[k][t]["auroc"][0] for t in signals) - 1e-12 for k in per_setting
        )
    return {"per_setting": per_setting, "overall": overall}


BASELINES = ("cleanlab", "cleanlab_find_label_issues")
#: Single signals that are not DIT's own windows: the default must match or beat each of them.
NON_DIT = ("final_loss", "aum", "forgetting", "tracin_self", *BASELINES)


def targets(overall: dict, default: str) -> list[tuple[str, bool]]:
    """The issue's targets, checked on the averages over settings: (description, passed)."""
    out = [(
        f"dit_convergence AUROC {overall['dit_convergence']['auroc'][0]:.3f} > dit_full AUROC {overall['dit_full']['auroc'][0]:.3f}",
        overall["dit_convergence"]["auroc"][0] > overall["dit_full"]["auroc"][0],
    )]
    for m, header in METRICS:
        d = overall[default][m][0]
        rivals = [s for s in NON_DIT if s != default and s in overall]
        best = max(rivals, key=lambda s: overall[s][m][0])
        out.append((f"default {default} {header} {d:.3f} >= every baseline (best: {best} {overall[best][m][0]:.3f})",
                    d >= overall[best][m][0] - 1e-12))
    return out


def _fmt(mean_std: tuple[float, float]) -> str:
    return f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"


def markdown(summary: dict, signals: list[str], n_seeds: int) -> str:
    lines = []
    per, overall = summary["per_setting"], summary["overall"]
    lines.append(f"### Average over {len(per)} setting(s) (mean of per-setting means ± mean of per-setting std over {n_seeds} seed(s))\n")
    lines.append("| signal | " + " | ".join(h for _, h in METRICS) + " | best AUROC in |")
    lines.append("|---" * (len(METRICS) + 2) + "|")
    order = sorted(signals, key=lambda s: -overall[s]["auroc"][0])
    for s in order:
        lines.append(f"| {s} | " + " | ".join(_fmt(overall[s][m]) for m, _ in METRICS) + f" | {overall[s]['best_auroc_settings']}/{len(per)} |")
    for metric, header in METRICS[:2]:
        lines.append(f"\n### {header} by setting (data set / model / corruption rate), mean ± std over seeds\n")
        keys = list(per)
        lines.append("| signal | " + " | ".join(f"{d}/{m}/{int(round(r * 100))}%" for d, m, r in keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for s in order:
            best = [per[k][s][metric][0] >= max(per[k][t][metric][0] for t in signals) - 1e-12 for k in keys]
            cells = [("**" + _fmt(per[k][s][metric]) + "**") if b else _fmt(per[k][s][metric]) for k, b in zip(keys, best)]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one data set, one rate, one seed, 10 epochs (for tests)")
    ap.add_argument("--json", type=Path, help="also write all results to this JSON file")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default: 2)")
    args = ap.parse_args(argv)
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        print('cleanlab is needed for this benchmark: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    from dit_core.signals import DEFAULT_FLAG_SIGNAL, SIGNALS

    plan = QUICK if args.quick else FULL
    tasks = [
        {"dataset": d, "rate": r, "seed": s, "model": m, "epochs": plan.get("epochs")}
        for d in plan["datasets"] for m in plan["models"] for r in plan["rates"] for s in plan["seeds"]
    ]
    started = time.perf_counter()
    if args.jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_one, tasks))
    else:
        results = [run_one(t) for t in tasks]
    wall = time.perf_counter() - started
    signals = [*SIGNALS, *BASELINES]
    summary = summarise(results, signals)
    hyper = {f"{d}/{m}": hyperparameters(d, m, plan.get("epochs")) for d in plan["datasets"] for m in plan["models"]}
    print(f"# Mislabel detection benchmark ({'quick' if args.quick else 'full'}): {len(tasks)} runs in {wall:.0f} s with {args.jobs} worker(s)\n")
    print("Training (plain SGD, cosine schedule lr -> min_lr):")
    for key, h in hyper.items():
        print(f"- {key}: epochs {h['epochs']}, batch {h['batch_size']}, lr {h['lr']} -> {h['min_lr']:g}, model options {h['model_options']}")
    print(f"Influence: checkpoints at every epoch, query val_loss. cleanlab: get_label_quality_scores (self_confidence) on {CV_FOLDS}-fold cross_val_predict probabilities of sklearn LogisticRegression / MLPClassifier.")
    print(f"Default flag signal: {DEFAULT_FLAG_SIGNAL}. All scores: higher = more suspicious.\n")
    acc = {f"{r['dataset']}/{r['model']}/{r['rate']}/{r['seed']}": round(r["val_accuracy"], 3) for r in results}
    print(markdown(summary, signals, len(plan["seeds"])))
    fl = {k: float(np.mean([r["cleanlab_flagged"][k] for r in results])) for k in ("n_flagged", "precision", "recall")}
    n_corr = float(np.mean([r["n_corrupted"] for r in results]))
    print(f"\ncleanlab find_label_issues flagged set: {fl['n_flagged']:.0f} samples on average ({n_corr:.0f} corrupted), "
          f"precision {fl['precision']:.3f}, recall {fl['recall']:.3f} (mean over runs)")
    checks = targets(summary["overall"], DEFAULT_FLAG_SIGNAL)
    print("\nTargets (averages over settings):")
    for text, ok in checks:
        print(f"- {'PASS' if ok else 'FAIL'}: {text}")
    print("\nFinal validation accuracy per run: " + ", ".join(f"{k}: {v}" for k, v in acc.items()))
    if args.json:
        doc = {
            "mode": "quick" if args.quick else "full",
            "plan": plan,
            "hyperparameters": hyper,
            "cleanlab": results[0]["cleanlab"],
            "default_flag_signal": DEFAULT_FLAG_SIGNAL,
            "signals": {
                **SIGNALS,
                "cleanlab": "1 - cleanlab label quality (self-confidence) from out-of-sample CV probabilities (higher = more suspicious)",
                "cleanlab_find_label_issues": "cleanlab find_label_issues' flagged set first, then the rest; each by 1 - self-confidence",
            },
            "wall_seconds": wall,
            "jobs": args.jobs,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "cleanlab_flagged": fl,
            "targets": [{"target": t, "pass": bool(ok)} for t, ok in checks],
            "runs": results,
            "per_setting": [
                {"dataset": d, "model": m, "rate": r, "signals": {s: {k: {"mean": v[0], "std": v[1]} for k, v in ms.items()} for s, ms in sig.items()}}
                for (d, m, r), sig in summary["per_setting"].items()
            ],
            "overall": {
                s: {k: ({"mean": v[0], "std": v[1]} if isinstance(v, tuple) else v) for k, v in ms.items()}
                for s, ms in summary["overall"].items()
            },
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
