"""Tests of dit_core.signals: every signal against a straightforward independent computation,
directions on a run with 30% corrupted labels, the signals.parquet round trip, detection
metrics on hand-made inputs, the ``dit signals`` command and the quick benchmark."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import dit_core as dit
from dit_core._io import save_parquet
from dit_core.cli import main as cli_main
from dit_core.data import load_dataset
from dit_core.errors import ConfigError, DataError, InfluenceNotComputedError
from dit_core.models import build_model, describe_model
from dit_core.signals import (
    DEFAULT_FLAG_SIGNAL,
    SIGNALS,
    compute_signals,
    detection_metrics,
    save_signals,
    signal_windows,
)

EPOCHS = 10
RTOL = 1e-9


@pytest.fixture(scope="session")
def corrupted_run_dir(tmp_path_factory):
    """breast_cancer, 30% flipped labels, logistic regression, float64, cosine lr, epoch checkpoints."""
    ds = load_dataset("breast_cancer", corruption_rate=0.3, corruption_seed=1, split_seed=1)
    desc = describe_model("logreg", ds.input_shape, ds.n_classes, seed=1)
    cfg = dit.TrainConfig(epochs=EPOCHS, batch_size=32, lr=0.1, schedule="cosine", min_lr=0.01, seed=1, dtype="float64", trajectory="full")
    path = dit.record(
        build_model(**desc), (ds.X_train, ds.y_train), (ds.X_val, ds.y_val), cfg, tmp_path_factory.mktemp("sig") / "run",
        model_description={"kind": "builtin", **desc}, dataset_description=ds.describe(),
        original_labels=ds.original_y_train, is_corrupted=ds.is_corrupted, progress=False,
    )
    dit.compute(path, checkpoints="epochs", progress=False)
    return path


@pytest.fixture(scope="session")
def run(corrupted_run_dir):
    return dit.load_run(corrupted_run_dir)


@pytest.fixture(scope="session")
def signals(run):
    return compute_signals(run)


@pytest.fixture
def run_copy(corrupted_run_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(corrupted_run_dir, dst)
    return dst


def _model_at(run, step):
    """The recorded logreg with the parameters stored for ``step`` (independently of dit_core's engine)."""
    model = build_model(**{k: v for k, v in run.manifest["model"].items() if k != "kind"}).double()
    rows = list(np.load(run.path / "trajectory" / "steps.npy"))
    params = np.load(run.path / "trajectory" / "params.npy")[rows.index(step)]
    torch.nn.utils.vector_to_parameters(torch.as_tensor(params, dtype=torch.float64), model.parameters())
    return model


# ----------------------------------------------------------------------------- table shape
def test_table_has_every_signal_with_a_direction(signals, run):
    assert list(signals.columns) == ["sample_id", *SIGNALS]
    assert len(signals) == run.n_train
    assert (signals["sample_id"].to_numpy() == np.arange(run.n_train)).all()
    assert DEFAULT_FLAG_SIGNAL in SIGNALS
    for name, text in SIGNALS.items():
        assert "higher = more suspicious" in text, name
        assert np.isfinite(signals[name]).all(), name


def test_windows_are_whole_epochs(run):
    w = signal_windows(run)
    ends = run.epoch_end_steps
    assert w["full"] == {"start": 0, "stop": run.n_steps, "epochs": [0, EPOCHS - 1], "accrued_start": 0, "accrued_stop": run.n_steps}
    assert (w["early"]["start"], w["early"]["stop"], w["early"]["epochs"]) == (0, ends[1], [0, 1])  # 20% of 10 epochs
    assert (w["convergence"]["start"], w["convergence"]["stop"]) == (ends[EPOCHS - 3], run.n_steps)
    assert (w["last_epoch"]["start"], w["last_epoch"]["epochs"]) == (ends[EPOCHS - 2], [EPOCHS - 1, EPOCHS - 1])
    assert signal_windows(run, early_fraction=0.25)["early"]["epochs"] == [0, 2]  # ceil(2.5)
    for bad in (0, 1.5, -0.2, "x"):
        with pytest.raises(ConfigError, match="early_fraction"):
            signal_windows(run, early_fraction=bad)


# ----------------------------------------------------------------------------- values vs by-hand computations
def test_dit_windows_equal_loops_over_the_contribution_tensor(run, signals):
    C = np.asarray(run.contributions(), dtype=np.float64)  # (n, E, K); stored as float32
    s = run.sample_step
    cps = list(run.checkpoints)
    ends = run.epoch_end_steps
    K = len(cps)

    def window(a, b):  # removal during steps [a, b), measured at the last checkpoint
        return np.array([sum(C[j, e, K - 1] for e in range(run.n_epochs) if a <= s[j, e] < b) for j in range(run.n_train)])

    def cumulative(c):  # I_j(c): removal before step c, measured at c
        k = cps.index(c)
        return np.array([sum(C[j, e, k] for e in range(run.n_epochs) if s[j, e] < c) for j in range(run.n_train)])

    T = run.n_steps
    expect = {
        "dit_full": -window(0, T),
        "dit_early": -window(0, ends[1]),
        "dit_convergence": -window(ends[EPOCHS - 3], T),
        "dit_last_epoch": -window(ends[EPOCHS - 2], T),
        "dit_early_accrued": -cumulative(ends[1]),
        "dit_convergence_accrued": -(cumulative(T) - cumulative(ends[EPOCHS - 3])),
        "dit_last_epoch_accrued": -(cumulative(T) - cumulative(ends[EPOCHS - 2])),
    }
    for name, values in expect.items():
        np.testing.assert_allclose(signals[name], values, rtol=RTOL, atol=1e-15, err_msg=name)
    # the full run's harm is the sum of its epochs' harms, and the windows differ from it
    assert not np.allclose(signals["dit_full"], signals["dit_convergence"])


def test_final_loss_recomputed_from_the_trajectory(run, signals):
    ids = np.arange(0, run.n_train, 7)
    for j in ids:
        step = int(run.sample_step[j, -1])
        model = _model_at(run, step)
        x = torch.as_tensor(np.array(run.X_train[j : j + 1]), dtype=torch.float64)
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model(x), torch.as_tensor(run.y_train[j : j + 1])).item()
        assert signals["final_loss"][j] == pytest.approx(loss, rel=1e-6, abs=1e-9)  # stored as float32


