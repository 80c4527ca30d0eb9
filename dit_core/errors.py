"""Named exceptions raised by DIT.

Every error a user can trigger with bad input is one of these, and its message
names the field or file at fault (and both sizes, where sizes disagree).
"""

from __future__ import annotations


class DITError(Exception):
    """Base class of all DIT errors."""


class ConfigError(DITError, ValueError):
    """A configuration field, argument or option has a bad value."""


class DataError(DITError, ValueError):
    """Training or validation data is malformed (shapes, labels, NaNs, unknown dataset)."""


class ModelError(DITError, ValueError):
    """The model cannot be recorded exactly (batch-dependent layers, dropout, unknown model)."""


class TrainingDivergedError(DITError, RuntimeError):
    """The loss became NaN or infinite during training. ``step`` is where it happened."""

    def __init__(self, message: str, step: int, run_dir: str | None = None):
        super().__init__(message)
        self.step = step
        self.run_dir = run_dir


class RunNotFoundError(DITError, FileNotFoundError):
    """A run directory (or a file it must contain) does not exist."""


class RunIncompleteError(DITError, ValueError):
    """A run directory is half-written, or its recording stopped early."""


class FormatVersionError(DITError, ValueError):
    """A run directory was written by an incompatible format version."""


class InfluenceNotComputedError(DITError, ValueError):
    """The run has no influence for the requested query/checkpoints: run ``dit compute`` first."""


class RunExistsError(DITError, FileExistsError):
    """The output directory exists already and overwriting was not asked for."""


__all__ = [
    "DITError",
    "ConfigError",
    "DataError",
    "ModelError",
    "TrainingDivergedError",
    "RunNotFoundError",
    "RunIncompleteError",
    "FormatVersionError",
    "InfluenceNotComputedError",
    "RunExistsError",
]
