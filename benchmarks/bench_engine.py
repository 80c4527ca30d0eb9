"""Engine speed and memory: plain training, recording (dit.record) and the influence sweep (dit.compute).

Digits (8x8, 1437 training samples, 20% label corruption), built-in tanh MLP 64-32-10,
30 epochs, batch 32, SGD lr 0.1, float32 (the defaults). Each repetition

1. records the run (``dit.record``: training + per-step logging + trajectory + I/O);
2. trains the same model again with a bare ``torch.optim`` loop — same initial parameters,
   same minibatches in the same order, same per-step learning rates and epochs, no logging
   (``plain``): the cost of training itself;
3. computes influence for the final checkpoint only and for all epoch checkpoints, each
   with the TracIn self-influence grad-norm pass (``compute``'s default; it forms per-sample
   gradients at every checkpoint) and without it (``self_influence=False``: the pure sweep).

Every phase runs in a fresh subprocess (after a small warm-up, so one-off imports and
first-call overheads are not timed), which also isolates its memory measurement. Times
are the wall time of the phase's call (``dit.record``, the plain loop, ``dit.compute``).

Targets on a CPU: final-checkpoint sweep <= 2x training; all-epoch-checkpoint sweep
<= 4x training. Each sweep's ratio is reported against plain training and against
``dit.record``, with PASS/FAIL for both; ratios are taken within one repetition, then
the median over repetitions is reported.

Peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of a phase minus
the process's resident set size just before it (read from /proc/self/statm): the extra
resident memory the phase needed, torch's allocations included (tracemalloc would miss them).

    .venv/bin/python benchmarks/bench_engine.py              # 3 repetitions, 1 thread
    .venv/bin/python benchmarks/bench_engine.py --reps 5 --threads 2 --json out.json
    .venv/bin/python benchmarks/bench_engine.py --profile     # where the sweep's time goes
    .venv/bin/python benchmarks/bench_engine.py --method all  # also time the autograd methods (reverse, jvp)
    .venv/bin/python benchmarks/bench_engine.py --quick       # small sizes, 1 rep (< 60 s; a smoke test)
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

TRAIN_PHASES = ("record", "plain")
TARGETS = {"final": 2.0, "epochs": 4.0}  # sweep time / training time, by checkpoint choice


# dit.compute's method -> phase-name suffix; "analytic" is what compute's default ("auto")
# takes for this model (the built-in MLP), the others are the autograd methods any model can use
METHOD_SUFFIX = {"analytic": "", "reverse": "_reverse", "jvp": "_jvp"}


def sweep_phases(method: str) -> tuple[str, ...]:
    """Sweep phase names: {final,epochs}[_reverse|_jvp][_noself]."""
    methods = list(METHOD_SUFFIX) if method == "all" else [method]
    return tuple(f"{cp}{METHOD_SUFFIX[m]}{s}" for m in methods for cp in ("final", "epochs") for s in ("", "_noself"))


ALL_PHASES = TRAIN_PHASES + sweep_phases("all")


def parse_sweep_phase(phase: str) -> tuple[str, str, bool]:
    """(checkpoints, method, self_influence) of a sweep phase name."""
    checkpoints = "final" if phase.startswith("final") else "epochs"
    method = next((m for m, suf in METHOD_SUFFIX.items() if suf and suf in phase), "analytic")
    return checkpoints, method, not phase.endswith("_noself")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


_SETUP_CACHE: dict = {}


def _setup(args):
    key = (args.threads, args.batch_size, args.dtype)
    if key in _SETUP_CACHE:
        return _SETUP_CACHE[key]
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

    _SETUP_CACHE[key] = (dit, record)
    return dit, record


class PlainTrainer:
    """A bare torch.optim training loop over a recorded run's minibatches and learning rates.

    The model is rebuilt from the run's manifest and starts from the recorded θ₀; the
    optimizer is the ``torch.optim`` counterpart of the run's (SGD with its momentum,
    dampening, Nesterov and weight decay; Adam; AdamW). Nothing is logged or stored.
    """

    def __init__(self, run_dir):
        import numpy as np
        import torch

        import dit_core as dit
        from dit_core._modelspec import build_from_description

        self.torch = torch
        run = dit.load_run(run_dir)
        self.run = run
        self.dtype = getattr(torch, run.config.dtype)
        self.model_description = run.manifest["model"]
        self._build = build_from_description
        self.X = torch.as_tensor(np.array(run.X_train)).to(self.dtype)
        self.y = torch.as_tensor(np.array(run.y_train), dtype=torch.int64)
        self.batches = [torch.as_tensor(np.array(b), dtype=torch.int64) for b in run.batches]
        self.lrs = [float(x) for x in run.learning_rates]
        traj = run.path / "trajectory"
        self.params = np.load(traj / "params.npy", mmap_mode="r", allow_pickle=False) if run.has_trajectory else None
        self.rows = np.load(traj / "steps.npy", allow_pickle=False) if run.has_trajectory else None

    def _model_and_optimizer(self):
        import numpy as np

        torch = self.torch
        model = self._build(self.model_description).to(self.dtype)
        if self.params is not None and len(self.rows) and int(self.rows[0]) == 0:
            theta0 = np.array(self.params[0])
            with torch.no_grad():
                off = 0
                for p in model.parameters():
                    p.copy_(torch.as_tensor(theta0[off : off + p.numel()]).view_as(p))
                    off += p.numel()
        c = self.run.config
        lr = self.lrs[0]
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=c.momentum, dampening=c.dampening,
                                  nesterov=c.nesterov, weight_decay=c.weight_decay)
        elif c.optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        else:  # pragma: no cover - TrainConfig refuses others
            raise SystemExit(f"plain training: unsupported optimizer {c.optimizer!r}")
        return model, opt

    def train(self, n_steps: int | None = None):
        """Run the loop over the first ``n_steps`` steps (default all); returns the model."""
        torch = self.torch
        model, opt = self._model_and_optimizer()
        group = opt.param_groups[0]
        X, y, ce = self.X, self.y, torch.nn.functional.cross_entropy
        for ids, lr in zip(self.batches[:n_steps], self.lrs[:n_steps]):
            group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            ce(model(X[ids]), y[ids]).backward()
            opt.step()
        return model

    def final_deviation(self, model) -> float | None:
        """max|θ_plain − θ_recorded| / max|θ_recorded| at the last step, if it is stored."""
        import numpy as np

        if self.params is None or int(self.rows[-1]) != len(self.batches):
            return None
        theta = np.concatenate([p.detach().reshape(-1).numpy() for p in model.parameters()]).astype(np.float64)
        ref = np.asarray(self.params[-1], dtype=np.float64)
        return float(np.abs(theta - ref).max() / max(np.abs(ref).max(), 1e-12))


def run_phase(args, phase: str, run_dir) -> dict:
    """One timed phase in this process (normally a fresh one)."""
    dit, record = _setup(args)
    extra = {}
    if phase == "plain":
        trainer = PlainTrainer(run_dir)
        trainer.train(min(20, len(trainer.batches)))  # warm-up
        rss0 = _rss_mib()
        t0 = time.perf_counter()
        model = trainer.train()
        seconds = time.perf_counter() - t0
        extra["final_param_deviation"] = trainer.final_deviation(model)
    else:
        checkpoints, method, self_influence = ("epochs", "auto", True) if phase == "record" else parse_sweep_phase(phase)
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: lazy imports, first-call overheads
            warm = record(Path(tmp) / "warm", epochs=1, n=64)
            dit.compute(warm, checkpoints="epochs", progress=False, method=method, self_influence=self_influence)
        rss0 = _rss_mib()
        t0 = time.perf_counter()
        if phase == "record":
            record(run_dir, epochs=args.epochs, n=args.n_train)
        else:
            if args.profile:
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
            run = dit.compute(run_dir, checkpoints=checkpoints, overwrite=True, progress=False,
                              method=method, self_influence=self_influence)
            if args.profile:
                prof.disable()
                pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
            extra["sweep_loop_seconds"] = run.influence_manifest.get("sweep_seconds")
        seconds = time.perf_counter() - t0
    return {"phase": phase, "seconds": seconds, "peak_mib": max(0.0, _maxrss_mib() - rss0), "rss_before_mib": rss0, **extra}


def spawn(args, phase: str, run_dir: Path) -> dict:
    if args.in_process:
        return run_phase(args, phase, run_dir)
    cmd = [
        sys.executable, __file__, "--phase", phase, "--run-dir", str(run_dir), "--threads", str(args.threads),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--dtype", args.dtype,
    ]
    if args.n_train is not None:
        cmd += ["--n-train", str(args.n_train)]
    if args.profile and phase not in TRAIN_PHASES:
        cmd.append("--profile")
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"phase {phase} failed (exit {res.returncode})")
    if args.profile:
        sys.stderr.write(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _label(phase: str, epochs: int) -> str:
    checkpoints, method, self_influence = parse_sweep_phase(phase)
    cp = "final checkpoint" if checkpoints == "final" else f"{epochs} epoch cps"
    return f"{'' if method == 'analytic' else method + ' '}sweep, {cp}{'' if self_influence else ', no self-inf.'}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=None, help="use the first N training samples (default all 1437)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every phase (default 1)")
    p.add_argument("--profile", action="store_true", help="print the sweeps' cProfile top entries (one repetition)")
    p.add_argument("--quick", action="store_true",
                   help="3 epochs, 480 samples, 1 repetition, phases in this process (a smoke test, < 60 s)")
    p.add_argument("--in-process", action="store_true",
                   help="run every phase in this process instead of a fresh subprocess each (faster to start; "
                        "peak memory is then the growth of one long-lived process, not per phase)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--method", choices=["analytic", "reverse", "jvp", "all"], default="analytic",
                   help="sweep implementation(s) to time (default: analytic, what dit.compute's method='auto' "
                        "takes for this model; reverse/jvp are the autograd methods used for other models; all: the three)")
    p.add_argument("--phase", choices=ALL_PHASES, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args, args.phase, args.run_dir)))
        return 0
    if args.quick:
        args.epochs, args.n_train, args.reps, args.in_process = 3, 480 if args.n_train is None else args.n_train, 1, True
    if args.profile:
        args.reps = 1

    sweeps = sweep_phases(args.method)
    phases = TRAIN_PHASES + sweeps
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        run_dir = Path(tmp) / "run"
        for rep in range(args.reps):
            r = {ph: spawn(args, ph, run_dir) for ph in phases}
            rows.append(r)
            tp, tr = r["plain"]["seconds"], r["record"]["seconds"]
            line = f"rep {rep + 1}: plain {tp:6.2f} s | record {tr:6.2f} s"
            for ph in sweeps:
                line += f" | {ph} {r[ph]['seconds']:6.2f} s ({r[ph]['seconds'] / tp:4.2f}x plain)"
            print(line, flush=True)

    def med(f):
        return statistics.median(f(r) for r in rows)

    s = {ph: med(lambda r, ph=ph: r[ph]["seconds"]) for ph in phases}
    vs_plain = {ph: med(lambda r, ph=ph: r[ph]["seconds"] / r["plain"]["seconds"]) for ph in phases if ph != "plain"}
    vs_record = {ph: med(lambda r, ph=ph: r[ph]["seconds"] / r["record"]["seconds"]) for ph in sweeps}
    mem = {ph: med(lambda r, ph=ph: r[ph]["peak_mib"]) for ph in phases}
    targets = {ph: TARGETS[parse_sweep_phase(ph)[0]] for ph in sweeps}
    passed = {ph: {"vs_plain_training": vs_plain[ph] <= targets[ph], "vs_record": vs_record[ph] <= targets[ph]} for ph in sweeps}
    deviations = [r["plain"].get("final_param_deviation") for r in rows]
    summary = {
        "mode": "quick" if args.quick else "full",
        "setup": {
            "data": f"digits ({args.n_train or 1437} train / 360 val, 20% corrupted)", "model": "mlp 64-32-10 tanh",
            "optimizer": "sgd lr 0.1 constant", "epochs": args.epochs, "n_train": args.n_train,
            "batch_size": args.batch_size, "dtype": args.dtype, "threads": args.threads,
            "reps": args.reps, "cpu_count": os.cpu_count(), "method": args.method,
            "phases": {
                "record": "wall time of dit.record (training + logging + trajectory + I/O)",
                "plain": "bare torch.optim loop: same model, theta0, minibatches (same order), lr per step, epochs; no logging",
                "sweeps": "wall time of dit.compute; *_noself with self_influence=False (no per-sample grad-norm pass)",
            },
            "in_process": args.in_process,
            "memory": "ru_maxrss after the phase minus RSS before it, "
                      + ("all phases in one process (later phases may show 0)" if args.in_process else "fresh subprocess per phase"),
        },
        "median_seconds": s,
        "median_ratio_to_plain_training": vs_plain,
        "median_ratio_to_record": vs_record,
        "median_peak_mib": mem,
        "targets": targets,
        "pass": passed,
        # the targets are about the sweep a user gets by default (method="auto" -> analytic here)
        "all_pass": all(v["vs_plain_training"] for ph, v in passed.items() if parse_sweep_phase(ph)[1] == "analytic")
        if any(parse_sweep_phase(ph)[1] == "analytic" for ph in sweeps)
        else all(v["vs_plain_training"] for v in passed.values()),
        "plain_final_param_deviation": deviations,
        "wall_seconds": time.perf_counter() - began,
        "reps": rows,
    }
    print()
    print(f"medians over {args.reps} reps ({args.threads} thread(s), {args.dtype}, {args.epochs} epochs, "
          f"{summary['setup']['data']}):")
    head = f"  {'phase':<44}{'seconds':>9}{'x plain':>9}{'x record':>10}{'target':>8}{'vs plain':>10}{'vs record':>11}{'peak MiB':>10}"
    print(head)
    print(f"  {'plain training (torch.optim loop)':<44}{s['plain']:>9.2f}{1.0:>9.2f}{'':>10}{'':>8}{'':>10}{'':>11}{mem['plain']:>10.1f}")
    print(f"  {'record (dit.record)':<44}{s['record']:>9.2f}{vs_plain['record']:>9.2f}{1.0:>10.2f}{'':>8}{'':>10}{'':>11}{mem['record']:>10.1f}")
    for ph in sweeps:
        ok_p = "PASS" if passed[ph]["vs_plain_training"] else "FAIL"
        ok_r = "PASS" if passed[ph]["vs_record"] else "FAIL"
        print(f"  {_label(ph, args.epochs):<44}{s[ph]:>9.2f}{vs_plain[ph]:>9.2f}{vs_record[ph]:>10.2f}"
              f"{'<=' + format(targets[ph], 'g') + 'x':>8}{ok_p:>10}{ok_r:>11}{mem[ph]:>10.1f}")
    dev = [d for d in deviations if d is not None]
    if dev:
        print(f"  plain loop vs recorded final parameters: max relative deviation {max(dev):.1e} (same run, torch.optim)")
    print("  targets: final-checkpoint sweep <= 2x training, all-epoch-checkpoint sweep <= 4x training; "
          "'no self-inf.' = compute(self_influence=False), without the TracIn per-sample grad-norm pass")
    print("  peak MiB = ru_maxrss after the phase - RSS before it ("
          + ("all phases in this process: later phases may show 0)" if args.in_process else "fresh process per phase)"))
    print(f"overall (default sweep vs plain training): {'PASS' if summary['all_pass'] else 'FAIL'}"
          + ("  (--quick: sizes too small for the targets to mean much)" if args.quick else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