def test_aum_and_forgetting_by_hand(run, signals):
    m = np.asarray(run.sample_margin, dtype=np.float64)
    n, E = m.shape
    for j in range(n):
        assert signals["aum"][j] == pytest.approx(-sum(m[j]) / E, rel=1e-12, abs=1e-12)
        events, ever_correct = 0, m[j, 0] > 0
        for e in range(1, E):
            if m[j, e - 1] > 0 and not m[j, e] > 0:
                events += 1
            ever_correct = ever_correct or m[j, e] > 0
        assert signals["forgetting"][j] == (events if ever_correct else E), j
    # the run has both forgotten and never-learned samples, so both branches are exercised
    assert (signals["forgetting"].between(1, E - 1)).any() and (signals["forgetting"] == E).any()


def test_tracin_by_explicit_per_sample_gradients(run, signals):
    cps = [int(c) for c in run.checkpoints]
    lrs = run.learning_rates
    assert len(set(np.round(lrs[np.array(cps) - 1], 12))) > 1  # a schedule: the lr weights matter
    ids = np.arange(0, run.n_train, 9)
    expect = np.zeros(len(ids))
    for c in cps:
        model = _model_at(run, c)
        for i, j in enumerate(ids):
            model.zero_grad()
            x = torch.as_tensor(np.array(run.X_train[j : j + 1]), dtype=torch.float64)
            torch.nn.functional.cross_entropy(model(x), torch.as_tensor(run.y_train[j : j + 1])).backward()
            expect[i] += lrs[c - 1] * sum(float((p.grad**2).sum()) for p in model.parameters())
    np.testing.assert_allclose(signals["tracin_self"].to_numpy()[ids], expect, rtol=1e-6)


