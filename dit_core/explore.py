"""Pure computations behind the dashboard: windows, rankings, trajectories, flags, export.

Everything here works on a :class:`~dit_core.run.Run` or on plain arrays and returns
arrays or DataFrames, so it can be unit-tested without a browser. The dashboard
(``dashboard/app.py``) only renders what these functions return. This module never
imports Streamlit or Plotly.

Array orientation: samples are rows. Windows are half-open step ranges ``[start, stop)``.

Sign convention: **positive influence = removing the sample would raise the query**. For a
loss query (the default ``val_loss``) positive means the sample *helped* and negative means
it *hurt*; "harmful" = negative influence. Suspicion scores are oriented the other way
round: **higher = more suspicious** (for the DIT signals, the negated influence).
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ._io import MANIFEST
from .errors import ConfigError, DataError, DITError, InfluenceNotComputedError, RunIncompleteError
from . import signals as sig
from .patterns import PATTERNS, classify_patterns
from .run import INFLUENCE_DIR, INFLUENCE_MANIFEST, Run, load_run

SIGN_CONVENTION = (
    "Sign convention: positive influence = removing the sample would raise the query. "
    "For a loss query, positive = the sample helped, negative = it hurt (harmful)."
)

#: Influence modes of the dashboard.
MODES = {
    "window": "window influence: removal during the window, measured at the end of training",
    "accrued": "accrued influence (the paper's definition): how much of the sample's effect built up between two checkpoints",
}

#: Suspicion signals that are always available, computed live from the current window.
LIVE_SIGNALS = {
    "dit_window": "DIT harmful influence in the current window (live): -(influence in the window) (higher = more harmful = more suspicious)",
}

#: Columns of an exported flag list, in order.
EXPORT_COLUMNS = ("sample_id", "label", "score", "rank", "window_start", "window_stop", "signal", "run_id")
EXPORT_FORMATS = ("csv", "json", "parquet")

_BASE_SAMPLE_COLUMNS = ("sample_id", "label", "original_label", "is_corrupted")


# ============================================================================ runs
def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories directly under ``root`` (each has a ``manifest.json``), sorted by name.

    Returns an empty list if ``root`` does not exist.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))


def run_stamp(path: str | os.PathLike) -> tuple:
    """A cache key that changes whenever the run's manifest, influence or signals change.

    ``(resolved path, mtime_ns of manifest.json, of influence/influence.json, of signals.parquet)``;
    a missing file contributes 0.
    """
    p = Path(path).expanduser()
    try:
        p = p.resolve()
    except OSError:
        pass

    def mtime(f: Path) -> int:
        try:
            return f.stat().st_mtime_ns
        except OSError:
            return 0

    return (str(p), mtime(p / MANIFEST), mtime(p / INFLUENCE_DIR / INFLUENCE_MANIFEST), mtime(p / "signals.parquet"))


def open_run(path: str | os.PathLike, *, query: str | None = "val_loss") -> Run:
    """Open and check a run for exploring: complete, compatible, influence computed.

    Parameters
    ----------
    path : path-like
        A run directory (``~`` is expanded).
    query : str or None, default "val_loss"
        The influence query that must have been computed (None: any one).

    Returns
    -------
    Run

    Raises
    ------
    ConfigError
        ``path`` is empty.
    RunNotFoundError, RunIncompleteError, FormatVersionError
        Missing, half-written / damaged, or written by an incompatible format version.
    InfluenceNotComputedError
        The run has no influence for ``query`` (run ``dit compute PATH``).

    Any other failure while reading the run's files is reported as a
    :class:`RunIncompleteError` naming the file, never as a bare traceback.
    """
    text = str(path).strip()
    if not text:
        raise ConfigError("no run directory given: enter the path of a run directory (it contains manifest.json)")
    p = Path(text).expanduser()
    run = load_run(p)
    if not run.has_influence:
        raise InfluenceNotComputedError(
            f"{p} has no influence computed yet; run `dit compute {p}` (or dit_core.compute) first, then open it again"
        )
    if query is None:
        pass  # any computed query will do
    elif query not in run.queries:
        raise InfluenceNotComputedError(
            f"{p} has no influence for query {query!r} (computed: {', '.join(run.queries) or 'none'}); "
            f"run `dit compute {p} --query {query}`"
        )
    # load_run checked every file's shape against the manifest; read now what the pages show,
    # so that damaged contents are reported when the run is opened, not on some later page
    try:
        run.contributions(query if query is not None else run.queries[0])
        run.sample_step, run.samples, run.epochs, run.steps  # noqa: B018 (cached on the run)
    except DITError:
        raise
    except Exception as exc:  # a damaged file: report it as such, with the reader's message
        raise RunIncompleteError(f"{p} could not be read ({type(exc).__name__}: {exc}); the run is damaged or half-written") from exc
    return run


def run_summary(run: Run) -> dict:
    """A flat description of a run for display: sizes, optimizer, schedule, model, data set."""
    m = run.manifest
    opt = dict(m.get("optimizer", {}))
    cfg = m.get("config", {})
    name = opt.pop("name", cfg.get("optimizer", "?"))
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in opt.items() if v not in (None, False, 0, 0.0)]
    if name in ("adam", "adamw") and "betas" in cfg:
        parts.append(f"betas {tuple(cfg['betas'])}")
    optimizer = name + (f" ({', '.join(parts)})" if parts else "")
    sched = m.get("schedule", {})
    model = m.get("model", {})
    model_txt = model.get("name", model.get("kind", "?"))
    if "hidden" in model:
        model_txt += f" hidden={tuple(model['hidden'])}"
    if "activation" in model:
        model_txt += f" {model['activation']}"
    ds = m.get("dataset", {})
    corrupted = None
    if "is_corrupted" in run.samples.columns:
        corrupted = int(run.samples["is_corrupted"].fillna(False).astype(bool).sum())
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "dataset": ds.get("name", "?"),
        "n_train": run.n_train,
        "n_val": run.n_val,
        "n_epochs": run.n_epochs,
        "n_steps": run.n_steps,
        "batch_size": cfg.get("batch_size"),
        "optimizer": optimizer,
        "learning_rate": f"{sched.get('name', cfg.get('schedule', '?'))}, lr {cfg.get('lr', '?')}",
        "model": model_txt,
        "n_checkpoints": int(len(run.checkpoints)),
        "queries": ", ".join(run.queries),
        "n_corrupted": corrupted,
    }


# ============================================================================ windows
def window_from_range(x0: float, x1: float, n_steps: int) -> tuple[int, int]:
    """Turn a brushed x-range (in steps, any order, may overshoot) into a window ``[start, stop)``.

    ``start = floor(min)``, ``stop = ceil(max)``, clipped to ``[0, n_steps]`` and at least one step long.
    """
    if not (np.isfinite(x0) and np.isfinite(x1)):
        raise ConfigError(f"brushed range ({x0}, {x1}) is not finite")
    if n_steps < 1:
        raise ConfigError(f"n_steps={n_steps} must be >= 1")
    lo, hi = min(x0, x1), max(x0, x1)
    start = int(min(max(math.floor(lo), 0), n_steps - 1))
    stop = int(min(max(math.ceil(hi), start + 1), n_steps))
    return start, stop


def snap_to_checkpoints(start: int, stop: int, checkpoints: Sequence[int]) -> tuple[int, int]:
    """Move a window to the nearest checkpoints, as accrued influence needs.

    ``start`` snaps to the nearest of ``{0} ∪ checkpoints``, ``stop`` to the nearest checkpoint;
    if that leaves ``stop <= start``, ``stop`` moves to the next checkpoint after ``start``
    (or, at the end, ``start`` to the previous boundary). Ties go to the earlier boundary.
    """
    cps = np.unique(np.asarray(checkpoints, dtype=np.int64))
    if cps.size == 0:
        raise InfluenceNotComputedError("the run has no checkpoints (influence not computed)")
    starts = np.unique(np.concatenate([[0], cps]))
    a = int(starts[np.argmin(np.abs(starts - start))])
    b = int(cps[np.argmin(np.abs(cps - stop))])
    if b <= a:
        later = cps[cps > a]
        if later.size:
            b = int(later[0])
        else:
            b = int(cps[-1])
            a = int(starts[starts < b].max())
    return a, b


def convergence_window(run: Run) -> tuple[int, int]:
    """The convergence window: the last 20% of training, in whole epochs, as ``(start, stop)`` steps.

    The same window as :func:`dit_core.signals.signal_windows` ``["convergence"]``, so the
    dashboard's convergence window is the one the ``dit_convergence`` signal uses.
    """
    w = sig.signal_windows(run)["convergence"]
    return int(w["start"]), int(w["stop"])


def effective_window(run: Run, start: int, stop: int, mode: str = "window") -> tuple[int, int]:
    """The window actually used: as given for ``"window"``, snapped to checkpoints for ``"accrued"``."""
    _check_mode(mode)
    start, stop = window_from_range(start, stop, run.n_steps)
    if mode == "accrued":
        return snap_to_checkpoints(start, stop, run.checkpoints)
    return start, stop


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r}: use one of {', '.join(map(repr, MODES))}")


def window_scores(run: Run, start: int, stop: int, *, mode: str = "window", query: str = "val_loss") -> np.ndarray:
    """Influence of every sample in the window ``[start, stop)``, (n_train,) float64.

    ``mode="window"``: :meth:`Run.window_influence` (removal during the window, measured at
    the end of training). ``mode="accrued"``: :meth:`Run.accrued_influence` between the
    checkpoints the window snaps to (:func:`snap_to_checkpoints`). Positive = helped.
    """
    a, b = effective_window(run, start, stop, mode)
    if mode == "accrued":
        return np.asarray(run.accrued_influence(a, b, query=query), dtype=np.float64)
    return np.asarray(run.window_influence(a, b, query=query), dtype=np.float64)


def top_k(scores: np.ndarray, k: int, *, largest: bool = True) -> np.ndarray:
    """Indices of the ``k`` largest (or smallest) finite scores, best first; ties by lower index.

    O(n) selection (``argpartition``) followed by sorting only the k picked, so it stays fast
    for 100k samples.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise DataError(f"scores must be 1-D, got shape {s.shape}")
    if k < 0:
        raise ConfigError(f"k={k} must be >= 0")
    key = -s if largest else s.copy()
    key[~np.isfinite(key)] = np.inf
    n_finite = int(np.isfinite(s).sum())
    k = min(int(k), n_finite)
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if k < s.size:
        # include every element tied with the k-th so the tie-break by index is exact
        kth = np.partition(key, k - 1)[k - 1]
        cand = np.flatnonzero(key <= kth)
    else:
        cand = np.arange(s.size)
    order = np.lexsort((cand, key[cand]))
    return cand[order][:k].astype(np.int64)


