"""Validation of the influence estimates against exact counterfactual replay.

``validate(run_dir)`` picks training samples by stratified random choice across each
window's estimated influence, replays the recorded run exactly without each of them
(:func:`dit_core.replay.replay`), and reports how well estimate and replay agree —
Pearson, Spearman and Kendall τ — per window, with a scatter plot per window and a JSON
report written into ``<run>/validation/``. ``dit validate RUN`` is the command line.

Sign convention: positive influence = removing the sample would raise the query; for a
loss query positive means the sample helped, negative means it hurt.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ._io import SIGN_CONVENTION, write_atomically, write_json
from .errors import ConfigError
from .replay import ReplayResult, replay
from .run import Run, load_run
from .signals import signal_windows

DEFAULT_WINDOWS = ("full", "first_epoch", "middle_epoch", "last_epoch", "convergence", "accrued")
NAMED_WINDOWS = DEFAULT_WINDOWS
CONVERGENCE_FRACTION = 0.2  # the convergence period: the last 20% of the epochs (whole epochs, at least one)
VALIDATION_DIR = "validation"
REPORT_FILE = "report.json"

_WINDOW_HELP = (
    "'full', 'first_epoch', 'middle_epoch', 'last_epoch', 'convergence' (last 20% of the epochs, at least one), "
    "'accrued' (between the first-quarter checkpoint and the last), 'epoch=E' (0-based), "
    "'steps=START:STOP' (removal during [START, STOP)), or 'accrued=CA:CB' (checkpoint steps)"
)


# ----------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class WindowSpec:
    """One validated window.

    ``kind == "removal"``: the sample is removed during steps [start, stop) and the query
    is measured at the last checkpoint. ``kind == "accrued"``: the paper's windowed
    influence between checkpoints ``start`` < ``stop`` (``I(stop) - I(start)`` for removal
    from the whole run; ``start`` may be 0).
    """

    name: str
    kind: str
    start: int
    stop: int
    description: str


def resolve_window(name: str, run: Run) -> WindowSpec:
    """Turn a window name (see ``DEFAULT_WINDOWS`` and the ``name=...`` forms) into steps."""
    if not isinstance(name, str):
        raise ConfigError(f"window {name!r} must be a string: {_WINDOW_HELP}")
    text = name.strip()
    T, E = run.n_steps, run.n_epochs
    ends = run.epoch_end_steps
    starts = np.concatenate([[0], ends[:-1]])

    def epoch(e: int, label: str) -> WindowSpec:
        return WindowSpec(label, "removal", int(starts[e]), int(ends[e]), f"removal during epoch {e} (steps {starts[e]}-{ends[e]}), measured at the end")

    if text == "full":
        return WindowSpec(text, "removal", 0, T, f"removal during the whole run (steps 0-{T}), measured at the end")
    if text == "first_epoch":
        return epoch(0, text)
    if text == "middle_epoch":
        return epoch((E - 1) // 2, text)
    if text == "last_epoch":
        return epoch(E - 1, text)
    if text == "convergence":
        # the same whole-epoch window as the dit_convergence signal and the dashboard
        w = signal_windows(run, convergence_fraction=CONVERGENCE_FRACTION)["convergence"]
        a, b = int(w["start"]), int(w["stop"])
        e0, e1 = w["epochs"]
        return WindowSpec(
            text, "removal", a, b,
            f"removal during the convergence period, the last 20% of the epochs (epochs {e0}-{e1}, steps {a}-{b}), "
            "measured at the end",
        )
    cps = run.checkpoints
    if text == "accrued":
        inner = cps[(cps >= T / 4) & (cps < T)]
        if len(inner) == 0:
            raise ConfigError(
                f"window 'accrued' needs a checkpoint between step {T / 4:g} (first quarter) and the last step {T}, "
                f"but the run's checkpoints are {cps.tolist()}; compute influence with checkpoints='epochs'"
            )
        a = int(inner[0])
        return WindowSpec(text, "accrued", a, T, f"accrued influence between checkpoints {a} (first quarter) and {T}: I({T}) - I({a})")
    m = re.fullmatch(r"epoch=(-?\d+)", text)
    if m:
        e = int(m.group(1))
        if not 0 <= e < E:
            raise ConfigError(f"window {text!r}: epoch {e} does not exist (the run has epochs 0..{E - 1})")
        return epoch(e, text)
    m = re.fullmatch(r"steps=(-?\d+):(-?\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if not 0 <= a < b <= T:
            raise ConfigError(f"window {text!r} must satisfy 0 <= START < STOP <= n_steps = {T}")
        return WindowSpec(text, "removal", a, b, f"removal during steps {a}-{b}, measured at the end")
    m = re.fullmatch(r"accrued=(-?\d+):(-?\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        known = set(cps.tolist()) | {0}
        if a >= b or a not in known or b not in known:
            raise ConfigError(
                f"window {text!r} needs two checkpoint steps CA < CB (CA may be 0); the run's checkpoints are {cps.tolist()}"
            )
        return WindowSpec(text, "accrued", a, b, f"accrued influence between checkpoints {a} and {b}: I({b}) - I({a})")
    raise ConfigError(f"unknown window {name!r}; use {_WINDOW_HELP}")


# ----------------------------------------------------------------------------- selection
def stratified_choice(scores: np.ndarray, n: int, *, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Pick ``n`` indices spread over the range of ``scores``.

    Sort the indices by score, split them into ``n`` consecutive strata of (almost) equal
    size (``numpy.array_split``), and pick one index per stratum uniformly at random with
    ``numpy.random.default_rng(seed)``. With ``n >= len(scores)`` every index is returned.

    Parameters
    ----------
    scores : ndarray (N,)
    n : int
    seed : int or sequence of int

    Returns
    -------
    ndarray (min(n, N),) of int64, in ascending score order.
    """
    scores = np.asarray(scores, dtype=np.float64)
    N = len(scores)
    if n < 1:
        raise ConfigError(f"n={n} must be >= 1")
    order = np.argsort(scores, kind="stable")
    if n >= N:
        return order.astype(np.int64)
    rng = np.random.default_rng(seed)
    strata = np.array_split(order, n)
    return np.array([s[rng.integers(len(s))] for s in strata], dtype=np.int64)