def test_dit_aum_is_the_mean_of_two_percentile_ranks(signals):
    n = len(signals)

    def pct(x):
        order = np.argsort(np.asarray(x), kind="stable")
        r = np.empty(n)
        r[order] = np.arange(1, n + 1)
        return r / n

    assert signals["dit_convergence"].nunique() == n and signals["aum"].nunique() == n  # no ties here
    np.testing.assert_allclose(signals["dit_aum"], (pct(signals["dit_convergence"]) + pct(signals["aum"])) / 2, rtol=1e-12)


# ----------------------------------------------------------------------------- directions
@pytest.mark.parametrize(
    "name",
    ["dit_full", "dit_convergence", "dit_last_epoch", "dit_early_accrued", "final_loss", "aum", "forgetting", "tracin_self", "dit_aum"],
)
def test_corrupted_samples_score_higher(run, signals, name):
    corrupted = run.samples["is_corrupted"].to_numpy(bool)
    assert 0.25 < corrupted.mean() < 0.35
    values = signals[name].to_numpy()
    assert values[corrupted].mean() > values[~corrupted].mean()
    assert detection_metrics(values, corrupted)["auroc"] > 0.7


# ----------------------------------------------------------------------------- other checkpoints, missing pieces
def test_accrued_windows_snap_to_checkpoints_and_tracin_needs_grad_norms(run_copy, signals):
    r = dit.compute(run_copy, checkpoints="final", self_influence=False, overwrite=True, progress=False)
    w = signal_windows(r)
    assert w["convergence"]["accrued_start"] == 0 and w["early"]["accrued_stop"] == r.n_steps
    df = compute_signals(r)
    np.testing.assert_allclose(df["dit_early_accrued"], df["dit_full"], rtol=1e-12)  # snapped out to [0, T)
    # windowed influence at the end of training needs only the final checkpoint
    np.testing.assert_allclose(df["dit_convergence"], signals["dit_convergence"], rtol=1e-9, atol=1e-15)
    assert df["tracin_self"].isna().all()
    assert np.isfinite(df["dit_aum"]).all()


def test_errors_name_the_problem(run_copy, run):
    shutil.rmtree(run_copy / "influence")
    with pytest.raises(InfluenceNotComputedError, match="dit compute"):
        compute_signals(dit.load_run(run_copy))
    with pytest.raises(InfluenceNotComputedError, match="class_loss=1"):
        compute_signals(run, query="class_loss=1")
    with pytest.raises(ConfigError, match="needs a Run"):
        compute_signals(str(run.path))


# ----------------------------------------------------------------------------- save round trip
def test_save_signals_round_trip_keeps_other_columns(run_copy):
    r = dit.load_run(run_copy)
    save_parquet(run_copy / "signals.parquet", pd.DataFrame({"sample_id": np.arange(r.n_train), "cluster": np.arange(r.n_train) % 3, "aum": 0.0}))
    assert "dit_full" not in r.samples.columns
    path = save_signals(r)
    assert path == run_copy / "signals.parquet"
    expect = compute_signals(r)
    for df in (r.samples, dit.load_run(run_copy).samples):  # the same object refreshed, and a fresh load
        assert {"label", "is_corrupted", "cluster", *SIGNALS} <= set(df.columns)
        assert (df["cluster"].to_numpy() == np.arange(r.n_train) % 3).all()
        for name in SIGNALS:
            np.testing.assert_array_equal(df[name].to_numpy(), expect[name].to_numpy(), err_msg=name)
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- detection metrics
def test_detection_metrics_on_hand_made_inputs():
    c = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    perfect = detection_metrics(np.arange(10)[::-1], c)
    assert perfect == {"auroc": 1.0, "precision_at_k": 1.0, "recall_top10": 0.5, "recall_top20": 1.0, "n": 10, "n_corrupted": 2}
    worst = detection_metrics(np.arange(10), c)
    assert worst["auroc"] == 0.0 and worst["precision_at_k"] == 0.0 and worst["recall_top20"] == 0.0
    # corrupted at scores 9 and 5; clean 8, 7, 6, 4, 3, 2, 1, 0 -> pairs won: 8 + 5 of 16
    s = np.array([9, 5, 8, 7, 6, 4, 3, 2, 1, 0], dtype=float)
    m = detection_metrics(s, c)
    assert m["auroc"] == pytest.approx(13 / 16)
    assert m["precision_at_k"] == 0.5 and m["recall_top10"] == 0.5 and m["recall_top20"] == 0.5
    # ties: all equal -> AUROC 1/2 and the expected hit rate of a random pick
    flat = detection_metrics(np.ones(10), c)
    assert flat["auroc"] == 0.5 and flat["precision_at_k"] == pytest.approx(0.2) and flat["recall_top20"] == pytest.approx(0.2)
    # a tie across the cut-off: top-2 of [5, 3, 3, 3, ...]: one sure hit, one of three tied (one corrupted)
    t = np.array([5, 3, 3, 3, 0, 0, 0, 0, 0, 0], dtype=float)
    cc = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    assert detection_metrics(t, cc)["precision_at_k"] == pytest.approx((1 + 1 / 3) / 2)
    # 0/1 labels are accepted; top 10% / 20% of 25 samples are ceil(2.5)=3 and 5
    m25 = detection_metrics(np.arange(25)[::-1], (np.arange(25) < 5).astype(int))
    assert m25["recall_top10"] == pytest.approx(3 / 5) and m25["recall_top20"] == 1.0


