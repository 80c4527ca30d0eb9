"""Data sets for DIT: load, split, standardise and (optionally) corrupt labels.

Samples are rows everywhere: ``X`` is ``(n, *input_shape)``, ``y`` is ``(n,)``.

Public functions
----------------
load_dataset
    A built-in data set (``BUILTIN_DATASETS``) or a ``.npz`` / ``.csv`` file.
make_split
    The shared path behind ``load_dataset``, usable on arrays you already have.
corrupt_labels
    Symmetric label noise: flip exactly ``round(rate * n)`` labels.

This module does not import torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dit_core.errors import ConfigError, DataError

BUILTIN_DATASETS = ("digits", "breast_cancer", "wine", "iris")

_FILE_SUFFIXES = (".npz", ".csv")


@dataclass(frozen=True, eq=False)
class DatasetSplit:
    """A train/validation split, ready for training.

    Attributes
    ----------
    name : str
        Built-in name, or the file's stem for a file source.
    X_train : np.ndarray, (n_train, *input_shape), float32
    y_train : np.ndarray, (n_train,), int64
        Labels as trained, i.e. after corruption.
    X_val : np.ndarray, (n_val, *input_shape), float32
    y_val : np.ndarray, (n_val,), int64
        Never corrupted.
    original_y_train : np.ndarray, (n_train,), int64
        True labels of the training rows.
    is_corrupted : np.ndarray, (n_train,), bool
        ``y_train != original_y_train``.
    n_classes : int
    input_shape : tuple of int
        Shape of one sample, e.g. ``(64,)`` or ``(1, 8, 8)``.
    feature_names : list of str or None
        Column names of tabular data; None for images.
    class_names : list of str
        ``class_names[k]`` names label ``k``.
    train_index, val_index : np.ndarray, (n_train,) / (n_val,), int64
        Row index of each sample in the source data set (sorted ascending).
    source : str or None
        Built-in name or absolute file path; None for arrays given directly.
    val_fraction, split_seed, corruption_rate, corruption_seed, standardize
        The arguments the split was made with.
    standardized : bool
        Whether features were actually standardised (tabular data only).
    feature_mean, feature_std : np.ndarray or None, (d,), float64
        Training-split statistics used for standardising; None if not standardised.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    original_y_train: np.ndarray
    is_corrupted: np.ndarray
    n_classes: int
    input_shape: tuple[int, ...]
    feature_names: list[str] | None
    class_names: list[str]
    train_index: np.ndarray
    val_index: np.ndarray
    source: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    corruption_rate: float = 0.0
    corruption_seed: int = 0
    standardize: bool = True
    standardized: bool = False
    feature_mean: np.ndarray | None = field(default=None, repr=False)
    feature_std: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.X_val.shape[0])

    @property
    def n_corrupted(self) -> int:
        return int(self.is_corrupted.sum())

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description for a run manifest.

        ``name``, ``source``, ``val_fraction``, ``split_seed``, ``corruption_rate``,
        ``corruption_seed`` and ``standardize`` are exactly what ``load_dataset``
        needs to rebuild the same split from a built-in name or file.
        """
        return {
            "name": self.name,
            "source": self.source,
            "n_total": self.n_train + self.n_val,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_classes": int(self.n_classes),
            "input_shape": [int(s) for s in self.input_shape],
            "val_fraction": float(self.val_fraction),
            "split_seed": int(self.split_seed),
            "corruption_rate": float(self.corruption_rate),
            "corruption_seed": int(self.corruption_seed),
            "n_corrupted": self.n_corrupted,
            "standardize": bool(self.standardize),
            "standardized": bool(self.standardized),
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "class_names": list(self.class_names),
        }


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #


def load_dataset(
    source: str,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    corruption_rate: float = 0.0,
    corruption_seed: int = 0,
    standardize: bool = True,
    label_column: str = "label",
) -> DatasetSplit:
    """Load a built-in data set or a file, split it and optionally corrupt labels.

    Parameters
    ----------
    source : str
        One of ``BUILTIN_DATASETS`` ("digits", "breast_cancer", "wine", "iris"),
        or a path to a ``.npz`` file (arrays ``X`` ``(n, ...)`` and ``y`` ``(n,)``)
        or a ``.csv`` file (numeric feature columns plus the label column).
    val_fraction : float, default 0.2
        Fraction of rows held out for validation (stratified), in (0, 1).
    split_seed : int, default 0
    corruption_rate : float, default 0.0
        Fraction of training labels to flip, in [0, 1).
    corruption_seed : int, default 0
    standardize : bool, default True
        Standardise tabular (2-D) features with the training split's mean/std.
        Ignored for images (``X`` with more than 2 dimensions).
    label_column : str, default "label"
        Name of the label column of a ``.csv`` file. Labels may be strings.

    Returns
    -------
    DatasetSplit
    """
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"source must be a data set name or a file path, got {type(source).__name__}")
    source_str = os.fspath(source)
    if source_str in BUILTIN_DATASETS:
        X, y, feature_names, class_names = _load_builtin(source_str)
        name, resolved = source_str, source_str
    else:
        suffix = os.path.splitext(source_str)[1].lower()
        if suffix not in _FILE_SUFFIXES:
            if os.path.isfile(source_str):
                raise DataError(
                    f"file {source_str!r} has unsupported type {suffix or '(no suffix)'!r}; "
                    "use a .npz file (arrays 'X' and 'y') or a .csv file"
                )
            raise DataError(
                f"unknown data set {source_str!r}; valid names are {', '.join(BUILTIN_DATASETS)}, "
                "or give a path to a .npz file (arrays 'X' and 'y') or a .csv file"
            )
        if not os.path.isfile(source_str):
            raise DataError(f"data file not found: {source_str!r}")
        resolved = os.path.abspath(source_str)
        name = os.path.splitext(os.path.basename(source_str))[0]
        if suffix == ".npz":
            X, y = _load_npz(source_str)
            feature_names, class_names = None, None
        else:
            X, y, feature_names = _load_csv(source_str, label_column)
            class_names = None
    return make_split(
        X,
        y,
        name=name,
        val_fraction=val_fraction,
        split_seed=split_seed,
        corruption_rate=corruption_rate,
        corruption_seed=corruption_seed,
        standardize=standardize,
        feature_names=feature_names,
        class_names=class_names,
        source=resolved,
    )


def make_split(
    X: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    corruption_rate: float = 0.0,
    corruption_seed: int = 0,
    standardize: bool = True,
    feature_names: list[str] | None = None,
    class_names: list[str] | None = None,
    source: str | None = None,
) -> DatasetSplit:
    """Validate, split (stratified), standardise and corrupt arrays you already have.

    Parameters
    ----------
    X : array-like, (n, *input_shape)
        Numeric and finite. 2-D is tabular (standardised if asked); more
        dimensions are images and are used as given.
    y : array-like, (n,)
        Class labels: integers, integer-valued floats, or strings.
        Without ``class_names`` they are remapped to ``0..C-1`` in sorted order
        and ``class_names`` become the original values as strings.
        With ``class_names`` they must already be integers in ``0..len(class_names)-1``.
    name : str
    val_fraction, split_seed, corruption_rate, corruption_seed, standardize
        As in ``load_dataset``.
    feature_names : list of str, optional
        One per column of a 2-D ``X``.
    class_names : list of str, optional
    source : str, optional
        Recorded in ``describe()``.

    Returns
    -------
    DatasetSplit
    """
    val_fraction = _check_fraction("val_fraction", val_fraction, low_open=True)
    corruption_rate = _check_fraction("corruption_rate", corruption_rate, low_open=False)
    split_seed = _check_seed("split_seed", split_seed)
    corruption_seed = _check_seed("corruption_seed", corruption_seed)

    X = _check_features(X)
    n = X.shape[0]
    y_raw = np.asarray(y)
    if y_raw.ndim != 1:
        raise DataError(f"y must be 1-D (n,), got shape {y_raw.shape}")
    if y_raw.shape[0] != n:
        raise DataError(f"X has {n} rows but y has {y_raw.shape[0]}")
    y_int, class_names = _encode_labels(y_raw, class_names)
    n_classes = len(class_names)

    if feature_names is not None:
        feature_names = [str(f) for f in feature_names]
        if X.ndim != 2:
            raise DataError(f"feature_names given but X is not tabular: shape {X.shape}")
        if len(feature_names) != X.shape[1]:
            raise DataError(f"X has {X.shape[1]} columns but feature_names has {len(feature_names)}")

    train_index, val_index = _stratified_split(y_int, class_names, val_fraction, split_seed)

    X_train = X[train_index]
    X_val = X[val_index]
    feature_mean = feature_std = None
    standardized = False
    if standardize and X.ndim == 2:
        feature_mean = X_train.mean(axis=0, dtype=np.float64)
        feature_std = X_train.std(axis=0, dtype=np.float64)
        feature_std = np.where(feature_std > 0, feature_std, 1.0)
        X_train = (X_train - feature_mean) / feature_std
        X_val = (X_val - feature_mean) / feature_std
        standardized = True
    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X_val = np.ascontiguousarray(X_val, dtype=np.float32)

    original_y_train = y_int[train_index]
    y_train, is_corrupted = corrupt_labels(original_y_train, corruption_rate, n_classes, corruption_seed)

    return DatasetSplit(
        name=str(name),
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_int[val_index].copy(),
        original_y_train=original_y_train.copy(),
        is_corrupted=is_corrupted,
        n_classes=n_classes,
        input_shape=tuple(int(s) for s in X.shape[1:]),
        feature_names=feature_names,
        class_names=class_names,
        train_index=train_index,
        val_index=val_index,
        source=None if source is None else str(source),
        val_fraction=val_fraction,
        split_seed=split_seed,
        corruption_rate=corruption_rate,
        corruption_seed=corruption_seed,
        standardize=bool(standardize),
        standardized=standardized,
        feature_mean=feature_mean,
        feature_std=feature_std,
    )


def corrupt_labels(
    y: np.ndarray, rate: float, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * n)`` labels, symmetrically.

    The flipped rows are drawn without replacement; each gets a class drawn
    uniformly from the other ``n_classes - 1`` classes, so it always differs
    from its original label.

    Parameters
    ----------
    y : np.ndarray, (n,), int
        Labels in ``0..n_classes-1``.
    rate : float
        Fraction to flip, in [0, 1).
    n_classes : int
    seed : int

    Returns
    -------
    new_y : np.ndarray, (n,), int64
    is_corrupted : np.ndarray, (n,), bool
    """
    rate = _check_fraction("corruption_rate", rate, low_open=False)
    seed = _check_seed("corruption_seed", seed)
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"y must be 1-D (n,), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y must hold integer labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    n_classes = int(n_classes)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(
            f"labels must lie in 0..{n_classes - 1} for n_classes={n_classes}, "
            f"got range {int(y.min())}..{int(y.max())}"
        )
    n = y.shape[0]
    n_flip = int(round(rate * n))
    new_y = y.copy()
    is_corrupted = np.zeros(n, dtype=bool)
    if n_flip == 0:
        return new_y, is_corrupted
    if n_classes < 2:
        raise DataError(f"cannot corrupt labels with fewer than 2 classes (n_classes={n_classes})")
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=n_flip, replace=False)
    offsets = rng.integers(1, n_classes, size=n_flip)
    new_y[rows] = (y[rows] + offsets) % n_classes
    is_corrupted[rows] = True
    return new_y, is_corrupted


