"""Dashboard latency: how long recomputing the window's ranking after a brush takes.

Target (DESIGN.md §3, issue "Streamlit dashboard"): <= 200 ms for 100,000 samples x 50 epochs.

The script GENERATES a large synthetic run directory in the real on-disk format: it first
records and computes a tiny real run (iris, logistic regression) with ``dit.record`` and
``dit.compute``, copies its manifest/influence-manifest structure and table schemas, and
scales every array to ``--n`` samples x ``--epochs`` epochs (synthetic values). It then opens
the run with the same loader the dashboard uses (``dit_core.explore.open_run``) and times
``dit_core.explore.rank_window`` — the function the Window view and Timeline call after a
brush — over random windows, reporting the median of the repeats.

Usage::

    .venv/bin/python benchmarks/bench_dashboard.py            # 100k x 50, epoch checkpoints
    .venv/bin/python benchmarks/bench_dashboard.py --n 20000 --epochs 20 --repeats 50
    .venv/bin/python benchmarks/bench_dashboard.py --quick --json out.json   # 5,000 x 10, 10 repeats (a smoke test)

Exit status 1 when the median is over the target (not in ``--quick`` mode).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dit_core as dit  # noqa: E402
from dit_core import explore as ex  # noqa: E402
from dit_core.data import load_dataset  # noqa: E402
from dit_core.models import build_model, describe_model  # noqa: E402


def make_template(workdir: Path) -> Path:
    """A tiny real run (iris, logreg, 2 epochs) written by dit.record + dit.compute."""
    ds = load_dataset("iris", corruption_rate=0.2, corruption_seed=0)
    desc = describe_model("logreg", ds.input_shape, ds.n_classes, seed=0)
    cfg = dit.TrainConfig(epochs=2, batch_size=16, lr=0.1)
    path = dit.record(
        build_model(**desc), (ds.X_train, ds.y_train), (ds.X_val, ds.y_val), cfg, workdir / "template",
        model_description={"kind": "builtin", **desc}, dataset_description=ds.describe(),
        original_labels=ds.original_y_train, is_corrupted=ds.is_corrupted, progress=False,
    )
    dit.compute(path, checkpoints="epochs", progress=False)
    return Path(path)


def _npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def scale_run(template: Path, out: Path, *, n: int, epochs: int, batch_size: int, checkpoints: str, seed: int = 0) -> Path:
    """Write a synthetic run of ``n`` samples x ``epochs`` epochs with ``template``'s structure."""
    rng = np.random.default_rng(seed)
    tm = json.loads((template / "manifest.json").read_text())
    tim = json.loads((template / "influence" / "influence.json").read_text())
    t_samples = pd.read_parquet(template / "samples.parquet")
    t_steps = pd.read_parquet(template / "steps.parquet")
    t_epochs = pd.read_parquet(template / "epochs.parquet")
    X_t = np.load(template / "train_X.npy")
    Xv_t = np.load(template / "val_X.npy")
    yv_t = np.load(template / "val_y.npy")
    n_classes = int(tm["n_classes"])

    out.mkdir(parents=True)
    (out / "influence").mkdir()
    spe = -(-n // batch_size)
    T = spe * epochs
    n_val = max(len(yv_t), n // 5)

    # data and labels
    X = rng.standard_normal((n, *X_t.shape[1:])).astype(X_t.dtype)
    y = rng.integers(0, n_classes, n).astype(np.int64)
    corrupt = rng.random(n) < 0.2
    orig = np.where(corrupt, (y + rng.integers(1, n_classes, n)) % n_classes, y)
    _npy(out / "train_X.npy", X)
    _npy(out / "train_y.npy", y)
    _npy(out / "val_X.npy", rng.standard_normal((n_val, *Xv_t.shape[1:])).astype(Xv_t.dtype))
    _npy(out / "val_y.npy", rng.integers(0, n_classes, n_val).astype(yv_t.dtype))
    samples = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64), "label": y, "original_label": orig, "is_corrupted": corrupt})
    samples[list(t_samples.columns)].to_parquet(out / "samples.parquet", index=False)

    # minibatches: a fresh permutation per epoch, like the recorder
    batch_ids = np.empty(n * epochs, dtype=np.int64)
    sample_step = np.empty((n, epochs), dtype=np.int64)
    sizes = np.full(spe, batch_size, dtype=np.int64)
    sizes[-1] = n - batch_size * (spe - 1)
    step_in_epoch = np.repeat(np.arange(spe), sizes)
    for e in range(epochs):
        perm = rng.permutation(n)
        batch_ids[e * n : (e + 1) * n] = perm
        sample_step[perm, e] = e * spe + step_in_epoch
    offsets = np.concatenate([[0], np.cumsum(np.tile(sizes, epochs))]).astype(np.int64)
    _npy(out / "batch_ids.npy", batch_ids)
    _npy(out / "batch_offsets.npy", offsets)
    _npy(out / "sample_step.npy", sample_step)
    loss = np.exp(-np.linspace(0, 2, epochs))[None, :] * rng.gamma(2.0, 0.5, (n, 1))
    _npy(out / "sample_loss.npy", loss.astype(np.float32))
    _npy(out / "sample_margin.npy", (1 - loss).astype(np.float32))

    lr = float(tm["config"]["lr"])
    bl = 2.0 * np.exp(-np.arange(T) / (T / 3)) + 0.05 * rng.standard_normal(T)
    steps = pd.DataFrame({"step": np.arange(T), "epoch": np.arange(T) // spe, "lr": lr, "batch_size": np.tile(sizes, epochs), "batch_loss": bl})
    steps[list(t_steps.columns)].astype(t_steps.dtypes.to_dict()).to_parquet(out / "steps.parquet", index=False)
    ends = (np.arange(epochs) + 1) * spe
    ep = pd.DataFrame({"epoch": np.arange(epochs), "end_step": ends, "train_loss": bl[ends - 1], "val_loss": bl[ends - 1] * 0.9,
                       "val_accuracy": np.linspace(0.5, 0.9, epochs)})
    ep[list(t_epochs.columns)].astype(t_epochs.dtypes.to_dict()).to_parquet(out / "epochs.parquet", index=False)

    # contribution tensor (K, n, E): C[k, j, e] = 0 unless sample j's step in epoch e lies before c_k
    cps = ends if checkpoints == "epochs" else np.array([T])
    K = len(cps)
    base = (rng.standard_normal((n, epochs)) * rng.lognormal(0, 1, (n, 1)) * 1e-5).astype(np.float32)
    arr = np.lib.format.open_memmap(out / "influence" / "val_loss.npy", mode="w+", dtype=np.float32, shape=(K, n, epochs))
    for k, c in enumerate(cps):
        arr[k] = np.where(sample_step < c, base * (0.5 + (k + 1) / K), 0)
    arr.flush()
    del arr
    _npy(out / "influence" / "grad_norm2.npy", rng.gamma(2.0, 1.0, (n, K)).astype(np.float32))

    im = dict(tim)
    im.update(checkpoints=cps.tolist(), query_values={"val_loss": [1.0] * K}, checkpoint_lrs=[lr] * K, sweep_seconds=None)
    (out / "influence" / "influence.json").write_text(json.dumps(im, indent=2))

    m = dict(tm)
    m.update(run_id="bench" + m["run_id"][:7], n_train=n, n_val=n_val, n_epochs=epochs, n_steps=T, steps_per_epoch=spe,
             config={**tm["config"], "epochs": epochs, "batch_size": batch_size},
             trajectory={**tm["trajectory"], "stored": False},
             dataset={**tm["dataset"], "name": "synthetic", "n_train": n, "n_val": n_val, "n_total": n + n_val})
    assert m["format"] == "dit-run" and m["format_version"] == 1 and m["complete"] is True
    (out / "manifest.json").write_text(json.dumps(m, indent=2))  # written last, like the recorder
    return out


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="training samples (default 100000; --quick: 5000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 50; --quick: 10)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--checkpoints", choices=("epochs", "final"), default="epochs")
    p.add_argument("--repeats", type=int, default=None, help="random windows timed (default 30; --quick: 10)")
    p.add_argument("--k", type=int, default=10, help="samples per list (default 10)")
    p.add_argument("--keep", default=None, help="write the synthetic run here and keep it (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="5,000 samples x 10 epochs, 10 repeats unless given (a smoke test, < 60 s)")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    for name, full, quick in (("n", 100_000, 5_000), ("epochs", 50, 10), ("repeats", 30, 10)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    began = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="dit-bench-dashboard-"))
    try:
        t0 = time.perf_counter()
        template = make_template(tmp)
        t_template = time.perf_counter() - t0
        out = Path(args.keep) if args.keep else tmp / "large"
        if out.exists():
            shutil.rmtree(out)
        scale_run(template, out, n=args.n, epochs=args.epochs, batch_size=args.batch_size, checkpoints=args.checkpoints)
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        t_generate = time.perf_counter() - t0
        print(f"synthetic run: {args.n:,} samples x {args.epochs} epochs, {args.checkpoints} checkpoints, "
              f"{size_mb:,.0f} MiB on disk, generated in {t_generate:.1f} s")

        t0 = time.perf_counter()
        run = ex.open_run(out)
        t_open = time.perf_counter() - t0
        T = run.n_steps
        rng = np.random.default_rng(1)
        windows = []
        for _ in range(args.repeats):
            a, b = np.sort(rng.integers(0, T + 1, 2))
            windows.append((int(a), int(max(b, a + 1))))

        def rank(mode):
            return lambda i: ex.rank_window(run, *windows[i], mode=mode, k=args.k)

        first_window = timed(rank("window"), 1)[0]
        t_window = timed(rank("window"), args.repeats)
        t0 = time.perf_counter()
        ex.rank_window(run, *windows[0], mode="accrued", k=args.k)
        first_accrued = time.perf_counter() - t0
        t_accrued = timed(rank("accrued"), args.repeats)
        t0 = time.perf_counter()
        ex.influence_summary(run, "window")
        t_summary = time.perf_counter() - t0

        med_w = statistics.median(t_window) * 1e3
        med_a = statistics.median(t_accrued) * 1e3
        print(f"open + validate run:                 {t_open * 1e3:8.1f} ms (cached by the dashboard afterwards)")
        print(f"rank_window, window mode, first call:{first_window * 1e3:8.1f} ms")
        print(f"rank_window, window mode:            {med_w:8.1f} ms median of {args.repeats} random windows "
              f"(min {min(t_window) * 1e3:.1f}, max {max(t_window) * 1e3:.1f})")
        print(f"rank_window, accrued, first call:    {first_accrued * 1e3:8.1f} ms (builds the cumulative influence once per run)")
        print(f"rank_window, accrued mode:           {med_a:8.1f} ms median of {args.repeats} random windows "
              f"(min {min(t_accrued) * 1e3:.1f}, max {max(t_accrued) * 1e3:.1f})")
        print(f"timeline influence summary:          {t_summary * 1e3:8.1f} ms (cached per run and mode)")
        target = 200.0
        worst = max(med_w, med_a)
        ok = worst <= target
        print(f"RESULT brush -> ranking median {worst:.1f} ms for {args.n:,} x {args.epochs}: "
              f"{'within' if ok else 'OVER'} the {target:.0f} ms target (ratio {worst / target:.2f}) {'PASS' if ok else 'FAIL'}"
              + ("  (--quick: a smaller run than the target's 100,000 x 50)" if args.quick else ""))
        if args.json:
            doc = {
                "mode": "quick" if args.quick else "full",
                "setup": {"n": args.n, "epochs": args.epochs, "n_steps": int(T), "batch_size": args.batch_size,
                          "checkpoints": args.checkpoints, "repeats": args.repeats, "k": args.k, "size_mib": size_mb},
                "ms": {
                    "open_run": t_open * 1e3,
                    "rank_window_first": first_window * 1e3,
                    "rank_window_median": med_w,
                    "rank_window_min": min(t_window) * 1e3,
                    "rank_window_max": max(t_window) * 1e3,
                    "rank_accrued_first": first_accrued * 1e3,
                    "rank_accrued_median": med_a,
                    "rank_accrued_min": min(t_accrued) * 1e3,
                    "rank_accrued_max": max(t_accrued) * 1e3,
                    "influence_summary": t_summary * 1e3,
                },
                "seconds": {"template_run": t_template, "template_and_generate": t_generate, "wall": time.perf_counter() - began},
                "target_ms": target,
                "worst_median_ms": worst,
                "pass": ok,
            }
            Path(args.json).write_text(json.dumps(doc, indent=2))
        return 0 if (ok or args.quick) else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
