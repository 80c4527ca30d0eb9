"""Open a run directory and query its influence: ``load_run(path)``.

Array orientation everywhere: samples are rows. Sign convention: **positive influence
means removing the sample would raise the query**; for a loss query, positive = the
sample helped, negative = it hurt.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import FORMAT_NAME, FORMAT_VERSION, MANIFEST, load_npy, load_parquet, read_json
from .config import TrainConfig
from .errors import (
    ConfigError,
    DITError,
    FormatVersionError,
    InfluenceNotComputedError,
    RunIncompleteError,
    RunNotFoundError,
)
from .queries import parse_query

INFLUENCE_DIR = "influence"
INFLUENCE_MANIFEST = "influence.json"
#: θ₀ and the optimizer's initial state, kept apart from the trajectory so that ``dit strip``
#: keeps them (a stripped run is replayed from them).
INITIAL_PARAMS = "initial_params.npy"
INITIAL_STATE = "initial_state.npy"

_RUN_FILES = (
    "train_X.npy",
    "train_y.npy",
    "val_X.npy",
    "val_y.npy",
    "steps.parquet",
    "epochs.parquet",
    "samples.parquet",
    "batch_ids.npy",
    "batch_offsets.npy",
    "sample_step.npy",
    "sample_loss.npy",
    "sample_margin.npy",
)


def read_manifest(path: Path, *, allow_incomplete: bool = False) -> dict:
    """Read and check a run directory's manifest (existence, format, version, completeness)."""
    path = Path(path)
    if not path.exists():
        raise RunNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise RunNotFoundError(f"{path} is not a directory (a run is a directory with a {MANIFEST})")
    mpath = path / MANIFEST
    if not mpath.exists():
        partial = any(p.name.startswith(".") and ".partial-" in p.name for p in path.parent.glob(f".{path.name}.partial-*"))
        hint = " (a recording into it is still running or was interrupted)" if partial else ""
        raise RunIncompleteError(f"{path} has no {MANIFEST}: it is not a DIT run directory, or it is half-written{hint}")
    try:
        manifest = read_json(mpath)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunIncompleteError(f"{mpath} is not valid JSON ({exc}); the run is damaged or half-written") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FormatVersionError(f"{mpath} is not a DIT run manifest (format is {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} was written with run format version {version}, but this DIT (reads version {FORMAT_VERSION}) "
            "cannot read it; record it again or use the DIT version that wrote it"
        )
    if not manifest.get("complete") and not allow_incomplete:
        if manifest.get("status") == "diverged":
            raise RunIncompleteError(
                f"{path} is incomplete: training diverged (NaN/inf loss) at step {manifest.get('diverged_at_step')}"
            )
        raise RunIncompleteError(f"{path} is incomplete (status {manifest.get('status')!r})")
    return manifest


