"""Session state, cached loaders and the shared window of the DIT dashboard.

Keys in ``st.session_state`` (all initialised behind guards in :func:`init_state`):

- ``run_path`` (str | None): the open run directory; ``run_error`` (str | None): why the last
  attempt to open one failed.
- ``window`` ((start, stop) steps): the current window, shared by every page. The sidebar
  slider (``window_slider``) and a brush on the timeline (``timeline_chart_v<N>``) both set it.
- ``chart_version`` (int): bumped after a brush is consumed (or the slider moves) so the
  timeline chart is drawn fresh, showing the window as a shaded band instead of a stale box.
- ``influence_mode`` ("window" | "accrued"): which influence the pages show.
- ``query`` (str): the influence query shown, when the run has more than one (default
  ``val_loss``).

Heavy results are cached by the run's :func:`dit_core.explore.run_stamp` (path plus the
modification times of its manifest, influence and signals), so a run rewritten on disk is
reloaded. The open :class:`~dit_core.Run` itself is a shared, memory-mapped object and lives
in ``st.cache_resource``; tables and arrays derived from it live in ``st.cache_data``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import dit_core as dit
from dit_core import explore as ex

log = logging.getLogger("dit.dashboard")

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RUNS_DIR = REPO_ROOT / "sample_runs"
PREFERRED_SAMPLE = "digits_mlp_corrupt20"


# ----------------------------------------------------------------------------- command line
def cli_run_arg(argv: list[str] | None = None) -> str | None:
    """``--run PATH`` from ``streamlit run dashboard/app.py -- --run PATH``, else None."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--run", default=None)
    try:
        ns, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # e.g. "--run" without a value
        return None
    return ns.run


def sample_runs() -> dict[str, Path]:
    """Bundled sample runs (directories under ``sample_runs/`` with a manifest), preferred one first."""
    runs = {p.name: p for p in ex.find_runs(SAMPLE_RUNS_DIR)}
    if PREFERRED_SAMPLE in runs:
        runs = {PREFERRED_SAMPLE: runs[PREFERRED_SAMPLE], **{k: v for k, v in runs.items() if k != PREFERRED_SAMPLE}}
    return runs


# ----------------------------------------------------------------------------- cached loading
@st.cache_resource(max_entries=4, show_spinner=False)
def _open_run(stamp: tuple) -> dit.Run:
    return ex.open_run(stamp[0], query=None)


def get_run(path: str) -> dit.Run:
    """The run at ``path``, opened once per (path, modification times)."""
    return _open_run(ex.run_stamp(path))


@st.cache_data(max_entries=16, show_spinner=False)
def influence_summary(stamp: tuple, mode: str, _run: dit.Run) -> pd.DataFrame:
    return ex.influence_summary(_run, mode, stamp[-1])


@st.cache_data(max_entries=16, show_spinner=False)
def trajectories(stamp: tuple, kind: str, _run: dit.Run) -> np.ndarray:
    return np.asarray(_run.trajectories(kind, query=stamp[-1]), dtype=np.float64)


@st.cache_data(max_entries=16, show_spinner=False)
def embedding(stamp: tuple, kind: str, normalize: str, method: str, n_neighbors: int, min_dist: float, max_points: int, _run: dit.Run):
    T = trajectories(stamp, kind, _run)
    ids = ex.subsample_ids(T.shape[0], max_points, seed=0)
    coords = ex.embed_trajectories(ex.trajectory_features(T[ids], normalize), method=method, n_neighbors=n_neighbors, min_dist=min_dist, seed=0)
    return ids, coords


@st.cache_data(max_entries=16, show_spinner=False)
def clusters(stamp: tuple, kind: str, normalize: str, k: int, _run: dit.Run) -> np.ndarray:
    T = trajectories(stamp, kind, _run)
    return ex.cluster_trajectories(ex.trajectory_features(T, normalize), k, seed=0)


@st.cache_data(max_entries=16, show_spinner=False)
def patterns(stamp: tuple, kind: str, _run: dit.Run) -> np.ndarray:
    return ex.trajectory_patterns(trajectories(stamp, kind, _run))


@st.cache_data(max_entries=8, show_spinner=False)
def signal_table(stamp: tuple, _run: dit.Run) -> pd.DataFrame:
    return ex.signal_table(_run, query=stamp[-1])


@st.cache_data(max_entries=32, show_spinner=False)
def early_late(stamp: tuple, split: int, mode: str, _run: dit.Run):
    early, late, used = ex.early_late(_run, split, mode=mode, query=stamp[-1])
    return np.asarray(early), np.asarray(late), used, ex.correlations(early, late)


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(stamp: tuple, sample_id: int, _run: dit.Run) -> np.ndarray:
    return ex.thumbnail(np.asarray(_run.X_train[int(sample_id)]))


# ----------------------------------------------------------------------------- session state
def init_state() -> None:
    """Create every session-state key the app uses (only those missing)."""
    ss = st.session_state
    for key, value in {
        "run_path": None,
        "run_error": None,
        "window": None,
        "chart_version": 0,
        "cli_run_tried": False,
    }.items():
        if key not in ss:
            ss[key] = value
    if "influence_mode" not in ss:
        ss["influence_mode"] = "window"
    if "picker_path" not in ss:
        ss["picker_path"] = ""


