"""Exact counterfactual replay (dit_core.replay) and the validation report (dit_core.validate).

Tiny seeded float64 runs on a slice of digits; the oracle for replay is an independent
training loop with ``torch.optim`` on the recorded minibatches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dit_core as dit
from dit_core._modelspec import build_from_description
from dit_core.cli import main as cli_main
from dit_core.data import load_dataset
from dit_core.errors import ConfigError, InfluenceNotComputedError
from dit_core.models import build_model, describe_model
from dit_core.replay import replay
from dit_core.validate import DEFAULT_WINDOWS, resolve_window, stratified_choice, validate

N_TRAIN = 160
FIDELITY = 0.99  # Pearson between estimate and exact replay on these float64 runs


def _record(path, kind="logreg", n=N_TRAIN, epochs=4, compute=True, **cfg):
    ds = load_dataset("digits", corruption_rate=0.2, corruption_seed=0)
    kw = {"hidden": (16,)} if kind == "mlp" else {}
    desc = describe_model(kind, ds.input_shape, ds.n_classes, seed=0, **kw)
    config = dit.TrainConfig(**{"epochs": epochs, "batch_size": 16, "lr": 0.1, "dtype": "float64", "seed": 0, **cfg})
    dit.record(
        build_model(**desc),
        (ds.X_train[:n], ds.y_train[:n]),
        (ds.X_val[:100], ds.y_val[:100]),
        config,
        path,
        model_description={"kind": "builtin", **desc},
        dataset_description=ds.describe(),
        original_labels=ds.original_y_train[:n],
        is_corrupted=ds.is_corrupted[:n],
        progress=False,
    )
    if compute:
        dit.compute(path, checkpoints="epochs", progress=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    return {kind: _record(root / kind, kind) for kind in ("logreg", "mlp")}


@pytest.fixture(scope="module")
def reports(runs, tmp_path_factory):
    return {kind: validate(path, n_samples=12, seed=0, progress=False) for kind, path in runs.items()}


# ----------------------------------------------------------------------------- replay
def _torch_reference(run, sample, start, stop):
    """Val loss at every epoch end after training with torch.optim.SGD, sample dropped in [start, stop)."""
    model = build_from_description(run.manifest["model"]).to(torch.float64)
    theta0 = np.load(run.path / "trajectory" / "params.npy", mmap_mode="r")[0]
    with torch.no_grad():
        offset = 0
        for p in model.parameters():
            p.copy_(torch.as_tensor(np.array(theta0[offset : offset + p.numel()])).view_as(p))
            offset += p.numel()
    cfg = run.config
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    X = torch.as_tensor(np.array(run.X_train), dtype=torch.float64)
    y = torch.as_tensor(np.array(run.y_train), dtype=torch.int64)
    Xv = torch.as_tensor(np.array(run.X_val), dtype=torch.float64)
    yv = torch.as_tensor(np.array(run.y_val), dtype=torch.int64)
    out = []
    ends = set(run.epoch_end_steps.tolist())
    for t in range(run.n_steps):
        ids = torch.as_tensor(np.array(run.batch(t)))
        w = torch.ones(len(ids), dtype=torch.float64)
        if start <= t < stop:
            w[ids == sample] = 0.0
        losses = torch.nn.functional.cross_entropy(model(X[ids]), y[ids], reduction="none")
        for g in opt.param_groups:
            g["lr"] = float(run.learning_rates[t])
        opt.zero_grad()
        ((losses * w).sum() / len(ids)).backward()
        opt.step()
        if t + 1 in ends:
            with torch.no_grad():
                out.append(float(torch.nn.functional.cross_entropy(model(Xv), yv)))
    return np.array(out)


@pytest.mark.parametrize("window", [(0, None), (17, 33)])
def test_replay_matches_an_independent_torch_optim_loop(runs, window):
    run = dit.load_run(runs["logreg"])
    start, stop = window[0], window[1] or run.n_steps
    ids = [3, 57, 120]
    r = replay(run, ids, start, stop, progress=False, chunk=2)
    base = _torch_reference(run, -1, 0, 0)
    np.testing.assert_allclose(r.baseline[:, 0], base, rtol=0, atol=1e-12)
    for i, j in enumerate(ids):
        ref = _torch_reference(run, j, start, stop) - base
        np.testing.assert_allclose(r.influence[i, :, 0], ref, rtol=1e-7, atol=1e-13)
        assert np.abs(ref).max() > 1e-6  # the removal really changes the run


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"trajectory": "checkpoint", "checkpoint_every": 7},
        {"momentum": 0.9, "nesterov": True, "lr": 0.05},
        {"optimizer": "adam", "lr": 0.01},
        {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.01, "trajectory": "checkpoint", "checkpoint_every": 5},
    ],
    ids=["sgd", "sgd-checkpoint", "nesterov", "adam", "adamw-checkpoint"],
)
def test_unmodified_replay_reproduces_the_recording(tmp_path, cfg):
    path = _record(tmp_path / "run", "mlp", n=64, epochs=3, compute=False, **cfg)
    run = dit.load_run(path)
    T = run.n_steps
    full = replay(run, [0, 5, 9], progress=False)
    late = replay(run, [0, 5, 9], T - 5, T, progress=False)
    assert full.trajectory_deviation < 1e-12
    assert late.trajectory_deviation < 1e-12
    # the late window starts from the stored step at or before the first removal, not from 0
    assert late.replayed_steps <= T - (T - 5) + (cfg.get("checkpoint_every") or 1)
    assert late.replayed_steps < full.replayed_steps
    # removal changes nothing before the first removal, and something after it
    for r in (full, late):
        before = r.checkpoints[None, :] <= r.first_removal[:, None]
        assert np.all(r.influence[..., 0][before] == 0)
        assert np.all(np.abs(r.influence[:, -1, 0]) > 0)


def test_chunking_does_not_change_the_replay(runs):
    run = dit.load_run(runs["mlp"])
    ids = [1, 2, 40, 41, 99, 150, 159]
    a = replay(run, ids, 5, 27, chunk=64, progress=False)
    b = replay(run, ids, 5, 27, chunk=2, progress=False)
    np.testing.assert_allclose(a.influence, b.influence, rtol=1e-9, atol=1e-14)


def test_a_sample_unused_in_the_window_has_exactly_zero_influence(runs):
    run = dit.load_run(runs["logreg"])
    outside = next(j for j in range(run.n_train) if j not in set(run.batch(0).tolist()))
    inside = int(run.batch(0)[0])
    r = replay(run, [outside, inside], 0, 1, progress=False)
    assert r.first_removal.tolist() == [-1, 0]
    assert np.all(r.influence[0] == 0)
    assert np.abs(r.influence[1, -1, 0]) > 0


def test_keep_gives_the_derivative_the_sweep_estimates(runs):
    run = dit.load_run(runs["mlp"])
    eps = 1e-4
    ids = [7, 80]
    r = replay(run, ids, 0, run.n_steps, keep=1 - eps, progress=False)
    est = run.window_influence(0, run.n_steps)[ids]
    np.testing.assert_allclose(r.at() / eps, est, rtol=1e-3)


@pytest.mark.parametrize(
    "ids, match",
    [([], "empty"), ([-1], "out of range"), ([N_TRAIN], "out of range"), ([1.5], "integers"), ("12", "sequence")],
)
def test_replay_rejects_bad_sample_ids(runs, ids, match):
    with pytest.raises(ConfigError, match=match):
        replay(runs["logreg"], ids, progress=False)


def test_replay_rejects_bad_windows_and_lookups(runs):
    run = dit.load_run(runs["logreg"])
    for start, stop in [(5, 5), (-1, 3), (0, run.n_steps + 1)]:
        with pytest.raises(ConfigError, match="window"):
            replay(run, [1], start, stop, progress=False)
    r = replay(run, [1], run.n_steps - 2, run.n_steps, progress=False)
    with pytest.raises(ConfigError, match="was not replayed"):
        r.at(checkpoint=3)
    with pytest.raises(ConfigError, match="was not replayed"):
        r.at(query="class_loss=1")


# ----------------------------------------------------------------------------- validate
@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_estimates_agree_with_exact_replay(reports, kind):
    rep = reports[kind]
    assert rep.reproduces_recording and rep.trajectory_deviation < 1e-12
    for name in ("full", "last_epoch", "accrued"):
        w = rep[name]
        assert w.pearson >= FIDELITY, (kind, name, w.pearson)
        assert w.spearman >= 0.95 and w.kendall >= 0.85, (kind, name, w.spearman, w.kendall)
        assert 0.9 < w.slope < 1.1, (kind, name, w.slope)


def test_report_json_shape_and_files(reports, runs):
    rep = reports["mlp"]
    d = rep.to_dict()
    on_disk = json.loads((runs["mlp"] / "validation" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(d))
    types = {
        "format": str, "version": int, "created": str, "run_path": str, "run_id": str, "query": str, "dtype": str,
        "optimizer": str, "n_samples": int, "seed": int, "sign_convention": str, "trajectory_deviation": float,
        "tolerance": float, "reproduces_recording": bool, "replay_seconds": float, "replay_seconds_per_sample": float,
        "training_seconds": float, "out_dir": str, "windows": list,
    }  # fmt: skip
    assert set(d) == set(types)
    for key, typ in types.items():
        assert isinstance(d[key], typ), (key, type(d[key]))
    assert d["query"] == "val_loss" and d["dtype"] == "float64" and d["n_samples"] == 12
    assert [w["name"] for w in d["windows"]] == list(DEFAULT_WINDOWS)
    wtypes = {
        "name": str, "kind": str, "start": int, "stop": int, "description": str, "n": int, "pearson": float,
        "spearman": float, "kendall": float, "slope": float, "max_abs_error": float, "relative_error": float,
        "plot": str, "sample_ids": list, "estimate": list, "replay": list,
    }  # fmt: skip
    for w in d["windows"]:
        assert set(w) == set(wtypes)
        for key, typ in wtypes.items():
            assert isinstance(w[key], typ), (w["name"], key)
        assert len(w["sample_ids"]) == len(w["estimate"]) == len(w["replay"]) == w["n"] == 12
        with open(w["plot"], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = rep.table()
    for name in DEFAULT_WINDOWS:
        assert name in table
    assert "reproduces the recording: yes" in table


def test_windows_resolve_to_the_documented_steps(runs):
    run = dit.load_run(runs["logreg"])
    T, spe = run.n_steps, run.steps_per_epoch
    assert (resolve_window("full", run).start, resolve_window("full", run).stop) == (0, T)
    assert (resolve_window("first_epoch", run).start, resolve_window("first_epoch", run).stop) == (0, spe)
    assert resolve_window("middle_epoch", run).start == (run.n_epochs - 1) // 2 * spe
    assert (resolve_window("last_epoch", run).start, resolve_window("last_epoch", run).stop) == (T - spe, T)
    # whole epochs: 4 epochs -> the last one (round(0.8 * T) would be step 32, inside it)
    assert (resolve_window("convergence", run).start, resolve_window("convergence", run).stop) == (T - spe, T) == (30, 40)
    acc = resolve_window("accrued", run)
    assert acc.kind == "accrued" and acc.stop == T and acc.start == min(c for c in run.checkpoints if c >= T / 4)
    assert (resolve_window("steps=3:9", run).start, resolve_window("steps=3:9", run).stop) == (3, 9)
    assert resolve_window("epoch=2", run).start == 2 * spe


def test_validation_samples_are_stratified_over_each_windows_estimate(reports, runs):
    run = dit.load_run(runs["logreg"])
    for w in reports["logreg"].windows.values():
        est_all = run.window_influence(w.start, w.stop) if w.kind == "removal" else run.accrued_influence(w.start, w.stop)
        assert len(set(w.sample_ids.tolist())) == len(w.sample_ids)
        ranks = np.argsort(np.argsort(est_all, kind="stable"), kind="stable")[w.sample_ids]
        strata = np.array_split(np.arange(run.n_train), len(w.sample_ids))
        assert all(r in s for r, s in zip(ranks, strata))  # one per stratum, lowest to highest


def test_stratified_choice_properties():
    scores = np.random.default_rng(0).permutation(100).astype(float)
    pick = stratified_choice(scores, 10, seed=1)
    assert sorted(scores[pick] // 10) == list(range(10))  # one per decile
    np.testing.assert_array_equal(pick, stratified_choice(scores, 10, seed=1))
    others = [stratified_choice(scores, 10, seed=s) for s in range(2, 6)]
    assert any(not np.array_equal(pick, o) for o in others)
    assert sorted(stratified_choice(scores, 500)) == list(range(100))
    with pytest.raises(ConfigError, match="n=0"):
        stratified_choice(scores, 0)


@pytest.mark.parametrize(
    "windows, match",
    [
        (["bogus"], "unknown window 'bogus'"),
        (["epoch=99"], "epoch 99 does not exist"),
        (["steps=9:3"], "START < STOP"),
        (["accrued=7:13"], "checkpoint steps"),
        (["full", "full"], "duplicates"),
        ([], "empty"),
    ],
)
def test_validate_rejects_bad_windows(runs, windows, match):
    with pytest.raises(ConfigError, match=match):
        validate(runs["logreg"], windows=windows, n_samples=3, progress=False)


def test_validate_rejects_bad_sample_counts_and_runs_without_influence(runs, tmp_path):
    with pytest.raises(ConfigError, match="n_samples"):
        validate(runs["logreg"], n_samples=2, progress=False)
    bare = _record(tmp_path / "bare", "logreg", n=40, epochs=1, compute=False)
    with pytest.raises(InfluenceNotComputedError, match="dit compute"):
        validate(bare, progress=False)


def test_cli_validate_json_and_errors(runs, tmp_path, capsys):
    out = tmp_path / "val"
    code = cli_main(["validate", str(runs["logreg"]), "--samples", "5", "--windows", "full", "steps=10:20", "--json", "--out", str(out)])
    assert code == 0
    d = json.loads(capsys.readouterr().out)
    assert [w["name"] for w in d["windows"]] == ["full", "steps=10:20"]
    assert (out / "report.json").exists() and (out / "scatter_steps_10_20.png").exists()
    code = cli_main(["validate", str(runs["logreg"]), "--windows", "bogus", "--quiet"])
    assert code == 2
    assert "unknown window 'bogus'" in capsys.readouterr().err


def test_validate_a_stripped_run_replays_it_from_its_initial_parameters(runs, tmp_path):
    import shutil

    from dit_core.run import strip_trajectory

    copy = tmp_path / "stripped"
    shutil.copytree(runs["logreg"], copy)
    strip_trajectory(copy)
    run = dit.load_run(copy)
    windows = ["full", "last_epoch"]
    got = validate(run, n_samples=5, windows=windows, progress=False, out_dir=tmp_path / "a")
    ref = validate(runs["logreg"], n_samples=5, windows=windows, progress=False, out_dir=tmp_path / "b")
    # regenerated once for both replays (cached on the run object)
    assert list(run.__dict__["_regenerated_trajectories"]) == [("cpu", "float64")]
    for name in windows:
        np.testing.assert_array_equal(got[name].sample_ids, ref[name].sample_ids)
        np.testing.assert_array_equal(got[name].estimate, ref[name].estimate)
        np.testing.assert_allclose(got[name].replay, ref[name].replay, rtol=0, atol=1e-13)
        assert np.abs(ref[name].replay).max() > 1e-5
    assert got.reproduces_recording


@pytest.mark.parametrize("epochs, first", [(1, 0), (4, 3), (5, 4), (7, 5), (10, 8), (11, 8)])
def test_convergence_window_is_the_last_20_percent_of_whole_epochs(tmp_path, epochs, first):
    """The same window as the dit_convergence signal and the dashboard's Convergence button."""
    from dit_core import explore
    from dit_core.signals import signal_windows

    run = dit.load_run(_record(tmp_path / "run", "logreg", n=40, epochs=epochs, compute=False))
    spe, T = run.steps_per_epoch, run.n_steps
    assert spe == 3
    w = resolve_window("convergence", run)
    assert (w.start, w.stop) == (first * spe, T)  # epochs first..epochs-1 = max(1, ceil(0.2 * epochs)) epochs
    assert (w.start, w.stop) == explore.convergence_window(run)
    sw = signal_windows(run)["convergence"]
    assert (w.start, w.stop) == (sw["start"], sw["stop"])
    assert f"epochs {first}-{epochs - 1}" in w.description


def test_cli_fails_when_the_unmodified_replay_does_not_reproduce_the_recording(tmp_path, capsys):
    """A stored checkpoint row that no longer matches the recording makes the ground truth
    untrustworthy: the report says so and `dit validate` exits 1 instead of 0."""
    path = _record(tmp_path / "run", epochs=4)
    run = dit.load_run(path)
    spe = run.steps_per_epoch
    params_file = path / "trajectory" / "params.npy"
    params = np.load(params_file, allow_pickle=False)
    rows = np.load(path / "trajectory" / "steps.npy", allow_pickle=False).tolist()
    picks = {rows[0], rows[: len(rows) - 1][(len(rows) - 1) // 2], rows[-2]}  # the rows the opening check reads
    target = next(c for c in (spe, 3 * spe) if c not in picks)  # a checkpoint row it does not read
    params[rows.index(target)] *= 1.0 + 1e-6
    np.save(params_file, params, allow_pickle=False)
    assert cli_main(["validate", str(path), "--samples", "4", "--windows", "full", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "reproduces the recording: NO" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "not trustworthy" in err[0]
