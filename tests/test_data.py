"""Tests for dit_core.data: built-in data sets, files, splits and label corruption."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dit_core.data import (
    BUILTIN_DATASETS,
    DatasetSplit,
    corrupt_labels,
    load_dataset,
    make_split,
)
from dit_core.errors import ConfigError, DataError

BUILTIN_SIZES = {"digits": (1797, 10), "breast_cancer": (569, 2), "wine": (178, 3), "iris": (150, 3)}


def _blobs(n: int = 120, d: int = 4, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny seeded tabular data set with known labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.normal(size=(n, d)) + y[:, None] * 2.0
    return X, y


# --------------------------------------------------------------------------- #
# Built-in data sets
# --------------------------------------------------------------------------- #


def test_digits_shapes_and_scaling() -> None:
    split = load_dataset("digits")
    assert split.n_train + split.n_val == 1797
    assert split.n_val == 360  # ceil(0.2 * 1797)
    assert split.n_train == 1437
    assert split.X_train.shape == (1437, 1, 8, 8)
    assert split.X_val.shape == (360, 1, 8, 8)
    assert split.X_train.dtype == np.float32 and split.X_val.dtype == np.float32
    assert split.y_train.dtype == np.int64 and split.y_val.dtype == np.int64
    assert split.input_shape == (1, 8, 8)
    assert split.n_classes == 10
    assert split.class_names == [str(k) for k in range(10)]
    assert split.feature_names is None
    # images are scaled to [0, 1], never standardised
    assert split.X_train.min() == 0.0 and split.X_train.max() == 1.0
    assert not split.standardized and split.feature_mean is None


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_split_is_a_stratified_partition(name: str) -> None:
    n_total, n_classes = BUILTIN_SIZES[name]
    split = load_dataset(name, val_fraction=0.25, split_seed=3)
    assert split.n_classes == n_classes
    assert len(split.class_names) == n_classes
    # train/val indices partition the source rows
    both = np.concatenate([split.train_index, split.val_index])
    assert np.array_equal(np.sort(both), np.arange(n_total))
    assert np.all(np.diff(split.train_index) > 0) and np.all(np.diff(split.val_index) > 0)
    assert split.X_train.shape[0] == split.y_train.shape[0] == split.train_index.shape[0]
    # stratification: each class's share of val matches within one sample
    y_all = np.empty(n_total, dtype=np.int64)
    y_all[split.train_index] = split.original_y_train
    y_all[split.val_index] = split.y_val
    full_counts = np.bincount(y_all, minlength=n_classes)
    val_counts = np.bincount(split.y_val, minlength=n_classes)
    expected = full_counts * split.n_val / n_total
    assert np.all(np.abs(val_counts - expected) <= 1.0 + 1e-9)


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "iris"])
def test_tabular_standardised_with_train_statistics(name: str) -> None:
    split = load_dataset(name)
    assert split.X_train.ndim == 2
    assert split.feature_names is not None and len(split.feature_names) == split.input_shape[0]
    np.testing.assert_allclose(split.X_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(split.X_train.std(axis=0), 1.0, atol=1e-4)
    # val uses train statistics, so is not exactly standardised itself
    assert split.standardized
    raw = load_dataset(name, standardize=False)
    np.testing.assert_allclose(
        split.X_val, (raw.X_val - split.feature_mean) / split.feature_std, rtol=1e-5, atol=1e-5
    )
    assert not raw.standardized


def test_standardise_constant_column_uses_std_one() -> None:
    X, y = _blobs()
    X[:, 1] = 5.0
    split = make_split(X, y, name="const")
    assert np.all(np.isfinite(split.X_train))
    assert np.all(split.X_train[:, 1] == 0.0)
    assert split.feature_std[1] == 1.0


# --------------------------------------------------------------------------- #
# Label corruption
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.33, 0.5])
def test_corrupt_labels_flips_exactly_round_rate_n(rate: float) -> None:
    y = np.arange(1437) % 10
    new_y, is_corrupted = corrupt_labels(y, rate, 10, seed=1)
    assert new_y.dtype == np.int64 and is_corrupted.dtype == bool
    assert is_corrupted.sum() == round(rate * 1437)
    assert np.all(new_y[is_corrupted] != y[is_corrupted])
    assert np.array_equal(new_y[~is_corrupted], y[~is_corrupted])
    assert np.all((new_y >= 0) & (new_y < 10))
    # the input is not modified
    assert np.array_equal(y, np.arange(1437) % 10)


def test_corrupt_labels_uniform_over_other_classes() -> None:
    n_classes = 5
    y = np.zeros(20000, dtype=np.int64)  # every true label 0: flips spread over 1..4
    new_y, is_corrupted = corrupt_labels(y, 0.5, n_classes, seed=7)
    counts = np.bincount(new_y[is_corrupted], minlength=n_classes)
    assert counts[0] == 0
    _, p_value = stats.chisquare(counts[1:])
    assert p_value > 1e-4


def test_corrupt_labels_offsets_uniform_for_mixed_labels() -> None:
    n_classes = 4
    y = np.arange(8000) % n_classes
    new_y, is_corrupted = corrupt_labels(y, 0.6, n_classes, seed=11)
    offsets = (new_y[is_corrupted] - y[is_corrupted]) % n_classes
    counts = np.bincount(offsets, minlength=n_classes)
    assert counts[0] == 0
    _, p_value = stats.chisquare(counts[1:])
    assert p_value > 1e-4


def test_corrupt_labels_deterministic_and_seed_dependent() -> None:
    y = np.arange(500) % 7
    a = corrupt_labels(y, 0.2, 7, seed=3)
    b = corrupt_labels(y, 0.2, 7, seed=3)
    c = corrupt_labels(y, 0.2, 7, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_split_corruption_only_touches_training_labels() -> None:
    clean = load_dataset("digits", corruption_rate=0.0)
    noisy = load_dataset("digits", corruption_rate=0.2, corruption_seed=5)
    assert noisy.n_corrupted == round(0.2 * 1437)
    assert np.array_equal(noisy.is_corrupted, noisy.y_train != noisy.original_y_train)
    assert np.array_equal(noisy.original_y_train, clean.y_train)
    assert np.array_equal(noisy.y_val, clean.y_val)
    assert np.array_equal(noisy.X_train, clean.X_train)
    assert clean.n_corrupted == 0 and np.array_equal(clean.y_train, clean.original_y_train)


def test_load_dataset_deterministic_with_same_seeds() -> None:
    a = load_dataset("wine", split_seed=2, corruption_rate=0.1, corruption_seed=9)
    b = load_dataset("wine", split_seed=2, corruption_rate=0.1, corruption_seed=9)
    for field in ("X_train", "y_train", "X_val", "y_val", "train_index", "val_index", "is_corrupted"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_load_dataset_differs_with_other_seeds() -> None:
    a = load_dataset("wine", split_seed=2, corruption_rate=0.1, corruption_seed=9)
    other_split = load_dataset("wine", split_seed=3, corruption_rate=0.1, corruption_seed=9)
    other_noise = load_dataset("wine", split_seed=2, corruption_rate=0.1, corruption_seed=10)
    assert not np.array_equal(a.val_index, other_split.val_index)
    assert np.array_equal(a.val_index, other_noise.val_index)
    assert not np.array_equal(a.is_corrupted, other_noise.is_corrupted)


# --------------------------------------------------------------------------- #
# describe()
# --------------------------------------------------------------------------- #


def test_describe_is_json_and_rebuilds_the_split() -> None:
    split = load_dataset("iris", val_fraction=0.3, split_seed=4, corruption_rate=0.1, corruption_seed=2)
    desc = split.describe()
    assert json.loads(json.dumps(desc)) == desc
    for key in (
        "name", "source", "n_train", "n_val", "n_classes", "input_shape", "val_fraction",
        "split_seed", "corruption_rate", "corruption_seed", "n_corrupted", "standardize",
        "feature_names", "class_names",
    ):
        assert key in desc, key
    assert desc["source"] == "iris"
    assert desc["n_corrupted"] == round(0.1 * split.n_train)
    assert desc["class_names"] == ["setosa", "versicolor", "virginica"]
    again = load_dataset(
        desc["source"],
        val_fraction=desc["val_fraction"],
        split_seed=desc["split_seed"],
        corruption_rate=desc["corruption_rate"],
        corruption_seed=desc["corruption_seed"],
        standardize=desc["standardize"],
    )
    assert np.array_equal(again.y_train, split.y_train)
    assert np.array_equal(again.X_val, split.X_val)


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #


def test_npz_round_trip(tmp_path) -> None:
    X, y = _blobs(n=90, d=3)
    path = tmp_path / "blobs.npz"
    np.savez(path, X=X, y=y + 10)  # labels 10, 11, 12 -> remapped to 0, 1, 2
    split = load_dataset(str(path), standardize=False)
    assert split.name == "blobs"
    assert split.source == str(path.resolve())
    assert split.class_names == ["10", "11", "12"]
    assert np.array_equal(split.original_y_train, y[split.train_index])
    np.testing.assert_allclose(split.X_train, X[split.train_index].astype(np.float32))
    assert split.describe()["source"] == str(path.resolve())


def test_npz_images_keep_shape_and_are_not_standardised(tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(40, 1, 5, 5))
    y = np.arange(40) % 2
    path = tmp_path / "imgs.npz"
    np.savez(path, X=X, y=y)
    split = load_dataset(str(path))
    assert split.input_shape == (1, 5, 5)
    assert not split.standardized
    np.testing.assert_allclose(split.X_train, X[split.train_index].astype(np.float32))


def test_npz_string_labels(tmp_path) -> None:
    X, y = _blobs(n=60)
    names = np.array(["cat", "dog", "eel"])[y]
    path = tmp_path / "animals.npz"
    np.savez(path, X=X, y=names)
    split = load_dataset(str(path))
    assert split.class_names == ["cat", "dog", "eel"]
    assert np.array_equal(np.array(split.class_names)[split.original_y_train], names[split.train_index])


def test_npz_integer_valued_float_labels(tmp_path) -> None:
    X, y = _blobs(n=60)
    path = tmp_path / "f.npz"
    np.savez(path, X=X, y=y.astype(np.float64))
    split = load_dataset(str(path))
    assert split.class_names == ["0", "1", "2"]


def test_csv_round_trip_with_string_labels(tmp_path) -> None:
    X, y = _blobs(n=75, d=3)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["species"] = np.array(["setosa", "versicolor", "virginica"])[y]
    path = tmp_path / "flowers.csv"
    frame.to_csv(path, index=False)
    split = load_dataset(str(path), label_column="species", standardize=False)
    assert split.feature_names == ["a", "b", "c"]
    assert split.class_names == ["setosa", "versicolor", "virginica"]
    assert split.input_shape == (3,)
    assert np.array_equal(split.original_y_train, y[split.train_index])
    np.testing.assert_allclose(split.X_train, X[split.train_index].astype(np.float32), rtol=1e-6)
    desc = split.describe()
    assert desc["feature_names"] == ["a", "b", "c"]
    assert json.loads(json.dumps(desc)) == desc


def test_csv_integer_labels_default_column(tmp_path) -> None:
    X, y = _blobs(n=60)
    frame = pd.DataFrame(X, columns=["x0", "x1", "x2", "x3"])
    frame.insert(0, "label", y * 2)  # labels 0, 2, 4; label column not last
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    split = load_dataset(str(path))
    assert split.class_names == ["0", "2", "4"]
    assert split.feature_names == ["x0", "x1", "x2", "x3"]
    assert np.array_equal(split.original_y_train, y[split.train_index])


def test_make_split_on_user_arrays() -> None:
    X, y = _blobs()
    split = make_split(
        X, y, name="mine", val_fraction=0.25, split_seed=0, corruption_rate=0.1,
        corruption_seed=0, standardize=True, feature_names=["p", "q", "r", "s"],
        class_names=["A", "B", "C"],
    )
    assert isinstance(split, DatasetSplit)
    assert split.n_val == 30 and split.n_train == 90
    assert split.class_names == ["A", "B", "C"]
    assert split.feature_names == ["p", "q", "r", "s"]
    assert split.n_corrupted == 9
    assert split.source is None and split.describe()["source"] is None


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_unknown_dataset_lists_names_and_files() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "mnist" in msg
    for name in BUILTIN_DATASETS:
        assert name in msg
    assert ".npz" in msg and ".csv" in msg


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope.npz"))


def test_unsupported_file_type(tmp_path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("1,2,3\n")
    with pytest.raises(DataError, match="unsupported"):
        load_dataset(str(path))


def test_npz_lacking_arrays(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((4, 2)), y=np.arange(4))
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    msg = str(err.value)
    assert "'X'" in msg and "features" in msg


def test_length_mismatch_names_both_sizes() -> None:
    with pytest.raises(DataError, match="X has 1200 rows but y has 1197"):
        make_split(np.zeros((1200, 3)), np.arange(1197) % 2, name="m")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(bad: float) -> None:
    X, y = _blobs()
    X[7, 2] = bad
    with pytest.raises(DataError, match="non-finite") as err:
        make_split(X, y, name="m")
    assert "row 7" in str(err.value)


def test_csv_nan_features(tmp_path) -> None:
    path = tmp_path / "holes.csv"
    path.write_text("a,b,label\n1,2,0\n3,,1\n5,6,0\n7,8,1\n9,1,0\n2,3,1\n")
    with pytest.raises(DataError, match="NaN"):
        load_dataset(str(path))


def test_fewer_than_two_classes() -> None:
    X, _ = _blobs(n=20)
    with pytest.raises(DataError, match="at least 2 classes"):
        make_split(X, np.zeros(20, dtype=int), name="m")


def test_non_integer_float_labels() -> None:
    X, y = _blobs(n=20)
    with pytest.raises(DataError, match="non-integer float labels"):
        make_split(X, y + 0.5, name="m")


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_corruption_rate_outside_range(rate: float) -> None:
    with pytest.raises(ConfigError, match=r"corruption_rate must be in \[0, 1\)"):
        load_dataset("iris", corruption_rate=rate)
    with pytest.raises(ConfigError, match="corruption_rate"):
        corrupt_labels(np.arange(10) % 2, rate, 2, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 2.0])
def test_val_fraction_outside_range(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"val_fraction must be in \(0, 1\)"):
        load_dataset("iris", val_fraction=fraction)


def test_csv_missing_label_column_lists_columns(tmp_path) -> None:
    path = tmp_path / "nolabel.csv"
    path.write_text("alpha,beta,target\n1,2,0\n3,4,1\n")
    with pytest.raises(DataError) as err:
        load_dataset(str(path))
    msg = str(err.value)
    assert "'label'" in msg and "alpha" in msg and "beta" in msg and "target" in msg


def test_csv_non_numeric_feature_columns_named(tmp_path) -> None:
    path = tmp_path / "text.csv"
    path.write_text("x,colour,size,label\n1,red,s,0\n2,blue,m,1\n3,red,l,0\n4,blue,s,1\n")
    with pytest.raises(DataError, match="non-numeric") as err:
        load_dataset(str(path))
    msg = str(err.value)
    assert "colour" in msg and "size" in msg and "x," not in msg


def test_class_with_single_sample_cannot_be_stratified() -> None:
    X, _ = _blobs(n=21)
    y = np.array([0] * 10 + [1] * 10 + [2])
    with pytest.raises(DataError, match="'2' have only 1"):
        make_split(X, y, name="m")


def test_val_set_too_small_for_all_classes() -> None:
    X, y = _blobs(n=30, n_classes=3)
    with pytest.raises(DataError, match="one per class"):
        make_split(X, y, name="m", val_fraction=0.05)


def test_bad_seed_type() -> None:
    with pytest.raises(ConfigError, match="split_seed"):
        load_dataset("iris", split_seed=1.5)
