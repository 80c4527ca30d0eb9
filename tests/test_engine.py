"""Correctness of the recorder and the one-sweep influence engine.

The oracle is a slow, obvious reference written here, independently of ``dit_core``'s
engine: the run is retrained with hand-written optimizer steps, every step map
``(θ, state) -> (θ', state')`` is linearised with explicit Jacobians
(``torch.autograd.functional.jacobian``), and the removal of sample j is propagated
forward, ``δ_{t+1} = J_t δ_t + e_{j,t}``. The sweep's window influences, checkpoints,
contributions, accrued influence and trajectories must equal it to rtol 1e-6 (float64).
A second oracle is exact counterfactual replay (``dit_core.replay``), which the first-order
estimate must track with Pearson >= 0.99 on small real runs.

Sign convention checked throughout: positive influence = removing the sample would raise
the query.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

import dit_core as dit
from dit_core.errors import (
    ConfigError,
    DataError,
    FormatVersionError,
    ModelError,
    RunExistsError,
    RunIncompleteError,
    RunNotFoundError,
    TrainingDivergedError,
)
from dit_core.models import build_model, describe_model

RTOL = 1e-6
DTYPE = torch.float64


# ----------------------------------------------------------------------------- data
def tiny_data(n: int = 22, n_val: int = 12, d: int = 5, n_classes: int = 3, seed: int = 0):
    """A seeded linearly-separable-ish problem; every class appears in the validation set."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, n_classes))
    X = rng.normal(size=(n + n_val, d))
    y = np.argmax(X @ W + 0.8 * rng.normal(size=(n + n_val, n_classes)), axis=1)
    y[n : n + n_classes] = np.arange(n_classes)
    return (X[:n], y[:n].astype(np.int64)), (X[n:], y[n:].astype(np.int64))


def builtin(name: str, **kw):
    desc = describe_model(name, (5,), 3, seed=0, **kw)
    return build_model(**desc), {"kind": "builtin", **desc}


def record_tiny(out, model_name="mlp", *, hidden=(8,), loss_fn=None, model=None, data=None, **cfg):
    train, val = data or tiny_data()
    if model is None:
        model, desc = builtin(model_name, hidden=hidden) if model_name == "mlp" else builtin(model_name)
    else:
        desc = None
    theta_model = copy.deepcopy(model)
    base = dict(epochs=4, batch_size=8, lr=0.3, dtype="float64")
    base.update(cfg)
    path = dit.record(
        model, train, val, dit.TrainConfig(**base), out, loss_fn=loss_fn, model_description=desc, progress=False
    )
    return path, theta_model


# ----------------------------------------------------------------------------- the reference
class Reference:
    """Explicit-Jacobian linearised propagation of sample removals (slow and obvious)."""

    def __init__(self, run: dit.Run, model: torch.nn.Module, loss_fn=None):
        self.run = run
        self.model = model.to(DTYPE)
        self.loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, reduction="none"))
        named = [(k, p) for k, p in self.model.named_parameters()]
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).to(DTYPE)
        self.P = self.theta0.numel()
        self.X = torch.as_tensor(np.array(run.X_train), dtype=DTYPE)
        self.y = torch.as_tensor(np.array(run.y_train))
        self.Xv = torch.as_tensor(np.array(run.X_val), dtype=DTYPE)
        self.yv = torch.as_tensor(np.array(run.y_val))
        cfg = run.config
        self.cfg = cfg
        if cfg.optimizer == "sgd":
            self.S = self.P if cfg.momentum > 0 else 0
        else:
            self.S = 2 * self.P
        self._linearise()

    # the model as a function of the flat vector
    def outputs(self, theta, X):
        parts = torch.split(theta, self.numels)
        params = {k: p.view(s) for k, p, s in zip(self.names, parts, self.shapes)}
        return torch.func.functional_call(self.model, params, (X,))

    def losses(self, theta, X, y):
        return self.loss_fn(self.outputs(theta, X), y)

    # hand-written torch.optim semantics on z = (theta, state)
    def opt_step(self, z, g, lr, t):
        c, P = self.cfg, self.P
        theta = z[:P]
        if c.optimizer == "sgd":
            d = g + c.weight_decay * theta
            if c.momentum == 0:
                return theta - lr * d
            buf = d if t == 0 else c.momentum * z[P:] + (1 - c.dampening) * d
            direction = d + c.momentum * buf if c.nesterov else buf
            return torch.cat([theta - lr * direction, buf])
        m, v = z[P : 2 * P], z[2 * P :]
        b1, b2 = c.betas
        if c.optimizer == "adamw":
            theta = theta * (1 - lr * c.weight_decay)
        else:
            g = g + c.weight_decay * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        k = t + 1
        denom = torch.sqrt(v) / math.sqrt(1 - b2**k) + c.eps
        return torch.cat([theta - lr / (1 - b1**k) * m / denom, m, v])

    def mean_grad(self, theta, ids, create_graph=False):
        L = self.losses(theta, self.X[ids], self.y[ids]).mean()
        return torch.autograd.grad(L, theta, create_graph=create_graph)[0]

    def _linearise(self):
        run, P = self.run, self.P
        T = run.n_steps
        z = torch.cat([self.theta0, torch.zeros(self.S, dtype=DTYPE)])
        self.thetas, self.J, self.E = [z[:P]], [], []
        for t in range(T):
            ids = torch.as_tensor(np.array(run.batch(t)))
            B = len(ids)
            lr = float(run.learning_rates[t])
            zt = z.detach()

            def phi(zz, _ids=ids, _lr=lr, _t=t):
                return self.opt_step(zz, self.mean_grad(zz[:P], _ids, create_graph=True), _lr, _t)

            self.J.append(jacobian(phi, zt, vectorize=True))  # (D, D)
            th = zt[:P].clone().requires_grad_(True)
            gbar = self.mean_grad(th, ids).detach()
            G = jacobian(lambda gg, _lr=lr, _t=t: self.opt_step(zt, gg, _lr, _t), gbar, vectorize=True)  # (D, P)
            per_sample = jacobian(lambda tt, _ids=ids: self.losses(tt, self.X[_ids], self.y[_ids]), zt[:P], vectorize=True)  # (B, P)
            self.E.append((-per_sample / B) @ G.T)  # removing j: ḡ changes by -g_j/B
            z = self.opt_step(zt, gbar, lr, t).detach()
            self.thetas.append(z[:P])

    # queries
    def query(self, name: str):
        if name == "val_loss":
            return lambda th: self.losses(th, self.Xv, self.yv).mean()
        kind, _, arg = name.partition("=")
        if kind == "class_loss":
            m = self.yv == int(arg)
            return lambda th: self.losses(th, self.Xv[m], self.yv[m]).mean()
        i, _, cls = arg.partition(":")
        i = int(i)
        if kind == "test_loss":
            return lambda th: self.losses(th, self.Xv[i : i + 1], self.yv[i : i + 1])[0]
        c = int(cls) if cls else int(self.yv[i])
        return lambda th: self.outputs(th, self.Xv[i : i + 1])[0, c]

    def qgrad(self, name: str, c: int) -> torch.Tensor:
        th = self.thetas[c].clone().requires_grad_(True)
        return torch.autograd.grad(self.query(name)(th), th)[0]

    def window(self, start: int, stop: int, c: int, query: str = "val_loss") -> np.ndarray:
        """Linearised influence of removing each sample during [start, stop), measured at step c."""
        n, D = self.run.n_train, self.P + self.S
        delta = torch.zeros(n, D, dtype=DTYPE)
        for t in range(c):
            delta = delta @ self.J[t].T
            if start <= t < stop:
                delta[torch.as_tensor(np.array(self.run.batch(t)))] += self.E[t]
        return (delta[:, : self.P] @ self.qgrad(query, c)).numpy()

    def contributions(self, checkpoints, query: str = "val_loss") -> np.ndarray:
        """C[j, e, k] by propagating each step's impulse forward separately, (n, E, K)."""
        run = self.run
        out = np.zeros((run.n_train, run.n_epochs, len(checkpoints)))
        q = {int(c): self.qgrad(query, int(c)) for c in checkpoints}
        kof = {int(c): k for k, c in enumerate(checkpoints)}
        for s in range(run.n_steps):
            ids = run.batch(s)
            e = s // run.steps_per_epoch
            delta = self.E[s].clone()  # δ at step s + 1
            for t in range(s + 1, run.n_steps + 1):
                if t in kof:
                    out[ids, e, kof[t]] = (delta[:, : self.P] @ q[t]).numpy()
                if t < run.n_steps:
                    delta = delta @ self.J[t].T
        return out


