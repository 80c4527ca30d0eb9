"""The `dit` command line, end to end on a tiny real data set (iris)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dit_core as dit
from dit_core.cli import main


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "iris"
    rc = main(
        [
            "train", "iris", "--model", "logreg", "--epochs", "4", "--batch-size", "16", "--lr", "0.2",
            "--corruption", "0.1", "--out", str(out), "--compute", "--quiet", "--dtype", "float64",
        ]
    )
    assert rc == 0
    return out


def test_train_compute_writes_a_complete_run(iris_run: Path) -> None:
    run = dit.load_run(iris_run)
    assert run.n_train == 120 and run.n_val == 30
    assert run.n_epochs == 4 and run.n_steps == 4 * 8
    assert run.checkpoints.tolist() == [8, 16, 24, 32]
    assert int(run.samples["is_corrupted"].sum()) == 12
    assert (run.samples["label"] != run.samples["original_label"]).sum() == 12
    # the full-run window influence equals the cumulative influence at the last checkpoint
    np.testing.assert_allclose(run.window_influence(0, run.n_steps), run.influence_at(), rtol=1e-12)


USER_MODULE = """
import torch


def make_net(width=6, n_in=4, n_out=3):
    return torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.Tanh(), torch.nn.Linear(width, n_out))
"""


def test_train_with_a_user_model_factory_and_the_memory_options(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "dit_cli_user_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = [
        "train", "iris", "--model", "dit_cli_user_models:make_net", "--model-kwargs", '{"width": 7}',
        "--epochs", "3", "--batch-size", "16", "--lr", "0.2", "--schedule", "cosine", "--min-lr", "0.05",
        "--trajectory", "auto", "--max-trajectory-mb", "0.001", "--replay-memory-mb", str(4 * 59 * 8 / 2**20),
        "--dtype", "float64", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    assert f"recorded {out}" in capsys.readouterr().out
    run = dit.load_run(out)
    m = run.manifest
    assert m["model"] == {"kind": "factory", "factory": "dit_cli_user_models:make_net", "kwargs": {"width": 7}}
    assert m["n_params"] == 4 * 7 + 7 + 7 * 3 + 3 == 59
    cfg = run.config
    assert (cfg.min_lr, cfg.max_trajectory_mb, cfg.replay_memory_mb) == (0.05, 0.001, 4 * 59 * 8 / 2**20)
    T = run.n_steps
    assert T == 3 * 8
    # the trajectory (25 rows x 59 float64 = 11.5 KiB) exceeds 0.001 MiB: checkpoint mode, 4 replayed steps fit
    assert m["trajectory"]["mode"] == "checkpoint" and m["trajectory"]["every"] == 4
    assert np.load(out / "trajectory" / "steps.npy", allow_pickle=False).tolist() == [0, 4, 8, 12, 16, 20, 24]
    lrs = run.learning_rates
    expected = 0.05 + 0.5 * (0.2 - 0.05) * (1 + np.cos(np.pi * np.arange(T) / T))
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lrs[-1] > 0.05 and lrs[-1] < 0.051
    # compute in a fresh process: the factory is imported again from PYTHONPATH
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "dit_core.cli", "compute", str(out), "--quiet"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = dit.load_run(out)
    assert run.checkpoints.tolist() == [8, 16, 24]
    im = run.influence_manifest
    assert im["replay_cache_peak_bytes"] == 4 * 59 * 8 and im["replay_max_relative_deviation"] < 1e-12
    w = run.window_influence(0, T)
    assert np.isfinite(w).all() and np.abs(w).max() > 1e-4
    np.testing.assert_allclose(w, run.influence_at(), rtol=1e-12)
    # the same network recorded with every step stored gives the same influence
    full = tmp_path / "full"
    assert argv[-3:] == ["--out", str(out), "--quiet"]
    full_argv = [("full" if a == "auto" else a) for a in argv[:-3]] + ["--out", str(full), "--quiet", "--compute"]
    assert main(full_argv) == 0
    ref = dit.load_run(full)
    assert ref.manifest["trajectory"]["mode"] == "full"
    np.testing.assert_allclose(run.contributions(), ref.contributions(), rtol=0, atol=1e-12 * np.abs(ref.contributions()).max())


def test_info_json(iris_run: Path, capsys) -> None:
    assert main(["info", str(iris_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 120
    assert info["optimizer"]["name"] == "sgd"
    assert info["influence"]["queries"] == ["val_loss"]
    assert info["n_corrupted"] == 12


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_export_top_k(iris_run: Path, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"flags{suffix}"
    assert main(["export", str(iris_run), "--out", str(out), "--top-k", "7", "--window", "full"]) == 0
    df = {".csv": pd.read_csv, ".json": lambda p: pd.read_json(p, orient="records"), ".parquet": pd.read_parquet}[suffix](out)
    assert list(df.columns) == ["sample_id", "label", "score", "rank", "window_start", "window_stop", "signal", "run_id"]
    assert len(df) == 7 and df["rank"].tolist() == list(range(1, 8))
    run = dit.load_run(iris_run)
    harm = -run.window_influence(0, run.n_steps)
    np.testing.assert_array_equal(df["sample_id"].to_numpy(), np.argsort(-harm, kind="stable")[:7])
    np.testing.assert_allclose(df["score"].to_numpy(), np.sort(harm)[::-1][:7])
    assert set(df["run_id"]) == {run.run_id}


def test_export_threshold_and_window(iris_run: Path, tmp_path: Path) -> None:
    run = dit.load_run(iris_run)
    out = tmp_path / "flags.csv"
    assert main(["export", str(iris_run), "--out", str(out), "--threshold", "0", "--window", "8:24"]) == 0
    df = pd.read_csv(out)
    harm = -run.window_influence(8, 24)
    assert len(df) == int((harm > 0).sum())
    assert (df["window_start"] == 8).all() and (df["window_stop"] == 24).all()


@pytest.mark.parametrize("window, expected", [("convergence", (24, 32)), ("last-epoch", (24, 32)), ("full", (0, 32))])
def test_export_named_windows_are_whole_epochs(iris_run: Path, tmp_path: Path, window, expected) -> None:
    from dit_core import explore

    run = dit.load_run(iris_run)
    assert (run.n_epochs, run.steps_per_epoch) == (4, 8)
    if window == "convergence":  # the dashboard's convergence window (round(0.8 * T) would be 26)
        assert explore.convergence_window(run) == expected
    out = tmp_path / "flags.csv"
    assert main(["export", str(iris_run), "--out", str(out), "--window", window, "--all"]) == 0
    df = pd.read_csv(out)
    assert (df["window_start"] == expected[0]).all() and (df["window_stop"] == expected[1]).all()
    harm = -run.window_influence(*expected)
    np.testing.assert_allclose(df.sort_values("sample_id")["score"].to_numpy(), harm, rtol=1e-12)


def _read(path: Path) -> pd.DataFrame:
    return {".csv": pd.read_csv, ".json": lambda p: pd.read_json(p, orient="records"), ".parquet": pd.read_parquet}[path.suffix](path)


def test_export_default_signal_rows(iris_run: Path, tmp_path: Path, capsys) -> None:
    from dit_core.signals import DEFAULT_FLAG_SIGNAL

    assert DEFAULT_FLAG_SIGNAL == "aum"
    run = dit.load_run(iris_run)
    assert not (iris_run / "signals.parquet").exists()  # computed on the fly
    out = tmp_path / "flags.json"
    assert main(["export", str(iris_run), "--out", str(out), "--top-k", "6"]) == 0
    assert "signal aum" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    # AUM computed here from the recorded margins: score = -mean margin over epochs, ties by lower id
    aum = -np.asarray(run.sample_margin, dtype=np.float64).mean(axis=1)
    top = np.lexsort((np.arange(run.n_train), -aum))[:6]
    labels = run.samples["label"].to_numpy()
    assert [r["sample_id"] for r in rows] == top.tolist()
    for rank, (r, j) in enumerate(zip(rows, top), 1):
        assert list(r) == ["sample_id", "label", "score", "rank", "window_start", "window_stop", "signal", "run_id"]
        assert r["rank"] == rank and r["label"] == int(labels[j])
        assert r["score"] == pytest.approx(aum[j], rel=1e-12)
        assert r["window_start"] is None and r["window_stop"] is None  # aum has no window
        assert r["signal"] == "aum" and r["run_id"] == run.run_id
    assert rows[0]["score"] > rows[-1]["score"]


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_export_is_the_dashboards_export(iris_run: Path, tmp_path: Path, suffix: str) -> None:
    """Same table and bytes as the Flags page's download for the same signal and flags."""
    from dit_core import explore

    run = dit.load_run(iris_run)
    out = tmp_path / f"flags{suffix}"
    assert main(["export", str(iris_run), "--out", str(out), "--signal", "dit_convergence", "--top-k", "9"]) == 0
    scores = explore.signal_scores(run, "dit_convergence")
    flags = explore.select_flags(scores, k=9)
    window = explore.signal_window(run, "dit_convergence", explore.convergence_window(run))
    assert window == (24, 32)
    table = explore.flag_table(run, flags, scores, signal="dit_convergence", window=window)
    assert out.read_bytes() == explore.export_bytes(table, suffix[1:])
    df = _read(out)
    assert len(df) == 9 and df["rank"].tolist() == list(range(1, 10))
    assert (df["window_start"] == 24).all() and (df["window_stop"] == 32).all()
    np.testing.assert_allclose(df["score"], np.sort(-run.window_influence(24, 32))[::-1][:9], rtol=1e-12)


