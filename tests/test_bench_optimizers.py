"""``benchmarks/bench_optimizers.py --quick`` runs, prints both tables and writes plausible JSON.

A smoke test: the quick sizes (256 samples, 2 epochs, 8 samples per window) train the
model only a little (validation accuracy about 0.2), so the optimizers' fidelity targets
at meaningful sizes are asserted in ``tests/test_fidelity.py``. Here the correlations only
have to be clearly positive and plausible (they come out >= 0.99), and the cost numbers
finite and positive; no timing target is asserted.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

NAMES = ("sgd", "sgd_mom_wd", "sgd_nesterov", "adam", "adamw")
WINDOWS = ("full", "last_epoch", "accrued")


@pytest.mark.slow
def test_quick_optimizer_benchmark_prints_tables_and_json(repo_root, tmp_path):
    out = tmp_path / "optimizers.json"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "bench_optimizers.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=180, cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    fid = [ln.split() for ln in lines if ln.split()[:1] and ln.split()[0] in NAMES and ln.split()[1] in WINDOWS]
    assert [(r[0], r[1]) for r in fid] == [(n, w) for n in NAMES for w in WINDOWS]
    assert all(r[-1] in ("PASS", "FAIL") for r in fid)
    cost = [ln.split() for ln in lines if ln.split()[:1] and ln.split()[0] in NAMES and ln.split()[1] not in WINDOWS]
    assert [r[0] for r in cost] == list(NAMES)
    assert all(len(r) == 8 and r[-1] in ("PASS", "FAIL") for r in cost)
    assert "sweep/SGD" in proc.stdout and "overall:" in proc.stdout

    doc = json.loads(out.read_text())
    assert doc["mode"] == "quick"
    assert {"setup", "fidelity", "cost", "all_pass", "wall_seconds"} <= set(doc)
    assert [r["optimizer"] for r in doc["fidelity"]] == list(NAMES)
    for r in doc["fidelity"]:
        name = r["optimizer"]
        assert r["reproduces_recording"], name
        assert r["trajectory_deviation"] < 1e-9, name
        assert set(r["windows"]) == set(WINDOWS)
        assert r["target_pearson"] == (0.95 if name.startswith("adam") else 0.99)
        assert r["steps"] == 16 and r["epochs"] == 2 and r["n_train"] == 256
        assert isinstance(r["pass"], bool)
        for wname, w in r["windows"].items():
            assert {"spearman", "kendall", "slope", "n", "relative_error"} <= set(w)
            assert w["n"] == 8
            # linear-in-the-gradient SGD variants track replay closely even here; Adam is linearised
            assert w["pearson"] > (0.95 if name.startswith("sgd") else 0.9), (name, wname, w)
            assert w["spearman"] > 0.7 and w["kendall"] > 0.5, (name, wname, w)
            assert 0.5 < w["slope"] < 2.0, (name, wname, w)
        for k in ("record_seconds", "compute_seconds", "replay_seconds"):
            assert math.isfinite(r[k]) and r[k] > 0, (name, k)
        assert 0.0 <= r["final_val_accuracy"] <= 1.0 and math.isfinite(r["final_val_loss"])
    med = doc["cost"]["median"]
    assert list(med) == list(NAMES) and med["sgd"]["sweep_over_sgd_sweep"] == 1.0
    for m in med.values():
        for k in ("training_seconds", "sweep_seconds", "sweep_over_training", "sweep_over_sgd_sweep"):
            assert math.isfinite(m[k]) and m[k] > 0, k