def assert_close(actual, expected, what=""):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max())
    assert scale > 0, f"{what}: the reference is identically zero, the comparison would prove nothing"
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=RTOL * scale, err_msg=what)


# ----------------------------------------------------------------------------- sweep == reference
CASES = {
    "logreg_sgd": dict(model_name="logreg"),
    "mlp_sgd": dict(),
    "mlp_sgd_momentum_dampening_wd_cosine": dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.01, schedule="cosine", min_lr=0.01),
    "mlp_nesterov_wd_step": dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.02, schedule="step", step_every=2, step_gamma=0.5),
    "mlp_adam_wd": dict(optimizer="adam", lr=0.03, weight_decay=0.01, betas=(0.85, 0.99)),
    "mlp_adamw": dict(optimizer="adamw", lr=0.03, weight_decay=0.05, eps=1e-6),
}


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            path, model = record_tiny(tmp_path_factory.mktemp(case) / "run", **CASES[case])
            run = dit.compute(path, checkpoints="epochs", progress=False)
            cache[case] = (run, Reference(run, model))
        return cache[case]

    return get


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_equals_explicit_jacobian_reference(reference_runs, case):
    run, ref = reference_runs(case)
    T, spe = run.n_steps, run.steps_per_epoch
    cps = run.checkpoints
    assert cps.tolist() == [spe * (e + 1) for e in range(run.n_epochs)]
    # the recorded trajectory is the hand-written optimizer's (checks the recorder too)
    stored = np.load(run.path / "trajectory" / "params.npy", allow_pickle=False)
    np.testing.assert_allclose(stored, torch.stack(ref.thetas).numpy(), rtol=1e-10, atol=1e-12)

    # the contribution tensor, every sample, epoch and checkpoint
    C = run.contributions("val_loss")
    assert C.shape == (run.n_train, run.n_epochs, len(cps))
    assert_close(C, ref.contributions(cps), f"{case}: contributions")

    # windows (step-exact, inside epochs), measured at the end and at earlier checkpoints
    for start, stop, at in [(0, T, None), (T - spe, T, None), (2, 7, 9), (2, 7, None), (0, 3, 3), (4, 5, 6)]:
        c = T if at is None else at
        assert_close(run.window_influence(start, stop, at=at), ref.window(start, stop, c), f"{case}: window [{start},{stop}) at {c}")

    # cumulative / accrued / trajectories
    cum_ref = np.stack([ref.window(0, c, c) for c in cps], axis=1)
    assert_close(run.cumulative_influence(), cum_ref, f"{case}: cumulative")
    assert_close(run.trajectories("cumulative"), cum_ref, f"{case}: cumulative trajectories")
    assert_close(run.accrued_influence(0, cps[1]), cum_ref[:, 1], f"{case}: accrued [0, c1]")
    assert_close(run.accrued_influence(cps[1], cps[3]), cum_ref[:, 3] - cum_ref[:, 1], f"{case}: accrued [c1, c3]")
    assert_close(run.trajectories("accrued"), np.diff(cum_ref, axis=1, prepend=0.0), f"{case}: accrued trajectories")
    bounds = [0, *cps.tolist()]
    win_ref = np.stack([ref.window(bounds[k], bounds[k + 1], T) for k in range(len(cps))], axis=1)
    assert_close(run.trajectories("window"), win_ref, f"{case}: window trajectories")
    # the query values stored with the influence are the reference's
    qv = run.influence_manifest["query_values"]["val_loss"]
    np.testing.assert_allclose(qv, [float(ref.query("val_loss")(ref.thetas[c])) for c in cps], rtol=1e-10)


def test_float64_runs_keep_float64_contributions(reference_runs):
    run, ref = reference_runs("mlp_sgd_momentum_dampening_wd_cosine")
    stored = np.load(run.path / "influence" / "val_loss.npy", mmap_mode="r", allow_pickle=False)
    assert stored.dtype == np.float64
    for name in ("grad_norm2.npy",):
        assert np.load(run.path / "influence" / name, allow_pickle=False).dtype == np.float64
    for name in ("sample_loss.npy", "sample_margin.npy"):
        assert np.load(run.path / name, allow_pickle=False).dtype == np.float64
    # far beyond float32's precision (~6e-8 relative)
    expected = ref.contributions(run.checkpoints)
    np.testing.assert_allclose(run.contributions(), expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_float32_runs_store_float32_and_every_loader_accepts_both(tmp_path, reference_runs):
    from dit_core import explore
    from dit_core.signals import compute_signals

    run64, _ = reference_runs("mlp_sgd")
    path32, _ = record_tiny(tmp_path / "run32", dtype="float32")
    run32 = dit.compute(path32, progress=False)
    assert np.load(run32.path / "influence" / "val_loss.npy", mmap_mode="r", allow_pickle=False).dtype == np.float32
    assert run32.contributions().dtype == np.float32 and run64.contributions().dtype == np.float64
    T = run32.n_steps
    for run in (run32, run64):
        w = run.window_influence(0, T)
        assert w.dtype == np.float64
        np.testing.assert_allclose(w, run.contributions()[:, :, -1].astype(np.float64).sum(axis=1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(run.influence_at(), w, rtol=1e-12, atol=1e-15)
        assert run.trajectories().dtype == run.cumulative_influence().dtype == np.float64
        sig = compute_signals(run)
        np.testing.assert_allclose(sig["dit_full"], -w, rtol=1e-12, atol=1e-15)
        assert np.isfinite(sig["tracin_self"]).all()
        assert np.array_equal(explore.window_scores(run, 0, T), w)
    # same run in the two precisions: same influence up to float32 rounding
    np.testing.assert_allclose(run32.window_influence(0, T), run64.window_influence(0, T), rtol=1e-3, atol=1e-4 * np.abs(run64.window_influence(0, T)).max())


@pytest.mark.parametrize("method", ["reverse", "jvp"])
@pytest.mark.parametrize("case", ["logreg_sgd", "mlp_sgd_momentum_dampening_wd_cosine", "mlp_adam_wd", "mlp_adamw"])
def test_autograd_sweep_methods_equal_reference(reference_runs, case, method, tmp_path):
    """The built-in models sweep in closed form by default (``method="auto"`` -> ``"analytic"``);
    the autograd methods — ``"reverse"`` (batched double-backward) and ``"jvp"`` (torch.func
    forward mode, vmapped over columns) — give the same tensor, and so do their TracIn norms."""
    run, ref = reference_runs(case)
    copy_dir = tmp_path / "copy"
    shutil.copytree(run.path, copy_dir)
    run_f = dit.compute(copy_dir, checkpoints="epochs", progress=False, method=method, overwrite=True)
    assert run.influence_manifest["method"] == "analytic" and run.influence_manifest["method_requested"] == "auto"
    assert run_f.influence_manifest["method"] == method
    C = run_f.contributions("val_loss")
    assert_close(C, ref.contributions(run.checkpoints), f"{case}: {method} contributions")
    assert_close(C, run.contributions("val_loss"), f"{case}: {method} vs analytic")
    gn_auto = np.load(run.path / "influence" / "grad_norm2.npy", allow_pickle=False)
    gn_other = np.load(copy_dir / "influence" / "grad_norm2.npy", allow_pickle=False)
    assert_close(gn_auto, gn_other, f"{case}: per-sample squared gradient norms, analytic vs {method}")


def test_analytic_method_covers_mlp_variants_and_refuses_others(tmp_path):
    """ReLU, bias-free and activation-free stacks, and image-shaped input behind a Flatten, sweep in
    closed form with the same contributions as autograd; models outside its scope fall back under
    "auto" and are refused by name under "analytic"."""
    rng = np.random.default_rng(5)
    X = torch.as_tensor(rng.normal(size=(30, 2, 3)))
    y = torch.as_tensor(rng.integers(0, 3, size=30))
    data = ((X[:20], y[:20]), (X[20:], y[20:]))
    cfg = dit.TrainConfig(epochs=2, batch_size=5, lr=0.2, dtype="float64")
    models = {
        "relu_bias_free": lambda: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(6, 7), torch.nn.ReLU(), torch.nn.Linear(7, 5, bias=False), torch.nn.Tanh(), torch.nn.Linear(5, 3)
        ),
        "no_activation_between": lambda: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(6, 4), torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Identity(), torch.nn.Linear(4, 3)
        ),
    }
    for name, make in models.items():
        torch.manual_seed(0)
        path = dit.record(make(), *data, cfg, tmp_path / name, progress=False)
        copy_dir = tmp_path / f"{name}_reverse"
        shutil.copytree(path, copy_dir)
        torch.manual_seed(0)
        fast = dit.compute(path, model=make(), progress=False, method="analytic")
        torch.manual_seed(0)
        slow = dit.compute(copy_dir, model=make(), progress=False, method="reverse")
        assert fast.influence_manifest["method"] == "analytic"
        assert_close(fast.contributions(), slow.contributions(), f"{name}: analytic vs reverse")

    class Shifted(torch.nn.Module):  # not an nn.Sequential
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.lin(x.reshape(len(x), -1)) + 1.0

    # the closed form flattens the input: without a Flatten it only takes (batch, features) input
    from dit_core._analytic import AnalyticMLP
    from dit_core._functional import FunctionalModel

    fm = FunctionalModel(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)), None, DTYPE, torch.device("cpu"))
    assert AnalyticMLP.for_model(fm, (20, 3))[0] is not None
    kernels, why = AnalyticMLP.for_model(fm, (20, 2, 3))
    assert kernels is None and "no Flatten" in why

    path = dit.record(Shifted(), *data, cfg, tmp_path / "shifted", progress=False)
    with pytest.raises(ConfigError, match="method='analytic'.*Shifted"):
        dit.compute(path, model=Shifted(), progress=False, method="analytic")
    run = dit.compute(path, model=Shifted(), progress=False)
    assert run.influence_manifest["method"] == "reverse" and run.influence_manifest["method_requested"] == "auto"


