"""Exact counterfactual replay: the ground truth the influence estimates are checked against.

``replay(run_dir, sample_ids, start, stop)`` re-runs the recorded training — same θ₀,
same minibatches, same learning rates, same optimizer — once per chosen sample with that
sample's term dropped from every minibatch in steps [start, stop) (the divisor |S_t| is
unchanged), and records the queries at every checkpoint. Several samples are replayed
together as one vectorised batch of models (``torch.func.vmap``), beside an unmodified
baseline replica; the influence is the difference to that replica, so any rounding
difference between vectorised and recorded arithmetic cancels.

Nothing changes before a sample is first dropped, so each batch of replays starts from
the recorded parameters at the last stored step at or before the earliest first removal
in the batch (samples are grouped by first removal). A sample that is never used inside
the window has influence exactly 0 and is not replayed.

Sign convention: positive influence = removing the sample raised the query; for a loss
query positive means the sample helped, negative means it hurt.
"""

from __future__ import annotations

import numbers
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch.func import vmap

from ._analytic import AnalyticMLP
from ._progress import progress_bar
from .engine import Engine, SegmentReplayer
from .errors import ConfigError
from .optim import step as optimizer_step
from .queries import parse_query, query_function
from .run import Run, load_run
from .sweep import resolve_checkpoints

# Bound on the memory of the replicas' parameter-sized tensors (parameters, optimizer
# state, gradients and their updated copies) in one vectorised batch; larger models get
# smaller batches automatically.
REPLICA_MEMORY_MB = 1024.0


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
        The query at each checkpoint with the sample removed in the window
        (``baseline + (replica with removal − unmodified replica)``).
    baseline : ndarray (K, Q)
        The query at each checkpoint of the recorded run.
    influence : ndarray (m, K, Q)
        ``values - baseline``. Positive = removing the sample raised the query (for a
        loss: the sample helped); negative = it hurt. Exactly 0 at checkpoints at or
        before the sample's first removal.
    trajectory_deviation : float
        Largest relative difference ``max|θ_replay − θ_recorded| / max|θ_recorded|``
        between the unmodified replica and the recorded parameters, over every stored
        step the replay passed (0 when the replay is bit-exact).
    first_removal : ndarray (m,)
        The first step in [start, stop) at which each sample's term is dropped; -1 if the
        sample is never used in the window (its influence is 0 and it was not replayed).
    seconds : float
        Wall time of the replay.
    replayed_steps : int
        Steps taken by all vectorised batches together (a batch of up to ``chunk``
        replays counts once per step).
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
    first_removal: np.ndarray | None = None
    replayed_steps: int = 0
    influence: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.influence = self.values - self.baseline[None]

    def at(self, checkpoint: int | None = None, query: str | None = None) -> np.ndarray:
        """Influence of each replayed sample at one checkpoint (default: last), shape (m,)."""
        if checkpoint is None:
            k = len(self.checkpoints) - 1
        else:
            hits = np.flatnonzero(self.checkpoints == int(checkpoint))
            if len(hits) == 0:
                raise ConfigError(f"checkpoint={checkpoint} was not replayed; replayed checkpoints are {self.checkpoints.tolist()}")
            k = int(hits[0])
        if query is None:
            q = 0
        else:
            name = parse_query(query).name
            if name not in self.queries:
                raise ConfigError(f"query {name!r} was not replayed; replayed queries are {self.queries}")
            q = self.queries.index(name)
        return self.influence[:, k, q]


def _check_ids(sample_ids, n_train: int) -> np.ndarray:
    if isinstance(sample_ids, (str, bytes)):
        raise ConfigError(f"sample_ids must be a sequence of integer sample ids, got {sample_ids!r}")
    try:
        raw = list(np.asarray(sample_ids).reshape(-1)) if isinstance(sample_ids, np.ndarray) else list(sample_ids)
    except TypeError as exc:
        raise ConfigError(f"sample_ids must be a sequence of integer sample ids, got {sample_ids!r}") from exc
    if len(raw) == 0:
        raise ConfigError("sample_ids is empty: give at least one training sample id")
    bad_type = [x for x in raw if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral)]
    if bad_type:
        raise ConfigError(f"sample_ids must be integers; got {bad_type[:5]!r}")
    ids = np.asarray([int(x) for x in raw], dtype=np.int64)
    bad = ids[(ids < 0) | (ids >= n_train)]
    if len(bad):
        raise ConfigError(f"sample ids {bad[:5].tolist()} are out of range: the run has n_train = {n_train} (ids 0..{n_train - 1})")
    return ids


