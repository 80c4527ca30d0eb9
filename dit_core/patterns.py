"""The four influence patterns the DIT paper names, by a documented rule.

Xu & Wu (arXiv 2502.10793) describe samples whose influence is *stable* over training,
*early influencers* (they matter most early on), *late bloomers* (they matter most late)
and *fluctuating* samples (their influence keeps changing sign). The paper gives no
operational rule; :func:`classify_patterns` is ours, stated exactly in its docstring so
that numbers computed with it can be reproduced.

Sign convention: positive influence = removing the sample would raise the query. For a
loss query positive means the sample helped, negative means it hurt.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError, DataError

PATTERNS = ("stable", "early influencer", "late bloomer", "fluctuating")

_STABLE, _EARLY, _LATE, _FLUCT = PATTERNS


def robust_zscore_columns(T: np.ndarray) -> np.ndarray:
    """Per-column (per-window) robust z-score across samples, (n, K) -> (n, K).

    ``Z[:, k] = (T[:, k] - median_k) / scale_k`` with ``scale_k = 1.4826 * MAD_k`` (the
    median absolute deviation, scaled to equal the standard deviation for normal data);
    where the MAD is 0 the standard deviation is used, and a constant column becomes 0.
    Median and MAD keep a few very influential samples from setting every other sample's
    scale (influence is heavy-tailed).
    """
    T = np.asarray(T, dtype=np.float64)
    med = np.median(T, axis=0, keepdims=True)
    scale = 1.4826 * np.median(np.abs(T - med), axis=0, keepdims=True)
    std = T.std(axis=0, keepdims=True)
    scale = np.where(scale > 0, scale, std)
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, (T - med) / safe, 0.0)


def mann_kendall(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mann–Kendall trend test of every row of ``M`` against its column index.

    Parameters
    ----------
    M : ndarray (n, K)

    Returns
    -------
    S : ndarray (n,)
        ``sum_{a<b} sign(M[:, b] - M[:, a])``; positive = increasing.
    tau : ndarray (n,)
        ``S / (K (K - 1) / 2)``, in [-1, 1].
    p : ndarray (n,)
        Two-sided p-value from the normal approximation with continuity correction and
        the tie correction of the variance; 1 where the variance is 0 (a constant row).
    """
    M = np.asarray(M, dtype=np.float64)
    n, K = M.shape
    S = np.zeros(n)
    for a in range(K - 1):
        S += np.sign(M[:, a + 1 :] - M[:, a : a + 1]).sum(axis=1)
    n_pairs = K * (K - 1) / 2
    tau = S / n_pairs if n_pairs > 0 else np.zeros(n)
    var = np.full(n, K * (K - 1) * (2 * K + 5) / 18.0)
    if K > 1:
        srt = np.sort(M, axis=1)
        tied_rows = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        for i in tied_rows:
            _, counts = np.unique(srt[i], return_counts=True)
            counts = counts[counts > 1].astype(np.float64)
            var[i] -= float((counts * (counts - 1) * (2 * counts + 5)).sum()) / 18.0
    z = np.zeros(n)
    ok = var > 0
    z[ok] = (S[ok] - np.sign(S[ok])) / np.sqrt(var[ok])
    p = np.ones(n)
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    if ok.any():
        p[ok] = erfc(np.abs(z[ok]) / math.sqrt(2.0))
    return S, tau, p


