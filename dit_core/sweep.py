"""The one-sweep influence computation: ``compute(run_dir, checkpoints, queries)``.

One reverse pass over the recorded steps carries the adjoints of all checkpoints (and
queries) at once, as columns of a matrix. Per step t, for the active columns A:

1. through the optimizer step's vector-Jacobian product (closed form,
   :func:`dit_core.optim.step_vjp`), the adjoint gives the
   gradient-space cotangent U = (∂step/∂ḡ)ᵀ A (for plain SGD, U = -η A);
2. the minibatch gradient is built once as a differentiable function of θ and of
   per-sample weights w (all 1), ḡ = ∇θ Σ_j w_j ℓ_j / |S_t|; one backward pass of
   ⟨ḡ, u⟩ for every column u of U (batched) returns both the Hessian-vector products
   H U (its θ part) and the per-sample directional derivatives ⟨∇ℓ_j, U⟩ / |S_t| (its w
   part) — no per-sample gradient is formed;
3. sample j's contribution is ``-⟨∇ℓ_j, U⟩ / |S_t|``, and the adjoint moves to
   ``(∂step/∂θ)ᵀ A + H U``.

Contributions are buffered per epoch (each sample is used once per epoch) and written
to the (K, n, E) files once per epoch.

Step 2 has three implementations with the same result (``compute(..., method=...)``):

- ``"analytic"``: closed-form R-forward/R-backward passes (:mod:`dit_core._analytic`) for
  an ``nn.Sequential`` of Linear layers with tanh/ReLU and the built-in cross-entropy — the
  built-in logistic regression and MLP. A few batched matrix products per step, no graph;
- ``"reverse"``: the batched double-backward described above (autograd with
  ``is_grads_batched``), for any model and per-sample loss;
- ``"jvp"``: ``torch.func`` forward mode, vmapped over the columns u of U — a JVP of the
  per-sample loss vector gives the dots ⟨∇ℓ_j, u⟩, and forward-over-reverse
  (``jvp`` of ``grad``) gives H u, both from one forward-mode pass per column.

``"auto"`` (default) takes ``"analytic"`` where the model allows it and ``"reverse"``
elsewhere. All equal the brute-force linearised propagation (tests check each, and that they
agree); ``benchmarks/bench_engine.py --method`` times them. On the small CPU models we
measured, ``"analytic"`` is the fastest and ``"reverse"`` beats ``"jvp"``; ``"jvp"`` keeps peak
memory lower where activations dominate.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
import uuid
from typing import Sequence

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from ._analytic import AnalyticMLP
from ._io import commit_npy, open_npy_for_writing, save_npy, write_json
from ._progress import progress_bar
from .engine import Engine, SegmentReplayer
from .errors import ConfigError, RunExistsError
from .optim import step_vjp
from .queries import parse_query, query_function
from .run import INFLUENCE_DIR, INFLUENCE_MANIFEST, Run, as_step, load_run
from .signals import drop_influence_signals


def resolve_checkpoints(run: Run, checkpoints) -> np.ndarray:
    """``"epochs"`` (end of every epoch), ``"final"``, or a sequence of steps; n_steps is always included."""
    T = run.n_steps
    if isinstance(checkpoints, str):
        if checkpoints == "epochs":
            cps = run.epoch_end_steps
        elif checkpoints == "final":
            cps = np.array([T])
        else:
            raise ConfigError(f"checkpoints={checkpoints!r}: use 'epochs', 'final' or a list of step indices")
    else:
        try:
            items = list(checkpoints)
        except TypeError as exc:
            raise ConfigError(f"checkpoints must be 'epochs', 'final' or a list of integer steps, got {checkpoints!r}") from exc
        cps = np.asarray([as_step(c, "checkpoint") for c in items], dtype=np.int64)
        bad = cps[(cps < 1) | (cps > T)]
        if len(bad):
            raise ConfigError(f"checkpoint steps must lie in [1, n_steps={T}]; got {bad.tolist()}")
    cps = np.unique(np.append(cps, T)).astype(np.int64)
    return cps


def _batched_vjp(outputs, inputs, cotangents):
    """Vector-Jacobian products of ``outputs`` for N cotangent rows at once.

    ``cotangents[i]`` has shape (N, *outputs[i].shape); returns one (N, *input.shape)
    tensor per input (zeros where an input does not influence the outputs).
    """
    n = cotangents[0].shape[0]
    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad and o.numel()]
    outs, cots = [o for o, _ in pairs], [c for _, c in pairs]
    if n == 1:
        res = torch.autograd.grad(outs, inputs, [c[0] for c in cots], allow_unused=True, materialize_grads=True)
        res = [r[None] for r in res]
    else:
        res = torch.autograd.grad(outs, inputs, cots, is_grads_batched=True, allow_unused=True, materialize_grads=True)
    # inputs that were not used come back unbatched
    return tuple(r if r.shape[:1] == (n,) and r.dim() == x.dim() + 1 else r.new_zeros((n, *x.shape)) for r, x in zip(res, inputs))


METHODS = ("auto", "analytic", "reverse", "jvp")


def choose_method(fm, method: str, input_shape: tuple[int, ...]) -> tuple[str, AnalyticMLP | None]:
    """The sweep method actually used for ``method`` on this model and input shape (batch first),
    and the closed-form kernels if any."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: use one of {list(METHODS)}")
    analytic, why = AnalyticMLP.for_model(fm, input_shape) if method in ("auto", "analytic") else (None, None)
    if method == "analytic" and analytic is None:
        raise ConfigError(
            f"method='analytic' covers an nn.Sequential of Linear layers with Tanh/ReLU and the built-in "
            f"cross-entropy, but {why}; use method='reverse' (or 'auto')"
        )
    if method == "auto":
        method = "analytic" if analytic is not None else "reverse"
    return method, analytic


