"""A recorded run made executable again: model, data, optimizer and trajectory on a device.

Shared by the influence sweep and by counterfactual replay, so that both replay the
recorded training with exactly the code that recorded it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.func import grad

from ._functional import FunctionalModel, LossFn, torch_dtype
from ._io import load_npy
from ._modelspec import build_from_description, check_param_layout
from .errors import ConfigError, ModelError, RunIncompleteError
from .optim import OptimizerSpec, step as optimizer_step
from .run import INITIAL_PARAMS, Run


def _spec_from_manifest(run: Run) -> OptimizerSpec:
    return OptimizerSpec.from_config(run.config)


class Engine:
    """Model + data + optimizer of a run, ready to take exactly the recorded steps."""

    def __init__(
        self,
        run: Run,
        *,
        model: torch.nn.Module | None = None,
        loss_fn: LossFn | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ):
        self.run = run
        m = run.manifest
        self._user_supplied = model is not None or loss_fn is not None
        if model is None:
            model = build_from_description(m["model"])
        if loss_fn is None and m["loss"].get("kind") == "user":
            raise ConfigError(
                f"this run was recorded with a custom loss ({m['loss'].get('name')}); pass loss_fn=... (the same function)"
            )
        device = device or run.config.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
        self.device = torch.device(device)
        self.dtype_name = dtype or run.config.dtype
        self.dtype = torch_dtype(self.dtype_name)
        self.fm = FunctionalModel(model, loss_fn, self.dtype, self.device)
        check_param_layout(m["params"], self.fm.describe_params())
        self.spec = _spec_from_manifest(run)
        self.lrs = run.learning_rates
        self.Xt = torch.as_tensor(np.array(run.X_train), dtype=self.dtype, device=self.device)
        self.yt = self._labels(run.y_train)
        self.Xv = torch.as_tensor(np.array(run.X_val), dtype=self.dtype, device=self.device)
        self.yv = self._labels(run.y_val)
        self.grad_fn = grad(self.fm.batch_loss_aux, has_aux=True)
        self.n_state = self.spec.state_size(self.fm.n_params)
        tdir = run.path / "trajectory"
        self.regenerated = not run.has_trajectory
        if self.regenerated:
            if not (run.path / INITIAL_PARAMS).exists():
                raise RunIncompleteError(
                    f"{run.path} has no stored trajectory (trajectory/params.npy) and no initial parameters "
                    f"({INITIAL_PARAMS}): it was saved without them (e.g. a bundled sample run, or stripped by an "
                    "earlier DIT), so influence and replay cannot be recomputed for it"
                )
            self.rows, self.params, self.states = self._regenerate_trajectory()
        else:
            self.rows = np.asarray(self._load(tdir / "steps.npy", mmap=False), dtype=np.int64)
            self.params = self._load(tdir / "params.npy", shape=(len(self.rows), self.fm.n_params))
            self.states = self._load(tdir / "state.npy", shape=(len(self.rows), self.n_state)) if self.n_state else None
            if (run.path / INITIAL_PARAMS).exists() and not np.array_equal(run.initial_params, self.params[0]):
                raise RunIncompleteError(
                    f"{run.path / INITIAL_PARAMS} differs from the trajectory's first row (trajectory/params.npy): "
                    "the run is damaged"
                )
        self.row_of = {int(s): i for i, s in enumerate(self.rows)}
        if not self.regenerated:  # a regenerated trajectory was checked at every step already
            self._check_reproduces_recorded_losses()

    @staticmethod
    def _load(path: Path, *, mmap: bool = True, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A stored trajectory array; a missing, truncated or misshapen file is named as damage."""
        try:
            arr = load_npy(path, mmap=mmap)
        except FileNotFoundError:
            raise RunIncompleteError(f"{path} is missing: the stored trajectory is incomplete") from None
        except Exception as exc:
            raise RunIncompleteError(
                f"{path} could not be read ({type(exc).__name__}: {exc}); the stored trajectory is damaged"
            ) from exc
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise RunIncompleteError(f"{path} has shape {tuple(arr.shape)}, expected {tuple(shape)}; the stored trajectory is damaged")
        return arr

    def _loss_tolerance(self, recorded: np.ndarray) -> float:
        """How far a recomputed minibatch loss may lie from the recorded one (rounding of the engine's dtype)."""
        scale = float(np.abs(recorded).max()) if len(recorded) else 1.0
        return (1e-4 if self.dtype == torch.float32 else 1e-9) * max(scale, 1e-12)

    def _check_reproduces_recorded_losses(self) -> None:
        """The model and loss (passed, or rebuilt from the manifest) must give the recorded
        minibatch losses at a few stored steps; otherwise influence computed with them would
        silently describe another model. (A stripped run's regeneration checks every step.)"""
        recorded = self.run.steps["batch_loss"].to_numpy(dtype=np.float64)
        T = self.run.n_steps
        rows = [int(r) for r in self.rows if int(r) < T]
        if not rows:
            return
        picks = sorted({rows[0], rows[len(rows) // 2], rows[-1]})
        tol = self._loss_tolerance(recorded)
        with torch.no_grad():
            for t in picks:
                theta, _ = self.stored(t)
                _, Xb, yb = self.batch(t)
                loss = float(self.fm.losses(theta, Xb, yb).sum() / Xb.shape[0])
                if abs(loss - recorded[t]) <= tol:
                    continue
                if t != picks[0]:
                    # the first row reproduced its loss, so model and loss are right: this stored row is wrong
                    raise RunIncompleteError(
                        f"the stored parameters of step {t} ({self.run.path / 'trajectory' / 'params.npy'}) do not "
                        f"reproduce the recorded minibatch loss ({loss:.10g} instead of {float(recorded[t]):.10g}): the run is damaged"
                    )
                raise ModelError(
                    f"the model and loss {'passed' if self._user_supplied else 'rebuilt from the manifest'} do not "
                    f"reproduce the recorded run {self.run.path}: the minibatch loss at step {t} is {loss:.10g}, the "
                    f"recording says {float(recorded[t]):.10g}. Pass the same model architecture (model=...) and per-sample "
                    "loss (loss_fn=...) that recorded it"
                )

    def _regenerate_trajectory(self):
        """Checkpoint rows of a stripped run, rebuilt by replaying the recorded steps from θ₀.

        The rows are spaced as a checkpoint-mode recording would space them (so the sweep's
        replay cache fits in ``replay_memory_mb``) and written to a temporary directory that is
        removed with the run object. Every step's minibatch loss must equal the recorded one
        (``steps.parquet``), which checks that model, loss, device and data reproduce the run.
        Cached per run object, device and dtype, so several replays of one run regenerate once.
        """
        import dataclasses
        import shutil
        import tempfile
        import weakref

        from ._io import commit_npy, open_npy_for_writing
        from .record import plan_trajectory, replay_step_values, stored_rows

        run, fm = self.run, self.fm
        key = (str(self.device), self.dtype_name)
        cache = run.__dict__.setdefault("_regenerated_trajectories", {})
        if key in cache:
            return cache[key]
        T, P, S = run.n_steps, fm.n_params, self.n_state
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        itemsize = np.dtype(np_dtype).itemsize
        cfg = dataclasses.replace(run.config, trajectory="checkpoint", checkpoint_every=None)
        _, every = plan_trajectory(cfg, T, P + S, replay_step_values(P, S, self.spec.is_linear), itemsize)
        rows = stored_rows("checkpoint", every, T)
        tmpdir = Path(tempfile.mkdtemp(prefix="dit-trajectory-"))
        weakref.finalize(run, shutil.rmtree, str(tmpdir), True)
        params_mm, params_tmp = open_npy_for_writing(tmpdir / "params.npy", (len(rows), P), np_dtype)
        state_mm, state_tmp = open_npy_for_writing(tmpdir / "state.npy", (len(rows), S), np_dtype) if S else (None, None)
        recorded = run.steps["batch_loss"].to_numpy(dtype=np.float64)
        tol = self._loss_tolerance(recorded)
        theta = torch.as_tensor(np.array(run.initial_params), dtype=self.dtype, device=self.device)
        state = torch.as_tensor(np.array(run.initial_state), dtype=self.dtype, device=self.device)
        row_index = {int(r): i for i, r in enumerate(rows)}

        def store(t, th, st):
            if t in row_index:
                params_mm[row_index[t]] = th.detach().cpu().numpy()
                if S:
                    state_mm[row_index[t]] = st.detach().cpu().numpy()

        store(0, theta, state)
        for t in range(T):
            _, Xb, yb = self.batch(t)
            B = Xb.shape[0]
            ones = torch.ones(B, dtype=self.dtype, device=self.device)
            g, (losses, _) = self.fm.grad_and_aux(theta, Xb, yb, ones, B)
            loss = float(losses.sum() / B)
            if not abs(loss - recorded[t]) <= tol:
                raise RunIncompleteError(
                    f"replaying the stripped run {run.path} from its initial parameters does not reproduce the "
                    f"recorded minibatch loss at step {t} ({loss:.10g} instead of {float(recorded[t]):.10g}); the run is damaged "
                    "or was recorded with a different model/loss/device"
                )
            theta, state = optimizer_step(self.spec, theta, state, g, float(self.lrs[t]), t)
            store(t + 1, theta, state)
        commit_npy(params_mm, params_tmp, tmpdir / "params.npy")
        if S:
            commit_npy(state_mm, state_tmp, tmpdir / "state.npy")
        out = (rows, load_npy(tmpdir / "params.npy"), load_npy(tmpdir / "state.npy") if S else None)
        cache[key] = out
        return out

    def _labels(self, y: np.ndarray) -> torch.Tensor:
        y = np.asarray(y)
        if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
            return torch.as_tensor(y.astype(np.int64), device=self.device)
        return torch.as_tensor(y, dtype=self.dtype, device=self.device)

    # ------------------------------------------------------------------ stored states
    def stored(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.row_of[t]
        theta = torch.as_tensor(np.array(self.params[i]), dtype=self.dtype, device=self.device)
        if self.n_state:
            state = torch.as_tensor(np.array(self.states[i]), dtype=self.dtype, device=self.device)
        else:
            state = theta.new_zeros(0)
        return theta, state

    @property
    def theta0(self) -> torch.Tensor:
        """θ₀ (row 0 of the trajectory, which equals ``run.initial_params``)."""
        return self.stored(0)[0]

    # ------------------------------------------------------------------ one step
    def batch(self, t: int):
        ids_np = self.run.batch(t)
        ids = torch.as_tensor(np.array(ids_np), device=self.device)
        return ids_np, self.Xt[ids], self.yt[ids]

    def gradient(self, theta, Xb, yb):
        ones = torch.ones(Xb.shape[0], dtype=self.dtype, device=self.device)
        return self.fm.grad_and_aux(theta, Xb, yb, ones, Xb.shape[0])[0]

    def train_step(self, theta, state, t):
        """Exactly the recorded step t: returns (theta', state', mean gradient at theta)."""
        _, Xb, yb = self.batch(t)
        g = self.gradient(theta, Xb, yb)
        new_theta, new_state = optimizer_step(self.spec, theta, state, g, float(self.lrs[t]), t)
        return new_theta, new_state, g


class SegmentReplayer:
    """Yields (theta_t, state_t, grad_t or None) for descending t, replaying between stored rows.

    In full-trajectory mode every step is stored and nothing is replayed. In checkpoint
    mode, the steps between two stored rows are replayed exactly and kept in a cache of
    (θₜ, sₜ, ḡₜ) per step (ḡₜ only for optimizers that are not linear in the gradient,
    :func:`dit_core.record.replay_step_values`). The cache never holds more than
    ``memory_mb`` (default: the run's ``TrainConfig.replay_memory_mb``): the old cache is
    released before a new one is built, and a segment that does not fit is cached in
    chunks, aligned to the segment's end (the sweep runs backwards), each replayed from the
    segment's stored start. The first replay of a segment runs to its end and is compared
    with the stored row there; ``max_deviation`` reports the worst relative difference seen.

    Attributes
    ----------
    memory_bytes : int
        The bound on the cache.
    chunk_steps : int
        Steps cached at most at once (at least 1).
    cached_bytes, peak_cached_bytes : int
        Bytes of the tensors in the cache now, and the most it ever held.
    replayed_steps : int
        Steps replayed so far (more than the segment lengths when segments are chunked).
    """

    def __init__(self, engine: Engine, tolerance: float | None = None, memory_mb: float | None = None):
        from .record import replay_step_values

        self.e = engine
        self.full = len(engine.rows) == engine.run.n_steps + 1
        self.lo = self.hi = None
        self.cache: dict[int, tuple] = {}
        self.max_deviation = 0.0
        self.tolerance = tolerance if tolerance is not None else (1e-4 if engine.dtype == torch.float32 else 1e-9)
        self.cache_gradients = not engine.spec.is_linear
        itemsize = torch.finfo(engine.dtype).bits // 8
        self.step_bytes = max(1, replay_step_values(engine.fm.n_params, engine.n_state, engine.spec.is_linear) * itemsize)
        mb = engine.run.config.replay_memory_mb if memory_mb is None else memory_mb
        if not mb > 0:
            raise ConfigError(f"memory_mb={memory_mb!r} must be > 0")
        self.memory_bytes = int(mb * 2**20)
        self.chunk_steps = max(1, self.memory_bytes // self.step_bytes)
        self.cached_bytes = 0
        self.peak_cached_bytes = 0
        self.replayed_steps = 0
        self._verified: set[tuple[int, int]] = set()

    def theta_at(self, t: int) -> torch.Tensor:
        if t in self.e.row_of:
            return self.e.stored(t)[0]
        self._load(t)
        return self.cache[t][0]

    def step_data(self, t: int):
        if self.full:
            theta, state = self.e.stored(t)
            return theta, state, None
        self._load(t)
        return self.cache[t]

    def _release(self) -> None:
        self.cache, self.lo, self.hi = {}, None, None
        self.cached_bytes = 0

    def _load(self, t: int) -> None:
        if self.lo is not None and self.lo <= t < self.hi:
            return
        i = int(np.searchsorted(self.e.rows, t, side="right") - 1)
        lo, hi = int(self.e.rows[i]), int(self.e.rows[i + 1])
        # the chunk of at most chunk_steps steps holding t, counted back from the segment's end
        m = self.chunk_steps
        c_hi = hi - ((hi - 1 - t) // m) * m
        c_lo = max(lo, c_hi - m)
        verify = (lo, hi) not in self._verified
        end = hi if verify else c_hi
        self._release()  # free the old cache before building the new one
        theta, state = self.e.stored(lo)
        cache: dict[int, tuple] = {}
        for s in range(lo, end):
            new_theta, new_state, g = self.e.train_step(theta, state, s)
            if c_lo <= s < c_hi:
                entry = (theta, state, g if self.cache_gradients else None)
                cache[s] = entry
                self.cached_bytes += sum(x.numel() * x.element_size() for x in entry if x is not None)
                self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
            theta, state = new_theta, new_state
            self.replayed_steps += 1
        if verify:
            ref, _ = self.e.stored(hi)
            dev = float((theta - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            self.max_deviation = max(self.max_deviation, dev)
            if dev > self.tolerance:
                self._release()
                raise RunIncompleteError(
                    f"exact replay of steps [{lo}, {hi}) does not reproduce the stored checkpoint at step {hi} "
                    f"(relative deviation {dev:.3g} > {self.tolerance:g}); the run's trajectory is damaged or was "
                    "recorded with a different model/loss/device"
                )
            self._verified.add((lo, hi))
        self.cache, self.lo, self.hi = cache, c_lo, c_hi