# --------------------------------------------------------------------------- #
# Loaders
# --------------------------------------------------------------------------- #


def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str] | None, list[str]]:
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        X = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
        return X, bunch.target.astype(np.int64), None, [str(c) for c in bunch.target_names]
    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
    }[name]
    bunch = loader()
    return (
        bunch.data.astype(np.float64),
        bunch.target.astype(np.int64),
        [str(f) for f in bunch.feature_names],
        [str(c) for c in bunch.target_names],
    )


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            missing = [k for k in ("X", "y") if k not in keys]
            if missing:
                raise DataError(
                    f"{path!r} lacks array(s) {', '.join(missing)}; a .npz data set needs "
                    f"arrays 'X' and 'y' (found: {', '.join(keys) or 'none'})"
                )
            return archive["X"], archive["y"]
    except DataError:
        raise
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise DataError(f"cannot read {path!r} without pickle: {exc}") from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path!r} as .npz: {exc}") from exc


def _load_csv(path: str, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path!r} as .csv: {exc}") from exc
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label_column not in columns:
        raise DataError(
            f"{path!r} has no label column {label_column!r}; columns are: {', '.join(columns)}"
        )
    feature_names = [c for c in columns if c != label_column]
    if not feature_names:
        raise DataError(f"{path!r} has no feature columns besides label column {label_column!r}")
    non_numeric = [c for c in feature_names if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise DataError(f"{path!r} has non-numeric feature column(s): {', '.join(non_numeric)}")
    labels = frame[label_column]
    if labels.isna().any():
        rows = np.flatnonzero(labels.isna().to_numpy())
        raise DataError(
            f"{path!r} has {rows.size} missing label(s) in column {label_column!r} "
            f"(first at data row {int(rows[0])})"
        )
    if pd.api.types.is_numeric_dtype(labels):
        y = labels.to_numpy()
    else:
        y = labels.astype(str).to_numpy(dtype=str)
    X = frame[feature_names].to_numpy(dtype=np.float64)
    return X, y, feature_names


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _check_fraction(field_name: str, value: float, *, low_open: bool) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field_name} must be a number, got {value!r}") from exc
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        interval = "(0, 1)" if low_open else "[0, 1)"
        raise ConfigError(f"{field_name} must be in {interval}, got {value}")
    return value


