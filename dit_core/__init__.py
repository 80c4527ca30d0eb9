"""DIT — Dynamic Influence Tracker: time-varying training-sample influence.

Record a PyTorch training run exactly, compute how much each training sample
influenced a query (by default the mean validation loss) during every part of
training, and validate it against exact counterfactual replay.

Sign convention: **positive influence = removing the sample would raise the query**.
For a loss query, positive means the sample helped and negative means it hurt.
"""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    DataError,
    DITError,
    FormatVersionError,
    InfluenceNotComputedError,
    ModelError,
    RunExistsError,
    RunIncompleteError,
    RunNotFoundError,
    TrainingDivergedError,
)
from .record import record  # noqa: E402
from .replay import ReplayResult, replay  # noqa: E402
from .run import Run, load_run  # noqa: E402
from .patterns import PATTERNS, classify_patterns  # noqa: E402
from .signals import DEFAULT_FLAG_SIGNAL, SIGNALS, compute_signals, detection_metrics, save_signals  # noqa: E402
from .sweep import compute  # noqa: E402
from . import explore  # noqa: E402  (the dashboard's pure computations; imports no UI library)

__all__ = [
    "__version__",
    "TrainConfig",
    "record",
    "compute",
    "load_run",
    "replay",
    "ReplayResult",
    "Run",
    "SIGNALS",
    "DEFAULT_FLAG_SIGNAL",
    "compute_signals",
    "save_signals",
    "detection_metrics",
    "PATTERNS",
    "classify_patterns",
    "explore",
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