def _hvp_and_dots_jvp(fm, theta: torch.Tensor, Xb: torch.Tensor, yb: torch.Tensor, U: torch.Tensor, chunk: int | None):
    """(H U, J U / B) by forward mode: for each row u of U, one JVP of θ ↦ (∇ mean loss, per-sample losses)."""
    B = Xb.shape[0]

    def mean_loss(th):
        losses = fm.losses(th, Xb, yb)
        return losses.sum() / B, losses

    grad_and_losses = grad(mean_loss, has_aux=True)

    def one(u):
        _, (hu, ju) = jvp(grad_and_losses, (theta,), (u,))
        return hu, ju / B

    return vmap(one, chunk_size=chunk)(U)


def _per_sample_grad_norm2(engine: Engine, theta: torch.Tensor, chunk: int | None = None, analytic: AnalyticMLP | None = None) -> np.ndarray:
    fm = engine.fm
    if analytic is not None:  # closed form: no per-sample gradient is formed
        rows = 8192
        return np.concatenate([
            analytic.grad_norm2(theta, engine.Xt[i : i + rows], engine.yt[i : i + rows]).detach().cpu().numpy()
            for i in range(0, engine.Xt.shape[0], rows)
        ])
    if chunk is None:  # per-sample gradients of one chunk take at most ~64 MiB
        chunk = max(1, min(engine.Xt.shape[0], 2**26 // (fm.n_params * theta.element_size())))

    def one(th, x, y):
        return fm.losses(th, x[None], y[None])[0]

    g1 = vmap(grad(one), in_dims=(None, 0, 0))
    out = []
    for i in range(0, engine.Xt.shape[0], chunk):
        gi = g1(theta, engine.Xt[i : i + chunk], engine.yt[i : i + chunk])
        out.append((gi * gi).sum(dim=1).detach().cpu().numpy())
    return np.concatenate(out)


def compute(
    run_dir: str | os.PathLike,
    checkpoints: str | Sequence[int] = "epochs",
    queries: Sequence[str] = ("val_loss",),
    *,
    model: torch.nn.Module | None = None,
    loss_fn=None,
    device: str | None = None,
    self_influence: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    method: str = "auto",
) -> Run:
    """Compute the contribution tensor of a recorded run in one reverse sweep.

    Parameters
    ----------
    run_dir : path
        A run directory written by :func:`dit_core.record` (with its trajectory).
    checkpoints : "epochs" (default), "final", or a sequence of steps
        The steps c_k at which the query is measured. ``n_steps`` is always included.
    queries : sequence of str
        See :mod:`dit_core.queries`: ``"val_loss"`` (default), ``"class_loss=C"``,
        ``"test_loss=I"``, ``"test_logit=I[:C]"``.
    model, loss_fn : optional
        Needed only when the run was recorded with a user model or loss that DIT cannot
        rebuild from its manifest.
    device : str, optional
        Where to run the sweep (default: the run's device).
    self_influence : bool
        Also store each sample's squared gradient norm at every checkpoint (TracIn
        self-influence signal).
    overwrite : bool
        Replace influence computed earlier with other checkpoints or queries.
    method : "auto" (default), "analytic", "reverse" or "jvp"
        How each step's Hessian-vector products and per-sample dots are formed: closed-form
        passes for MLPs with cross-entropy (``"analytic"``), one batched double-backward
        pass (``"reverse"``), or ``torch.func`` forward-mode JVPs vmapped over the adjoint
        columns (``"jvp"``). ``"auto"`` takes ``"analytic"`` where the model allows it, else
        ``"reverse"``. Same numbers up to rounding; see the module docstring. The method used
        is stored in the influence manifest.

    Returns
    -------
    Run
        The reopened run, with ``window_influence`` etc. available. Sign: positive =
        removing the sample raises the query.
    """
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: use one of {list(METHODS)}")
    run = load_run(run_dir)
    cps = resolve_checkpoints(run, checkpoints)
    if isinstance(queries, str):
        queries = [queries]
    try:
        queries = list(queries)
    except TypeError:
        raise ConfigError(f"queries must be a sequence of query strings such as ('val_loss',), got {queries!r}") from None
    qs = [parse_query(q) for q in queries]
    if not qs:
        raise ConfigError("queries must name at least one query, e.g. ('val_loss',)")
    if len({q.name for q in qs}) != len(qs):
        raise ConfigError(f"queries contains duplicates: {[q.name for q in qs]}")
    if run.has_influence and not overwrite:
        old = run.influence_manifest
        old_self = "grad_norm2_file" in old
        old_args = (
            f"checkpoints {_brief(old['checkpoints'])}, queries {[q['query'] for q in old['queries']]}, "
            f"method {old.get('method')!r}, self_influence={old_self}"
        )
        new_args = (
            f"checkpoints {_brief(cps.tolist())}, queries {[q.name for q in qs]}, method {method!r}, "
            f"self_influence={bool(self_influence)}"
        )
        same = (
            list(old["checkpoints"]) == cps.tolist()
            and [q["query"] for q in old["queries"]] == [q.name for q in qs]
            and (method == "auto" or method == old.get("method"))
            and (old_self or not self_influence)
        )
        if same:
            return run
        raise RunExistsError(
            f"{run.path} already has influence computed with {old_args}; you asked for {new_args}. "
            "Pass overwrite=True (CLI: --overwrite) to replace it."
        )

    engine = Engine(run, model=model, loss_fn=loss_fn, device=device)
    fm, spec = engine.fm, engine.spec
    method_requested = method
    method, analytic = choose_method(fm, method, tuple(engine.Xt.shape))
    T, n, E, P = run.n_steps, run.n_train, run.n_epochs, fm.n_params
    S = engine.n_state
    K, Q = len(cps), len(qs)
    qfuns = [query_function(q, fm, engine.Xv, engine.yv) for q in qs]
    qgrads = [grad(f) for f in qfuns]
    replayer = SegmentReplayer(engine)
    plain_sgd = spec.name == "sgd" and spec.momentum == 0 and spec.weight_decay == 0
    jvp_chunk = None  # vmap all active columns at once (as "reverse" batches them)

    idir = run.path / INFLUENCE_DIR
    work = run.path / f".influence.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        np_dtype = np.dtype(engine.dtype_name).type  # the run's precision: float64 runs keep float64 contributions
        outs = [open_npy_for_writing(work / f"{q.file_stem}.npy", (K, n, E), np_dtype) for q in qs]
        for arr, _ in outs:
            arr[:] = 0
        A_theta = torch.zeros(K * Q, P, dtype=fm.dtype, device=engine.device)
        A_state = torch.zeros(K * Q, S, dtype=fm.dtype, device=engine.device)
        query_values = np.full((Q, K), np.nan)
        grad_norm2 = np.full((n, K), np.nan, dtype=np_dtype) if self_influence else None
        epoch_of_step = np.arange(T) // run.steps_per_epoch

        # contributions of the current epoch, written to the (K, n, E) files once per epoch
        buf = np.zeros((Q, K, n), dtype=np_dtype)
        buf_epoch = None

        def flush():
            if buf_epoch is not None:
                for q, (arr, _) in enumerate(outs):
                    arr[:, :, buf_epoch] = buf[q]
                buf[:] = 0

        k0 = K
        started = time.perf_counter()
        bar = progress_bar(total=T, desc="influence sweep", disable=not progress, unit="step")
        for t in range(T - 1, -1, -1):
            while k0 > 0 and cps[k0 - 1] == t + 1:
                k0 -= 1
                theta_c = replayer.theta_at(t + 1)
                for q in range(Q):
                    A_theta[k0 * Q + q] = qgrads[q](theta_c).detach()
                    query_values[q, k0] = float(qfuns[q](theta_c))
                if grad_norm2 is not None:
                    grad_norm2[:, k0] = _per_sample_grad_norm2(engine, theta_c, analytic=analytic)
            theta, state, g = replayer.step_data(t)
            ids_np, Xb, yb = engine.batch(t)
            B = len(ids_np)
            lr = float(engine.lrs[t])
            act = slice(k0 * Q, K * Q)
            a_theta, a_state = A_theta[act], A_state[act]
            if method == "analytic":
                step_pass = analytic.prepare(theta.detach(), Xb, yb)  # one forward/backward, used twice below
            if method == "reverse":
                # the minibatch gradient as a differentiable function of (θ, per-sample weights w);
                # d⟨ḡ, u⟩/dθ = H u and d⟨ḡ, u⟩/dw_j = ⟨∇ℓ_j, u⟩ / |S_t|: both from one backward pass
                th = theta.detach().requires_grad_(True)
                w = torch.ones(B, dtype=fm.dtype, device=engine.device, requires_grad=True)
                with torch.enable_grad():
                    loss = (fm.losses(th, Xb, yb) * w).sum() / B
                    (gbar,) = torch.autograd.grad(loss, th, create_graph=True)
            if plain_sgd:
                U, v_theta, v_state = -lr * a_theta, a_theta, a_state
            else:
                if g is None:
                    if spec.is_linear:
                        g = torch.zeros_like(theta)
                    elif method == "reverse":
                        g = gbar.detach()
                    elif method == "analytic":
                        g = step_pass.mean_grad()
                    else:
                        g = grad(lambda th_: fm.losses(th_, Xb, yb).mean())(theta)
                v_theta, v_state, U = step_vjp(spec, theta, state, g, lr, t, a_theta, a_state)
            if method == "analytic":
                HU, JU = step_pass.hvp_and_dots(U)
            elif method == "reverse":
                HU, JU = _batched_vjp((gbar,), (th, w), (U,))
            else:
                HU, JU = _hvp_and_dots_jvp(fm, theta.detach(), Xb, yb, U, jvp_chunk)
            e = int(epoch_of_step[t])
            if e != buf_epoch:
                flush()
                buf_epoch = e
            buf[:, k0:, ids_np] = (-JU).reshape(K - k0, Q, B).permute(1, 0, 2).detach().cpu().numpy()
            A_theta[act] = v_theta + HU
            A_state[act] = v_state
            bar.update(1)
        flush()
        bar.close()
        seconds = time.perf_counter() - started

        for q, (arr, tmp) in zip(qs, outs):
            commit_npy(arr, tmp, work / f"{q.file_stem}.npy")
        manifest = {
            "complete": True,
            "method": method,
            "method_requested": method_requested,
            "influence_id": uuid.uuid4().hex,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "checkpoints": cps.tolist(),
            "queries": [{"query": q.name, "file": f"{q.file_stem}.npy"} for q in qs],
            "layout": "(checkpoint, sample, epoch)",
            "query_values": {q.name: query_values[i].tolist() for i, q in enumerate(qs)},
            "sweep_seconds": seconds,
            "device": str(engine.device),
            "dtype": engine.dtype_name,
            "replay_max_relative_deviation": replayer.max_deviation,
            "replay_memory_bytes": replayer.memory_bytes,
            "replay_cache_peak_bytes": replayer.peak_cached_bytes,
            "replayed_steps": replayer.replayed_steps,
            "sign_convention": run.manifest["sign_convention"],
        }
        if grad_norm2 is not None:
            save_npy(work / "grad_norm2.npy", grad_norm2)
            manifest["grad_norm2_file"] = "grad_norm2.npy"
            manifest["checkpoint_lrs"] = [float(engine.lrs[c - 1]) for c in cps]
        write_json(work / INFLUENCE_MANIFEST, manifest)
        if idir.exists():
            old = run.path / f".influence.old-{uuid.uuid4().hex[:8]}"
            os.replace(idir, old)
            os.replace(work, idir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, idir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    drop_influence_signals(run.path)  # scores derived from the influence just replaced are stale
    return load_run(run.path)


def _brief(c) -> str:
    c = list(c)
    return str(c) if len(c) <= 6 else f"[{c[0]}, {c[1]}, ..., {c[-1]}] ({len(c)})"
