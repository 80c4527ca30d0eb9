"""Tests of dit_core.explore, the computations behind the dashboard.

A tiny real run (iris, logistic regression, 6 epochs, 20% corrupted labels) is recorded once
per session; the bundled sample run covers image-shaped data. Fast paths are compared with
slow, obvious loops over the contribution tensor.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dit_core as dit
from dit_core import explore as ex

SAMPLE = Path(__file__).resolve().parents[1] / "sample_runs" / "digits_mlp_corrupt20"
needs_sample = pytest.mark.skipif(not (SAMPLE / "manifest.json").exists(), reason="bundled sample run sample_runs/digits_mlp_corrupt20 is missing")
RTOL, ATOL = 1e-6, 1e-12


@pytest.fixture(scope="session")
def iris_path(tmp_path_factory, record_iris) -> Path:
    return record_iris(tmp_path_factory.mktemp("explore") / "iris")


@pytest.fixture(scope="session")
def iris(iris_path) -> dit.Run:
    return ex.open_run(iris_path)


@pytest.fixture(scope="session")
def digits() -> dit.Run:
    if not (SAMPLE / "manifest.json").exists():
        pytest.skip("bundled sample run sample_runs/digits_mlp_corrupt20 is missing")
    return ex.open_run(SAMPLE)


# ----------------------------------------------------------------------------- references
def ref_window(run: dit.Run, start: int, stop: int) -> np.ndarray:
    C = np.asarray(run.contributions("val_loss"), dtype=np.float64)  # (n, E, K)
    s = run.sample_step
    out = np.zeros(run.n_train)
    for j in range(run.n_train):
        for e in range(run.n_epochs):
            if start <= s[j, e] < stop:
                out[j] += C[j, e, -1]
    return out


def ref_cumulative(run: dit.Run, k: int) -> np.ndarray:
    C = np.asarray(run.contributions("val_loss"), dtype=np.float64)
    c = run.checkpoints[k]
    s = run.sample_step
    return np.array([sum(C[j, e, k] for e in range(run.n_epochs) if s[j, e] < c) for j in range(run.n_train)])


# ----------------------------------------------------------------------------- runs
def test_find_runs_lists_run_directories(tmp_path, iris_path):
    assert ex.find_runs(tmp_path / "nope") == []
    (tmp_path / "not_a_run").mkdir()
    shutil.copytree(iris_path, tmp_path / "b_run")
    shutil.copytree(iris_path, tmp_path / "a_run")
    assert [p.name for p in ex.find_runs(tmp_path)] == ["a_run", "b_run"]


def test_open_run_reports_bad_runs_clearly(tmp_path, iris_path):
    with pytest.raises(dit.ConfigError, match="no run directory"):
        ex.open_run("  ")
    with pytest.raises(dit.RunNotFoundError, match="does not exist"):
        ex.open_run(tmp_path / "missing")
    half = tmp_path / "half"
    shutil.copytree(iris_path, half)
    (half / "manifest.json").unlink()
    with pytest.raises(dit.RunIncompleteError, match="half-written"):
        ex.open_run(half)
    old = tmp_path / "old"
    shutil.copytree(iris_path, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 99
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(dit.FormatVersionError, match="version 99"):
        ex.open_run(old)
    damaged = tmp_path / "damaged"
    shutil.copytree(iris_path, damaged)
    np.save(damaged / "sample_step.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(dit.RunIncompleteError, match=r"sample_step\.npy has shape \(3, 2\)"):
        ex.open_run(damaged)
    garbage = tmp_path / "garbage"
    shutil.copytree(iris_path, garbage)
    (garbage / "samples.parquet").write_bytes(b"not parquet")
    with pytest.raises(dit.RunIncompleteError, match="could not be read"):
        ex.open_run(garbage)


def test_open_run_needs_influence(tmp_path, record_iris):
    path = record_iris(tmp_path / "raw", compute=False)
    with pytest.raises(dit.InfluenceNotComputedError, match="dit compute"):
        ex.open_run(path)


def test_run_stamp_changes_with_manifest(tmp_path, iris_path):
    p = tmp_path / "r"
    shutil.copytree(iris_path, p)
    s1 = ex.run_stamp(p)
    m = p / "manifest.json"
    st = m.stat()
    import os

    os.utime(m, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    s2 = ex.run_stamp(p)
    assert s1[0] == s2[0] == str(p.resolve()) and s1 != s2


def test_run_summary_shows_optimizer(iris):
    s = ex.run_summary(iris)
    assert s["optimizer"].startswith(iris.manifest["optimizer"]["name"])
    assert (s["n_train"], s["n_epochs"], s["n_steps"]) == (iris.n_train, iris.n_epochs, iris.n_steps)
    assert s["n_corrupted"] == int(iris.samples["is_corrupted"].sum()) > 0


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize(
    "x0, x1, expect",
    [(10.2, 20.7, (10, 21)), (20.7, 10.2, (10, 21)), (-5, 30, (0, 30)), (40, 99, (40, 48)), (47.9, 48.5, (47, 48)), (3.0, 3.0, (3, 4))],
)
def test_window_from_range(x0, x1, expect):
    assert ex.window_from_range(x0, x1, 48) == expect


def test_window_from_range_rejects_nan():
    with pytest.raises(dit.ConfigError, match="not finite"):
        ex.window_from_range(float("nan"), 3, 10)


@pytest.mark.parametrize(
    "start, stop, expect",
    [(0, 8, (0, 8)), (3, 13, (0, 16)), (5, 20, (8, 16)), (5, 21, (8, 24)), (4, 12, (0, 8)), (47, 48, (40, 48)), (48, 48, (40, 48)), (9, 10, (8, 16))],
)
def test_snap_to_checkpoints(start, stop, expect):
    cps = [8, 16, 24, 32, 40, 48]
    a, b = ex.snap_to_checkpoints(start, stop, cps)
    assert (a, b) == expect and a < b and b in cps and (a == 0 or a in cps)


def test_convergence_window_is_last_fifth_in_epochs(iris, digits):
    assert ex.convergence_window(iris) == (int(iris.epoch_end_steps[-3]), iris.n_steps)  # ceil(0.2*6)=2 epochs
    assert ex.convergence_window(digits) == (1080, 1350)  # last 6 of 30 epochs


@pytest.mark.parametrize("window", [(0, 48), (5, 21), (30, 31), (40, 48)])
def test_window_scores_match_reference(iris, window):
    got = ex.window_scores(iris, *window)
    np.testing.assert_allclose(got, ref_window(iris, *window), rtol=RTOL, atol=ATOL)


def test_accrued_scores_match_reference(iris):
    cps = list(iris.checkpoints)
    got = ex.window_scores(iris, 17, 30, mode="accrued")  # snaps to (16, 32)
    a, b = cps.index(16), cps.index(32)
    np.testing.assert_allclose(got, ref_cumulative(iris, b) - ref_cumulative(iris, a), rtol=1e-5, atol=1e-12)
    first = ex.window_scores(iris, 0, 8, mode="accrued")
    np.testing.assert_allclose(first, ref_cumulative(iris, 0), rtol=1e-5, atol=1e-12)


def test_top_k_matches_sort_with_ties_and_nan():
    s = np.array([0.5, 3.0, np.nan, 3.0, -1.0, 2.0, 3.0, -7.0])
    assert ex.top_k(s, 3).tolist() == [1, 3, 6]
    assert ex.top_k(s, 4).tolist() == [1, 3, 6, 5]
    assert ex.top_k(s, 2, largest=False).tolist() == [7, 4]
    assert ex.top_k(s, 100).tolist() == [1, 3, 6, 5, 0, 4, 7]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50, 1000).astype(float)
    ref = np.lexsort((np.arange(1000), -x))[:37]
    assert ex.top_k(x, 37).tolist() == ref.tolist()


def test_rank_window_lists(digits):
    r = ex.rank_window(digits, 1080, 1350, k=10)
    ref = digits.window_influence(1080, 1350)
    assert (r.start, r.stop, r.mode) == (1080, 1350, "window")
    np.testing.assert_array_equal(r.scores, ref)
    assert r.helpful.tolist() == np.argsort(-ref, kind="stable")[:10].tolist()
    assert r.harmful.tolist() == np.argsort(ref, kind="stable")[:10].tolist()
    assert (ref[r.helpful] > 0).all() and (ref[r.harmful] < 0).all()
    # corrupted labels dominate the most harmful samples of the convergence window
    corrupt = ex.corruption_mask(digits)
    assert corrupt[r.harmful].mean() >= 0.8 > corrupt.mean()


def test_rank_window_accrued_snaps(digits):
    r = ex.rank_window(digits, 1000, 1300, mode="accrued", k=5)
    assert (r.start, r.stop) == (990, 1305)
    np.testing.assert_allclose(r.scores, digits.accrued_influence(990, 1305))


def test_influence_summary_totals(iris):
    for mode in ex.MODES:
        summ = ex.influence_summary(iris, mode)
        P = ex.period_influence(iris, mode)
        assert len(summ) == P.shape[1]
        np.testing.assert_allclose(summ["helpful"] + summ["harmful"], P.sum(axis=0), rtol=1e-9, atol=1e-15)
        assert (summ["helpful"] >= 0).all() and (summ["harmful"] <= 0).all()
        assert (summ["harmful_corrupted"] >= summ["harmful"] - 1e-15).all()
    # window mode: the epochs add up to the whole-run window influence of every sample
    P = ex.period_influence(iris, "window")
    np.testing.assert_allclose(P.sum(axis=1), iris.window_influence(0, iris.n_steps), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(P[:, 2], ref_window(iris, 16, 24), rtol=RTOL, atol=ATOL)


def test_early_late_add_up(iris):
    early, late, split = ex.early_late(iris, 20)
    assert split == 20
    np.testing.assert_allclose(early + late, iris.window_influence(0, iris.n_steps), rtol=1e-5, atol=1e-12)
    early, late, split = ex.early_late(iris, 21, mode="accrued")
    assert split == 24
    np.testing.assert_allclose(early + late, iris.influence_at(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(early, ref_cumulative(iris, 2), rtol=1e-5, atol=1e-12)


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(size=200)
    b[5] = np.nan
    c = ex.correlations(a, b)
    ok = np.isfinite(b)
    assert c["n"] == 199
    assert c["pearson"] == pytest.approx(stats.pearsonr(a[ok], b[ok]).statistic)
    assert c["kendall_tau"] == pytest.approx(stats.kendalltau(a[ok], b[ok]).statistic)
    assert c["spearman"] == pytest.approx(stats.spearmanr(a[ok], b[ok]).statistic)
    assert math.isnan(ex.correlations(a, np.ones(200))["pearson"])


# ----------------------------------------------------------------------------- sample data
def test_thumbnail_shapes_and_scaling():
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    t = ex.thumbnail(x, size=56)
    assert t.shape == (56, 56) and t.dtype == np.uint8 and t.min() == 0 and t.max() == 255
    assert (t[:7, :7] == 0).all() and (t[-7:, -7:] == 255).all()  # nearest-neighbour blocks
    assert ex.thumbnail(np.random.default_rng(0).random((3, 4, 4)), size=16).shape == (16, 16, 3)
    assert ex.thumbnail(np.zeros((5, 5)), size=10).shape == (10, 10)
    with pytest.raises(dit.DataError, match="image-shaped"):
        ex.thumbnail(np.zeros(5))


def test_is_image_data(digits, iris):
    assert ex.is_image_data(digits.X_train) and not ex.is_image_data(iris.X_train)


def test_sample_table_tabular_features_follow_ids(iris):
    ids = [17, 3, 99]
    scores = np.arange(iris.n_train) * 0.5
    t = ex.sample_table(iris, ids, scores)
    assert t["sample_id"].tolist() == ids and t["score"].tolist() == [8.5, 1.5, 49.5]
    names = ex.feature_names(iris)
    assert names[0] == "sepal length (cm)"
    np.testing.assert_allclose(t[names].to_numpy(), np.asarray(iris.X_train)[ids])
    assert t["label"].tolist() == iris.y_train[ids].tolist()


def test_downsample_preserves_means():
    x = np.arange(10_000, dtype=float)
    y = np.sin(x / 100)
    xs, ys = ex.downsample(x, y, 100)
    assert xs.size == ys.size == 100
    assert xs[0] == pytest.approx(49.5) and ys.mean() == pytest.approx(y.mean())
    assert ex.downsample(x[:50], y[:50], 100)[0].size == 50


# ----------------------------------------------------------------------------- trajectories
def _three_groups(n_per=40, K=12, seed=0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, K)
    shapes = [np.exp(-5 * t), np.exp(-5 * (1 - t)), 0.6 * np.ones(K)]
    T = np.vstack([s + 0.05 * rng.normal(size=(n_per, K)) for s in shapes]) * 1e-4
    truth = np.repeat(np.arange(3), n_per)
    return T, truth


def test_cluster_trajectories_recovers_groups():
    from sklearn.metrics import adjusted_rand_score

    T, truth = _three_groups()
    labels = ex.cluster_trajectories(ex.trajectory_features(T, "scale"), 3)
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    sizes = np.bincount(ex.cluster_trajectories(np.r_[T, T[:10]], 3))
    assert (np.diff(sizes) <= 0).all()  # numbered by size


def test_trajectory_features_normalisations():
    T, _ = _three_groups()
    assert ex.trajectory_features(T, "scale").std() == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(ex.trajectory_features(T, "shape"), axis=1), 1.0)
    with pytest.raises(dit.ConfigError, match="normalize"):
        ex.trajectory_features(T, "zscore")


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_embedding_keeps_groups_apart(method):
    T, truth = _three_groups()
    emb = ex.embed_trajectories(ex.trajectory_features(T, "scale"), method=method, n_neighbors=10)
    assert emb.shape == (T.shape[0], 2) and np.isfinite(emb).all()
    cent = np.array([emb[truth == g].mean(axis=0) for g in range(3)])
    spread = max(np.linalg.norm(emb[truth == g] - cent[g], axis=1).mean() for g in range(3))
    gaps = [np.linalg.norm(cent[a] - cent[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_subsample_ids():
    assert ex.subsample_ids(10, 20).tolist() == list(range(10))
    ids = ex.subsample_ids(1000, 50, keep=[7, 999])
    assert ids.size == 50 and {7, 999} <= set(ids.tolist()) and (np.diff(ids) > 0).all()
    assert ex.subsample_ids(1000, 50, seed=3).tolist() == ex.subsample_ids(1000, 50, seed=3).tolist()


def test_patterns_and_profiles(digits):
    T = digits.trajectories("window")
    pat = ex.trajectory_patterns(T)
    assert pat.shape == (digits.n_train,) and set(pat) <= set(ex.PATTERNS)
    prof = ex.group_profiles(T, pat)
    for p in set(pat):
        got = prof[prof["group"] == p]["mean"].to_numpy()
        np.testing.assert_allclose(got, T[pat == p].mean(axis=0))


def test_histogram_counts_share_bins_and_count_every_finite_value():
    rng = np.random.default_rng(0)
    v = rng.normal(size=1000)
    v[:3] = [np.nan, np.inf, -np.inf]
    a = rng.random(1000) < 0.3
    edges, counts = ex.histogram_counts(v, {"a": a, "b": ~a}, bins=20)
    assert edges.shape == (21,) and edges[0] == np.nanmin(v[3:]) and edges[-1] == np.nanmax(v[3:])
    assert counts["a"].sum() == (a[3:]).sum() and counts["b"].sum() == (~a[3:]).sum()
    np.testing.assert_array_equal(counts["a"], np.histogram(v[3:][a[3:]], bins=edges)[0])
    # one distinct value and no finite value still give usable bins
    edges, counts = ex.histogram_counts(np.full(5, 2.0), {"all": np.ones(5, bool)}, bins=4)
    assert edges[0] < 2.0 < edges[-1] and counts["all"].sum() == 5
    edges, counts = ex.histogram_counts(np.full(3, np.nan), {"all": np.ones(3, bool)})
    assert counts["all"].sum() == 0


def test_group_table_counts_shares_and_main_pattern():
    groups = np.array([2, 0, 2, 2, 0, 5])
    corrupted = np.array([True, False, False, True, False, False])
    pat = np.array(["stable", "fluctuating", "stable", "late bloomer", "fluctuating", "stable"])
    t = ex.group_table(groups, [0, 2, 5, 9], corrupted=corrupted, patterns=pat, name="cluster")
    assert t["cluster"].tolist() == [0, 2, 5, 9] and t["samples"].tolist() == [2, 3, 1, 0]
    np.testing.assert_allclose(t["corrupted share"].to_numpy()[:3], [0.0, 2 / 3, 0.0])
    assert math.isnan(t["corrupted share"].iloc[3])
    assert t["main pattern"].tolist() == ["fluctuating", "stable", "stable", ""]
    assert list(ex.group_table(groups, [0], name="g").columns) == ["g", "samples"]


def test_trajectory_bounds_follow_the_checkpoints_not_the_epochs(iris_path, tmp_path):
    """Custom checkpoints, as many as there are epochs but not at epoch ends: the trajectories'
    columns are the checkpoint intervals, and so are the bounds the pages draw them with."""
    copy = tmp_path / "custom"
    shutil.copytree(iris_path, copy)
    run = dit.load_run(copy)
    T, E = run.n_steps, run.n_epochs
    cps = sorted({max(1, int(round(T * (k + 0.5) / E))) for k in range(E - 1)} | {T})
    run = dit.compute(copy, checkpoints=cps, overwrite=True, progress=False)
    assert len(run.checkpoints) == run.n_epochs and run.checkpoints.tolist() != run.epoch_end_steps.tolist()
    bounds = ex.trajectory_bounds(run)
    assert bounds.tolist() == [0, *run.checkpoints.tolist()]
    W = run.trajectories("window")
    for k in range(len(run.checkpoints)):  # column k = removal during [bounds[k], bounds[k+1])
        np.testing.assert_allclose(W[:, k], run.window_influence(int(bounds[k]), int(bounds[k + 1])), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- flags
def test_available_and_default_signals(digits):
    sigs = ex.available_signals(digits)
    assert "dit_window" in sigs and "dit_convergence" in sigs
    assert ex.default_signal(digits) in sigs
    assert all("suspicious" in d for d in sigs.values())


def test_signal_scores_orientation(digits):
    w = (450, 900)
    live = ex.signal_scores(digits, "dit_window", window=w)
    np.testing.assert_allclose(live, -digits.window_influence(*w))
    conv = ex.signal_scores(digits, "dit_convergence")
    np.testing.assert_allclose(conv, -digits.window_influence(1080, 1350), rtol=1e-12)
    assert ex.signal_window(digits, "dit_window", (100, 500), mode="accrued") == (90, 495)
    assert ex.signal_window(digits, "dit_convergence", w) == (1080, 1350)
    with pytest.raises(dit.ConfigError, match="dit_window"):
        ex.signal_scores(digits, "dit_window")
    with pytest.raises(dit.ConfigError, match="not available"):
        ex.signal_scores(digits, "no_such_signal")


def test_parse_sample_ids():
    assert ex.parse_sample_ids(" 3, 17 42;3\n10-12", 100).tolist() == [3, 10, 11, 12, 17, 42]
    assert ex.parse_sample_ids("", 10).size == 0
    with pytest.raises(dit.ConfigError, match="out of range.*ids 0..99"):
        ex.parse_sample_ids("5, 100", 100)
    with pytest.raises(dit.ConfigError, match="'abc' is not a sample id"):
        ex.parse_sample_ids("1, abc", 100)
    with pytest.raises(dit.ConfigError, match="backwards"):
        ex.parse_sample_ids("9-3", 100)


def test_select_flags():
    s = np.array([0.1, 0.9, np.nan, 0.5, 0.7, 0.2])
    assert np.flatnonzero(ex.select_flags(s, k=2)).tolist() == [1, 4]
    assert np.flatnonzero(ex.select_flags(s, method="threshold", threshold=0.4)).tolist() == [1, 3, 4]
    # at or above: a threshold equal to a score (e.g. a quantile of tied scores) flags it
    assert np.flatnonzero(ex.select_flags(s, method="threshold", threshold=0.5)).tolist() == [1, 3, 4]
    ties = np.array([30.0, 30.0, 2.0, 30.0])
    assert np.flatnonzero(ex.select_flags(ties, method="threshold", threshold=float(np.quantile(ties, 0.9)))).tolist() == [0, 1, 3]
    with pytest.raises(dit.ConfigError, match="threshold=nan must be a finite number"):
        ex.select_flags(s, method="threshold", threshold=float("nan"))
    assert np.flatnonzero(ex.select_flags(s, k=2, include=[0, 2], exclude=[1, 2])).tolist() == [0, 4]
    with pytest.raises(dit.ConfigError, match="outside 0..5"):
        ex.select_flags(s, include=[6])
    with pytest.raises(dit.ConfigError, match="method"):
        ex.select_flags(s, method="best")


def test_flag_metrics_against_counts():
    rng = np.random.default_rng(0)
    c = rng.random(500) < 0.2
    s = c * 1.0 + rng.normal(size=500)
    f = ex.select_flags(s, k=100)
    m = ex.flag_metrics(f, c, s)
    tp = int((f & c).sum())
    assert m["true_positives"] == tp and m["precision"] == tp / 100 and m["recall"] == tp / c.sum()
    assert m["f1"] == pytest.approx(2 * m["precision"] * m["recall"] / (m["precision"] + m["recall"]))
    from sklearn.metrics import roc_auc_score

    assert m["auroc"] == pytest.approx(roc_auc_score(c, s))
    assert math.isnan(ex.flag_metrics(np.zeros(500, bool), c)["precision"])


def test_flag_table_and_export_roundtrip(digits):
    s = ex.signal_scores(digits, "dit_window", window=(450, 900))
    f = ex.select_flags(s, k=25, include=[0], exclude=[int(np.argmax(s))])
    tab = ex.flag_table(digits, f, s, signal="dit_window", window=(450, 900))
    assert list(tab.columns) == list(ex.EXPORT_COLUMNS) and len(tab) == 25
    assert set(tab["sample_id"]) == set(np.flatnonzero(f))
    assert (np.diff(tab["rank"]) > 0).all() and (np.diff(tab["score"]) <= 0).all()
    assert tab["rank"].iloc[0] == 2  # rank 1 was excluded by hand
    assert tab["label"].tolist() == digits.y_train[tab["sample_id"]].tolist()
    assert (tab["window_start"] == 450).all() and (tab["run_id"] == digits.run_id).all()

    csv = pd.read_csv(io.BytesIO(ex.export_bytes(tab, "csv")))
    js = pd.DataFrame(json.loads(ex.export_bytes(tab, "json")))
    pq = pd.read_parquet(io.BytesIO(ex.export_bytes(tab, "parquet")))
    for got in (csv, js, pq):
        assert list(got.columns) == list(ex.EXPORT_COLUMNS)
        assert got["sample_id"].tolist() == tab["sample_id"].tolist()
        np.testing.assert_allclose(got["score"].to_numpy(dtype=float), tab["score"].to_numpy(), rtol=1e-9)  # JSON keeps 15 digits
        assert got["window_stop"].tolist() == [900] * 25 and got["signal"].tolist() == ["dit_window"] * 25
    with pytest.raises(dit.ConfigError, match="fmt"):
        ex.export_bytes(tab, "xlsx")


def test_flag_table_without_window_exports_nulls(iris):
    s = np.linspace(0, 1, iris.n_train)
    tab = ex.flag_table(iris, ex.select_flags(s, k=3), s, signal="aum", window=None)
    assert tab["window_start"].isna().all()
    js = json.loads(ex.export_bytes(tab, "json"))
    assert js[0]["window_start"] is None and js[0]["sample_id"] == iris.n_train - 1