@dataclass(frozen=True)
class WindowRanking:
    """The most helpful and most harmful samples of a window.

    Attributes
    ----------
    start, stop : int
        The window used (snapped to checkpoints in accrued mode), ``[start, stop)`` steps.
    mode : str
        ``"window"`` or ``"accrued"``.
    scores : ndarray (n_train,)
        Influence of every sample in the window (positive = helped, negative = hurt).
    helpful : ndarray (k,)
        Sample ids with the largest positive influence, most helpful first.
    harmful : ndarray (k,)
        Sample ids with the most negative influence, most harmful first.
    """

    start: int
    stop: int
    mode: str
    scores: np.ndarray
    helpful: np.ndarray
    harmful: np.ndarray


def rank_window(run: Run, start: int, stop: int, *, mode: str = "window", k: int = 10, query: str = "val_loss") -> WindowRanking:
    """Influence of every sample in a window and its ``k`` most helpful and most harmful samples.

    This is what the dashboard recomputes after every brush; see ``benchmarks/bench_dashboard.py``.
    Only samples with positive (negative) influence are listed as helpful (harmful).
    """
    a, b = effective_window(run, start, stop, mode)
    scores = window_scores(run, a, b, mode=mode, query=query)
    pos = np.where(scores > 0, scores, np.nan)
    neg = np.where(scores < 0, scores, np.nan)
    return WindowRanking(
        start=a,
        stop=b,
        mode=mode,
        scores=scores,
        helpful=top_k(pos, k, largest=True),
        harmful=top_k(neg, k, largest=False),
    )


