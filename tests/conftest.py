"""Shared pytest configuration for DIT.

Kept deliberately small; shared fixtures are added here as the suite grows.
Markers (``browser``, ``slow``) and the default per-test timeout are registered
in ``pyproject.toml`` under ``[tool.pytest.ini_options]``. All tests, including
``slow`` and ``browser`` ones, run by default: ``python -m pytest``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RUNS_DIR = REPO_ROOT / "sample_runs"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """Absolute path of the repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_runs_dir() -> Path:
    """Directory holding the bundled sample run(s)."""
    return SAMPLE_RUNS_DIR


# ---------------------------------------------------------------- a small real run
def _record_iris(out: Path, *, queries=("val_loss",), compute: bool = True, **config) -> Path:
    import dit_core as dit
    from dit_core.data import load_dataset
    from dit_core.models import build_model, describe_model

    ds = load_dataset("iris", corruption_rate=0.2, corruption_seed=0)
    desc = describe_model("logreg", ds.input_shape, ds.n_classes, seed=0)
    path = dit.record(
        build_model(**desc), (ds.X_train, ds.y_train), (ds.X_val, ds.y_val),
        dit.TrainConfig(**{"epochs": 6, "batch_size": 16, "lr": 0.1, **config}), out,
        model_description={"kind": "builtin", **desc}, dataset_description=ds.describe(),
        original_labels=ds.original_y_train, is_corrupted=ds.is_corrupted, progress=False,
    )
    if compute:
        dit.compute(path, checkpoints="epochs", queries=queries, progress=False)
    return Path(path)


@pytest.fixture(scope="session")
def record_iris():
    """``record_iris(out, *, queries=("val_loss",), compute=True, **TrainConfig fields)``: records a
    small real run (iris, logistic regression, 20% injected label corruption; 6 epochs, batch 16,
    lr 0.1 unless given) into ``out`` and, unless ``compute=False``, computes its influence at the
    epoch ends for ``queries``. Returns the run directory."""
    return _record_iris


# ---------------------------------------------------------------- no silent skips in CI
# Some tests skip on a developer's machine that lacks an optional piece (Chromium for the
# browser tests, the cleanlab benchmark extra). CI installs all of them (`.ci/run` runs
# `scripts/setup.sh --browser`), so there a skip means a broken setup: it fails instead.
# Set DIT_ALLOW_SKIPS=1 to opt out.
def _skips_fail() -> bool:
    return bool(os.environ.get("CI")) and not os.environ.get("DIT_ALLOW_SKIPS")


def _as_failure(report, what: str) -> None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{what} was skipped under CI=true, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _skips_fail() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _skips_fail() and report.skipped:
        _as_failure(report, collector.nodeid)