def open_run_path(path: str | Path) -> bool:
    """Open ``path`` as the current run; on failure keep the current one and store the error."""
    ss = st.session_state
    text = str(path).strip()
    try:
        run = get_run(text)
    except dit.DITError as exc:
        ss["run_error"] = str(exc)
        return False
    except Exception as exc:  # anything unexpected still gets a clear message, never a traceback
        log.exception("opening %s failed", text)
        ss["run_error"] = f"{text} could not be opened as a DIT run ({type(exc).__name__}: {exc})"
        return False
    ss["run_error"] = None
    if ss.get("run_path") is not None and ex.run_stamp(ss["run_path"]) == ex.run_stamp(text):
        return True  # already open: keep the window and the flag settings
    ss["run_path"] = text
    ss["window"] = ex.convergence_window(run)
    ss["chart_version"] = ss.get("chart_version", 0) + 1
    for key in ("flag_include", "flag_exclude", "flag_threshold", "flag_k", "flag_signal", "wv_split"):
        ss.pop(key, None)
    return True


def ensure_run() -> dit.Run | None:
    """Open the initial run once (``--run PATH`` if given, else the bundled sample) and return the current run."""
    ss = st.session_state
    if ss["run_path"] is None and not ss["cli_run_tried"]:
        ss["cli_run_tried"] = True
        cli = cli_run_arg()
        if cli:
            ss["picker_path"] = cli
            open_run_path(cli)
        if ss["run_path"] is None:
            samples = sample_runs()
            if samples:
                first = next(iter(samples))
                keep_error = ss["run_error"]
                if open_run_path(samples[first]):
                    ss["picker_sample"] = first
                if keep_error:
                    ss["run_error"] = keep_error
    if ss["run_path"] is None:
        return None
    try:
        return get_run(ss["run_path"])
    except dit.DITError as exc:  # the run changed on disk and no longer opens
        ss["run_error"] = str(exc)
        ss["run_path"] = None
        return None


def query(run: dit.Run | None = None) -> str:
    """The influence query the pages show: the one chosen in the sidebar (``query``) when the
    run has it, else ``val_loss`` when computed, else the run's first computed query."""
    run = run if run is not None else get_run(st.session_state["run_path"])
    qs = run.queries
    chosen = st.session_state.get("query")
    if chosen in qs:
        return chosen
    return run.default_query


def stamp() -> tuple:
    """Cache key of what the pages show: the current run (path and modification times) and the query.

    Cached functions taking it read the query from its last element."""
    run_stamp = ex.run_stamp(st.session_state["run_path"])
    return (*run_stamp, query(_open_run(run_stamp)))


def mode() -> str:
    return st.session_state.get("influence_mode", "window")


def window(run: dit.Run) -> tuple[int, int]:
    """The current window as set by the user (not snapped), valid for ``run``."""
    ss = st.session_state
    w = ss.get("window")
    if not w:
        w = ex.convergence_window(run)
    w = ex.window_from_range(w[0], w[1], run.n_steps)
    ss["window"] = w
    return w


def effective_window(run: dit.Run) -> tuple[int, int]:
    """The window the pages use: snapped to checkpoints in accrued mode."""
    w = window(run)
    return ex.effective_window(run, w[0], w[1], mode())


def chart_key() -> str:
    return f"timeline_chart_v{st.session_state.get('chart_version', 0)}"


def consume_brush(run: dit.Run) -> bool:
    """If the timeline chart reports a new box selection, make its x-range the window. Returns whether it did."""
    ss = st.session_state
    event = ss.get(chart_key())
    if not event:
        return False
    try:
        boxes = event["selection"]["box"]
    except (KeyError, TypeError):
        return False
    if not boxes:
        return False
    xs = boxes[0].get("x") if hasattr(boxes[0], "get") else None
    if not xs or len(xs) < 2:
        return False
    try:
        ss["window"] = ex.window_from_range(float(xs[0]), float(xs[-1]), run.n_steps)
    except (dit.DITError, TypeError, ValueError):
        return False
    ss["chart_version"] = ss.get("chart_version", 0) + 1
    return True


def on_slider_change() -> None:
    ss = st.session_state
    lo, hi = ss["window_slider"]
    if hi <= lo:
        hi = lo + 1
    ss["window"] = (int(lo), int(hi))
    ss["chart_version"] = ss.get("chart_version", 0) + 1


def set_window(start: int, stop: int) -> None:
    ss = st.session_state
    ss["window"] = (int(start), int(stop))
    ss["chart_version"] = ss.get("chart_version", 0) + 1


def describe_window(run: dit.Run, start: int, stop: int) -> str:
    """"steps 1080–1350 (epochs 25–30)" for whole epochs, else "steps 269–675 (within epochs 6–15)" (1-based epochs)."""
    spe = max(run.steps_per_epoch, 1)
    first, last = start // spe + 1, -(-stop // spe)
    ep = f"epoch {first}" if first == last else f"epochs {first}–{last}"
    if start % spe or stop % spe:
        ep = "within " + ep
    return f"steps {start}–{stop} ({ep})"
