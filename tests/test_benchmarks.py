"""Every benchmark's ``--quick`` mode runs, prints its tables and writes plausible JSON.

The benchmarks run in a subprocess exactly as a user would run them. Timing targets are
not asserted here (the machine running the tests may be loaded); what is asserted is the
JSON's shape, that every number is finite, and values that do not depend on the machine:
fidelity correlations, replay step counts, the plain training loop reproducing the
recorded run, pattern shares summing to one.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _run(repo_root, tmp_path, script: str, *args: str, timeout: int = 300) -> tuple[str, dict]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / f"{script}.py"), "--quick", *args, "--json", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_engine_quick(repo_root, tmp_path):
    stdout, doc = _run(repo_root, tmp_path, "bench_engine", "--method", "all")
    sweeps = [f"{cp}{m}{s}" for m in ("", "_reverse", "_jvp") for cp in ("final", "epochs") for s in ("", "_noself")]
    assert doc["mode"] == "quick" and doc["setup"]["reps"] == 1 and doc["setup"]["method"] == "all"
    assert set(doc["median_seconds"]) == {"record", "plain", *sweeps}
    assert all(_finite_positive(v) for v in doc["median_seconds"].values())
    assert set(doc["median_ratio_to_plain_training"]) == {"record", *sweeps}
    assert set(doc["median_ratio_to_record"]) == set(sweeps)
    for table in ("median_ratio_to_plain_training", "median_ratio_to_record"):
        assert all(_finite_positive(v) for v in doc[table].values()), table
    assert doc["targets"] == {ph: (2.0 if ph.startswith("final") else 4.0) for ph in sweeps}
    for ph in sweeps:
        assert set(doc["pass"][ph]) == {"vs_plain_training", "vs_record"}
        assert all(isinstance(v, bool) for v in doc["pass"][ph].values())
        # the pure sweep writes the same files minus grad norms; both report the loop's own time
        assert _finite_positive(doc["reps"][0][ph]["sweep_loop_seconds"])
    assert isinstance(doc["all_pass"], bool)
    # the bare torch.optim loop trains the recorded run (same θ0, batches, lrs): float32 rounding only
    (dev,) = doc["plain_final_param_deviation"]
    assert dev is not None and dev < 1e-4
    assert all(math.isfinite(v) and v >= 0 for v in doc["median_peak_mib"].values())
    assert "plain training (torch.optim loop)" in stdout and "no self-inf." in stdout
    assert stdout.count("PASS") + stdout.count("FAIL") >= 2 * len(sweeps)


def test_bench_fidelity_quick(repo_root, tmp_path):
    stdout, doc = _run(repo_root, tmp_path, "bench_fidelity")
    assert doc["mode"] == "quick"
    assert [(r["data"], r["model"]) for r in doc["rows"]] == [
        ("digits", "logreg"), ("digits", "mlp"), ("breast_cancer", "logreg"), ("breast_cancer", "mlp"), ("digits", "cnn"),
    ]
    for r in doc["rows"]:
        name = f"{r['data']}/{r['model']}"
        assert set(r["windows"]) == {"full", "last_epoch", "accrued"}
        for w, v in r["windows"].items():
            assert v["n"] == doc["setup"]["samples"]
            assert v["pearson"] > 0.9, (name, w, v)  # the quick sizes reach >= 0.997 here
            assert v["kendall"] > 0.7, (name, w, v)
            assert 0.5 < v["slope"] < 2.0, (name, w, v)
            assert isinstance(v["pass"], bool)
        assert r["trajectory_deviation"] < 1e-9
        # the single replay starts at step 0 and replays the whole run
        assert r["replay_single_steps"] == r["steps"]
        for k in ("training_seconds_plain", "replay_seconds_single", "replay_single_over_training",
                  "replay_seconds_per_sample_vectorised", "replay_vectorised_per_sample_over_training"):
            assert _finite_positive(r[k]), (name, k)
        assert isinstance(r["replay_cost_pass"], bool)
    assert {"pearson_pass", "replay_cost_pass", "all_pass"} <= set(doc)
    assert "Cost of exact replay of one sample" in stdout and "one replay <= one training run" in stdout


def test_bench_findings_quick(repo_root, tmp_path):
    stdout, doc = _run(repo_root, tmp_path, "bench_findings")
    assert doc["mode"] == "quick"
    assert [r["run"] for r in doc["rows"]] == ["digits/mlp", "digits/logreg"]
    for r in doc["rows"]:
        for k in ("tau_early_late_removal", "tau_early_late_accrued", "tau_first_last_epoch"):
            assert -1.0 <= r[k] <= 1.0, k
        shares = [r["patterns"][p]["share"] for p in doc["patterns"]]
        assert math.isclose(sum(shares), 1.0, abs_tol=1e-9)
        assert sum(r["patterns"][p]["count"] for p in doc["patterns"]) == r["n_train"]
        # -influence over the run ranks the 20% flipped labels far above chance (about 0.99 here)
        assert r["auroc"]["full"] > 0.8 and r["auroc"]["convergence"] > 0.7
        assert 0.15 < r["corrupted_share"] < 0.25
    assert [s["run"] for s in doc["summary"]] == ["digits/mlp", "digits/logreg"]
    for s in doc["summary"]:
        assert isinstance(s["weak_early_late"], bool) and isinstance(s["convergence_beats_full"], bool)
        assert math.isclose(s["convergence_minus_full"], s["auroc_convergence"] - s["auroc_full"])
    for title in ("(a) Kendall tau", "(b) Influence patterns", "(c) Corrupted-label detection", "Findings table"):
        assert title in stdout


def test_bench_dashboard_quick(repo_root, tmp_path):
    stdout, doc = _run(repo_root, tmp_path, "bench_dashboard", "--n", "2000", "--epochs", "5", "--repeats", "5")
    assert doc["mode"] == "quick"
    assert doc["setup"]["n"] == 2000 and doc["setup"]["epochs"] == 5 and doc["setup"]["repeats"] == 5
    assert set(doc["ms"]) >= {"open_run", "rank_window_median", "rank_accrued_median", "influence_summary"}
    assert all(_finite_positive(v) for v in doc["ms"].values())
    assert doc["worst_median_ms"] == max(doc["ms"]["rank_window_median"], doc["ms"]["rank_accrued_median"])
    assert doc["target_ms"] == 200.0 and isinstance(doc["pass"], bool)
    assert "RESULT brush -> ranking median" in stdout