def test_forward_mode_sweep_on_the_cnn(tmp_path):
    """The CNN (conv layers under forward-mode AD): both methods agree on every contribution."""
    rng = np.random.default_rng(3)
    X = torch.as_tensor(rng.normal(size=(24, 1, 6, 6)))
    y = torch.as_tensor(rng.integers(0, 3, size=24))
    data = ((X[:16], y[:16]), (X[16:], y[16:]))
    desc = describe_model("cnn", (1, 6, 6), 3, seed=0)
    runs = {}
    for method in ("reverse", "jvp"):
        path = dit.record(
            build_model(**desc), *data, dit.TrainConfig(epochs=2, batch_size=4, lr=0.1, momentum=0.5, dtype="float64"),
            tmp_path / method, model_description={"kind": "builtin", **desc}, progress=False,
        )
        runs[method] = dit.compute(path, progress=False, method=method)
    assert_close(runs["jvp"].contributions("val_loss"), runs["reverse"].contributions("val_loss"), "cnn jvp vs reverse")


def test_unknown_sweep_method_is_refused(small_run):
    with pytest.raises(ConfigError, match="method='forward'"):
        dit.compute(small_run.path, method="forward", progress=False)


def test_sweep_at_arbitrary_checkpoints_and_queries(tmp_path):
    """Checkpoints that are not epoch ends, and all query kinds in one sweep, against the reference."""
    path, model = record_tiny(tmp_path / "run", lr=0.1, momentum=0.9)
    queries = ("val_loss", "class_loss=1", "test_loss=2", "test_logit=3", "test_logit=4:0")
    run = dit.compute(path, checkpoints=[2, 5, 7], queries=queries, progress=False)
    assert run.checkpoints.tolist() == [2, 5, 7, run.n_steps]
    ref = Reference(run, model)
    for q in queries:
        assert_close(run.contributions(q), ref.contributions(run.checkpoints, q), f"contributions {q}")
        assert_close(run.window_influence(1, 5, at=5, query=q), ref.window(1, 5, 5, q), f"window {q}")
        assert_close(run.window_influence(3, 7, query=q), ref.window(3, 7, run.n_steps, q), f"window {q} at end")


# ----------------------------------------------------------------------------- sweep ~ exact replay
def digits_subset(n_train=240, seed=0):
    from dit_core.data import load_dataset

    ds = load_dataset("digits", corruption_rate=0.2, corruption_seed=seed)
    sl = slice(0, n_train)
    return ds, (ds.X_train[sl], ds.y_train[sl]), (ds.X_val, ds.y_val)