def _window_seed(seed: int, name: str) -> list[int]:
    return [int(seed), zlib.crc32(name.encode())]


# ----------------------------------------------------------------------------- statistics
def _correlations(est: np.ndarray, rep: np.ndarray) -> dict:
    from scipy import stats

    est = np.asarray(est, dtype=np.float64)
    rep = np.asarray(rep, dtype=np.float64)
    out = {"pearson": None, "spearman": None, "kendall": None, "slope": None}
    if len(est) >= 3 and np.ptp(est) > 0 and np.ptp(rep) > 0:
        out["pearson"] = float(stats.pearsonr(est, rep)[0])
        out["spearman"] = float(stats.spearmanr(est, rep)[0])
        out["kendall"] = float(stats.kendalltau(est, rep)[0])
        # least-squares slope of replay on estimate: 1 = the estimate has the right scale
        out["slope"] = float(np.dot(est - est.mean(), rep - rep.mean()) / np.dot(est - est.mean(), est - est.mean()))
    err = est - rep
    scale = float(np.abs(rep).max()) if len(rep) else 0.0
    out["max_abs_error"] = float(np.abs(err).max()) if len(err) else 0.0
    out["relative_error"] = float(np.linalg.norm(err) / np.linalg.norm(rep)) if np.linalg.norm(rep) > 0 else None
    out["replay_max_abs"] = scale
    return out


