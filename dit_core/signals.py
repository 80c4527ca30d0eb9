"""Per-sample suspicion signals for finding mislabeled training samples.

Every signal is a column of one per-sample table (samples are rows) and is oriented the
same way: **higher = more suspicious**. The signals come from a recorded run whose
influence has been computed (:func:`dit_core.compute`):

- DIT's windowed *harmful* influence. Influence is positive when removing the sample
  would raise the query (for the default ``val_loss`` query: the sample helped), so the
  harmful score is the negated influence. Windows are whole epochs: the full run, the
  first 20% of the epochs ("early"), the last 20% ("convergence") and the last epoch.
  The plain columns use :meth:`Run.window_influence` (removal during the window,
  measured at the end of training); the ``_accrued`` columns use the paper's accrued
  influence (:meth:`Run.accrued_influence`, how much of the effect built up between the
  window's checkpoints).
- Training-dynamics baselines recorded with every run: final training loss, area under
  the margin (AUM, Pleiss et al. 2020), forgetting events (Toneva et al. 2019), and
  TracIn self-influence over the checkpoints (Pruthi et al. 2020).
- ``dit_aum``: a fixed, label-free combination — the mean of the percentile ranks of
  ``dit_convergence`` and ``aum``.

Public API: :data:`SIGNALS`, :data:`DEFAULT_FLAG_SIGNAL`, :func:`signal_windows`,
:func:`compute_signals`, :func:`save_signals`, :func:`detection_metrics`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ._io import load_parquet, save_parquet
from .errors import ConfigError, DataError, InfluenceNotComputedError
from .queries import parse_query
from .run import Run

SIGNALS_FILE = "signals.parquet"

#: Signal column -> one-line description. Every column: higher = more suspicious.
SIGNALS: dict[str, str] = {
    "dit_full": "DIT harmful influence of the whole run: -(influence of removing the sample from all steps), measured at the end (higher = more suspicious)",
    "dit_early": "DIT harmful influence in the first 20% of epochs: -(influence of removing the sample during them), measured at the end (higher = more suspicious)",
    "dit_convergence": "DIT harmful influence in the last 20% of epochs (convergence period): -(influence of removing the sample during them), measured at the end (higher = more suspicious)",
    "dit_last_epoch": "DIT harmful influence in the last epoch: -(influence of removing the sample during it), measured at the end (higher = more suspicious)",
    "dit_early_accrued": "DIT harmful accrued influence over the first 20% of epochs: -(I_j(end of window) - I_j(0)) (higher = more suspicious)",
    "dit_convergence_accrued": "DIT harmful accrued influence over the last 20% of epochs: -(I_j(end) - I_j(window start)) (higher = more suspicious)",
    "dit_last_epoch_accrued": "DIT harmful accrued influence over the last epoch: -(I_j(end) - I_j(start of last epoch)) (higher = more suspicious)",
    "final_loss": "training loss of the sample at the step it was used in the last epoch (higher = more suspicious)",
    "aum": "negated area under the margin: -(mean over epochs of own logit minus largest other logit) (higher = more suspicious)",
    "forgetting": "forgetting events: epochs in which the sample went from correct (margin > 0) to incorrect; never-learned samples count n_epochs (higher = more suspicious)",
    "tracin_self": "TracIn self-influence: sum over checkpoints k of lr_k * ||grad of the sample's loss at checkpoint k||^2 (higher = more suspicious)",
    "dit_aum": "mean of the percentile ranks of dit_convergence and aum, a fixed label-free combination (higher = more suspicious)",
}

#: The signal the dashboard and the CLI flag by default: the strongest on average in
#: ``benchmarks/bench_detection.py`` (mean AUROC 0.990 over 12 settings; ``dit_aum`` 0.989,
#: ``cleanlab`` 0.976, ``dit_convergence`` 0.971). See the README, "Detecting mislabeled samples".
DEFAULT_FLAG_SIGNAL: str = "aum"

#: The signals that need DIT's influence (the rest need only the recorded run).
INFLUENCE_SIGNALS = tuple(n for n in SIGNALS if n.startswith("dit_")) + ("tracin_self",)


def _n_window_epochs(n_epochs: int, fraction: float, name: str) -> int:
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"{name}={fraction!r} must be a fraction of the epochs in (0, 1]")
    return max(1, min(n_epochs, math.ceil(fraction * n_epochs - 1e-9)))


def signal_windows(run: Run, *, early_fraction: float = 0.2, convergence_fraction: float = 0.2) -> dict[str, dict]:
    """The step windows the DIT signals use, as ``{name: {"start", "stop", "epochs"}}``.

    Windows are whole epochs: ``"full"`` is all of them, ``"early"`` the first
    ``ceil(early_fraction * n_epochs)``, ``"convergence"`` the last
    ``ceil(convergence_fraction * n_epochs)``, ``"last_epoch"`` the last one. ``start`` and
    ``stop`` are steps (``[start, stop)``); ``epochs`` is ``[first, last]`` (0-based, inclusive).
    For the ``_accrued`` signals, a boundary that is not a checkpoint is moved outwards to the
    nearest checkpoint (``accrued_start``/``accrued_stop``; with ``checkpoints="epochs"`` they
    coincide with ``start``/``stop``).
    """
    E, T = run.n_epochs, run.n_steps
    ends = run.epoch_end_steps
    n_early = _n_window_epochs(E, early_fraction, "early_fraction")
    n_conv = _n_window_epochs(E, convergence_fraction, "convergence_fraction")

    def epoch_start(e: int) -> int:
        return 0 if e == 0 else int(ends[e - 1])

    spans = {
        "full": (0, E - 1),
        "early": (0, n_early - 1),
        "convergence": (E - n_conv, E - 1),
        "last_epoch": (E - 1, E - 1),
    }
    if T != int(ends[-1]):
        raise DataError(f"{run.path}: the last epoch ends at step {int(ends[-1])} but the run has {T} steps")
    cps = run.checkpoints
    out = {}
    for name, (e0, e1) in spans.items():
        start, stop = epoch_start(e0), int(ends[e1])
        w = {"start": start, "stop": stop, "epochs": [e0, e1]}
        if len(cps):
            before = cps[cps <= start]
            w["accrued_start"] = int(before[-1]) if len(before) and start > 0 else 0
            w["accrued_stop"] = int(cps[cps >= stop][0])
        out[name] = w
    return out


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1] (ties get their average rank); NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.any():
        out[ok] = rankdata(x[ok], method="average") / ok.sum()
    return out


def area_under_margin(margins: np.ndarray) -> np.ndarray:
    """Mean margin over epochs, (n,) from (n, E); the AUM signal is its negation."""
    return np.asarray(margins, dtype=np.float64).mean(axis=1)


def forgetting_events(margins: np.ndarray) -> np.ndarray:
    """Forgetting events per sample from margins (n, E): count of e with margin[e-1] > 0 >= margin[e].

    A sample that is never correct (margin > 0 in no epoch) gets ``E``, more than any
    learned sample can reach (Toneva et al. rank never-learned samples first). NaN margins
    (not a classifier) give NaN.
    """
    m = np.asarray(margins, dtype=np.float64)
    correct = m > 0
    count = (correct[:, :-1] & ~correct[:, 1:]).sum(axis=1).astype(np.float64)
    count[~correct.any(axis=1)] = m.shape[1]
    count[np.isnan(m).any(axis=1)] = np.nan
    return count


def tracin_self_influence(grad_norm2: np.ndarray, checkpoint_lrs) -> np.ndarray:
    """Σ_k lr_k · ||g_j(θ_{c_k})||², (n,) from squared gradient norms (n, K) and K rates."""
    g = np.asarray(grad_norm2, dtype=np.float64)
    lrs = np.asarray(checkpoint_lrs, dtype=np.float64)
    if g.ndim != 2 or lrs.shape != (g.shape[1],):
        raise DataError(f"grad_norm2 has shape {g.shape} but there are {lrs.size} checkpoint learning rates; they must match")
    return g @ lrs


def compute_signals(
    run: Run,
    *,
    query: str = "val_loss",
    early_fraction: float = 0.2,
    convergence_fraction: float = 0.2,
) -> pd.DataFrame:
    """Every suspicion signal of every training sample.

    Parameters
    ----------
    run : Run
        A run with influence computed for ``query`` (:func:`dit_core.compute`).
    query : str, default "val_loss"
        The influence query the DIT signals use (a loss query: harmful = negative influence).
    early_fraction, convergence_fraction : float, default 0.2
        Fractions of the epochs in the early and convergence windows (see :func:`signal_windows`).

    Returns
    -------
    DataFrame (n_train rows)
        ``sample_id`` and one float64 column per entry of :data:`SIGNALS`, each oriented so
        that **higher = more suspicious**. ``tracin_self`` is NaN when the influence was
        computed without self-influence; ``aum``, ``forgetting`` and ``dit_aum`` are NaN for
        runs that are not classifiers (no margins).

    Raises
    ------
    InfluenceNotComputedError
        The run has no influence (or none for ``query``): run ``dit compute`` first.
    """
    if not isinstance(run, Run):
        raise ConfigError(f"compute_signals needs a Run (dit_core.load_run(path)), got {type(run).__name__}")
    if not run.has_influence:
        raise InfluenceNotComputedError(
            f"no influence computed for {run.path}: run `dit compute {run.path}` (or dit_core.compute) before computing signals"
        )
    run._query_entry(query)  # clear error if this query was not computed
    windows = signal_windows(run, early_fraction=early_fraction, convergence_fraction=convergence_fraction)
    cols: dict[str, np.ndarray] = {"sample_id": np.arange(run.n_train, dtype=np.int64)}
    for name, w in windows.items():
        cols[f"dit_{name}"] = -run.window_influence(w["start"], w["stop"], query=query)
    for name in ("early", "convergence", "last_epoch"):
        w = windows[name]
        cols[f"dit_{name}_accrued"] = -run.accrued_influence(w["accrued_start"], w["accrued_stop"], query=query)
    margins = np.asarray(run.sample_margin, dtype=np.float64)
    cols["final_loss"] = np.asarray(run.sample_loss[:, -1], dtype=np.float64)
    cols["aum"] = -area_under_margin(margins)
    cols["forgetting"] = forgetting_events(margins)
    g2 = run.self_influence_grad_norms
    if g2 is None:
        cols["tracin_self"] = np.full(run.n_train, np.nan)
    else:
        cols["tracin_self"] = tracin_self_influence(g2, run.influence_manifest["checkpoint_lrs"])
    cols["dit_aum"] = (percentile_rank(cols["dit_convergence"]) + percentile_rank(cols["aum"])) / 2
    df = pd.DataFrame(cols)
    return df[["sample_id", *SIGNALS]]


def save_signals(run: Run, *, query: str = "val_loss") -> Path:
    """Compute the signals and write them to ``<run>/signals.parquet`` (atomically).

    Columns of an existing ``signals.parquet`` that are not signals (written by other
    tools) are kept. Afterwards ``run.samples`` (also of this ``run`` object) shows the
    signal columns. Returns the file's path.
    """
    df = compute_signals(run, query=query)
    path = run.path / SIGNALS_FILE
    if path.exists():
        old = load_parquet(path)
        keep = [c for c in old.columns if c not in df.columns]
        if keep and "sample_id" in old.columns:
            df = df.merge(old[["sample_id", *keep]], on="sample_id", how="left")
    # what the influence-derived columns were computed from (stored in the Parquet metadata)
    df.attrs = {"query": parse_query(query).name, "influence_id": influence_id(run)}
    save_parquet(path, df)
    run.__dict__.pop("samples", None)  # drop the cached table so run.samples re-reads it
    return path


def influence_id(run: Run) -> str | None:
    """Identifies the influence a run holds now (changes whenever :func:`dit_core.compute` writes)."""
    if not run.has_influence:
        return None
    im = run.influence_manifest
    return str(im.get("influence_id") or im.get("created"))


def _stored_attrs(path: Path) -> dict:
    """The ``DataFrame.attrs`` pandas stored with a Parquet file, read from its footer only."""
    import json

    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"PANDAS_ATTRS")
    return json.loads(raw) if raw else {}


def stored_signals_match(run: Run, query: str) -> bool:
    """True unless ``signals.parquet`` records that its influence-derived columns were computed
    for another query or from other influence than the run holds now (files written before
    this was recorded are trusted)."""
    path = run.path / SIGNALS_FILE
    if not path.exists():
        return True
    attrs = _stored_attrs(path)
    if "query" in attrs and attrs["query"] != parse_query(query).name:
        return False
    if "influence_id" in attrs and attrs["influence_id"] != influence_id(run):
        return False
    return True


def drop_influence_signals(run_dir: str | Path) -> list[str]:
    """Remove the influence-derived columns (:data:`INFLUENCE_SIGNALS`) from ``signals.parquet``.

    Called by :func:`dit_core.compute` whenever it writes new influence, so that neither the
    dashboard nor ``dit export`` ranks by scores of the influence it replaced; they recompute
    them from the new influence (``dit signals`` stores them again). Training-dynamics
    columns (``aum``, ``final_loss``, ``forgetting``) and other tools' columns are kept; the
    file is removed when nothing else is left. Returns the columns dropped.
    """
    path = Path(run_dir) / SIGNALS_FILE
    if not path.exists():
        return []
    old = load_parquet(path)
    stale = [c for c in old.columns if c in INFLUENCE_SIGNALS]
    if not stale:
        return []
    rest = old.drop(columns=stale)
    if [c for c in rest.columns if c != "sample_id"]:
        save_parquet(path, rest)
    else:
        path.unlink()
    return stale


def _expected_hits_in_top(scores: np.ndarray, positive: np.ndarray, m: int) -> float:
    """Expected number of positives among the m highest scores, ties broken at random."""
    if m <= 0:
        return 0.0
    order = np.sort(scores)[::-1]
    threshold = order[m - 1]
    above = scores > threshold
    tied = scores == threshold
    n_above = int(above.sum())
    hits = float(positive[above].sum())
    n_tied = int(tied.sum())
    return hits + (m - n_above) * float(positive[tied].sum()) / n_tied


def detection_metrics(scores, is_corrupted) -> dict:
    """How well ``scores`` (higher = more suspicious) find the corrupted samples.

    Parameters
    ----------
    scores : array-like (n,)
        Finite suspicion scores.
    is_corrupted : array-like (n,) of bool
        The truth; needs at least one corrupted and one clean sample.

    Returns
    -------
    dict
        ``auroc`` (probability a corrupted sample outscores a clean one, ties count half),
        ``precision_at_k`` (fraction corrupted among the k highest, k = number corrupted),
        ``recall_top10`` / ``recall_top20`` (fraction of the corrupted samples found when
        inspecting the highest-scoring ``ceil(10% of n)`` / ``ceil(20% of n)``), plus ``n``,
        ``n_corrupted``. Ties at a cut-off are broken at random, in expectation (so integer
        signals such as forgetting counts are not favoured by sample order).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(is_corrupted)
    if s.ndim != 1 or c.ndim != 1:
        raise DataError(f"scores and is_corrupted must be 1-D, got shapes {s.shape} and {c.shape}")
    if s.shape != c.shape:
        raise DataError(f"scores has {s.size} entries but is_corrupted has {c.size}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise DataError("is_corrupted must be boolean (or 0/1)")
        c = c.astype(bool)
    if not np.isfinite(s).all():
        raise DataError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values; metrics need finite scores")
    n, n_pos = s.size, int(c.sum())
    if n_pos == 0 or n_pos == n:
        raise DataError(f"is_corrupted must contain both corrupted and clean samples (has {n_pos} of {n} corrupted)")
    ranks = rankdata(s, method="average")
    auroc = (ranks[c].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    m10, m20 = math.ceil(0.1 * n), math.ceil(0.2 * n)
    return {
        "auroc": float(auroc),
        "precision_at_k": _expected_hits_in_top(s, c, n_pos) / n_pos,
        "recall_top10": _expected_hits_in_top(s, c, m10) / n_pos,
        "recall_top20": _expected_hits_in_top(s, c, m20) / n_pos,
        "n": n,
        "n_corrupted": n_pos,
    }


# ----------------------------------------------------------------------------- command line
def add_cli(sub) -> None:
    """Add the ``signals`` subcommand to the ``dit`` command line's subparsers."""
    p = sub.add_parser(
        "signals",
        help="compute the mislabel-suspicion signals of a run, save them, print the top suspects",
        description=(
            "Compute every suspicion signal (higher = more suspicious) of every training sample, write them to "
            "RUN/signals.parquet, and print the highest-scoring samples. DIT's harmful influence is "
            "-(influence); positive influence = removing the sample would raise the query (for a loss: it helped)."
        ),
    )
    p.add_argument("run", help="run directory (with influence computed)")
    p.add_argument("--signal", default=DEFAULT_FLAG_SIGNAL, choices=list(SIGNALS), help=f"signal to rank by (default {DEFAULT_FLAG_SIGNAL})")
    p.add_argument("--top", type=int, default=10, help="how many top suspects to print (default 10)")
    p.add_argument("--query", default=None,
                   help="influence query of the DIT signals (default: val_loss when computed, else the run's first query)")
    p.add_argument("--no-save", action="store_true", help="do not write RUN/signals.parquet")
    p.set_defaults(func=cmd_signals)


def cmd_signals(args) -> int:
    from .run import load_run

    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    run = load_run(args.run)
    query = args.query or run.default_query
    if args.no_save:
        df = compute_signals(run, query=query)
    else:
        path = save_signals(run, query=query)
        df = load_parquet(path)[["sample_id", *SIGNALS]]
        print(f"wrote {len(SIGNALS)} signals of {run.n_train} samples to {path}")
    samples = run.samples
    top = df.sort_values(args.signal, ascending=False, kind="stable").head(args.top)
    print(f"top {len(top)} by {args.signal} (higher = more suspicious): {SIGNALS[args.signal]}")
    known = "is_corrupted" in samples and samples["is_corrupted"].notna().all()
    print(f"{'rank':>4} {'sample':>7} {'label':>6} {'score':>12}" + ("  corrupted" if known else ""))
    for rank, (sid, score) in enumerate(zip(top["sample_id"], top[args.signal]), 1):
        row = samples.iloc[int(sid)]
        print(f"{rank:>4} {int(sid):>7} {str(row['label']):>6} {score:>12.5g}" + (f"  {bool(row['is_corrupted'])}" if known else ""))
    if known and 0 < samples["is_corrupted"].sum() < run.n_train:
        print("detection of the known corrupted labels (AUROC / precision at k):")
        for name in SIGNALS:
            if np.isfinite(df[name]).all():
                m = detection_metrics(df[name].to_numpy(), samples["is_corrupted"].to_numpy(bool))
                print(f"  {name:<24} {m['auroc']:.3f} / {m['precision_at_k']:.3f}")
    return 0


__all__ = [
    "SIGNALS",
    "DEFAULT_FLAG_SIGNAL",
    "INFLUENCE_SIGNALS",
    "signal_windows",
    "compute_signals",
    "save_signals",
    "detection_metrics",
    "area_under_margin",
    "forgetting_events",
    "tracin_self_influence",
    "percentile_rank",
    "add_cli",
]