def as_step(value, name: str) -> int:
    """``value`` as a step index: an integer (Python or NumPy, or a float with no fractional
    part); anything else — a bool, 2.5, "3" — is refused naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}={value!r} must be an integer step, not a bool")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ConfigError(f"{name}={value!r} must be an integer step")


def _per_run_cache(method):
    """Cache a Run method's results on the Run object itself (keyed by its arguments).

    Unlike ``functools.lru_cache`` on a method, the cache lives and dies with the object, so
    a Run that is no longer used releases its memory maps and temporary files.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        cache = self.__dict__.setdefault("_method_cache", {})
        key = (method.__name__, args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = method(self, *args, **kwargs)
        return cache[key]

    return wrapper


class Run:
    """A recorded run, opened read-only. Create with :func:`load_run`.

    Attributes
    ----------
    path : Path
    manifest : dict
    n_train, n_val, n_steps, n_epochs : int
    checkpoints : ndarray (K,)
        Ascending step indices at which influence was measured; the last is ``n_steps``.
        Empty if influence has not been computed.
    batches : list of ndarray
        Sample ids of every step's minibatch (``n_steps`` arrays).
    learning_rates : ndarray (n_steps,)
    samples : DataFrame (n_train rows)
        ``sample_id``, ``label`` and, where known, ``original_label``, ``is_corrupted``,
        plus any signal columns computed with :func:`dit_core.compute_signals`.
    steps : DataFrame (n_steps rows)
        ``step``, ``epoch``, ``lr``, ``batch_size``, ``batch_loss``.
    epochs : DataFrame (n_epochs rows)
        ``epoch``, ``end_step``, ``train_loss``, ``val_loss``, ``val_accuracy``.
    sample_step : ndarray (n_train, n_epochs)
        The step at which each sample was used in each epoch.
    sample_loss, sample_margin : ndarray (n_train, n_epochs)
        Each sample's loss and margin (own logit minus largest other) at the step it was used.
    initial_params : ndarray (n_params,)
        θ₀, the parameters before training (kept by ``dit strip``).
    initial_state : ndarray (state_size,)
        The optimizer state before training (empty for plain SGD).
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest
        missing = [f for f in _RUN_FILES if not (self.path / f).exists()]
        if missing:
            raise RunIncompleteError(f"{self.path} is missing {', '.join(missing)}: the run is damaged or half-written")
        try:
            self._check_structure()
            self._influence_manifest = self._read_influence_manifest()
        except DITError:
            raise
        except Exception as exc:  # a damaged file: say so, with the reader's own message
            raise RunIncompleteError(
                f"{self.path} could not be read ({type(exc).__name__}: {exc}); the run is damaged or half-written"
            ) from exc

    def _check_structure(self) -> None:
        """Cheap consistency checks (manifest fields, array headers, table row counts).

        Reads only .npy headers (memory-mapped) and Parquet footers, so opening a large run
        stays fast; a damaged run is refused here, naming the file, instead of failing later
        deep inside a computation.
        """
        import pyarrow.parquet as pq

        m = self.manifest
        for key in ("n_train", "n_val", "n_steps", "n_epochs", "steps_per_epoch", "n_params"):
            v = m.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RunIncompleteError(f"{self.path / MANIFEST}: {key!r} is {v!r}, not a count; the run is damaged")
        for key in ("config", "optimizer", "trajectory", "model", "loss"):
            if not isinstance(m.get(key), dict):
                raise RunIncompleteError(f"{self.path / MANIFEST}: {key!r} is missing or not an object; the run is damaged")
        n, E, T = self.n_train, self.n_epochs, self.n_steps

        def read(name, how):
            try:
                return how(self.path / name)
            except Exception as exc:
                raise RunIncompleteError(
                    f"{self.path / name} could not be read ({type(exc).__name__}: {exc}); the run is damaged or half-written"
                ) from exc

        def shape(name):
            return tuple(read(name, load_npy).shape)

        def rows(name):
            return read(name, lambda f: pq.ParquetFile(f).metadata.num_rows)

        offsets = read("batch_offsets.npy", load_npy)
        checks = {
            "train_X.npy": (shape("train_X.npy")[:1], (n,)),
            "train_y.npy": (shape("train_y.npy"), (n,)),
            "val_X.npy": (shape("val_X.npy")[:1], (self.n_val,)),
            "val_y.npy": (shape("val_y.npy"), (self.n_val,)),
            "batch_offsets.npy": (tuple(offsets.shape), (T + 1,)),
            "batch_ids.npy": (shape("batch_ids.npy"), (int(offsets[-1]) if len(offsets) else 0,)),
            "sample_step.npy": (shape("sample_step.npy"), (n, E)),
            "sample_loss.npy": (shape("sample_loss.npy"), (n, E)),
            "sample_margin.npy": (shape("sample_margin.npy"), (n, E)),
            "samples.parquet": ((rows("samples.parquet"),), (n,)),
            "steps.parquet": ((rows("steps.parquet"),), (T,)),
            "epochs.parquet": ((rows("epochs.parquet"),), (E,)),
        }
        for name, (got, want) in checks.items():
            if tuple(got) != tuple(want):
                raise RunIncompleteError(
                    f"{self.path / name} has shape {tuple(got)} but the manifest says {tuple(want)}; the run is damaged"
                )

    # ------------------------------------------------------------------ basics
    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, n_train={self.n_train}, n_epochs={self.n_epochs}, n_steps={self.n_steps}, "
            f"optimizer={self.manifest['optimizer']['name']!r}, influence={'yes' if self.has_influence else 'no'})"
        )

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def n_train(self) -> int:
        return int(self.manifest["n_train"])

    @property
    def n_val(self) -> int:
        return int(self.manifest["n_val"])

    @property
    def n_steps(self) -> int:
        return int(self.manifest["n_steps"])

    @property
    def n_epochs(self) -> int:
        return int(self.manifest["n_epochs"])

    @property
    def steps_per_epoch(self) -> int:
        return int(self.manifest["steps_per_epoch"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.manifest["config"])

    @property
    def optimizer(self) -> dict:
        return self.manifest["optimizer"]

    @property
    def has_trajectory(self) -> bool:
        return (self.path / "trajectory" / "params.npy").exists()

    @property
    def state_size(self) -> int:
        """Values of optimizer state per step (0 for plain SGD, P with momentum, 2P for Adam)."""
        return int(self.manifest["trajectory"].get("state_size", 0))

    @property
    def has_initial_params(self) -> bool:
        """True when θ₀ is known: ``initial_params.npy``, or row 0 of the stored trajectory."""
        return (self.path / INITIAL_PARAMS).exists() or self.has_trajectory

    @property
    def replayable(self) -> bool:
        """True when influence and exact replay can be (re)computed: a trajectory or θ₀ is stored."""
        return self.has_initial_params

    @property
    def _np_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["config"].get("dtype", "float32"))

    def _initial(self, name: str, row_file: str, size: int, what: str) -> np.ndarray:
        f = self.path / name
        if f.exists():
            arr = load_npy(f, mmap=False)
        elif self.has_trajectory and (size == 0 or (self.path / "trajectory" / row_file).exists()):
            arr = np.array(load_npy(self.path / "trajectory" / row_file)[0]) if size else np.zeros(0, self._np_dtype)
        elif size == 0:
            arr = np.zeros(0, self._np_dtype)
        else:
            raise RunIncompleteError(
                f"{self.path} has no {what}: {name} is missing and the trajectory was stripped (a run recorded by an "
                "earlier DIT, or a bundled sample run), so the run cannot be replayed and influence cannot be "
                "recomputed; record it again"
            )
        if arr.shape != (size,):
            raise RunIncompleteError(f"{self.path / name} has shape {arr.shape}, expected ({size},); the run is damaged")
        arr.setflags(write=False)
        return arr

    @functools.cached_property
    def initial_params(self) -> np.ndarray:
        """θ₀, the parameters before the first step, flat (n_params,) in the order of ``manifest["params"]``.

        Read from ``initial_params.npy`` (kept by ``dit strip``), else from row 0 of the stored
        trajectory. Raises :class:`RunIncompleteError` when neither is there.
        """
        return self._initial(INITIAL_PARAMS, "params.npy", int(self.manifest["n_params"]), "initial parameters")

    @functools.cached_property
    def initial_state(self) -> np.ndarray:
        """The optimizer state before the first step (state_size,); empty for plain SGD."""
        return self._initial(INITIAL_STATE, "state.npy", self.state_size, "initial optimizer state")

    @functools.cached_property
    def steps(self) -> pd.DataFrame:
        return load_parquet(self.path / "steps.parquet")

    @functools.cached_property
    def epochs(self) -> pd.DataFrame:
        return load_parquet(self.path / "epochs.parquet")

    @property
    def epoch_end_steps(self) -> np.ndarray:
        return self.epochs["end_step"].to_numpy(dtype=np.int64)

    @functools.cached_property
    def learning_rates(self) -> np.ndarray:
        return self.steps["lr"].to_numpy(dtype=np.float64)

    @functools.cached_property
    def _batch_ids(self) -> np.ndarray:
        return load_npy(self.path / "batch_ids.npy")

    @functools.cached_property
    def _batch_offsets(self) -> np.ndarray:
        return load_npy(self.path / "batch_offsets.npy", mmap=False)

    def batch(self, t: int) -> np.ndarray:
        """Sample ids of step ``t``'s minibatch."""
        return np.asarray(self._batch_ids[self._batch_offsets[t] : self._batch_offsets[t + 1]])

    @functools.cached_property
    def batches(self) -> list[np.ndarray]:
        ids = np.asarray(self._batch_ids)
        off = self._batch_offsets
        return [ids[off[t] : off[t + 1]] for t in range(self.n_steps)]

    @functools.cached_property
    def samples(self) -> pd.DataFrame:
        df = load_parquet(self.path / "samples.parquet")
        sig = self.path / "signals.parquet"
        if sig.exists():
            extra = load_parquet(sig)
            df = df.merge(extra, on="sample_id", how="left")
        return df

    @functools.cached_property
    def sample_step(self) -> np.ndarray:
        return load_npy(self.path / "sample_step.npy", mmap=False)

    @functools.cached_property
    def sample_loss(self) -> np.ndarray:
        return load_npy(self.path / "sample_loss.npy", mmap=False)

    @functools.cached_property
    def sample_margin(self) -> np.ndarray:
        return load_npy(self.path / "sample_margin.npy", mmap=False)

    @functools.cached_property
    def X_train(self) -> np.ndarray:
        return load_npy(self.path / "train_X.npy")

    @functools.cached_property
    def y_train(self) -> np.ndarray:
        return load_npy(self.path / "train_y.npy", mmap=False)

    @functools.cached_property
    def X_val(self) -> np.ndarray:
        return load_npy(self.path / "val_X.npy")

    @functools.cached_property
    def y_val(self) -> np.ndarray:
        return load_npy(self.path / "val_y.npy", mmap=False)

    # ------------------------------------------------------------------ influence
    def _read_influence_manifest(self) -> dict | None:
        ipath = self.path / INFLUENCE_DIR / INFLUENCE_MANIFEST
        if not ipath.exists():
            return None
        try:
            im = read_json(ipath)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunIncompleteError(f"{ipath} is not valid JSON ({exc}); run `dit compute` again") from exc
        damaged = f"{ipath} is damaged; run `dit compute {self.path} --overwrite` again"
        if not isinstance(im, dict) or not isinstance(im.get("checkpoints"), list) or not isinstance(im.get("queries"), list):
            raise RunIncompleteError(f"{damaged} (it needs a 'checkpoints' list and a 'queries' list)")
        cps = im["checkpoints"]
        if (
            not cps
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in cps)
            or sorted(set(cps)) != cps
            or cps[0] < 1
            or cps[-1] != self.n_steps
        ):
            raise RunIncompleteError(f"{damaged} (checkpoints {str(cps)[:80]} must ascend to n_steps={self.n_steps})")
        expected = (len(cps), self.n_train, self.n_epochs)
        for q in im["queries"]:
            if not isinstance(q, dict) or not isinstance(q.get("file"), str) or not isinstance(q.get("query"), str):
                raise RunIncompleteError(f"{damaged} (a query entry is not {{'query': ..., 'file': ...}})")
            f = self.path / INFLUENCE_DIR / q["file"]
            if not f.exists():
                raise RunIncompleteError(f"{f} is missing: the influence is half-written; run `dit compute` again")
            got = tuple(load_npy(f).shape)
            if got != expected:
                raise RunIncompleteError(f"{f} has shape {got}, expected {expected}; run `dit compute {self.path} --overwrite` again")
        return im

    @property
    def has_influence(self) -> bool:
        return self._influence_manifest is not None

    @property
    def influence_manifest(self) -> dict:
        if self._influence_manifest is None:
            raise InfluenceNotComputedError(f"no influence computed for {self.path}; run `dit compute {self.path}` first")
        return self._influence_manifest

    @property
    def checkpoints(self) -> np.ndarray:
        if self._influence_manifest is None:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._influence_manifest["checkpoints"], dtype=np.int64)

    @property
    def queries(self) -> list[str]:
        if self._influence_manifest is None:
            return []
        return [q["query"] for q in self._influence_manifest["queries"]]

    @property
    def default_query(self) -> str:
        """``"val_loss"`` when it was computed (or nothing was), else the first computed query."""
        qs = self.queries
        return "val_loss" if not qs or "val_loss" in qs else qs[0]

    def _query_entry(self, query: str) -> dict:
        name = parse_query(query).name
        for q in self.influence_manifest["queries"]:
            if q["query"] == name:
                return q
        raise InfluenceNotComputedError(
            f"query {name!r} was not computed for {self.path} (computed: {', '.join(self.queries)}); "
            f"run `dit compute {self.path} --query {name}`"
        )

    @_per_run_cache
    def _contrib_raw(self, query: str) -> np.ndarray:
        entry = self._query_entry(query)
        arr = load_npy(self.path / INFLUENCE_DIR / entry["file"])
        expected = (len(self.checkpoints), self.n_train, self.n_epochs)
        if arr.shape != expected:
            raise RunIncompleteError(f"{entry['file']} has shape {arr.shape}, expected {expected}; run `dit compute` again")
        return arr

    def contributions(self, query: str = "val_loss") -> np.ndarray:
        """The contribution tensor C, shape (n_train, n_epochs, K), as a read-only view.

        ``C[j, e, k]`` is the first-order change of the query at checkpoint k if sample j's
        term were dropped at the step it was used in epoch e (zero when that step is not
        before checkpoint k). Positive = removing it raises the query.
        """
        return np.transpose(self._contrib_raw(query), (1, 2, 0))

    def checkpoint_index(self, at: int | None, name: str = "at") -> int:
        cps = self.checkpoints
        if len(cps) == 0:
            raise InfluenceNotComputedError(f"no influence computed for {self.path}; run `dit compute {self.path}` first")
        if at is None:
            return len(cps) - 1
        at = as_step(at, name)
        hits = np.flatnonzero(cps == at)
        if len(hits) == 0:
            raise ConfigError(f"{name}={at} is not a checkpoint; checkpoints are {_short(cps)}")
        return int(hits[0])

    def _check_window(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = as_step(start, "start"), as_step(stop, "stop")
        if not 0 <= start < stop <= self.n_steps:
            raise ConfigError(f"window [{start}, {stop}) must satisfy 0 <= start < stop <= n_steps = {self.n_steps}")
        return start, stop

    def window_influence(self, start: int, stop: int, at: int | None = None, query: str = "val_loss") -> np.ndarray:
        """Influence of removing each sample during steps [start, stop), measured at checkpoint ``at``.

        Parameters
        ----------
        start, stop : int
            The window of steps, ``0 <= start < stop <= n_steps``.
        at : int, optional
            A checkpoint step ``>= stop`` at which the query is measured (default: the last,
            ``n_steps``).
        query : str
            A computed query (default ``"val_loss"``).

        Returns
        -------
        ndarray (n_train,) float64. Positive = removing the sample in the window would
        raise the query (for a loss: the sample helped); negative = it hurt.
        """
        start, stop = self._check_window(start, stop)
        k = self.checkpoint_index(at)
        cp = int(self.checkpoints[k])
        if cp < stop:
            raise ConfigError(f"at={cp} lies before the window's end stop={stop}; choose a checkpoint >= {stop}")
        C = self._contrib_raw(query)[k]  # (n, E)
        s = self.sample_step
        mask = (s >= start) & (s < stop)
        return np.where(mask, C, 0).sum(axis=1, dtype=np.float64)

    @_per_run_cache
    def cumulative_influence(self, query: str = "val_loss") -> np.ndarray:
        """I[j, k]: influence of removing sample j from the whole run up to checkpoint k, (n_train, K)."""
        raw = self._contrib_raw(query)
        s = self.sample_step
        out = np.empty((self.n_train, len(self.checkpoints)), dtype=np.float64)
        for k, c in enumerate(self.checkpoints):
            out[:, k] = np.where(s < c, raw[k], 0).sum(axis=1, dtype=np.float64)
        out.setflags(write=False)
        return out

    def influence_at(self, at: int | None = None, query: str = "val_loss") -> np.ndarray:
        """Influence of removing each sample from the whole run up to checkpoint ``at`` (n_train,)."""
        k = self.checkpoint_index(at)
        return np.array(self.cumulative_influence(query)[:, k])

    def accrued_influence(self, start: int, stop: int, query: str = "val_loss") -> np.ndarray:
        """The paper's windowed influence between checkpoints ``start`` < ``stop`` (n_train,).

        ``I_j(stop) - I_j(start)``, where ``I_j(c)`` is the influence at checkpoint c of removing
        sample j from all steps before c. ``start`` may be 0 (then ``I_j(0) = 0``). Positive =
        removing the sample raises the query (for a loss: it helped).
        """
        start, stop = as_step(start, "start"), as_step(stop, "stop")
        if start >= stop:
            raise ConfigError(f"accrued_influence needs start < stop, got start={start}, stop={stop}")
        cum = self.cumulative_influence(query)
        hi = cum[:, self.checkpoint_index(stop, "accrued_influence stop")]
        if start == 0:
            return np.array(hi)
        return hi - cum[:, self.checkpoint_index(start, "accrued_influence start")]

    def trajectories(self, kind: str = "window", query: str = "val_loss") -> np.ndarray:
        """Per-sample influence trajectories over the checkpoints, (n_train, K).

        kind : {"window", "accrued", "cumulative"}
            ``"window"`` (default): column k is the influence of removing the sample during
            steps [c_{k-1}, c_k) (c_{-1} = 0), measured at the end of training.
            ``"accrued"``: column k is the accrued influence between c_{k-1} and c_k.
            ``"cumulative"``: column k is ``I_j(c_k)``.
        """
        cps = self.checkpoints
        if kind == "cumulative":
            return np.array(self.cumulative_influence(query))
        if kind == "accrued":
            cum = self.cumulative_influence(query)
            return np.diff(cum, axis=1, prepend=0.0)
        if kind != "window":
            raise ConfigError(f"kind={kind!r}: use 'window', 'accrued' or 'cumulative'")
        if len(cps) == 0:
            self.checkpoint_index(None)
        last = self._contrib_raw(query)[-1]
        s = self.sample_step
        bounds = np.concatenate([[0], cps])
        out = np.empty((self.n_train, len(cps)), dtype=np.float64)
        for k in range(len(cps)):
            out[:, k] = np.where((s >= bounds[k]) & (s < bounds[k + 1]), last, 0).sum(axis=1, dtype=np.float64)
        return out

    @property
    def self_influence_grad_norms(self) -> np.ndarray | None:
        """Squared per-sample gradient norms at each checkpoint (n_train, K), if computed."""
        f = (self._influence_manifest or {}).get("grad_norm2_file")
        if not f:
            return None
        return load_npy(self.path / INFLUENCE_DIR / f, mmap=False)


def _short(a: np.ndarray) -> str:
    a = list(map(int, a))
    return str(a) if len(a) <= 12 else f"[{', '.join(map(str, a[:5]))}, ..., {', '.join(map(str, a[-3:]))}] ({len(a)} in all)"


def load_run(path: str | os.PathLike) -> Run:
    """Open a run directory written by :func:`dit_core.record` (and :func:`dit_core.compute`).

    Raises
    ------
    RunNotFoundError
        The directory does not exist.
    RunIncompleteError
        It is half-written, damaged, or its training diverged.
    FormatVersionError
        It was written by an incompatible format version.
    """
    path = Path(path)
    return Run(path, read_manifest(path))


def strip_trajectory(path: str | os.PathLike) -> int:
    """Delete a run's stored trajectory (parameters at every step/checkpoint) to save space.

    The influence already computed stays usable, and so do θ₀ and the initial optimizer
    state (``initial_params.npy``, ``initial_state.npy``; written from the trajectory's first
    row first if the run predates them): recomputing influence or replaying then replays the
    recorded run from θ₀ (one extra pass over the training steps). The manifest is updated
    first (atomically), then the files are removed. Returns the number of bytes freed.
    """
    import shutil

    from ._io import save_npy, write_json

    path = Path(path)
    manifest = read_manifest(path)
    run = Run(path, manifest)
    tdir = path / "trajectory"
    if run.has_trajectory:
        for name, arr in ((INITIAL_PARAMS, run.initial_params), (INITIAL_STATE, run.initial_state)):
            if not (path / name).exists() and (name == INITIAL_PARAMS or arr.size):
                save_npy(path / name, arr)
    freed = sum(f.stat().st_size for f in tdir.rglob("*") if f.is_file()) if tdir.exists() else 0
    manifest["trajectory"] = {**manifest["trajectory"], "stored": False}
    write_json(path / MANIFEST, manifest)
    shutil.rmtree(tdir, ignore_errors=True)
    return freed