@pytest.fixture(scope="module")
def replay_runs(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            ds, train, val = digits_subset()
            desc = describe_model(name, ds.input_shape, ds.n_classes, hidden=(16,), seed=0)
            cfg = dit.TrainConfig(epochs=4, batch_size=16, lr=0.1, dtype="float64")
            path = dit.record(build_model(**desc), train, val, cfg, tmp_path_factory.mktemp(name) / "run",
                              model_description={"kind": "builtin", **desc}, progress=False)
            cache[name] = dit.compute(path, checkpoints="epochs", progress=False)
        return cache[name]

    return get


def pearson(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_estimate_tracks_exact_replay(replay_runs, name):
    run = replay_runs(name)
    ids = np.arange(0, run.n_train, 4)  # 60 samples, one vectorised replay chunk
    T, spe = run.n_steps, run.steps_per_epoch
    full = dit.replay(run, ids, 0, T, chunk=len(ids), progress=False)
    assert full.trajectory_deviation < 1e-12  # the baseline replay is the recorded run
    r_full = pearson(run.window_influence(0, T)[ids], full.at())
    last = dit.replay(run, ids, T - spe, T, chunk=len(ids), progress=False)
    r_last = pearson(run.window_influence(T - spe, T)[ids], last.at())
    c1, c3 = run.checkpoints[0], run.checkpoints[2]
    r_accrued = pearson(run.accrued_influence(c1, c3)[ids], full.at(c3) - full.at(c1))
    assert min(r_full, r_last, r_accrued) >= 0.99, (name, r_full, r_last, r_accrued)
    # same sign and scale, not just correlated
    est = run.window_influence(0, T)[ids]
    slope = float(np.dot(est, full.at()) / np.dot(est, est))
    assert 0.8 < slope < 1.25, slope


# ----------------------------------------------------------------------------- checkpoint mode
@pytest.mark.parametrize("opt", [dict(), dict(optimizer="adam", lr=0.03)])
def test_checkpoint_trajectory_mode_equals_full_mode(tmp_path, opt):
    full, _ = record_tiny(tmp_path / "full", trajectory="full", **opt)
    ckpt, _ = record_tiny(tmp_path / "ckpt", trajectory="checkpoint", checkpoint_every=5, **opt)
    rows = np.load(Path(ckpt) / "trajectory" / "steps.npy", allow_pickle=False)
    assert rows.tolist() == [0, 5, 10, 12]
    a = dit.compute(full, checkpoints="epochs", progress=False)
    b = dit.compute(ckpt, checkpoints="epochs", progress=False)
    assert b.manifest["trajectory"]["mode"] == "checkpoint"
    np.testing.assert_allclose(b.contributions(), a.contributions(), rtol=0, atol=1e-12 * np.abs(a.contributions()).max())
    assert b.influence_manifest["replay_max_relative_deviation"] < 1e-12


ADAM = dict(optimizer="adam", lr=0.03)


def _adam_step_bytes(path) -> tuple[int, int, int]:
    """(P, S, bytes the replay caches per step) of a float64 Adam run: θ, state (m, v) and ḡ."""
    m = dit.load_run(path).manifest
    P, S = m["n_params"], m["trajectory"]["state_size"]
    assert S == 2 * P
    return P, S, (P + S + P) * 8


def test_checkpoint_spacing_is_sized_by_what_the_replay_caches(tmp_path):
    probe, _ = record_tiny(tmp_path / "probe", trajectory="full", epochs=1, **ADAM)
    P, S, step_bytes = _adam_step_bytes(probe)
    assert step_bytes == 4 * P * 8 and P == 75
    # room for exactly 3 cached steps (θ, m, v and ḡ each) -- but 5 stored rows of P + S values
    mb = (3 * step_bytes + 100) / 2**20
    ckpt, _ = record_tiny(tmp_path / "ckpt", trajectory="checkpoint", replay_memory_mb=mb, **ADAM)
    run = dit.load_run(ckpt)
    assert run.manifest["trajectory"]["every"] == 3
    np.testing.assert_array_equal(np.load(Path(ckpt) / "trajectory" / "steps.npy", allow_pickle=False), [0, 3, 6, 9, 12])
    full, _ = record_tiny(tmp_path / "full", trajectory="full", **ADAM)
    a = dit.compute(full, progress=False)
    b = dit.compute(ckpt, progress=False)
    im = b.influence_manifest
    assert im["replay_memory_bytes"] == int(mb * 2**20)
    assert im["replay_cache_peak_bytes"] == 3 * step_bytes <= im["replay_memory_bytes"]
    assert im["replayed_steps"] == 12  # every segment replayed once
    np.testing.assert_allclose(b.contributions(), a.contributions(), rtol=0, atol=1e-12 * np.abs(a.contributions()).max())


def test_replay_cache_honours_the_bound_when_segments_are_longer(tmp_path):
    """checkpoint_every set by hand beyond replay_memory_mb: the segment is cached in pieces."""
    full, _ = record_tiny(tmp_path / "full", trajectory="full", **ADAM)
    P, S, step_bytes = _adam_step_bytes(full)
    mb = (2 * step_bytes + 10) / 2**20  # 2 steps at a time, segments of 6
    ckpt, _ = record_tiny(tmp_path / "ckpt", trajectory="checkpoint", checkpoint_every=6, replay_memory_mb=mb, **ADAM)
    from dit_core.engine import Engine, SegmentReplayer

    engine = Engine(dit.load_run(ckpt))
    rep = SegmentReplayer(engine)
    assert rep.memory_bytes == int(mb * 2**20) and rep.chunk_steps == 2
    T = engine.run.n_steps
    full_engine = Engine(dit.load_run(full))
    seen = []
    for t in range(T - 1, -1, -1):
        theta, state, g = rep.step_data(t)
        seen.append(rep.cached_bytes)
        assert len(rep.cache) <= 2 and rep.cached_bytes <= rep.memory_bytes
        # the replayed step data equal the fully stored trajectory (and the gradient there)
        ref_theta, ref_state = full_engine.stored(t)
        torch.testing.assert_close(theta, ref_theta, rtol=0, atol=1e-13)
        torch.testing.assert_close(state, ref_state, rtol=0, atol=1e-13)
        _, Xb, yb = engine.batch(t)
        torch.testing.assert_close(g, engine.gradient(ref_theta, Xb, yb), rtol=0, atol=1e-12)
    assert rep.peak_cached_bytes == 2 * step_bytes == max(seen)
    # segments [0, 6) and [6, 12): the last chunk of each replays the whole segment (checked
    # against the stored end), earlier chunks replay from the segment's start to their end
    assert rep.replayed_steps == (6 + 4 + 2) * 2
    assert rep.max_deviation < 1e-12
    a = dit.compute(full, progress=False)
    b = dit.compute(ckpt, progress=False)
    assert b.influence_manifest["replay_cache_peak_bytes"] <= int(mb * 2**20)
    np.testing.assert_allclose(b.contributions(), a.contributions(), rtol=0, atol=1e-12 * np.abs(a.contributions()).max())


def test_old_replay_cache_is_released_before_the_next_is_built(tmp_path):
    import weakref

    from dit_core.engine import Engine, SegmentReplayer

    ckpt, _ = record_tiny(tmp_path / "ckpt", trajectory="checkpoint", checkpoint_every=4, **ADAM)
    engine = Engine(dit.load_run(ckpt))
    rep = SegmentReplayer(engine)
    rep.step_data(11)  # caches segment [8, 12)
    assert sorted(rep.cache) == [8, 9, 10, 11]
    refs = [weakref.ref(x) for entry in rep.cache.values() for x in entry if x is not None]
    alive_during_build = []
    original = engine.train_step

    def spy(theta, state, t):
        alive_during_build.append(sum(r() is not None for r in refs))
        return original(theta, state, t)

    engine.train_step = spy
    rep.step_data(7)  # builds segment [4, 8)
    assert sorted(rep.cache) == [4, 5, 6, 7]
    assert len(alive_during_build) == 4 and max(alive_during_build) == 0


def test_auto_trajectory_chooses_checkpoint_mode_when_the_trajectory_is_too_big(tmp_path):
    full, _ = record_tiny(tmp_path / "full", trajectory="full", momentum=0.9, lr=0.1)
    m = dit.load_run(full).manifest
    P, S = m["n_params"], m["trajectory"]["state_size"]
    trajectory_mb = 13 * (P + S) * 8 / 2**20  # 12 steps + θ0, float64
    roomy, _ = record_tiny(tmp_path / "roomy", trajectory="auto", max_trajectory_mb=trajectory_mb, momentum=0.9, lr=0.1)
    assert dit.load_run(roomy).manifest["trajectory"]["mode"] == "full"
    small, _ = record_tiny(
        tmp_path / "small", trajectory="auto", max_trajectory_mb=0.99 * trajectory_mb,
        replay_memory_mb=5 * (P + S) * 8 / 2**20, momentum=0.9, lr=0.1,
    )
    run = dit.load_run(small)
    assert run.manifest["trajectory"]["mode"] == "checkpoint" and run.manifest["trajectory"]["every"] == 5
    np.testing.assert_array_equal(np.load(Path(small) / "trajectory" / "steps.npy", allow_pickle=False), [0, 5, 10, 12])
    a = dit.compute(full, progress=False)
    b = dit.compute(small, progress=False)
    np.testing.assert_allclose(b.contributions(), a.contributions(), rtol=0, atol=1e-12 * np.abs(a.contributions()).max())
    assert b.influence_manifest["replay_max_relative_deviation"] <= 1e-12
    assert b.influence_manifest["replay_cache_peak_bytes"] == 5 * (P + S) * 8  # SGD caches no gradient


def test_tampered_checkpoint_is_caught(tmp_path):
    ckpt, _ = record_tiny(tmp_path / "ckpt", trajectory="checkpoint", checkpoint_every=5)
    params_file = Path(ckpt) / "trajectory" / "params.npy"
    params = np.load(params_file, allow_pickle=False)
    params[1, 3] += 1e-3  # the stored row of step 5
    np.save(params_file, params, allow_pickle=False)
    # the sweep runs backwards: replaying [5, 10) from the damaged row misses the row of step 10
    # either the opening check (the row's own minibatch loss) or the replay between rows catches it
    with pytest.raises(
        RunIncompleteError,
        match=r"(exact replay of steps \[5, 10\) does not reproduce the stored checkpoint at step 10|stored parameters of step 5 .* do not reproduce the recorded minibatch loss)",
    ):
        dit.compute(ckpt, progress=False)
    assert not (Path(ckpt) / "influence").exists()


# ----------------------------------------------------------------------------- initial parameters, strip
def _flat(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(DTYPE).numpy()


@pytest.mark.parametrize("opt", [dict(), dict(momentum=0.9, lr=0.1), ADAM])
def test_initial_parameters_are_stored_on_their_own(tmp_path, opt):
    path, model0 = record_tiny(tmp_path / "run", trajectory="checkpoint", checkpoint_every=5, **opt)
    run = dit.load_run(path)
    P, S = run.manifest["n_params"], run.manifest["trajectory"]["state_size"]
    theta0 = np.load(Path(path) / "initial_params.npy", allow_pickle=False)
    assert theta0.dtype == np.float64 and theta0.shape == (P,)
    np.testing.assert_array_equal(theta0, _flat(model0))  # the model's parameters before training
    np.testing.assert_array_equal(run.initial_params, theta0)
    np.testing.assert_array_equal(np.load(Path(path) / "trajectory" / "params.npy", allow_pickle=False)[0], theta0)
    assert run.initial_state.shape == (S,)
    assert (Path(path) / "initial_state.npy").exists() == (S > 0)
    if S:
        np.testing.assert_array_equal(run.initial_state, np.zeros(S))  # torch.optim starts from zero buffers
    assert (S > 0) == bool(opt)


def test_stripped_run_is_replayed_from_its_initial_parameters(tmp_path):
    from dit_core.replay import replay
    from dit_core.run import strip_trajectory

    path, _ = record_tiny(tmp_path / "run", momentum=0.9, lr=0.1)
    before = dit.compute(path, progress=False)
    contrib = np.array(before.contributions())
    exact = replay(before, [1, 7, 15], 3, 9, progress=False)
    theta0 = np.array(before.initial_params)
    stored = np.load(Path(path) / "trajectory" / "params.npy", allow_pickle=False)
    assert stored.shape[0] == 13  # full mode: every step
    assert strip_trajectory(path) > 0
    run = dit.load_run(path)
    assert not run.has_trajectory and run.replayable
    np.testing.assert_array_equal(run.initial_params, theta0)
    P = run.manifest["n_params"]
    again = dit.compute(path, overwrite=True, progress=False)
    np.testing.assert_allclose(again.contributions(), contrib, rtol=0, atol=1e-13 * np.abs(contrib).max())
    assert not (Path(path) / "trajectory").exists()  # nothing was written back into the run
    from dit_core.engine import Engine

    engine = Engine(run)
    assert engine.regenerated and engine.rows.tolist() == [0, 12]
    # a small replay budget: the regenerated rows are spaced like a checkpoint recording
    m = json.loads((Path(path) / "manifest.json").read_text())
    m["config"]["replay_memory_mb"] = 4 * 2 * P * 8 / 2**20  # 4 steps of θ and momentum
    (Path(path) / "manifest.json").write_text(json.dumps(m))
    small = Engine(dit.load_run(path))
    assert small.rows.tolist() == [0, 4, 8, 12]
    for t in (4, 8, 12):  # the regenerated rows are the recorded parameters, bit for bit
        np.testing.assert_array_equal(small.stored(t)[0].numpy(), stored[t])
    r = replay(dit.load_run(path), [1, 7, 15], 3, 9, progress=False)
    np.testing.assert_allclose(r.influence, exact.influence, rtol=0, atol=1e-13)
    assert np.abs(exact.influence).max() > 1e-4
    assert r.trajectory_deviation < 1e-12


def test_stripped_run_without_or_with_damaged_initial_parameters(tmp_path):
    from dit_core.run import strip_trajectory

    path, _ = record_tiny(tmp_path / "run", epochs=2)
    old = tmp_path / "old"  # as if recorded before initial_params.npy existed: strip writes it from row 0
    shutil.copytree(path, old)
    (old / "initial_params.npy").unlink()
    row0 = np.load(old / "trajectory" / "params.npy", allow_pickle=False)[0]
    strip_trajectory(old)
    np.testing.assert_array_equal(np.load(old / "initial_params.npy", allow_pickle=False), row0)
    strip_trajectory(path)
    lost = tmp_path / "lost"
    shutil.copytree(path, lost)
    (lost / "initial_params.npy").unlink()
    run = dit.load_run(lost)  # no error on load
    assert not run.replayable
    with pytest.raises(RunIncompleteError, match=r"no initial parameters: initial_params.npy is missing"):
        run.initial_params
    with pytest.raises(RunIncompleteError, match=r"no initial parameters \(initial_params.npy\)"):
        dit.compute(lost, progress=False)
    with pytest.raises(RunIncompleteError, match=r"no initial parameters \(initial_params.npy\)"):
        dit.replay(lost, [0], progress=False)
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    theta0 = np.load(damaged / "initial_params.npy", allow_pickle=False)
    theta0[0] += 1e-3
    np.save(damaged / "initial_params.npy", theta0, allow_pickle=False)
    with pytest.raises(RunIncompleteError, match=r"does not reproduce the recorded minibatch loss at step 0"):
        dit.compute(damaged, progress=False)


# ----------------------------------------------------------------------------- queries, user models
def test_multiple_queries_equal_separate_sweeps(tmp_path):
    path, _ = record_tiny(tmp_path / "run")
    queries = ["val_loss", "class_loss=2", "test_loss=1", "test_logit=0"]
    together = dit.compute(path, queries=queries, progress=False)
    joint = {q: np.array(together.contributions(q)) for q in queries}
    values = together.influence_manifest["query_values"]
    for q in queries:
        alone = dit.compute(path, queries=[q], overwrite=True, progress=False)
        np.testing.assert_allclose(joint[q], alone.contributions(q), rtol=1e-12, atol=1e-15)
        assert alone.influence_manifest["query_values"][q] == pytest.approx(values[q], rel=1e-12)
        assert np.abs(joint[q]).max() > 0
    # the queries really differ
    assert not np.allclose(joint["val_loss"], joint["test_logit=0"])


class TinyNet(torch.nn.Module):
    """A user-defined model class: a residual-ish tanh network with a custom parameter."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.inp = torch.nn.Parameter(torch.randn(6, 5, generator=g) * 0.4)
        self.out = torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.out.weight.copy_(torch.randn(3, 6, generator=g) * 0.4)
            self.out.bias.zero_()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = torch.tanh(x @ self.inp.T)
        return self.out(h + 0.1 * h**2) * self.scale


def smoothed_ce(outputs, targets):
    """A user loss: per-sample label-smoothed cross-entropy."""
    return F.cross_entropy(outputs, targets, reduction="none", label_smoothing=0.1)


def test_user_model_and_user_loss(tmp_path):
    path, model0 = record_tiny(tmp_path / "run", model=TinyNet(), loss_fn=smoothed_ce, lr=0.2)
    run = dit.load_run(path)
    assert run.manifest["model"]["kind"] == "user" and run.manifest["loss"]["kind"] == "user"
    with pytest.raises(ModelError, match="pass model="):
        dit.compute(path, progress=False)
    with pytest.raises(ConfigError, match="custom loss"):
        dit.compute(path, model=TinyNet(), progress=False)
    run = dit.compute(path, model=TinyNet(), loss_fn=smoothed_ce, progress=False)
    ref = Reference(run, model0, loss_fn=smoothed_ce)
    assert_close(run.contributions(), ref.contributions(run.checkpoints), "user model contributions")
    with pytest.raises(ModelError, match="do not match the recorded run"):
        dit.compute(path, model=torch.nn.Linear(5, 3), loss_fn=smoothed_ce, overwrite=True, progress=False)

    # same parameter shapes, another function: refused instead of silently describing another model
    class OtherNet(TinyNet):
        def forward(self, x):
            return self.out(torch.relu(x @ self.inp.T)) * self.scale

    with pytest.raises(ModelError, match=r"do not reproduce the recorded run .*minibatch loss at step 0"):
        dit.compute(path, model=OtherNet(), loss_fn=smoothed_ce, overwrite=True, progress=False)
    plain_ce = lambda out, y: F.cross_entropy(out, y, reduction="none")  # noqa: E731
    with pytest.raises(ModelError, match="do not reproduce the recorded run"):
        dit.compute(path, model=TinyNet(), loss_fn=plain_ce, overwrite=True, progress=False)
    # validation replays with the user's model and loss too
    from dit_core.validate import validate

    report = validate(path, n_samples=4, windows=("full",), model=TinyNet(), loss_fn=smoothed_ce, progress=False, out_dir=tmp_path / "val")
    assert report.reproduces_recording and report["full"].pearson > 0.9


@pytest.mark.parametrize(
    "schedule,extra",
    [("constant", {}), ("step", dict(step_every=1, step_gamma=0.5)), ("cosine", dict(min_lr=0.02))],
)
def test_recorded_learning_rates_follow_the_schedule(tmp_path, schedule, extra):
    path, _ = record_tiny(tmp_path / "run", lr=0.3, schedule=schedule, **extra)
    run = dit.load_run(path)
    T, spe = run.n_steps, run.steps_per_epoch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.3)
    if schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=extra["step_every"] * spe, gamma=extra["step_gamma"])
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=extra["min_lr"])
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    expected = []
    for _ in range(T):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(run.learning_rates, expected, rtol=1e-12)
    np.testing.assert_allclose(run.steps["lr"].to_numpy(), expected, rtol=1e-12)
    if schedule != "constant":
        assert len(set(np.round(run.learning_rates, 12))) > 2


# ----------------------------------------------------------------------------- bad input
def _data():
    return tiny_data()


def test_bad_data_is_refused(tmp_path):
    (X, y), val = _data()
    model, _ = builtin("logreg")
    cfg = dit.TrainConfig(epochs=1, batch_size=8)
    with pytest.raises(DataError, match=r"train: X has 22 rows but y has 21"):
        dit.record(model, (X, y[:-1]), val, cfg, tmp_path / "a", progress=False)
    Xn = X.copy()
    Xn[5, 2] = np.nan
    with pytest.raises(DataError, match=r"train: X contains NaN or inf \(first at row 5\)"):
        dit.record(model, (Xn, y), val, cfg, tmp_path / "b", progress=False)
    with pytest.raises(DataError, match="val"):
        dit.record(model, (X, y), (val[0][:, :3], val[1]), cfg, tmp_path / "c", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("loss_fn", [None, smoothed_ce], ids=["cross_entropy", "user_loss"])
def test_out_of_range_labels_are_refused_in_every_row(tmp_path, loss_fn):
    (X, y), (Xv, yv) = _data()
    model, _ = builtin("logreg")  # 3 outputs
    cfg = dit.TrainConfig(epochs=1, batch_size=8)
    bad = y.copy()
    bad[17] = 3  # far beyond the first rows
    bad[20] = 5
    with pytest.raises(DataError, match=r"^train: label 3 at row 17 is outside \[0, 3\): the model has 3 outputs \(2 rows in all\)$"):
        dit.record(model, (X, bad), (Xv, yv), cfg, tmp_path / "a", loss_fn=loss_fn, progress=False)
    bad_val = yv.copy()
    bad_val[9] = -1
    with pytest.raises(DataError, match=r"^val: label -1 at row 9 is outside \[0, 3\): the model has 3 outputs$"):
        dit.record(model, (X, y), (Xv, bad_val), cfg, tmp_path / "b", loss_fn=loss_fn, progress=False)
    # refused before training: nothing was written
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []
    # labels in range are fine, including the largest
    ok = y.copy()
    ok[17] = 2
    dit.record(model, (X, ok), (Xv, yv), cfg, tmp_path / "c", loss_fn=loss_fn, progress=False)


def mse_loss(outputs, targets):
    return ((outputs - F.one_hot(targets, outputs.shape[1]).to(outputs.dtype)) ** 2).sum(dim=1)


def test_divergence_names_step_and_keeps_incomplete_run(tmp_path):
    model, _ = builtin("logreg")
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"at step \d+") as info:
        dit.record(model, *_data(), dit.TrainConfig(epochs=30, batch_size=8, lr=50.0, dtype="float32"), out,
                   loss_fn=mse_loss, progress=False)
    step = info.value.step
    assert step > 0 and info.value.run_dir == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["status"] == "diverged" and manifest["diverged_at_step"] == step
    import pandas as pd

    steps = pd.read_parquet(out / "steps.parquet")
    assert not np.isfinite(steps["batch_loss"].iloc[step]) and np.isfinite(steps["batch_loss"].iloc[:step]).all()
    with pytest.raises(RunIncompleteError, match=rf"diverged \(NaN/inf loss\) at step {step}\b"):
        dit.load_run(out)


@pytest.mark.parametrize(
    "layer,match",
    [
        (torch.nn.BatchNorm1d(5), r"BatchNorm1d.*training mode"),
        (torch.nn.Dropout(0.3), r"Dropout, p=0.3"),
    ],
)
def test_batch_dependent_or_random_layers_are_refused(tmp_path, layer, match):
    model = torch.nn.Sequential(layer, torch.nn.Linear(5, 3))
    with pytest.raises(ModelError, match=match):
        dit.record(model, *_data(), dit.TrainConfig(epochs=1), tmp_path / "run", progress=False)
    # in eval mode the same layers are fine
    model.eval()
    dit.record(model, *_data(), dit.TrainConfig(epochs=1), tmp_path / "run", progress=False)


class BatchCentered(torch.nn.Module):
    """Subtracts the batch mean of its input: no BatchNorm, but each output depends on the batch."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x - self.scale * x.mean(dim=0, keepdim=True)


def test_a_custom_batch_dependent_module_is_refused(tmp_path):
    from dit_core._functional import FunctionalModel
    from dit_core.record import check_model

    (X, y), val = _data()
    model = torch.nn.Sequential(BatchCentered(), torch.nn.Linear(5, 3))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(ModelError, match=r"a sample's loss depends on the other samples in its batch"):
        dit.record(model, (X, y), val, dit.TrainConfig(epochs=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the check compares the batched losses with one-at-a-time losses: they really differ here ...
    fm = FunctionalModel(model, None, torch.float64, torch.device("cpu"))
    theta = fm.initial_theta()
    Xt, yt = torch.as_tensor(X[:4]), torch.as_tensor(y[:4])
    batched = fm.losses(theta, Xt, yt)
    alone = torch.cat([fm.losses(theta, Xt[i : i + 1], yt[i : i + 1]) for i in range(4)])
    assert float((batched - alone).abs().max()) > 1e-3
    # ... and a tiny dependence (below float64 round-off) passes, as does a per-sample version
    check_model(FunctionalModel(torch.nn.Sequential(BatchCentered(1e-14), torch.nn.Linear(5, 3)), None, torch.float64,
                                torch.device("cpu")), theta, Xt, yt)
    with pytest.raises(ModelError, match="depends on the other samples"):
        check_model(FunctionalModel(torch.nn.Sequential(BatchCentered(1e-6), torch.nn.Linear(5, 3)), None, torch.float64,
                                    torch.device("cpu")), theta, Xt, yt)


def test_non_per_sample_loss_is_refused(tmp_path):
    model, _ = builtin("logreg")
    with pytest.raises(ModelError, match=r"one value per sample.*reduction='none'"):
        dit.record(model, *_data(), dit.TrainConfig(epochs=1), tmp_path / "run",
                   loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="mean"), progress=False)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    path, _ = record_tiny(tmp_path_factory.mktemp("small") / "run", epochs=2)
    return dit.compute(path, progress=False)


def test_damaged_run_directories(tmp_path, small_run):
    with pytest.raises(RunNotFoundError, match="does not exist"):
        dit.load_run(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunIncompleteError, match="has no manifest.json"):
        dit.load_run(empty)
    broken = tmp_path / "broken"
    shutil.copytree(small_run.path, broken)
    (broken / "batch_ids.npy").unlink()
    with pytest.raises(RunIncompleteError, match="missing batch_ids.npy"):
        dit.load_run(broken)
    other = tmp_path / "other"
    shutil.copytree(small_run.path, other)
    m = json.loads((other / "manifest.json").read_text())
    m["format_version"] = 999
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FormatVersionError, match="format version 999"):
        dit.load_run(other)
    no_traj = tmp_path / "no_traj"
    shutil.copytree(small_run.path, no_traj)
    shutil.rmtree(no_traj / "influence")
    (no_traj / "trajectory" / "params.npy").unlink()
    (no_traj / "initial_params.npy").unlink()
    dit.load_run(no_traj)  # loading works; only what needs θ0 fails
    with pytest.raises(RunIncompleteError, match=r"no stored trajectory .* and no initial parameters \(initial_params.npy\)"):
        dit.compute(no_traj, progress=False)
    half = tmp_path / "half"
    shutil.copytree(small_run.path, half)
    (half / "influence" / "val_loss.npy").unlink()
    with pytest.raises(RunIncompleteError, match="influence is half-written"):
        dit.load_run(half)


def _damage(src: Path, dst: Path, how) -> Path:
    shutil.copytree(src, dst)
    how(dst)
    return dst


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(edit(doc)))


@pytest.mark.parametrize(
    "name, how, match",
    [
        ("garbage_npy", lambda d: (d / "sample_step.npy").write_bytes(b"garbage!"), r"sample_step.npy could not be read \(ValueError"),
        ("garbage_parquet", lambda d: (d / "steps.parquet").write_bytes(b"1234567"), r"steps.parquet could not be read \(ArrowInvalid"),
        ("short_offsets", lambda d: np.save(d / "batch_offsets.npy", np.load(d / "batch_offsets.npy")[:-2]), r"batch_offsets.npy has shape \(5,\) but the manifest says \(7,\)"),
        ("short_step_table", lambda d: np.save(d / "sample_step.npy", np.load(d / "sample_step.npy")[:-1]), r"sample_step.npy has shape \(21, 2\) but the manifest says \(22, 2\)"),
        ("truncated_losses", lambda d: _truncate(d / "sample_loss.npy"), r"sample_loss.npy could not be read"),
        ("short_margins", lambda d: np.save(d / "sample_margin.npy", np.load(d / "sample_margin.npy")[:, :1]), r"sample_margin.npy has shape \(22, 1\)"),
        ("no_n_train", lambda d: _edit_json(d / "manifest.json", lambda m: {k: v for k, v in m.items() if k != "n_train"}), r"'n_train' is None, not a count"),
        ("influence_list", lambda d: _edit_json(d / "influence" / "influence.json", lambda m: [1, 2]), r"influence.json is damaged.*'checkpoints' list"),
        ("influence_cps", lambda d: _edit_json(d / "influence" / "influence.json", lambda m: {**m, "checkpoints": [3, 5]}), r"must ascend to n_steps=6"),
        ("influence_shape", lambda d: np.save(d / "influence" / "val_loss.npy", np.zeros((2, 22, 1))), r"val_loss.npy has shape \(2, 22, 1\), expected \(2, 22, 2\)"),
    ],
)
def test_damaged_files_inside_a_run_are_named(tmp_path, small_run, name, how, match):
    """A damaged file is refused when the run is opened (API, CLI, dashboard alike), naming it."""
    from dit_core.cli import main

    bad = _damage(small_run.path, tmp_path / name, how)
    with pytest.raises(RunIncompleteError, match=match):
        dit.load_run(bad)
    assert main(["info", str(bad)]) == 2


@pytest.mark.parametrize(
    "how, match",
    [
        (lambda d: _truncate(d / "trajectory" / "params.npy"), r"trajectory/params.npy could not be read .*the stored trajectory is damaged"),
        (lambda d: np.save(d / "trajectory" / "params.npy", np.load(d / "trajectory" / "params.npy")[:-1]), r"params.npy has shape \(6, \d+\), expected \(7, \d+\)"),
        (lambda d: (d / "trajectory" / "steps.npy").unlink(), r"steps.npy is missing"),
    ],
    ids=["truncated", "short", "missing_steps"],
)
def test_damaged_trajectory_is_named_by_compute_replay_and_validate(tmp_path, small_run, how, match):
    from dit_core.cli import main
    from dit_core.validate import validate

    bad = _damage(small_run.path, tmp_path / "bad", how)
    with pytest.raises(RunIncompleteError, match=match):
        dit.compute(bad, overwrite=True, progress=False)
    with pytest.raises(RunIncompleteError, match=match):
        validate(bad, n_samples=3, windows=("full",), progress=False, out_dir=tmp_path / "v")
    assert main(["compute", str(bad), "--overwrite", "--quiet"]) == 2


def test_bad_window_and_query_arguments(small_run):
    run = small_run
    T = run.n_steps
    with pytest.raises(ConfigError, match=r"at=4 is not a checkpoint; checkpoints are \[3, 6\]"):
        run.window_influence(0, 3, at=4)
    with pytest.raises(ConfigError, match=r"at=3 lies before the window's end stop=5"):
        run.window_influence(0, 5, at=3)
    with pytest.raises(ConfigError, match=r"window \[4, 2\)"):
        run.window_influence(4, 2)
    with pytest.raises(ConfigError, match=rf"window \[0, {T + 1}\)"):
        run.window_influence(0, T + 1)
    with pytest.raises(ConfigError, match="unknown query 'val_acc'"):
        dit.compute(run.path, queries=["val_acc"], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="unknown query"):
        run.contributions("test_loss=x")
    with pytest.raises(ConfigError, match=r"validation sample 99 does not exist \(n_val = 12\)"):
        dit.compute(run.path, queries=["test_loss=99"], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="no sample of class 7"):
        dit.compute(run.path, queries=["class_loss=7"], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="checkpoint steps must lie in"):
        dit.compute(run.path, checkpoints=[0, 2], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="accrued_influence needs start < stop"):
        run.accrued_influence(6, 3)
    # steps are integers: no silent truncation of 0.7 or 5.9, no strings or bools
    for bad, name in [((0.7, 5), "start=0.7"), ((0, 5.9), "stop=5.9"), (("a", 5), "start='a'"), ((0, True), "stop=True")]:
        with pytest.raises(ConfigError, match=re.escape(name)):
            run.window_influence(*bad)
    with pytest.raises(ConfigError, match=re.escape("at='6'")):
        run.window_influence(0, 3, at="6")
    with pytest.raises(ConfigError, match=re.escape("start=1.5")):
        run.accrued_influence(1.5, 6)
    with pytest.raises(ConfigError, match=re.escape("accrued_influence start=2 is not a checkpoint; checkpoints are [3, 6]")):
        run.accrued_influence(2, 6)
    np.testing.assert_array_equal(run.window_influence(np.int64(0), 3.0, at=6.0), run.window_influence(0, 3, at=6))
    with pytest.raises(ConfigError, match=re.escape("checkpoint=3.7")):
        dit.compute(run.path, checkpoints=[3.7], overwrite=True, progress=False)
    with pytest.raises(ConfigError, match="queries must be a sequence"):
        dit.compute(run.path, queries=None, overwrite=True, progress=False)
    with pytest.raises(ConfigError, match=r"class 5 does not exist; the model has 3 outputs"):
        dit.compute(run.path, queries=["test_logit=0:5"], overwrite=True, progress=False)
    # the failed calls above left the computed influence alone
    assert dit.load_run(run.path).checkpoints.tolist() == [3, 6]


def test_compute_refuses_to_overwrite_different_arguments(tmp_path):
    path, _ = record_tiny(tmp_path / "run", epochs=2)
    first = dit.compute(path, progress=False)
    before = np.array(first.contributions())
    again = dit.compute(path, progress=False)  # same arguments: reuses what is there
    assert again.influence_manifest["created"] == first.influence_manifest["created"]
    with pytest.raises(RunExistsError, match=r"already has influence computed with checkpoints \[3, 6\].*you asked for checkpoints \[6\]"):
        dit.compute(path, checkpoints="final", progress=False)
    # an explicit other method is another computation; "auto" accepts what is there
    with pytest.raises(RunExistsError, match=r"method 'analytic'.*method 'jvp'"):
        dit.compute(path, method="jvp", progress=False)
    assert dit.compute(path, method="analytic", progress=False).influence_manifest["created"] == first.influence_manifest["created"]
    with pytest.raises(RunExistsError, match="overwrite=True"):
        dit.compute(path, queries=["test_loss=0"], progress=False)
    np.testing.assert_array_equal(dit.load_run(path).contributions(), before)
    final = dit.compute(path, checkpoints="final", overwrite=True, progress=False)
    assert final.checkpoints.tolist() == [6]
    np.testing.assert_allclose(final.contributions()[:, :, 0], before[:, :, 1], rtol=1e-12, atol=1e-15)


def test_compute_without_self_influence_is_not_taken_for_one_with_it(tmp_path):
    path, _ = record_tiny(tmp_path / "run", epochs=2)
    plain = dit.compute(path, progress=False, self_influence=False)
    assert "grad_norm2_file" not in plain.influence_manifest
    # the default asks for the TracIn norms too: what is stored does not have them
    with pytest.raises(RunExistsError, match="self_influence=False; you asked for .*self_influence=True"):
        dit.compute(path, progress=False)
    # asking for less than what is stored reuses it
    full = dit.compute(path, progress=False, overwrite=True)
    assert dit.compute(path, progress=False, self_influence=False).influence_manifest["created"] == full.influence_manifest["created"]


def test_recomputing_influence_drops_the_stale_stored_signals(tmp_path):
    from dit_core import explore
    from dit_core.signals import INFLUENCE_SIGNALS, SIGNALS_FILE, save_signals

    path, _ = record_tiny(tmp_path / "run", epochs=3)
    run = dit.compute(path, progress=False)
    save_signals(run)
    stored = pd.read_parquet(path / SIGNALS_FILE)
    assert set(INFLUENCE_SIGNALS) <= set(stored.columns)
    # a custom column of another tool, kept across the recomputation
    stored["my_score"] = np.arange(len(stored), dtype=float)
    stored.to_parquet(path / SIGNALS_FILE)

    other = dit.compute(path, queries=["class_loss=1"], overwrite=True, progress=False)
    kept = pd.read_parquet(path / SIGNALS_FILE)
    assert not set(INFLUENCE_SIGNALS) & set(kept.columns)
    assert {"aum", "final_loss", "forgetting", "my_score"} <= set(kept.columns)
    np.testing.assert_array_equal(kept["aum"], stored["aum"])
    # what the dashboard and `dit export` rank by now comes from the new influence
    table = explore.signal_table(other, query="class_loss=1")
    np.testing.assert_allclose(table["dit_full"], -other.window_influence(0, other.n_steps, query="class_loss=1"), rtol=1e-12)
    assert not np.allclose(table["dit_full"], stored["dit_full"])


def test_signals_stored_for_another_query_are_not_used_for_this_one(tmp_path):
    from dit_core import explore
    from dit_core.signals import save_signals, stored_signals_match

    path, _ = record_tiny(tmp_path / "run", epochs=3)
    run = dit.compute(path, queries=("val_loss", "class_loss=1"), progress=False)
    save_signals(run, query="val_loss")
    run = dit.load_run(path)
    assert stored_signals_match(run, "val_loss") and not stored_signals_match(run, "class_loss=1")
    T = run.n_steps
    for q in ("val_loss", "class_loss=1"):
        table = explore.signal_table(run, query=q)
        np.testing.assert_allclose(table["dit_full"], -run.window_influence(0, T, query=q), rtol=1e-12)
    scores = explore.signal_scores(run, "dit_full", query="class_loss=1")
    np.testing.assert_allclose(scores, -run.window_influence(0, T, query="class_loss=1"), rtol=1e-12)


def test_existing_output_directory(tmp_path):
    path, _ = record_tiny(tmp_path / "run", epochs=1)
    run_id = dit.load_run(path).run_id
    model, desc = builtin("mlp", hidden=(8,))
    with pytest.raises(RunExistsError, match="exists and is not empty"):
        dit.record(model, *_data(), dit.TrainConfig(epochs=1), path, progress=False)
    # overwrite=True replaces only after success: a failing recording leaves the old run
    with pytest.raises(TrainingDivergedError):
        dit.record(builtin("logreg")[0], *_data(), dit.TrainConfig(epochs=30, batch_size=8, lr=50.0), path,
                   loss_fn=mse_loss, overwrite=True, progress=False)
    assert dit.load_run(path).run_id == run_id
    with pytest.raises(DataError):
        dit.record(model, (np.zeros((3, 5)), np.zeros(2)), _data()[1], dit.TrainConfig(epochs=1), path,
                   overwrite=True, progress=False)
    assert dit.load_run(path).run_id == run_id
    new = dit.record(model, *_data(), dit.TrainConfig(epochs=1), path, overwrite=True,
                     model_description=desc, progress=False)
    assert dit.load_run(new).run_id != run_id
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run"]
    # a diverged overwrite keeps its partial recording beside the run (named in the error), nothing else
    assert all(".partial-" in name for name in leftovers), leftovers


# ----------------------------------------------------------------------------- no pickle
def test_no_pickle_on_any_load_path():
    root = Path(dit.__file__).parent
    offenders = []
    for f in sorted(root.rglob("*.py")):
        text = f.read_text()
        for m in re.finditer(r"torch\.load|import pickle|pickle\.load|read_pickle|allow_pickle\s*=\s*True|dill|joblib", text):
            offenders.append(f"{f.name}: {m.group(0)}")
        for m in re.finditer(r"np\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "allow_pickle=False" not in call:
                offenders.append(f"{f.name}: {call}")
        for m in re.finditer(r"np\.save\(", text):
            call = text[m.start() : text.find("\n", m.start())]
            if "allow_pickle=False" not in call:
                offenders.append(f"{f.name}: {call}")
    assert not offenders, offenders