def _check_seed(field_name: str, value: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{field_name} must be an integer, got {value!r}")
    if value < 0:
        raise ConfigError(f"{field_name} must be >= 0, got {value}")
    return int(value)


def _check_features(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"X must be numeric, got dtype {X.dtype}")
    if X.ndim < 2:
        raise DataError(f"X must be (n, d) or (n, *input_shape) with samples as rows, got shape {X.shape}")
    if X.shape[0] < 2:
        raise DataError(f"X must have at least 2 rows, got {X.shape[0]}")
    if any(s == 0 for s in X.shape[1:]):
        raise DataError(f"X has an empty sample shape {X.shape[1:]}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise DataError(f"X must be real-valued, got dtype {X.dtype}")
    X = X.astype(np.float64, copy=False)
    finite = np.isfinite(X)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.reshape(X.shape[0], -1).all(axis=1))
        n_nan = int(np.isnan(X).sum())
        n_inf = int(np.isinf(X).sum())
        raise DataError(
            f"X has non-finite features ({n_nan} NaN, {n_inf} inf) in {bad_rows.size} row(s), "
            f"first at row {int(bad_rows[0])}"
        )
    return X


def _encode_labels(y: np.ndarray, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Return labels as int64 ``0..C-1`` and the class names."""
    if y.dtype.kind in "fc":
        if y.dtype.kind == "c" or not np.isfinite(y).all():
            raise DataError("y has non-finite or complex labels; labels must be integers or strings")
        if not np.all(np.equal(np.mod(y, 1), 0)):
            bad = y[np.mod(y, 1) != 0]
            raise DataError(
                f"y has non-integer float labels (e.g. {bad[0]!r}); labels must be integers or strings"
            )
        y = y.astype(np.int64)
    elif y.dtype.kind == "b":
        y = y.astype(np.int64)
    elif y.dtype.kind == "O":
        if not all(isinstance(v, str) for v in y):
            raise DataError("y has an object dtype with non-string values; labels must be integers or strings")
        y = y.astype(str)
    elif y.dtype.kind not in "iuUS":
        raise DataError(f"y must hold integer or string labels, got dtype {y.dtype}")

    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if y.dtype.kind not in "iu":
            raise DataError("class_names given, so y must hold integer labels 0..C-1")
        n_classes = len(class_names)
        if y.min() < 0 or y.max() >= n_classes:
            raise DataError(
                f"y has labels {int(y.min())}..{int(y.max())} but class_names has {n_classes} names"
            )
        y_int = y.astype(np.int64)
    else:
        if y.dtype.kind == "S":
            y = y.astype(str)
        uniques, y_int = np.unique(y, return_inverse=True)
        class_names = [str(u) for u in uniques]
        y_int = y_int.reshape(-1).astype(np.int64)

    present = np.unique(y_int)
    if present.size < 2:
        only = class_names[int(present[0])] if present.size else "none"
        raise DataError(f"y must contain at least 2 classes, found {present.size} (class {only})")
    return y_int, class_names


def _stratified_split(
    y: np.ndarray, class_names: list[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = y.shape[0]
    counts = np.bincount(y, minlength=len(class_names))
    small = [class_names[k] for k in range(len(class_names)) if counts[k] == 1]
    if small:
        raise DataError(
            f"stratified split needs at least 2 samples per class; class(es) "
            f"{', '.join(repr(s) for s in small)} have only 1"
        )
    n_present = int((counts > 0).sum())
    n_val = math.ceil(val_fraction * n)
    n_train = n - n_val
    if n_val < n_present or n_train < n_present:
        raise DataError(
            f"val_fraction={val_fraction} of {n} rows gives {n_train} train and {n_val} validation "
            f"rows, but a stratified split needs at least {n_present} (one per class) in each"
        )
    try:
        train_index, val_index = train_test_split(
            np.arange(n), test_size=val_fraction, random_state=seed, stratify=y
        )
    except ValueError as exc:
        raise DataError(f"cannot split {n} rows with val_fraction={val_fraction}: {exc}") from exc
    return np.sort(train_index).astype(np.int64), np.sort(val_index).astype(np.int64)


__all__ = [
    "BUILTIN_DATASETS",
    "DatasetSplit",
    "load_dataset",
    "make_split",
    "corrupt_labels",
]
