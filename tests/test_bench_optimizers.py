"""``benchmarks/bench_optimizers.py --quick`` runs, prints both tables and writes its JSON."""

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
        assert r["reproduces_recording"], r["optimizer"]
        assert set(r["windows"]) == set(WINDOWS)
        for w in r["windows"].values():
            assert w["pearson"] is not None and -1.0 <= w["pearson"] <= 1.0
            assert {"spearman", "kendall", "slope", "n"} <= set(w)
    med = doc["cost"]["median"]
    assert list(med) == list(NAMES) and med["sgd"]["sweep_over_sgd_sweep"] == 1.0
    for m in med.values():
        for k in ("training_seconds", "sweep_seconds", "sweep_over_training", "sweep_over_sgd_sweep"):
            assert math.isfinite(m[k]) and m[k] > 0, k
