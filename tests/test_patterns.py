"""The four-pattern rule (dit_core.patterns) on hand-made trajectories."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dit_core.errors import ConfigError, DataError
from dit_core.patterns import PATTERNS, classify_patterns, mann_kendall, sign_flips

K = 10


def _background(n: int = 300, seed: int = 0) -> np.ndarray:
    """Ordinary samples: positive influence around 1 with iid noise, no trend."""
    return np.random.default_rng(seed).normal(1.0, 0.3, size=(n, K))


def _handmade() -> dict[str, np.ndarray]:
    ramp = np.linspace(8.0, 0.0, K)
    return {
        "early": ramp,  # strong early, fades
        "early_harmful": -ramp,  # hurts early, fades: still an early influencer
        "late": ramp[::-1].copy(),  # nothing early, strong late
        "flat": np.full(K, 3.0),  # steady
        "alternating": np.array([4.0, -4.0] * (K // 2)),  # helps, hurts, helps, ...
    }


def _classify(rows: dict[str, np.ndarray], background: np.ndarray | None = None) -> dict[str, str]:
    bg = _background() if background is None else background
    labels = classify_patterns(np.vstack([*rows.values(), bg]))
    return dict(zip(rows, labels[: len(rows)]))


def test_pattern_names_are_the_papers_four():
    assert PATTERNS == ("stable", "early influencer", "late bloomer", "fluctuating")


def test_handmade_trajectories_get_their_pattern():
    got = _classify(_handmade())
    assert got == {
        "early": "early influencer",
        "early_harmful": "early influencer",
        "late": "late bloomer",
        "flat": "stable",
        "alternating": "fluctuating",
    }


def test_output_is_one_known_label_per_row():
    T = np.vstack([*_handmade().values(), _background(50)])
    labels = classify_patterns(T)
    assert labels.shape == (len(T),)
    assert labels.dtype.kind == "U"
    assert set(labels) <= set(PATTERNS)


def test_pure_noise_is_mostly_stable_at_the_significance_level():
    T = np.random.default_rng(1).normal(0.5, 1.0, size=(4000, K))
    labels = classify_patterns(T, min_flips=K)  # only the trend test can fire below
    share_trend = np.mean((labels == "early influencer") | (labels == "late bloomer"))
    # Mann-Kendall with continuity correction is slightly conservative: expect a bit under alpha
    assert 0.01 < share_trend < 0.07
    assert abs(np.mean(labels == "early influencer") - np.mean(labels == "late bloomer")) < 0.02


def test_rule_is_invariant_to_rescaling_an_epoch():
    rng = np.random.default_rng(2)
    T = np.vstack([*_handmade().values(), _background(200)])
    scale = rng.uniform(0.01, 100.0, size=K)  # each epoch's influence on its own scale
    np.testing.assert_array_equal(classify_patterns(T), classify_patterns(T * scale))


def test_small_sign_noise_below_the_floor_is_not_fluctuating():
    bg = _background()
    rms = np.sqrt((bg**2).mean(axis=0))
    steady = np.full(K, 2.0)
    steady[[1, 3, 5, 7]] = -0.05 * rms[[1, 3, 5, 7]]  # tiny negative blips, below 0.1 * rms
    assert _classify({"steady": steady}, bg)["steady"] == "stable"
    loud = steady.copy()
    loud[[1, 3, 5, 7]] = -2.0
    assert _classify({"loud": loud}, bg)["loud"] == "fluctuating"


def test_fluctuating_needs_enough_flips():
    one_flip = np.r_[np.full(5, 2.0), np.full(5, -2.0)]  # one sign change: not fluctuating
    assert _classify({"x": one_flip})["x"] != "fluctuating"
    flips, pairs = sign_flips(np.vstack([one_flip, _handmade()["alternating"], np.ones(K)]))
    assert flips.tolist() == [1, K - 1, 0]
    assert pairs.tolist() == [K - 1, K - 1, K - 1]


def test_too_few_windows_for_a_trend():
    T = np.vstack([[8.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 8.0], np.random.default_rng(3).normal(1, 0.3, (100, 4))])
    labels = classify_patterns(T)
    assert not np.isin(labels, ["early influencer", "late bloomer"]).any()


def test_mann_kendall_matches_a_direct_computation():
    rng = np.random.default_rng(4)
    M = rng.normal(size=(20, 9))
    M[0] = np.arange(9.0)  # perfectly increasing
    M[1, 3:6] = M[1, 2]  # ties
    S, tau, p = mann_kendall(M)
    for i, row in enumerate(M):
        s = sum(np.sign(row[b] - row[a]) for a in range(9) for b in range(a + 1, 9))
        assert S[i] == s
        if i != 1:  # without ties tau equals scipy's Kendall tau against time
            assert tau[i] == pytest.approx(stats.kendalltau(np.arange(9), row).statistic)
    var = 9 * 8 * (2 * 9 + 5) / 18
    assert p[0] == pytest.approx(2 * stats.norm.sf((S[0] - 1) / np.sqrt(var)))
    _, counts = np.unique(M[1], return_counts=True)
    var_tied = var - sum(c * (c - 1) * (2 * c + 5) for c in counts) / 18
    assert p[1] == pytest.approx(2 * stats.norm.sf((abs(S[1]) - 1) / np.sqrt(var_tied)))
    assert mann_kendall(np.ones((2, 6)))[2].tolist() == [1.0, 1.0]  # constant rows: no evidence


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.ones(5), "2-D"),
        (np.ones((1, 5)), "at least 2"),
        (np.ones((4, 0)), "0 windows"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
    ],
)
def test_bad_input_is_named(bad, match):
    with pytest.raises(DataError, match=match):
        classify_patterns(bad)


@pytest.mark.parametrize("kw", [{"alpha": 0}, {"alpha": 1.5}, {"flip_ratio": 0}, {"min_flips": 0}, {"noise_floor": -1}])
def test_bad_options_are_named(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        classify_patterns(np.ones((3, 6)), **kw)