def sign_flips(trajectories: np.ndarray, *, noise_floor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Sign changes of each row between consecutive *clear* entries.

    An entry ``T[i, k]`` is clear when ``|T[i, k]| >= noise_floor * rms_k``, with
    ``rms_k = sqrt(mean_i T[i, k]**2)`` the epoch's scale; entries below it are skipped
    (treated as "no sign"), so noise around zero does not count as flipping.

    Returns
    -------
    flips : ndarray (n,) of int
        Number of sign changes between consecutive clear entries.
    pairs : ndarray (n,) of int
        Number of consecutive clear pairs (clear entries minus one, at least 0).
    """
    T = np.asarray(trajectories, dtype=np.float64)
    rms = np.sqrt((T**2).mean(axis=0, keepdims=True))
    sgn = np.sign(T) * (np.abs(T) >= noise_floor * rms) * (rms > 0)
    n, K = T.shape
    flips = np.zeros(n, dtype=np.int64)
    clear = np.zeros(n, dtype=np.int64)
    last = np.zeros(n)
    for k in range(K):
        s = sgn[:, k]
        has = s != 0
        flips += (has & (last != 0) & (s != last)).astype(np.int64)
        last = np.where(has, s, last)
        clear += has
    return flips, np.maximum(clear - 1, 0)


def classify_patterns(
    trajectories: np.ndarray,
    *,
    alpha: float = 0.05,
    flip_ratio: float = 0.5,
    min_flips: int = 2,
    noise_floor: float = 0.1,
) -> np.ndarray:
    """Assign each sample one of :data:`PATTERNS` from its influence trajectory.

    Parameters
    ----------
    trajectories : ndarray (n, K)
        One row per sample, one column per training window in time order — normally the
        per-epoch window influence ``run.trajectories("window")`` (removal during epoch k,
        measured at the last checkpoint). Needs ``n >= 2`` samples (the rule compares each
        sample with its peers) and finite values.
    alpha : float, default 0.05
        Significance level of the trend test.
    flip_ratio : float, default 0.5
        Smallest share of sign changes, among consecutive clear entries, for "fluctuating".
    min_flips : int, default 2
        Smallest number of sign changes for "fluctuating".
    noise_floor : float, default 0.1
        Entries with ``|T[i, k]| < noise_floor * rms_k`` (``rms_k`` = root mean square of
        column k over all samples) carry no sign for the flip count.

    Returns
    -------
    ndarray (n,) of str
        Each entry one of ``"stable"``, ``"early influencer"``, ``"late bloomer"``,
        ``"fluctuating"``.

    Notes
    -----
    The rule, applied in this order:

    1. **Fluctuating** — count the sign changes of the raw trajectory ``T[i, :]`` between
       consecutive clear entries (see ``noise_floor``; signs use the convention positive =
       helped, negative = hurt for a loss query). If ``flips >= min_flips`` and
       ``flips / pairs >= flip_ratio`` (``pairs`` = number of clear entries − 1), the
       sample is fluctuating.
    2. **Trend** — z-score every column across samples with robust statistics,
       ``Z[:, k] = (T[:, k] − median_k) / (1.4826 · MAD_k)`` (MAD = median absolute
       deviation; the standard deviation where the MAD is 0; a constant column becomes 0;
       see :func:`robust_zscore_columns`), so each epoch is measured against its peers
       regardless of how the overall influence scale shrinks or grows, and a few extreme
       samples do not set everyone else's scale. Take the
       magnitude ``|Z[i, :]|`` ("how unusually much does the sample matter in epoch k")
       and run the two-sided Mann–Kendall trend test on it against k (normal
       approximation with continuity and tie corrections). If ``p < alpha`` and the
       Kendall statistic is negative, the sample is an **early influencer**; if ``p <
       alpha`` and it is positive, a **late bloomer**.
    3. Otherwise **stable**.

    At ``alpha = 0.05`` the test needs ``K >= 5`` windows to reach significance; with
    fewer, no sample is early or late. With pure noise about ``alpha`` of the samples are
    labelled early or late by chance (that is what a significance level means).
    """
    T = np.asarray(trajectories)
    if T.ndim != 2:
        raise DataError(f"trajectories must be a 2-D array (n_samples, n_windows); got shape {T.shape}")
    if not np.issubdtype(T.dtype, np.number) or np.issubdtype(T.dtype, np.complexfloating):
        raise DataError(f"trajectories must be real numbers; got dtype {T.dtype}")
    T = T.astype(np.float64)
    n, K = T.shape
    if n < 2:
        raise DataError(f"trajectories has {n} row(s); the rule z-scores each window across samples and needs at least 2")
    if K < 1:
        raise DataError("trajectories has 0 windows (columns)")
    if not np.isfinite(T).all():
        bad = int((~np.isfinite(T)).sum())
        raise DataError(f"trajectories contains {bad} NaN or infinite value(s)")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha} must be in (0, 1)")
    if not 0 < flip_ratio <= 1:
        raise ConfigError(f"flip_ratio={flip_ratio} must be in (0, 1]")
    if min_flips < 1:
        raise ConfigError(f"min_flips={min_flips} must be >= 1")
    if noise_floor < 0:
        raise ConfigError(f"noise_floor={noise_floor} must be >= 0")

    out = np.full(n, _STABLE, dtype=object)
    if K >= 2:
        _, tau, p = mann_kendall(np.abs(robust_zscore_columns(T)))
        sig = p < alpha
        out[sig & (tau < 0)] = _EARLY
        out[sig & (tau > 0)] = _LATE
        flips, pairs = sign_flips(T, noise_floor=noise_floor)
        fluct = (flips >= min_flips) & (flips >= flip_ratio * np.maximum(pairs, 1))
        out[fluct] = _FLUCT
    return out.astype(str)


__all__ = ["PATTERNS", "classify_patterns", "mann_kendall", "robust_zscore_columns", "sign_flips"]