# ----------------------------------------------------------------------------- report
@dataclass
class WindowValidation:
    """Estimate vs exact replay for one window.

    Attributes
    ----------
    name, kind, start, stop, description
        See :class:`WindowSpec`.
    sample_ids : ndarray (m,)
    estimate, replay : ndarray (m,)
        First-order estimate and exact replay influence. Positive = removing the sample
        raises the query.
    pearson, spearman, kendall : float or None
        None when either side is constant (correlation undefined).
    slope : float or None
        Least-squares slope of replay on estimate (1 = right scale).
    max_abs_error, relative_error : float
        ``max|est - rep|`` and ``||est - rep|| / ||rep||``.
    plot : str or None
        Path of the scatter plot PNG.
    """

    name: str
    kind: str
    start: int
    stop: int
    description: str
    sample_ids: np.ndarray
    estimate: np.ndarray
    replay: np.ndarray
    pearson: float | None
    spearman: float | None
    kendall: float | None
    slope: float | None
    max_abs_error: float
    relative_error: float | None
    plot: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "start": int(self.start),
            "stop": int(self.stop),
            "description": self.description,
            "n": int(len(self.sample_ids)),
            "pearson": _num(self.pearson),
            "spearman": _num(self.spearman),
            "kendall": _num(self.kendall),
            "slope": _num(self.slope),
            "max_abs_error": _num(self.max_abs_error),
            "relative_error": _num(self.relative_error),
            "plot": self.plot,
            "sample_ids": [int(x) for x in self.sample_ids],
            "estimate": [float(x) for x in self.estimate],
            "replay": [float(x) for x in self.replay],
        }


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class ValidationReport:
    """Result of :func:`validate`.

    Attributes
    ----------
    run_path, run_id, query : str
    dtype, optimizer : str
    n_samples, seed : int
    windows : dict of str -> WindowValidation
        In the order asked for.
    trajectory_deviation : float
        Largest relative deviation of the unmodified replay from the recorded parameters
        (0 = bit-exact).
    reproduces_recording : bool
        ``trajectory_deviation <= tolerance`` (1e-9 for float64 runs, 1e-4 for float32).
    replay_seconds : float
        Wall time of all replays.
    replay_seconds_per_sample : float
        Wall time of the whole-run removal replay divided by its number of samples.
    training_seconds : float or None
        The recorded run's training time (from its manifest).
    out_dir : str or None
        Where ``report.json`` and the scatter plots were written.
    """

    run_path: str
    run_id: str
    query: str
    dtype: str
    optimizer: str
    n_samples: int
    seed: int
    windows: dict[str, WindowValidation]
    trajectory_deviation: float
    tolerance: float
    replay_seconds: float
    replay_seconds_per_sample: float | None
    training_seconds: float | None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    out_dir: str | None = None

    @property
    def reproduces_recording(self) -> bool:
        return self.trajectory_deviation <= self.tolerance

    def __getitem__(self, name: str) -> WindowValidation:
        return self.windows[name]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``json.dumps(report.to_dict())`` works)."""
        return {
            "format": "dit-validation",
            "version": 1,
            "created": self.created,
            "run_path": self.run_path,
            "run_id": self.run_id,
            "query": self.query,
            "dtype": self.dtype,
            "optimizer": self.optimizer,
            "n_samples": int(self.n_samples),
            "seed": int(self.seed),
            "sign_convention": SIGN_CONVENTION,
            "trajectory_deviation": float(self.trajectory_deviation),
            "tolerance": float(self.tolerance),
            "reproduces_recording": bool(self.reproduces_recording),
            "replay_seconds": float(self.replay_seconds),
            "replay_seconds_per_sample": _num(self.replay_seconds_per_sample),
            "training_seconds": _num(self.training_seconds),
            "out_dir": self.out_dir,
            "windows": [w.to_dict() for w in self.windows.values()],
        }

    def table(self) -> str:
        """A readable plain-text table of the per-window agreement."""

        def f(x, fmt="{:.4f}"):
            return "   -  " if x is None else fmt.format(x)

        head = f"{'window':<16} {'steps':>13} {'n':>4} {'pearson':>8} {'spearman':>8} {'kendall':>8} {'slope':>7} {'rel.err':>8}"
        lines = [
            f"DIT validation of {self.run_path} (query {self.query}, {self.dtype}, {self.optimizer})",
            f"estimate vs exact counterfactual replay; {self.n_samples} samples per window, stratified (seed {self.seed})",
            head,
            "-" * len(head),
        ]
        for w in self.windows.values():
            steps = f"{w.start}-{w.stop}" if w.kind == "removal" else f"I({w.stop})-I({w.start})"
            lines.append(
                f"{w.name[:16]:<16} {steps:>13} {len(w.sample_ids):>4} {f(w.pearson):>8} {f(w.spearman):>8} "
                f"{f(w.kendall):>8} {f(w.slope, '{:.3f}'):>7} {f(w.relative_error, '{:.3f}'):>8}"
            )
        ok = "yes" if self.reproduces_recording else "NO"
        lines.append(
            f"unmodified replay reproduces the recording: {ok} (max relative deviation {self.trajectory_deviation:.2e}, "
            f"tolerance {self.tolerance:.0e})"
        )
        per = self.replay_seconds_per_sample
        if per is not None and self.training_seconds:
            lines.append(
                f"replay cost: {per:.2f} s per sample for the whole run = {per / self.training_seconds:.2f}x one "
                f"recorded training run ({self.training_seconds:.2f} s); all replays {self.replay_seconds:.1f} s"
            )
        lines.append("sign: " + SIGN_CONVENTION)
        if self.out_dir:
            lines.append(f"plots and report.json in {self.out_dir}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _atomic_png(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _plot_file(name: str) -> str:
    return "scatter_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".png"


def _scatter(w: WindowValidation, corrupted: np.ndarray | None, query: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    x, y = w.estimate, w.replay
    if corrupted is not None and corrupted.any():
        ax.scatter(x[~corrupted], y[~corrupted], s=18, alpha=0.8, label="clean label")
        ax.scatter(x[corrupted], y[corrupted], s=22, alpha=0.9, marker="x", color="tab:red", label="corrupted label")
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.scatter(x, y, s=18, alpha=0.8)
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="lightgrey", lw=0.6)
    ax.axvline(0, color="lightgrey", lw=0.6)

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    ax.set_title(f"{w.name}: Pearson {f(w.pearson)}, Spearman {f(w.spearman)}, Kendall {f(w.kendall)}", fontsize=9)
    ax.set_xlabel(f"estimated influence on {query} (first order)")
    ax.set_ylabel("exact replay influence")
    fig.text(0.02, 0.008, "positive = removing the sample raises the query (for a loss: it helped)", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _atomic_png(fig, path)


# ----------------------------------------------------------------------------- validate
def validate(
    run_dir: str | os.PathLike | Run,
    *,
    n_samples: int = 40,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    query: str | None = None,
    chunk: int = 64,
    model=None,
    loss_fn=None,
) -> ValidationReport:
    """Compare the influence estimates of a run with exact counterfactual replay.

    For each window, ``n_samples`` training samples are chosen by stratified random choice
    across that window's estimated influence (:func:`stratified_choice`, seeded by
    ``seed`` and the window's name), the recorded run is replayed exactly without each of
    them (the sample's term dropped in the window, divisor unchanged), and the estimate is
    compared with the replay.

    Parameters
    ----------
    run_dir : path or Run
        A run with influence computed and its trajectory stored (or, for a stripped run, its
        initial parameters: it is then replayed from them once more).
    n_samples : int, default 40
        Samples per window (at least 3; capped at the number of training samples).
    windows : sequence of str, default ``DEFAULT_WINDOWS``
        ``"full"`` (removal during the whole run), ``"first_epoch"``, ``"middle_epoch"``,
        ``"last_epoch"``, ``"convergence"`` (the last 20% of the epochs, whole epochs, at least
        one: :func:`dit_core.signals.signal_windows`) — all measured at the
        last checkpoint — and ``"accrued"``: the paper's windowed influence between the
        first checkpoint at or after the first quarter of training and the last checkpoint,
        ``I(c_b) - I(c_a)``, compared with the difference of the whole-run removal replay at
        the two checkpoints. Also ``"epoch=E"``, ``"steps=START:STOP"`` and
        ``"accrued=CA:CB"``.
    seed : int, default 0
    out_dir : path, optional
        Where to write ``report.json`` and ``scatter_<window>.png`` (default
        ``<run>/validation``). Files are written atomically.
    progress : bool, default True
        Show replay progress bars.
    query : str, optional
        A computed query (default: the run's first, normally ``"val_loss"``).
    chunk : int, default 64
        Replays vectorised together.
    model, loss_fn : optional
        Needed only for a run recorded with a model or loss DIT cannot rebuild from its
        manifest (your own ``nn.Module`` / loss function): pass the same ones as to
        :func:`dit_core.record` (as for :func:`dit_core.compute` and :func:`dit_core.replay.replay`).

    Returns
    -------
    ValidationReport
        ``report.to_dict()`` is the JSON written to ``report.json``; ``report.table()`` a
        readable table. Sign: positive influence = removing the sample raises the query.
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    if isinstance(windows, str):
        windows = [windows]
    windows = list(windows)
    if not windows:
        raise ConfigError(f"windows is empty; use some of {', '.join(DEFAULT_WINDOWS)}")
    if len(set(windows)) != len(windows):
        raise ConfigError(f"windows contains duplicates: {windows}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 3:
        raise ConfigError(f"n_samples={n_samples!r} must be an integer >= 3 (correlations need at least 3 samples)")
    if not run.replayable:
        from .errors import RunIncompleteError

        raise RunIncompleteError(
            f"{run.path} has no stored trajectory and no initial parameters (initial_params.npy), so it cannot be "
            "replayed; validate a run recorded with them"
        )
    run.checkpoint_index(None)  # raises InfluenceNotComputedError when nothing was computed
    query = query or run.queries[0]
    run._query_entry(query)  # raises when the query was not computed
    specs = [resolve_window(w, run) for w in windows]
    n = int(min(n_samples, run.n_train))

    # choose the samples and group the replays: one per removal window, accrued ones share
    # the whole-run removal replay
    chosen: dict[str, np.ndarray] = {}
    estimates: dict[str, np.ndarray] = {}
    replay_groups: dict[tuple[int, int], set[int]] = {}
    for s in specs:
        if s.kind == "removal":
            est_all = run.window_influence(s.start, s.stop, query=query)
            key = (s.start, s.stop)
        else:
            est_all = run.accrued_influence(s.start, s.stop, query=query)
            key = (0, run.n_steps)
        ids = stratified_choice(est_all, n, seed=_window_seed(seed, s.name))
        chosen[s.name] = ids
        estimates[s.name] = est_all[ids]
        replay_groups.setdefault(key, set()).update(int(i) for i in ids)

    results: dict[tuple[int, int], ReplayResult] = {}
    replay_seconds = 0.0
    for key in sorted(replay_groups, key=lambda k: (k != (0, run.n_steps), k)):
        ids = np.array(sorted(replay_groups[key]), dtype=np.int64)
        r = replay(
            run, ids, key[0], key[1], queries=[query], checkpoints=run.checkpoints.tolist(), chunk=chunk,
            progress=progress, model=model, loss_fn=loss_fn,
        )
        results[key] = r
        replay_seconds += r.seconds
    deviation = max(r.trajectory_deviation for r in results.values())

    out = Path(out_dir) if out_dir is not None else run.path / VALIDATION_DIR
    out.mkdir(parents=True, exist_ok=True)
    corrupted_all = run.samples["is_corrupted"].to_numpy(dtype=bool) if "is_corrupted" in run.samples else None
    wv: dict[str, WindowValidation] = {}
    for s in specs:
        ids = chosen[s.name]
        if s.kind == "removal":
            r = results[(s.start, s.stop)]
            pos = np.searchsorted(r.sample_ids, ids)
            rep = r.influence[pos, -1, 0]
        else:
            r = results[(0, run.n_steps)]
            pos = np.searchsorted(r.sample_ids, ids)
            kb = int(np.flatnonzero(r.checkpoints == s.stop)[0])
            hi = r.influence[pos, kb, 0]
            lo = r.influence[pos, int(np.flatnonzero(r.checkpoints == s.start)[0]), 0] if s.start > 0 else 0.0
            rep = hi - lo
        stats = _correlations(estimates[s.name], rep)
        w = WindowValidation(
            name=s.name,
            kind=s.kind,
            start=s.start,
            stop=s.stop,
            description=s.description,
            sample_ids=ids,
            estimate=np.asarray(estimates[s.name], dtype=np.float64),
            replay=np.asarray(rep, dtype=np.float64),
            pearson=stats["pearson"],
            spearman=stats["spearman"],
            kendall=stats["kendall"],
            slope=stats["slope"],
            max_abs_error=stats["max_abs_error"],
            relative_error=stats["relative_error"],
        )
        path = out / _plot_file(s.name)
        _scatter(w, corrupted_all[ids] if corrupted_all is not None else None, query, path)
        w.plot = str(path)
        wv[s.name] = w

    full = results.get((0, run.n_steps))
    per_sample = full.seconds / len(full.sample_ids) if full is not None else None
    dtype = run.config.dtype
    report = ValidationReport(
        run_path=str(run.path),
        run_id=run.run_id,
        query=query,
        dtype=dtype,
        optimizer=str(run.optimizer.get("name")),
        n_samples=n,
        seed=int(seed),
        windows=wv,
        trajectory_deviation=float(deviation),
        tolerance=1e-9 if dtype == "float64" else 1e-4,
        replay_seconds=replay_seconds,
        replay_seconds_per_sample=per_sample,
        training_seconds=run.manifest.get("training_seconds"),
        out_dir=str(out),
    )
    write_json(out / REPORT_FILE, report.to_dict())
    return report


# ----------------------------------------------------------------------------- CLI
def add_cli(sub) -> None:
    """Add the ``validate`` subcommand to the ``dit`` command line's subparsers."""
    p = sub.add_parser(
        "validate",
        help="check the influence estimates against exact counterfactual replay",
        description=(
            "Replay the recorded run exactly without each of N samples (chosen by stratified random choice "
            "across the estimated influence), per window, and report Pearson, Spearman and Kendall tau "
            "between estimate and replay. Writes scatter plots and report.json into RUN/validation/. "
            "Positive influence = removing the sample would raise the query (for a loss: it helped)."
        ),
    )
    p.add_argument("run", help="run directory (with influence computed)")
    p.add_argument("--samples", type=int, default=40, help="samples per window (default 40)")
    p.add_argument(
        "--windows",
        nargs="+",
        default=list(DEFAULT_WINDOWS),
        metavar="WINDOW",
        help="windows to check (default: all of " + ", ".join(DEFAULT_WINDOWS) + "); also epoch=E, steps=START:STOP, accrued=CA:CB",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified sample choice (default 0)")
    p.add_argument("--query", default=None, help="a computed query (default: the run's first, normally val_loss)")
    p.add_argument("--out", default=None, help="output folder (default RUN/validation)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    windows = [w for item in args.windows for w in item.split(",") if w.strip()]
    report = validate(
        args.run,
        n_samples=args.samples,
        windows=windows,
        seed=args.seed,
        out_dir=args.out,
        progress=not (args.quiet or args.json),
        query=args.query,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.table())
    if not report.reproduces_recording:
        # the ground truth itself is off: its correlations mean little; say so and fail the command
        print(
            f"dit validate: error: the unmodified replay deviates from the recorded trajectory by "
            f"{report.trajectory_deviation:.2e} (tolerance {report.tolerance:.0e}); the run, its model or the "
            "device does not reproduce the recording, so these correlations are not trustworthy",
            file=sys.stderr,
        )
        return 1
    return 0


__all__ = [
    "DEFAULT_WINDOWS",
    "ValidationReport",
    "WindowValidation",
    "WindowSpec",
    "resolve_window",
    "stratified_choice",
    "validate",
    "add_cli",
    "cmd_validate",
]