def period_bounds(run: Run, mode: str = "window") -> np.ndarray:
    """Boundaries of the timeline's summary periods, (P+1,) steps.

    Epochs for ``"window"`` mode; checkpoint intervals ``[c_{k-1}, c_k)`` for ``"accrued"``.
    """
    _check_mode(mode)
    if mode == "window":
        return np.concatenate([[0], run.epoch_end_steps]).astype(np.int64)
    return trajectory_bounds(run)


def period_influence(run: Run, mode: str = "window", query: str = "val_loss") -> np.ndarray:
    """Per-sample influence in each summary period, (n_train, P).

    ``"window"``: column e = influence of removing the sample during epoch e, measured at the
    end of training (each sample is used once per epoch, so this is ``contributions[:, e, -1]``).
    ``"accrued"``: ``run.trajectories("accrued")`` (one column per checkpoint interval).
    """
    _check_mode(mode)
    if mode == "window":
        return np.asarray(run.contributions(query)[:, :, -1], dtype=np.float64)
    return np.asarray(run.trajectories("accrued", query=query), dtype=np.float64)


def influence_summary(run: Run, mode: str = "window", query: str = "val_loss") -> pd.DataFrame:
    """Per-period totals for the timeline strip.

    Returns
    -------
    DataFrame (one row per period)
        ``period``, ``start``, ``stop`` (steps), ``helpful`` (sum of positive influences,
        >= 0), ``harmful`` (sum of negative influences, <= 0), ``net`` (their sum), and, when
        the run knows which labels were corrupted, ``harmful_corrupted`` (the part of
        ``harmful`` from corrupted samples).
    """
    P = period_influence(run, mode, query)
    bounds = period_bounds(run, mode)
    out = pd.DataFrame(
        {
            "period": np.arange(P.shape[1]),
            "start": bounds[:-1],
            "stop": bounds[1:],
            "helpful": np.where(P > 0, P, 0).sum(axis=0),
            "harmful": np.where(P < 0, P, 0).sum(axis=0),
        }
    )
    out["net"] = out["helpful"] + out["harmful"]
    corr = corruption_mask(run)
    if corr is not None:
        out["harmful_corrupted"] = np.where(P[corr] < 0, P[corr], 0).sum(axis=0)
    return out


def corruption_mask(run: Run) -> np.ndarray | None:
    """``is_corrupted`` as a bool array (n_train,), or None if the run does not know it."""
    df = run.samples
    if "is_corrupted" not in df.columns or df["is_corrupted"].isna().all():
        return None
    return df["is_corrupted"].fillna(False).to_numpy(dtype=bool)


