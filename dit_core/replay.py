"""Exact counterfactual replay: the ground truth the influence estimates are checked against.

``replay(run_dir, sample_ids, start, stop)`` re-runs the recorded training — same θ₀,
same minibatches, same learning rates, same optimizer — once per chosen sample with that
sample's term dropped from every minibatch in steps [start, stop) (the divisor |S_t| is
unchanged), and records the queries at every checkpoint. Several samples are replayed
together as one vectorised batch of models (``torch.func.vmap``), beside an unmodified
baseline replica; the influence is the difference to that baseline.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.func import vmap

from ._progress import progress_bar
from .engine import Engine
from .errors import ConfigError
from .optim import step as optimizer_step
from .queries import parse_query, query_function
from .run import Run, load_run
from .sweep import resolve_checkpoints


@dataclass
class ReplayResult:
    """Exact counterfactual values.

    Attributes
    ----------
    sample_ids : ndarray (m,)
    start, stop : int
        The removal window [start, stop).
    checkpoints : ndarray (K,)
    queries : list of str
    values : ndarray (m, K, Q)
        The query at each checkpoint with the sample removed in the window.
    baseline : ndarray (K, Q)
        The query at each checkpoint in the unmodified replay.
    influence : ndarray (m, K, Q)
        ``values - baseline``. Positive = removing the sample raised the query.
    trajectory_deviation : float
        Largest relative difference between the unmodified replay's parameters and the
        recorded ones, over the stored steps (0 when the replay is bit-exact).
    seconds : float
    """

    sample_ids: np.ndarray
    start: int
    stop: int
    checkpoints: np.ndarray
    queries: list[str]
    values: np.ndarray
    baseline: np.ndarray
    trajectory_deviation: float
    seconds: float
    influence: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.influence = self.values - self.baseline[None]

    def at(self, checkpoint: int | None = None, query: str | None = None) -> np.ndarray:
        """Influence of each replayed sample at one checkpoint (default: last), (m,)."""
        k = len(self.checkpoints) - 1 if checkpoint is None else int(np.flatnonzero(self.checkpoints == checkpoint)[0])
        q = 0 if query is None else self.queries.index(parse_query(query).name)
        return self.influence[:, k, q]


def replay(
    run_dir: str | os.PathLike | Run,
    sample_ids: Sequence[int],
    start: int = 0,
    stop: int | None = None,
    *,
    queries: Sequence[str] | None = None,
    checkpoints: str | Sequence[int] | None = None,
    model: torch.nn.Module | None = None,
    loss_fn=None,
    device: str | None = None,
    chunk: int = 64,
    keep: float = 0.0,
    progress: bool = True,
) -> ReplayResult:
    """Replay the recorded run exactly with each sample's term dropped during [start, stop).

    Parameters
    ----------
    run_dir : path or Run
        A run with its trajectory (``dit train`` / :func:`dit_core.record`).
    sample_ids : sequence of int
        Training samples to remove, one replay each.
    start, stop : int
        Steps during which the sample is removed (default: the whole run).
    queries : sequence of str, optional
        Default: the run's computed queries, else ``("val_loss",)``.
    checkpoints : optional
        Default: the run's influence checkpoints, else the end of every epoch.
    chunk : int
        How many replays run together as one vectorised batch.
    keep : float
        The weight the sample keeps in the window: 0 removes it (default). A value close
        to 1, ``1 - eps``, gives ``eps`` times the derivative that the first-order sweep
        estimates — a finite-difference check of the sweep itself.

    Returns
    -------
    ReplayResult
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    T = run.n_steps
    stop = T if stop is None else int(stop)
    start = int(start)
    if not 0 <= start < stop <= T:
        raise ConfigError(f"window [{start}, {stop}) must satisfy 0 <= start < stop <= n_steps = {T}")
    ids = np.asarray(list(sample_ids), dtype=np.int64)
    if ids.ndim != 1 or len(ids) == 0:
        raise ConfigError("sample_ids must be a non-empty list of training sample ids")
    bad = ids[(ids < 0) | (ids >= run.n_train)]
    if len(bad):
        raise ConfigError(f"sample ids {bad[:5].tolist()} are out of range: the run has n_train = {run.n_train}")
    if chunk < 1:
        raise ConfigError(f"chunk={chunk} must be >= 1")
    if checkpoints is None:
        checkpoints = run.checkpoints.tolist() if run.has_influence else "epochs"
    cps = resolve_checkpoints(run, checkpoints)
    if queries is None:
        queries = run.queries or ["val_loss"]
    qs = [parse_query(q) for q in queries]

    engine = Engine(run, model=model, loss_fn=loss_fn, device=device)
    fm, spec = engine.fm, engine.spec
    qfuns = [vmap(query_function(q, fm, engine.Xv, engine.yv)) for q in qs]
    batched_grad = vmap(engine.grad_fn, in_dims=(0, None, None, 0, None))
    cp_index = {int(c): k for k, c in enumerate(cps)}
    K, Q = len(cps), len(qs)

    values = np.empty((len(ids), K, Q))
    baseline = np.empty((K, Q))
    deviation = 0.0
    began = time.perf_counter()
    chunks = [ids[i : i + chunk] for i in range(0, len(ids), chunk)]
    bar = progress_bar(total=T * len(chunks), desc="exact replay", disable=not progress, unit="step")
    for ci, part in enumerate(chunks):
        R = len(part) + 1  # last replica = unmodified baseline
        theta0, state0 = engine.stored(0)
        Theta = theta0.expand(R, -1).clone()
        State = state0.expand(R, -1).clone()
        for t in range(T):
            ids_np, Xb, yb = engine.batch(t)
            B = len(ids_np)
            W = torch.ones(R, B, dtype=fm.dtype, device=engine.device)
            if start <= t < stop:
                pos = {int(j): p for p, j in enumerate(ids_np)}
                for r, j in enumerate(part):
                    p = pos.get(int(j))
                    if p is not None:
                        W[r, p] = keep
            G, _ = batched_grad(Theta, Xb, yb, W, B)
            lr = float(engine.lrs[t])
            Theta, State = vmap(lambda th, st, g, _t=t, _lr=lr: optimizer_step(spec, th, st, g, _lr, _t))(Theta, State, G)
            if t + 1 in engine.row_of and ci == 0:
                ref, _ = engine.stored(t + 1)
                dev = float((Theta[-1] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                deviation = max(deviation, dev)
            if t + 1 in cp_index:
                k = cp_index[t + 1]
                with torch.no_grad():
                    for q in range(Q):
                        v = qfuns[q](Theta).detach().cpu().numpy().astype(np.float64)
                        values[ci * chunk : ci * chunk + len(part), k, q] = v[:-1]
                        if ci == 0:
                            baseline[k, q] = v[-1]
                        else:
                            # every chunk replays the baseline again; keep differences consistent per chunk
                            values[ci * chunk : ci * chunk + len(part), k, q] += baseline[k, q] - v[-1]
            bar.update(1)
    bar.close()
    return ReplayResult(
        sample_ids=ids,
        start=start,
        stop=stop,
        checkpoints=cps,
        queries=[q.name for q in qs],
        values=values,
        baseline=baseline,
        trajectory_deviation=deviation,
        seconds=time.perf_counter() - began,
    )
