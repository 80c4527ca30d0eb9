"""Engine speed and memory: recording (dit.record) vs the influence sweep (dit.compute).

Digits (8x8, 1437 training samples, 20% label corruption), built-in tanh MLP 64-32-10,
30 epochs, batch 32, float32 (the defaults). Each repetition records the run, then
computes influence for the final checkpoint only and for all 30 epoch checkpoints.
Every phase runs in a fresh subprocess (after a small warm-up run, so one-off imports
are not timed), which also isolates its memory measurement.

Targets on a CPU: final-checkpoint sweep <= 2x training time; all-epoch-checkpoint
sweep <= 4x training time. Ratios are taken within one repetition, then the median
over repetitions is reported.

Peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of a phase minus
the process's resident set size just before it (read from /proc/self/statm): the extra
resident memory the phase needed, torch's allocations included (tracemalloc would miss them).

    .venv/bin/python benchmarks/bench_engine.py              # 3 repetitions, 1 thread
    .venv/bin/python benchmarks/bench_engine.py --reps 5 --threads 2 --json out.json
    .venv/bin/python benchmarks/bench_engine.py --profile     # where the sweep's time goes
    .venv/bin/python benchmarks/bench_engine.py --method both # also time compute(method="jvp")
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("record", "final", "epochs")
JVP_PHASES = ("final_jvp", "epochs_jvp")  # the same sweeps with compute(method="jvp")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    import dit_core as dit
    from dit_core.data import load_dataset
    from dit_core.models import build_model, describe_model

    ds = load_dataset("digits", corruption_rate=0.2, corruption_seed=0)
    desc = describe_model("mlp", ds.input_shape, ds.n_classes, hidden=(32,), seed=0)

    def record(out, epochs, n=None):
        sl = slice(0, n)
        cfg = dit.TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=0.1, dtype=args.dtype)
        return dit.record(
            build_model(**desc), (ds.X_train[sl], ds.y_train[sl]), (ds.X_val, ds.y_val), cfg, out,
            model_description={"kind": "builtin", **desc}, dataset_description=ds.describe(),
            original_labels=ds.original_y_train[sl], is_corrupted=ds.is_corrupted[sl],
            overwrite=True, progress=False,
        )

    return dit, record


def run_phase(args) -> dict:
    """One timed phase in this (fresh) process; prints a JSON line."""
    dit, record = _setup(args)
    method = "jvp" if args.phase.endswith("_jvp") else "reverse"
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: lazy imports, first-call overheads
        warm = record(Path(tmp) / "warm", epochs=1, n=64)
        dit.compute(warm, checkpoints="epochs", progress=False, method=method)
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    if args.phase == "record":
        record(args.run_dir, epochs=args.epochs)
    else:
        checkpoints = "final" if args.phase.startswith("final") else "epochs"
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        dit.compute(args.run_dir, checkpoints=checkpoints, overwrite=True, progress=False, method=method)
        if args.profile:
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    seconds = time.perf_counter() - t0
    out = {"phase": args.phase, "seconds": seconds, "peak_mib": max(0.0, _maxrss_mib() - rss0), "rss_before_mib": rss0}
    print(json.dumps(out))
    return out


def spawn(args, phase: str, run_dir: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--phase", phase, "--run-dir", str(run_dir), "--threads", str(args.threads),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--dtype", args.dtype,
    ]
    if args.profile:
        cmd.append("--profile")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"phase {phase} failed (exit {res.returncode})")
    if args.profile:
        sys.stderr.write(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every phase (default 1)")
    p.add_argument("--profile", action="store_true", help="print the sweeps' cProfile top entries (one repetition)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--method", choices=["reverse", "jvp", "both"], default="reverse",
                   help="sweep implementation(s) to time (default: reverse, the default of dit.compute)")
    p.add_argument("--phase", choices=PHASES + JVP_PHASES, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        run_phase(args)
        return 0
    if args.profile:
        args.reps = 1

    phases = ("record",)
    if args.method in ("reverse", "both"):
        phases += ("final", "epochs")
    if args.method in ("jvp", "both"):
        phases += JVP_PHASES
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        run_dir = Path(tmp) / "run"
        for rep in range(args.reps):
            r = {ph: spawn(args, ph, run_dir) for ph in phases}
            rows.append(r)
            tr = r["record"]["seconds"]
            line = f"rep {rep + 1}: record {tr:6.2f} s"
            for ph in phases[1:]:
                line += f" | {ph} sweep {r[ph]['seconds']:6.2f} s ({r[ph]['seconds'] / tr:4.2f}x)"
            print(line, flush=True)

    def med(f):
        return statistics.median(f(r) for r in rows)

    summary = {
        "setup": {
            "data": "digits (1437 train / 360 val, 20% corrupted)", "model": "mlp 64-32-10 tanh",
            "epochs": args.epochs, "batch_size": args.batch_size, "dtype": args.dtype, "threads": args.threads,
            "reps": args.reps, "cpu_count": os.cpu_count(), "method": args.method,
            "memory": "ru_maxrss after the phase minus RSS before it, fresh subprocess per phase",
        },
        "median_seconds": {ph: med(lambda r, ph=ph: r[ph]["seconds"]) for ph in phases},
        "median_ratio_to_training": {
            ph: med(lambda r, ph=ph: r[ph]["seconds"] / r["record"]["seconds"]) for ph in phases[1:]
        },
        "median_peak_mib": {ph: med(lambda r, ph=ph: r[ph]["peak_mib"]) for ph in phases},
        "targets": {"final": 2.0, "epochs": 4.0, "final_jvp": 2.0, "epochs_jvp": 4.0},
        "reps": rows,
    }
    s, ratio, mem = summary["median_seconds"], summary["median_ratio_to_training"], summary["median_peak_mib"]
    print()
    print(f"medians over {args.reps} reps ({args.threads} thread(s), {args.dtype}):")
    print(f"  {'phase':<28}{'seconds':>9}{'x training':>12}{'target':>8}{'peak MiB':>10}")
    print(f"  {'record (training)':<28}{s['record']:>9.2f}{1.0:>12.2f}{'':>8}{mem['record']:>10.1f}")
    labels = {
        "final": "sweep, final checkpoint", "epochs": f"sweep, {args.epochs} epoch checkpoints",
        "final_jvp": "jvp sweep, final checkpoint", "epochs_jvp": f"jvp sweep, {args.epochs} epoch cps",
    }
    for ph in phases[1:]:
        label = labels[ph]
        ok = "ok" if ratio[ph] <= summary["targets"][ph] else "MISS"
        print(f"  {label:<28}{s[ph]:>9.2f}{ratio[ph]:>12.2f}{'<=' + str(summary['targets'][ph]):>8}{mem[ph]:>10.1f}  {ok}")
    print("  peak MiB = ru_maxrss after the phase - RSS before it (fresh process per phase)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
