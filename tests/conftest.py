"""Shared pytest configuration for DIT.

Kept deliberately small; shared fixtures are added here as the suite grows.
Markers (``browser``, ``slow``) and the default per-test timeout are registered
in ``pyproject.toml`` under ``[tool.pytest.ini_options]``. All tests, including
``slow`` and ``browser`` ones, run by default: ``python -m pytest``.
"""

from __future__ import annotations

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