def early_late(run: Run, split: int, *, mode: str = "window", query: str = "val_loss") -> tuple[np.ndarray, np.ndarray, int]:
    """Influence before and after a split step, for the early-vs-late scatter.

    ``"window"``: early = removal during ``[0, split)``, late = removal during
    ``[split, n_steps)``, both measured at the end of training (so early + late = the
    whole-run influence). ``"accrued"``: the split snaps to the nearest checkpoint ``s`` before
    the end; early = accrued influence up to ``s``, late = accrued from ``s`` to the end.

    Returns
    -------
    early, late : ndarray (n_train,)
    split : int
        The split actually used.
    """
    _check_mode(mode)
    T = run.n_steps
    if T < 2:
        raise ConfigError("the run has a single step; it cannot be split into early and late")
    s = int(min(max(int(split), 1), T - 1))
    if mode == "accrued":
        inner = run.checkpoints[run.checkpoints < T]
        if inner.size == 0:
            raise InfluenceNotComputedError(
                "accrued early-vs-late needs a checkpoint before the end of training; compute with checkpoints='epochs'"
            )
        s = int(inner[np.argmin(np.abs(inner - s))])
        return run.accrued_influence(0, s, query=query), run.accrued_influence(s, T, query=query), s
    return run.window_influence(0, s, query=query), run.window_influence(s, T, query=query), s