def test_export_reads_signals_parquet_when_present(iris_run: Path, tmp_path: Path) -> None:
    import shutil

    from dit_core.signals import save_signals

    copy = tmp_path / "copy"
    shutil.copytree(iris_run, copy)
    path = save_signals(dit.load_run(copy))
    stored = pd.read_parquet(path)
    stored["forgetting"] = np.arange(len(stored), dtype=np.float64) % 7  # only the file says this
    stored.to_parquet(path, index=False)
    out = tmp_path / "flags.csv"
    assert main(["export", str(copy), "--out", str(out), "--signal", "forgetting", "--all"]) == 0
    df = _read(out)
    assert len(df) == 120 and df["flagged"].sum() == 12  # top 10% by default
    assert df["score"].tolist() == sorted(df["score"], reverse=True)
    assert (df["score"] == df["sample_id"] % 7).all()
    assert df.loc[df["flagged"], "sample_id"].tolist() == [6, 13, 20, 27, 34, 41, 48, 55, 62, 69, 76, 83]
    assert df["window_start"].isna().all() and (df["signal"] == "forgetting").all()


def test_export_is_atomic(iris_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import dit_core._io as io_mod

    out = tmp_path / "flags.csv"
    out.write_text("previous export\n")

    def broken_replace(src, dst):
        raise OSError(28, "disk full")

    monkeypatch.setattr(io_mod.os, "replace", broken_replace)
    assert main(["export", str(iris_run), "--out", str(out), "--top-k", "3"]) == 2  # one line, no traceback
    assert capsys.readouterr().err.strip() == "dit export: error: disk full"
    assert out.read_text() == "previous export\n"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["flags.csv"]  # and no temporary file is left
    monkeypatch.undo()
    assert main(["export", str(iris_run), "--out", str(out), "--top-k", "3"]) == 0
    assert len(pd.read_csv(out)) == 3


def test_compute_method_jvp_gives_the_same_influence(iris_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(iris_run, copy)
    assert main(["compute", str(copy), "--method", "jvp", "--overwrite", "--quiet"]) == 0
    run, ref = dit.load_run(copy), dit.load_run(iris_run)
    assert run.influence_manifest["method"] == "jvp" and ref.influence_manifest["method"] == "analytic"
    np.testing.assert_allclose(run.contributions("val_loss"), ref.contributions("val_loss"), rtol=1e-9, atol=1e-12)


def test_strip_keeps_influence_and_initial_parameters(tmp_path: Path, iris_run: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(iris_run, copy)
    ref = dit.load_run(copy)
    before, theta0 = ref.window_influence(0, 16), np.array(ref.initial_params)
    contrib = np.array(ref.contributions())
    assert main(["strip", str(copy)]) == 0
    assert "initial parameters kept" in capsys.readouterr().out
    run = dit.load_run(copy)
    assert not run.has_trajectory and not (copy / "trajectory").exists()
    np.testing.assert_array_equal(run.window_influence(0, 16), before)
    np.testing.assert_array_equal(np.load(copy / "initial_params.npy", allow_pickle=False), theta0)
    # recomputing replays the run from θ0 and gives the same influence
    assert main(["compute", str(copy), "--overwrite", "--quiet"]) == 0
    np.testing.assert_allclose(dit.load_run(copy).contributions(), contrib, rtol=0, atol=1e-13 * np.abs(contrib).max())
    (copy / "initial_params.npy").unlink()
    assert main(["compute", str(copy), "--checkpoints", "final", "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no stored trajectory" in err and "initial_params.npy" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "mnist_please", "--out", "{tmp}/x"], "unknown data set 'mnist_please'"),
        (["train", "iris", "--model", "resnet", "--out", "{tmp}/x"], "unknown model 'resnet'"),
        (["train", "iris", "--model", "cnn", "--out", "{tmp}/x"], "cnn"),
        (["train", "iris", "--lr", "-1", "--out", "{tmp}/x"], "TrainConfig.lr=-1.0"),
        (["train", "iris", "--model", "nosuchmodule_xyz:make", "--out", "{tmp}/x"], "cannot import module 'nosuchmodule_xyz'"),
        (["info", "{tmp}/does_not_exist"], "does not exist"),
        (["compute", "{tmp}", "--quiet"], "no manifest.json"),
        (["export", "{run}", "--out", "{tmp}/f.xlsx"], "suffix must be .csv, .json or .parquet"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--window", "abc"], "--window 'abc'"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--window", "20:10"], "window [20, 10)"),
        (["compute", "{run}", "--checkpoints", "final", "--quiet"], "already has influence"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--signal", "bogus"], "--signal 'bogus' is not available for this run; use one of dit_window, dit_full"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--signal", "aum", "--window", "full"], "cannot be combined with --signal aum"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--top-k", "0"], "--top-k must be >= 1"),
        (["export", "{run}", "--out", "{tmp}/no_such_dir/f.csv"], "the folder {tmp}/no_such_dir does not exist"),
        (["export", "{run}", "--out", "{tmp}/dir.csv"], "it is a directory"),
        (["export", "{run}", "--out", "{tmp}/f.csv", "--threshold", "nan"], "threshold=nan must be a finite number"),
        (["train", "iris", "--out", "{run}/manifest.json/x"], "manifest.json is a file, not a folder"),
        (["train", "iris", "--model-kwargs", '{"bogus": 1}', "--out", "{tmp}/x"], "unknown model option(s) bogus"),
        (["train", "iris", "--model-kwargs", "{bad", "--out", "{tmp}/x"], "--model-kwargs is not valid JSON"),
        (["compute", "{run}", "--query", "test_logit=0:7", "--overwrite", "--quiet"], "class 7 does not exist; the model has 3 outputs"),
    ],
)
def test_errors_are_one_clear_line(argv, message, tmp_path: Path, iris_run: Path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(iris_run)) for a in argv]
    (tmp_path / "dir.csv").mkdir()  # a folder where a file is asked for
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_export_and_signals_default_to_the_runs_own_query(iris_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "q"
    shutil.copytree(iris_run, copy)
    assert main(["compute", str(copy), "--query", "class_loss=1", "--overwrite", "--quiet"]) == 0
    capsys.readouterr()
    # no val_loss on this run: the DIT signals and the training-dynamics ones rank without asking for it
    out = tmp_path / "f.csv"
    assert main(["export", str(copy), "--signal", "aum", "--top-k", "3", "--out", str(out)]) == 0
    assert main(["export", str(copy), "--signal", "dit_full", "--top-k", "3", "--out", str(out)]) == 0
    run = dit.load_run(copy)
    top = np.argsort(run.window_influence(0, run.n_steps, query="class_loss=1"), kind="stable")[:3]
    assert sorted(pd.read_csv(out)["sample_id"]) == sorted(top.tolist())
    assert main(["signals", str(copy), "--no-save"]) == 0


def test_builtin_model_options_from_model_kwargs(tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["train", "iris", "--model", "mlp", "--model-kwargs", '{"hidden": [5, 4], "activation": "relu"}',
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    m = dit.load_run(out).manifest
    assert m["model"]["hidden"] == [5, 4] and m["model"]["activation"] == "relu"
    assert m["n_params"] == (4 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3)


def test_output_cut_off_by_the_reader_is_not_an_error(iris_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    # `dit info RUN --json | head -1`: the reader stops early; no BrokenPipeError traceback
    proc = subprocess.run(
        f"{sys.executable} -m dit_core.cli info {iris_run} --json | head -1", shell=True, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "{" and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_train_refuses_to_overwrite(iris_run: Path, capsys) -> None:
    assert main(["train", "iris", "--out", str(iris_run), "--epochs", "1", "--quiet"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert dit.load_run(iris_run).n_epochs == 4  # untouched


def test_console_script_entry_point() -> None:
    out = subprocess.run([sys.executable, "-m", "dit_core.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "compute", "info", "export", "strip"):
        assert command in out.stdout