def test_detection_metrics_bad_input():
    with pytest.raises(DataError, match="scores has 3 entries but is_corrupted has 2"):
        detection_metrics([1, 2, 3], [True, False])
    with pytest.raises(DataError, match="NaN"):
        detection_metrics([1, np.nan], [True, False])
    with pytest.raises(DataError, match="both corrupted and clean"):
        detection_metrics([1, 2], [False, False])
    with pytest.raises(DataError, match="boolean"):
        detection_metrics([1, 2], [0, 2])


# ----------------------------------------------------------------------------- command line
def test_cli_signals_writes_and_prints_top_suspects(run_copy, capsys):
    assert cli_main(["signals", str(run_copy), "--top", "4", "--signal", "aum"]) == 0
    out = capsys.readouterr().out
    saved = pd.read_parquet(run_copy / "signals.parquet")
    top = saved.sort_values("aum", ascending=False).head(4)["sample_id"].tolist()
    lines = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()][:4]
    assert [int(ln[1]) for ln in lines] == top
    assert "AUROC" in out and "dit_convergence" in out
    assert cli_main(["signals", str(run_copy), "--top", "0"]) == 2


# ----------------------------------------------------------------------------- benchmark
def test_quick_benchmark_runs_and_prints_the_table(repo_root, tmp_path):
    pytest.importorskip("cleanlab")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "bench_detection.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| signal | AUROC | P@k | R@10% | R@20% |" in proc.stdout
    for name in [*SIGNALS, "cleanlab", "cleanlab_find_label_issues"]:
        assert f"| {name} |" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick" and doc["hyperparameters"]
    for s, metrics in doc["overall"].items():
        assert 0.0 <= metrics["auroc"]["mean"] <= 1.0, s
    # 20% flips on breast cancer are easy to find: the main signals and both cleanlab rows clearly beat chance
    for s in ("aum", "dit_convergence", "cleanlab", "cleanlab_find_label_issues"):
        assert doc["overall"][s]["auroc"]["mean"] > 0.85, (s, doc["overall"][s]["auroc"])
    assert 0 < doc["cleanlab_flagged"]["n_flagged"] and 0.5 < doc["cleanlab_flagged"]["precision"] <= 1.0
    assert [t["pass"] for t in doc["targets"]] and "Targets (averages over settings):" in proc.stdout
    assert all(math.isfinite(r["val_accuracy"]) and r["val_accuracy"] > 0.8 for r in doc["runs"])


def test_dit_core_never_imports_cleanlab(repo_root):
    code = "import sys, dit_core, dit_core.signals, dit_core.cli; print('cleanlab' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