def correlations(a: np.ndarray, b: np.ndarray) -> dict:
    """Pearson r, Kendall τ (tau-b) and Spearman ρ of two score vectors (finite pairs only).

    Values are NaN when fewer than 3 finite pairs remain or one side is constant.
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(f"a has shape {a.shape} but b has shape {b.shape}; both must be the same 1-D shape")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"n": int(ok.sum()), "pearson": math.nan, "kendall_tau": math.nan, "spearman": math.nan}
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    out["pearson"] = float(np.corrcoef(a, b)[0, 1])
    out["kendall_tau"] = float(stats.kendalltau(a, b).statistic)
    out["spearman"] = float(stats.spearmanr(a, b).statistic)
    return out


# ============================================================================ sample data
def is_image_data(X: np.ndarray) -> bool:
    """Whether inputs are image-shaped: ``X`` is (n, C, H, W), (n, H, W) or similar (ndim >= 3)."""
    return np.ndim(X) >= 3


def thumbnail(x: np.ndarray, *, size: int = 56) -> np.ndarray:
    """One image-shaped sample as a uint8 picture, upscaled by an integer factor (nearest neighbour).

    Parameters
    ----------
    x : ndarray (C, H, W), (H, W, C) or (H, W)
        ``C`` in {1, 3} is treated as channels (channel-first when ambiguous); other channel
        counts show channel 0. Values are min-max scaled per image.
    size : int
        Target edge length in pixels (at least the image's own size).

    Returns
    -------
    ndarray (H', W') or (H', W', 3) uint8
    """
    a = np.asarray(x, dtype=np.float64)
    while a.ndim > 3:
        a = a[0]
    if a.ndim == 3:
        if a.shape[0] in (1, 3):
            a = np.moveaxis(a, 0, -1)
        elif a.shape[-1] not in (1, 3):
            a = a[0][..., None]
        if a.shape[-1] == 1:
            a = a[..., 0]
    elif a.ndim != 2:
        raise DataError(f"a thumbnail needs an image-shaped sample (2-D or 3-D), got shape {a.shape}")
    finite = np.isfinite(a)
    a = np.where(finite, a, 0.0)
    lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    img = np.round(scaled * 255).astype(np.uint8)
    f = max(1, int(size) // max(img.shape[0], img.shape[1]))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1)


def feature_names(run: Run) -> list[str]:
    """Names of the input features of tabular data (from the manifest, else ``x0, x1, ...``)."""
    d = int(np.prod(run.X_train.shape[1:]))
    names = (run.manifest.get("dataset") or {}).get("feature_names")
    if names and len(names) == d:
        return [str(n) for n in names]
    return [f"x{i}" for i in range(d)]


def class_names(run: Run) -> list[str] | None:
    """Class names from the manifest, or None."""
    names = (run.manifest.get("dataset") or {}).get("class_names")
    return [str(n) for n in names] if names else None


def sample_table(run: Run, ids: Sequence[int], scores: np.ndarray | None = None, *, max_features: int = 12) -> pd.DataFrame:
    """Rows of ``run.samples`` for ``ids`` (in that order), with ``score`` and tabular features.

    Columns: ``sample_id``, ``score`` (if given), ``label`` and, where known,
    ``original_label`` and ``is_corrupted``; for tabular inputs also the first
    ``max_features`` feature values, named by the data set's feature names.
    """
    ids = np.asarray(ids, dtype=np.int64)
    base = [c for c in _BASE_SAMPLE_COLUMNS if c in run.samples.columns]
    df = run.samples[base].iloc[ids].reset_index(drop=True)
    if scores is not None:
        df.insert(1, "score", np.asarray(scores, dtype=np.float64)[ids])
    if not is_image_data(run.X_train) and max_features > 0 and len(ids):
        X = np.asarray(run.X_train[np.sort(ids)]).reshape(len(ids), -1)
        X = X[np.argsort(np.argsort(ids, kind="stable"), kind="stable")]
        names = feature_names(run)
        for i, name in enumerate(names[:max_features]):
            df[name] = X[:, i]
    return df


# ============================================================================ timeline helpers
def downsample(x: np.ndarray, y: np.ndarray, max_points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Bin-average a series to at most ``max_points`` points (x = bin centres); unchanged if short."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise DataError(f"x has {x.size} points but y has {y.size}")
    if max_points < 1:
        raise ConfigError(f"max_points={max_points} must be >= 1")
    n = x.size
    if n <= max_points:
        return x, y
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    counts = np.diff(edges)
    xs = np.add.reduceat(x, edges[:-1]) / counts
    ys = np.add.reduceat(y, edges[:-1]) / counts
    return xs, ys


# ============================================================================ trajectories
TRAJECTORY_NORMALIZATIONS = {
    "scale": "divide all trajectories by one global scale (keeps magnitudes comparable)",
    "shape": "divide each trajectory by its own norm (compares shapes, ignores magnitude)",
    "none": "raw influence values",
}


def trajectory_features(trajectories: np.ndarray, normalize: str = "scale") -> np.ndarray:
    """Features for embedding/clustering trajectories (n, K); see :data:`TRAJECTORY_NORMALIZATIONS`."""
    T = np.asarray(trajectories, dtype=np.float64)
    if T.ndim != 2:
        raise DataError(f"trajectories must be 2-D (n_samples, n_windows), got shape {T.shape}")
    T = np.where(np.isfinite(T), T, 0.0)
    if normalize == "none":
        return T
    if normalize == "scale":
        s = T.std()
        return T / s if s > 0 else T
    if normalize == "shape":
        norm = np.linalg.norm(T, axis=1, keepdims=True)
        return np.divide(T, norm, out=np.zeros_like(T), where=norm > 0)
    raise ConfigError(f"normalize={normalize!r}: use one of {', '.join(map(repr, TRAJECTORY_NORMALIZATIONS))}")


def subsample_ids(n: int, max_points: int, *, seed: int = 0, keep: Sequence[int] = ()) -> np.ndarray:
    """Sorted ids of at most ``max_points`` of ``n`` samples (all if ``n <= max_points``), seeded.

    Ids in ``keep`` are always included (up to ``max_points``).
    """
    if max_points < 1:
        raise ConfigError(f"max_points={max_points} must be >= 1")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    keep = np.unique(np.asarray(keep, dtype=np.int64))[:max_points]
    rest = np.setdiff1d(np.arange(n), keep)
    rng = np.random.default_rng(seed)
    extra = rng.choice(rest, size=max_points - keep.size, replace=False)
    return np.sort(np.concatenate([keep, extra])).astype(np.int64)


def embed_trajectories(
    features: np.ndarray,
    *,
    method: str = "umap",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """2-D embedding of trajectory features, (n, 2).

    ``method="umap"`` uses umap-learn (``n_neighbors``, ``min_dist``, ``random_state=seed``);
    ``"pca"`` the first two principal components (fast, deterministic up to sign).
    """
    F = np.asarray(features, dtype=np.float64)
    n = F.shape[0]
    if F.ndim != 2 or n < 3:
        raise DataError(f"embedding needs at least 3 trajectories (n, K); got shape {F.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(2, F.shape[1])
        out = np.zeros((n, 2))
        out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(F)
        return out
    if method != "umap":
        raise ConfigError(f"method={method!r}: use 'umap' or 'pca'")
    import warnings

    try:
        import umap
    except ImportError as exc:  # pragma: no cover - umap-learn is a dependency
        raise ConfigError("UMAP needs umap-learn: pip install umap-learn (or use method='pca')") from exc
    nn = int(max(2, min(n_neighbors, n - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=nn, min_dist=float(min_dist), random_state=int(seed), init="spectral" if n > nn + 1 else "random")
        return np.asarray(reducer.fit_transform(F), dtype=np.float64)


#: Above this many samples, clustering uses mini-batch k-means (seconds instead of tens of seconds at 100k).
MINIBATCH_KMEANS_ABOVE = 20_000


def cluster_trajectories(features: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """K-means cluster labels (n,) of trajectory features, clusters numbered by size (0 = largest).

    scikit-learn's ``KMeans`` (4 initialisations); ``MiniBatchKMeans`` above
    :data:`MINIBATCH_KMEANS_ABOVE` samples.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    F = np.asarray(features, dtype=np.float64)
    if F.ndim != 2:
        raise DataError(f"features must be 2-D, got shape {F.shape}")
    if not 1 <= k <= F.shape[0]:
        raise ConfigError(f"k={k} clusters needs 1 <= k <= n_samples = {F.shape[0]}")
    if F.shape[0] > MINIBATCH_KMEANS_ABOVE:
        model = MiniBatchKMeans(n_clusters=int(k), n_init=3, batch_size=4096, random_state=int(seed))
    else:
        model = KMeans(n_clusters=int(k), n_init=4, random_state=int(seed))
    labels = model.fit_predict(F)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty(k, dtype=np.int64)
    remap[order] = np.arange(k)
    return remap[labels]


def trajectory_patterns(trajectories: np.ndarray) -> np.ndarray:
    """The paper's four patterns (:data:`PATTERNS`) of every sample, (n,) str (see :func:`dit_core.patterns.classify_patterns`)."""
    return classify_patterns(np.asarray(trajectories, dtype=np.float64))


def group_profiles(trajectories: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """Mean trajectory of every group (long format): ``group``, ``window`` (0..K-1), ``mean``, ``n``."""
    T = np.asarray(trajectories, dtype=np.float64)
    g = np.asarray(groups)
    rows = []
    for name in pd.unique(g):
        sel = g == name
        m = T[sel].mean(axis=0)
        rows.append(pd.DataFrame({"group": name, "window": np.arange(T.shape[1]), "mean": m, "n": int(sel.sum())}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["group", "window", "mean", "n"])


def histogram_counts(values: np.ndarray, groups: dict[str, np.ndarray], *, bins: int = 80) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Counts of ``values`` in ``bins`` equal bins shared by every group, for drawing on the server side.

    ``groups`` maps a name to a boolean mask (n,). Non-finite values are left out. Returns
    ``(edges (bins+1,), {name: counts (bins,)})``. The dashboard draws these counts as bars, so
    a brush sends ``bins`` numbers per group to the browser instead of every sample's score.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if ok.any():
        lo, hi = float(v[ok].min()), float(v[ok].max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi, int(bins) + 1)
    counts = {name: np.histogram(v[ok & np.asarray(mask, dtype=bool)], bins=edges)[0] for name, mask in groups.items()}
    return edges, counts


def trajectory_bounds(run: Run) -> np.ndarray:
    """Step boundaries of the columns of ``run.trajectories(kind)`` for every kind, (K+1,).

    Column k covers the checkpoint interval ``[c_{k-1}, c_k)`` (``c_{-1} = 0``), whatever the
    checkpoints are (epoch ends or custom steps).
    """
    return np.concatenate([[0], run.checkpoints]).astype(np.int64)


def group_table(groups: np.ndarray, order: Sequence, *, corrupted: np.ndarray | None = None,
                patterns: np.ndarray | None = None, name: str = "group") -> pd.DataFrame:
    """One row per group in ``order``: ``<name>``, ``samples`` and, where given, the share of
    corrupted labels (NaN for an empty group) and the group's most common pattern."""
    g = np.asarray(groups)
    sizes, shares, main = [], [], []
    for value in order:
        sel = g == value
        sizes.append(int(sel.sum()))
        if corrupted is not None:
            shares.append(float(np.asarray(corrupted)[sel].mean()) if sel.any() else float("nan"))
        if patterns is not None:
            main.append(pd.Series(np.asarray(patterns)[sel]).value_counts().index[0] if sel.any() else "")
    out = pd.DataFrame({name: list(order), "samples": sizes})
    if corrupted is not None:
        out["corrupted share"] = shares
    if patterns is not None:
        out["main pattern"] = main
    return out


# ============================================================================ flags
def available_signals(run: Run) -> dict[str, str]:
    """Suspicion signals on offer for ``run``: name -> description (higher = more suspicious).

    The live window signal (:data:`LIVE_SIGNALS`) always; the signals of
    :mod:`dit_core.signals` when that module is present (computed on demand, or read from
    the run's ``signals.parquet``); and any other numeric column of ``signals.parquet``.
    """
    out = dict(LIVE_SIGNALS)
    out.update(sig.SIGNALS)
    for c in run.samples.columns:
        if c not in _BASE_SAMPLE_COLUMNS and c not in out and pd.api.types.is_numeric_dtype(run.samples[c]):
            out[c] = f"{c} (from signals.parquet; higher = more suspicious)"
    return out


def default_signal(run: Run) -> str:
    """The signal flagged by default: :data:`dit_core.signals.DEFAULT_FLAG_SIGNAL`."""
    return sig.DEFAULT_FLAG_SIGNAL


def signal_window(run: Run, signal: str, window: tuple[int, int], *, mode: str = "window") -> tuple[int, int] | None:
    """The step window a signal looks at, or None for signals not tied to one window.

    ``dit_window`` -> the current window (snapped in accrued mode); the ``dit_*`` signals of
    :mod:`dit_core.signals` -> their window (``dit_aum`` -> the convergence window);
    others -> None.
    """
    if signal == "dit_window":
        return effective_window(run, window[0], window[1], mode)
    if not signal.startswith("dit_"):
        return None
    wins = sig.signal_windows(run)
    name = signal[len("dit_") :]
    accrued = name.endswith("_accrued")
    name = name[: -len("_accrued")] if accrued else name
    if name == "aum":
        name = "convergence"
    if name not in wins:
        return None
    w = wins[name]
    if accrued:
        return int(w["accrued_start"]), int(w["accrued_stop"])
    return int(w["start"]), int(w["stop"])


def signal_table(run: Run, *, query: str = "val_loss") -> pd.DataFrame:
    """All stored/derivable signals of the run, one row per sample (``sample_id`` + signal columns).

    Signal columns already in ``run.samples`` (from ``signals.parquet``) are used as they are,
    except influence-derived ones stored for another query or from influence since replaced;
    the rest of :mod:`dit_core.signals` is computed (a few array passes).
    """
    base = run.samples
    have = [c for c in base.columns if c not in _BASE_SAMPLE_COLUMNS and pd.api.types.is_numeric_dtype(base[c])]
    if not sig.stored_signals_match(run, query):  # stored for another query or older influence: recompute those
        have = [c for c in have if c not in sig.INFLUENCE_SIGNALS]
    df = base[["sample_id", *have]].copy()
    if any(n not in df.columns for n in sig.SIGNALS):
        computed = sig.compute_signals(run, query=query)
        for n in sig.SIGNALS:
            if n not in df.columns:
                df[n] = computed[n].to_numpy()
    return df


def signal_scores(
    run: Run,
    signal: str,
    *,
    window: tuple[int, int] | None = None,
    mode: str = "window",
    query: str = "val_loss",
    table: pd.DataFrame | None = None,
) -> np.ndarray:
    """Suspicion scores (n_train,) of one signal; higher = more suspicious.

    ``dit_window`` is computed live: ``-window_scores(run, *window, mode=mode)``. Other signals
    come from ``table`` (:func:`signal_table`, pass it to reuse a cached one).
    """
    if signal == "dit_window":
        if window is None:
            raise ConfigError("signal 'dit_window' needs the current window (start, stop)")
        return -window_scores(run, window[0], window[1], mode=mode, query=query)
    if table is None:
        table = signal_table(run, query=query)
    if signal not in table.columns:
        raise ConfigError(f"signal {signal!r} is not available for this run; available: {', '.join(available_signals(run))}")
    s = table.set_index("sample_id")[signal].reindex(np.arange(run.n_train))
    return s.to_numpy(dtype=np.float64)


def parse_sample_ids(text: str, n_train: int) -> np.ndarray:
    """Parse sample ids typed by a person: ``"3, 17 42"`` or ranges ``"10-12"``; sorted unique (m,).

    Raises :class:`ConfigError` naming the bad entry and the valid range.
    """
    ids: list[int] = []
    for tok in re.split(r"[\s,;]+", (text or "").strip()):
        if not tok:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", tok)
        if not m:
            raise ConfigError(f"{tok!r} is not a sample id (use whole numbers like 3, 17 or ranges like 10-12)")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise ConfigError(f"range {tok!r} runs backwards")
        if b >= n_train:
            raise ConfigError(f"sample id {b} is out of range: the run has {n_train} training samples (ids 0..{n_train - 1})")
        ids.extend(range(a, b + 1))
    return np.unique(np.asarray(ids, dtype=np.int64))


def select_flags(
    scores: np.ndarray,
    *,
    method: str = "top_k",
    k: int = 50,
    threshold: float = 0.0,
    include: Sequence[int] = (),
    exclude: Sequence[int] = (),
) -> np.ndarray:
    """Which samples are flagged, as a bool mask (n,).

    Parameters
    ----------
    scores : ndarray (n,)
        Suspicion scores, higher = more suspicious; NaN is never flagged automatically.
    method : {"top_k", "threshold"}, default "top_k"
        Flag the ``k`` highest scores (ties broken by lower sample id), or every score at or
        above ``threshold`` (so a threshold taken from the scores' own quantiles flags the
        samples tied at it too).
    include, exclude : sequences of int
        Manual decisions: always flag / never flag these ids (``exclude`` wins when an id is in both).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    flags = np.zeros(n, dtype=bool)
    if method == "top_k":
        flags[top_k(s, int(k), largest=True)] = True
    elif method == "threshold":
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ConfigError(f"threshold={threshold!r} must be a finite number")
        flags = np.isfinite(s) & (s >= threshold)
    else:
        raise ConfigError(f"method={method!r}: use 'top_k' or 'threshold'")
    for name, ids in (("include", include), ("exclude", exclude)):
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise ConfigError(f"{name} has sample id {int(bad[0])}, outside 0..{n - 1}")
    flags[np.asarray(include, dtype=np.int64)] = True
    flags[np.asarray(exclude, dtype=np.int64)] = False
    return flags


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every sample by score, 1 = most suspicious; ties by lower id; NaN ranked last (n,)."""
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isfinite(s), -s, np.inf)
    order = np.lexsort((np.arange(s.size), key))
    ranks = np.empty(s.size, dtype=np.int64)
    ranks[order] = np.arange(1, s.size + 1)
    return ranks


def flag_metrics(flags: np.ndarray, is_corrupted: np.ndarray, scores: np.ndarray | None = None) -> dict:
    """Precision, recall and F1 of the flags against known corrupted labels, and the score's AUROC.

    Returns
    -------
    dict
        ``n_flagged``, ``n_corrupted``, ``true_positives``, ``precision`` (NaN if nothing is
        flagged), ``recall``, ``f1``, ``base_rate`` (precision of flagging at random) and
        ``auroc`` of ``scores`` (probability a corrupted sample outscores a clean one, ties
        half; NaN if not computable). AUROC ignores the manual include/exclude.
    """
    f = np.asarray(flags, dtype=bool)
    c = np.asarray(is_corrupted, dtype=bool)
    if f.shape != c.shape:
        raise DataError(f"flags has {f.size} entries but is_corrupted has {c.size}")
    tp = int((f & c).sum())
    nf, nc = int(f.sum()), int(c.sum())
    precision = tp / nf if nf else math.nan
    recall = tp / nc if nc else math.nan
    f1 = 2 * precision * recall / (precision + recall) if nf and nc and (precision + recall) > 0 else math.nan
    auroc = math.nan
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(s)
        cc = c[ok]
        npos = int(cc.sum())
        if 0 < npos < cc.size:
            from scipy.stats import rankdata

            r = rankdata(s[ok], method="average")
            auroc = float((r[cc].sum() - npos * (npos + 1) / 2) / (npos * (cc.size - npos)))
    return {
        "n_flagged": nf,
        "n_corrupted": nc,
        "true_positives": tp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "base_rate": nc / c.size if c.size else math.nan,
        "auroc": auroc,
    }


def flag_table(run: Run, flags: np.ndarray, scores: np.ndarray, *, signal: str, window: tuple[int, int] | None) -> pd.DataFrame:
    """The flagged samples as an export table, most suspicious first.

    Columns (:data:`EXPORT_COLUMNS`): ``sample_id``, ``label`` (as trained), ``score``
    (higher = more suspicious), ``rank`` (among all samples by score, 1 = most suspicious),
    ``window_start``, ``window_stop`` (the signal's window in steps, ``[start, stop)``; null
    for signals not tied to a window), ``signal``, ``run_id``.
    """
    f = np.asarray(flags, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if f.shape != (run.n_train,) or s.shape != (run.n_train,):
        raise DataError(f"flags has shape {f.shape} and scores {s.shape}; both must be ({run.n_train},)")
    ids = np.flatnonzero(f)
    ranks = score_ranks(s)
    ids = ids[np.argsort(ranks[ids], kind="stable")]
    labels = run.samples.set_index("sample_id")["label"].reindex(ids).to_numpy(dtype=np.int64)
    ws, we = (window if window is not None else (None, None))
    df = pd.DataFrame(
        {
            "sample_id": ids.astype(np.int64),
            "label": labels,
            "score": s[ids],
            "rank": ranks[ids],
            "window_start": pd.array([ws] * ids.size, dtype="Int64"),
            "window_stop": pd.array([we] * ids.size, dtype="Int64"),
            "signal": pd.array([signal] * ids.size, dtype="string"),
            "run_id": pd.array([run.run_id] * ids.size, dtype="string"),
        }
    )
    return df[list(EXPORT_COLUMNS)]


def export_bytes(table: pd.DataFrame, fmt: str) -> bytes:
    """Serialise an export table: ``"csv"`` (header row), ``"json"`` (array of records, nulls as null) or ``"parquet"``."""
    if fmt == "csv":
        return table.to_csv(index=False).encode("utf-8")
    if fmt == "json":
        return table.to_json(orient="records", indent=1, double_precision=15).encode("utf-8")
    if fmt == "parquet":
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        return buf.getvalue()
    raise ConfigError(f"fmt={fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")


__all__ = [
    "histogram_counts",
    "trajectory_bounds",
    "group_table",
    "SIGN_CONVENTION",
    "MODES",
    "LIVE_SIGNALS",
    "EXPORT_COLUMNS",
    "EXPORT_FORMATS",
    "PATTERNS",
    "TRAJECTORY_NORMALIZATIONS",
    "find_runs",
    "run_stamp",
    "open_run",
    "run_summary",
    "window_from_range",
    "snap_to_checkpoints",
    "convergence_window",
    "effective_window",
    "window_scores",
    "top_k",
    "WindowRanking",
    "rank_window",
    "period_bounds",
    "period_influence",
    "influence_summary",
    "corruption_mask",
    "early_late",
    "correlations",
    "is_image_data",
    "thumbnail",
    "feature_names",
    "class_names",
    "sample_table",
    "downsample",
    "trajectory_features",
    "subsample_ids",
    "embed_trajectories",
    "cluster_trajectories",
    "trajectory_patterns",
    "group_profiles",
    "available_signals",
    "default_signal",
    "signal_window",
    "signal_table",
    "signal_scores",
    "parse_sample_ids",
    "select_flags",
    "score_ranks",
    "flag_metrics",
    "flag_table",
    "export_bytes",
]