def _first_removal(run: Run, ids: np.ndarray, start: int, stop: int) -> np.ndarray:
    """First step in [start, stop) whose minibatch holds each sample, -1 if none."""
    first = np.full(len(ids), -1, dtype=np.int64)
    todo = {int(j) for j in ids}
    found: dict[int, int] = {}
    for t in range(start, stop):
        if not todo:
            break
        for j in run.batch(t):
            j = int(j)
            if j in todo:
                found[j] = t
                todo.discard(j)
    for i, j in enumerate(ids):
        first[i] = found.get(int(j), -1)
    return first


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
        Training samples to remove, one replay each (m ids; repeats are allowed).
    start, stop : int
        Steps during which the sample is removed, ``0 <= start < stop <= n_steps``
        (default: the whole run).
    queries : sequence of str, optional
        Default: the run's computed queries, else ``("val_loss",)``.
    checkpoints : optional
        Default: the run's influence checkpoints, else the end of every epoch.
    model, loss_fn : optional
        Needed only for runs recorded with a user model or loss DIT cannot rebuild.
    device : str, optional
        Default: the run's device.
    chunk : int
        How many replays run together as one vectorised batch (fewer for large models:
        the replicas' parameter-sized tensors are kept under ``REPLICA_MEMORY_MB``).
    keep : float
        The weight the sample keeps in the window: 0 removes it (default). A value close
        to 1, ``1 - eps``, gives ``eps`` times the derivative that the first-order sweep
        estimates — a finite-difference check of the sweep itself.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ReplayResult
        ``influence`` (m, K, Q); positive = removing the sample raised the query.

    Notes
    -----
    Cost: each vectorised batch replays from its start step to ``n_steps``; one replay
    costs at most one training run, and a batch of ``chunk`` replays usually much less
    per sample.
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    T = run.n_steps
    stop = T if stop is None else int(stop)
    start = int(start)
    if not 0 <= start < stop <= T:
        raise ConfigError(f"window [{start}, {stop}) must satisfy 0 <= start < stop <= n_steps = {T}")
    ids = _check_ids(sample_ids, run.n_train)
    if not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ConfigError(f"chunk={chunk} must be an integer >= 1")
    if not np.isfinite(keep):
        raise ConfigError(f"keep={keep} must be a finite number (0 removes the sample)")
    if checkpoints is None:
        checkpoints = run.checkpoints.tolist() if run.has_influence else "epochs"
    cps = resolve_checkpoints(run, checkpoints)
    if queries is None:
        queries = run.queries or ["val_loss"]
    if isinstance(queries, str):
        queries = [queries]
    qs = [parse_query(q) for q in queries]
    if not qs:
        raise ConfigError("queries must name at least one query, e.g. ('val_loss',)")

    began = time.perf_counter()
    engine = Engine(run, model=model, loss_fn=loss_fn, device=device)
    fm, spec = engine.fm, engine.spec
    qfuns = [query_function(q, fm, engine.Xv, engine.yv) for q in qs]
    qfuns_batched = [vmap(f) for f in qfuns]
    batched_grad = vmap(engine.grad_fn, in_dims=(0, None, None, 0, None))
    # closed-form gradients of all replicas at once for Linear/Tanh/ReLU stacks with cross-entropy
    analytic, _ = AnalyticMLP.for_model(fm, tuple(engine.Xt.shape))
    elementwise_step = spec.name == "sgd"  # SGD's step is elementwise: it takes the (R, P) rows as they are
    check_every_row = len(engine.rows) < T + 1  # stored rows are spaced out (checkpoint mode or regenerated)
    cp_index = {int(c): k for k, c in enumerate(cps)}
    K, Q = len(cps), len(qs)
    rows = engine.rows
    per_replica = 3 * (fm.n_params + engine.n_state) * torch.finfo(fm.dtype).bits // 8
    chunk = int(max(1, min(chunk, REPLICA_MEMORY_MB * 2**20 // max(per_replica, 1) - 1)))

    # Baseline: the query at every checkpoint of the recorded run.
    replayer = SegmentReplayer(engine)
    baseline = np.empty((K, Q))
    with torch.no_grad():
        for k, c in enumerate(cps):
            theta_c = replayer.theta_at(int(c))
            for q in range(Q):
                baseline[k, q] = float(qfuns[q](theta_c))
    deviation = replayer.max_deviation

    first = _first_removal(run, ids, start, stop)
    values = np.repeat(baseline[None], len(ids), axis=0)
    todo = np.flatnonzero(first >= 0)
    todo = todo[np.argsort(first[todo], kind="stable")]
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    begins = [int(rows[np.searchsorted(rows, first[part].min(), side="right") - 1]) for part in chunks]
    total = sum(T - b for b in begins)
    bar = progress_bar(total=total, desc="exact replay", disable=not progress, unit="step")
    replayed = 0
    for part, t0 in zip(chunks, begins):
        part_ids = ids[part]
        R = len(part) + 1  # last replica = unmodified baseline
        theta0, state0 = engine.stored(t0)
        Theta = theta0.expand(R, -1).clone()
        State = state0.expand(R, -1).clone()
        for t in range(t0, T):
            ids_np, Xb, yb = engine.batch(t)
            B = len(ids_np)
            W = torch.ones(R, B, dtype=fm.dtype, device=engine.device)
            if start <= t < stop:
                for r, j in enumerate(part_ids):
                    hit = np.flatnonzero(ids_np == j)
                    if len(hit):
                        W[r, torch.as_tensor(hit, device=engine.device)] = keep
            if analytic is not None:
                G = analytic.batched_grad(Theta, Xb, yb, W, B)
            else:
                G, _ = batched_grad(Theta, Xb, yb, W, B)
            lr = float(engine.lrs[t])
            if elementwise_step:
                Theta, State = optimizer_step(spec, Theta, State, G, lr, t)
            else:
                Theta, State = vmap(lambda th, st, g, _t=t, _lr=lr: optimizer_step(spec, th, st, g, _lr, _t))(Theta, State, G)
            Theta, State = Theta.detach(), State.detach()
            # the unmodified replica against the stored trajectory: at every stored row when rows
            # are spaced out, at the checkpoints and the last step when every step is stored
            if t + 1 in engine.row_of and (check_every_row or t + 1 in cp_index or t + 1 == T):
                ref, _ = engine.stored(t + 1)
                dev = float((Theta[-1] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
                deviation = max(deviation, dev)
            if t + 1 in cp_index:
                k = cp_index[t + 1]
                with torch.no_grad():
                    for q in range(Q):
                        v = qfuns_batched[q](Theta).detach().cpu().numpy().astype(np.float64)
                        values[part, k, q] = baseline[k, q] + (v[:-1] - v[-1])
            replayed += 1
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
        first_removal=first,
        replayed_steps=replayed,
    )


__all__ = ["ReplayResult", "replay"]
