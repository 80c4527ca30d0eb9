"""Flags page: choose a suspicion score, flag by threshold or top-k, adjust by hand, export."""

import math

import numpy as np
import streamlit as st

from dashboard import charts, components, state
from dit_core import DITError
from dit_core import explore as ex


def _reset_threshold() -> None:
    st.session_state.pop("flag_threshold", None)


def _ids(key: str, n: int) -> np.ndarray:
    try:
        return ex.parse_sample_ids(st.session_state.get(key, ""), n)
    except DITError as exc:
        st.error(f"{exc}. These ids are ignored until fixed.")
        return np.zeros(0, dtype=np.int64)


def render() -> None:
    ss = st.session_state
    run = state.get_run(ss["run_path"])
    mode = state.mode()
    n = run.n_train
    st.title("Flag suspected mislabeled samples")
    components.sign_convention()
    st.caption("Suspicion scores are oriented the other way round: higher = more suspicious "
               "(for DIT signals, the negated influence: harmful samples score high).")

    signals = ex.available_signals(run)
    if ss.get("flag_signal") not in signals:
        ss["flag_signal"] = ex.default_signal(run)
    signal = st.selectbox("Suspicion score", list(signals), key="flag_signal", on_change=_reset_threshold,
                          format_func=lambda s: s + ("  (default)" if s == ex.default_signal(run) else ""))
    st.caption(signals[signal])
    with st.spinner("Computing signals…"):
        table = state.signal_table(state.stamp(), run) if signal != "dit_window" else None
    user_window = state.window(run)
    scores = ex.signal_scores(run, signal, window=user_window, mode=mode, query=state.query(run), table=table)
    sig_window = ex.signal_window(run, signal, user_window, mode=mode)
    st.caption("Window used: " + (state.describe_window(run, *sig_window) if sig_window else "none (not a windowed signal)"))
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        st.warning(f"Signal {signal} has no values for this run; choose another one.")
        return

    if "flag_method" not in ss:
        ss["flag_method"] = "top_k"
    if "flag_k" not in ss:
        ss["flag_k"] = int(max(1, min(n, math.ceil(0.1 * n))))
    if "flag_threshold" not in ss:
        ss["flag_threshold"] = float(np.quantile(finite, 0.9))
    c = st.columns([1.2, 1, 1])
    method = c[0].radio("Flag by", ["top_k", "threshold"], key="flag_method", horizontal=True,
                        format_func={"top_k": "Top k", "threshold": "Threshold"}.get)
    c[1].number_input("k (most suspicious)", min_value=1, max_value=n, step=1, key="flag_k", disabled=method != "top_k")
    c[2].number_input("Threshold (flag scores at or above)", key="flag_threshold", format="%.6g", disabled=method != "threshold")
    c = st.columns(2)
    c[0].text_input("Always flag (sample ids)", key="flag_include", placeholder="e.g. 12, 40-45")
    c[1].text_input("Never flag (sample ids)", key="flag_exclude", placeholder="e.g. 7")
    include, exclude = _ids("flag_include", n), _ids("flag_exclude", n)
    flags = ex.select_flags(scores, method=method, k=int(ss["flag_k"]), threshold=float(ss["flag_threshold"]),
                            include=include, exclude=exclude)

    corrupted = ex.corruption_mask(run)
    m = st.columns(5)
    m[0].metric("Flagged", f"{int(flags.sum()):,}")
    if corrupted is not None and corrupted.any():
        fm = ex.flag_metrics(flags, corrupted, scores)
        fmt = lambda v: "–" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}"  # noqa: E731
        m[1].metric("Precision", fmt(fm["precision"]), help=f"Share of flagged samples whose label was corrupted (random flags: {fm['base_rate']:.3f}).")
        m[2].metric("Recall", fmt(fm["recall"]), help=f"Share of the {fm['n_corrupted']} corrupted labels that are flagged.")
        m[3].metric("F1", fmt(fm["f1"]))
        m[4].metric("AUROC of the score", fmt(fm["auroc"]), help="Probability a corrupted sample scores higher than a clean one (ignores the manual choices).")
    elif corrupted is not None:
        m[1].caption("No label of this run was corrupted, so there is nothing for precision and recall to measure.")
    else:
        m[1].caption("This run does not record which labels were corrupted, so precision and recall cannot be shown.")

    export = ex.flag_table(run, flags, scores, signal=signal, window=sig_window)
    st.subheader(f"Export {len(export):,} flagged samples")
    stem = f"dit_flags_{run.run_id}_{signal}"
    d = st.columns(3)
    mimes = {"csv": "text/csv", "json": "application/json", "parquet": "application/vnd.apache.parquet"}
    for col, fmt_ in zip(d, ex.EXPORT_FORMATS):
        col.download_button(f"Download {fmt_.upper()}", data=ex.export_bytes(export, fmt_), file_name=f"{stem}.{fmt_}",
                            mime=mimes[fmt_], key=f"flag_download_{fmt_}", on_click="ignore", width="stretch")
    st.caption("Columns: " + ", ".join(ex.EXPORT_COLUMNS) + ". rank = position among all samples by score (1 = most suspicious); "
               "window_start/window_stop = the signal's window in steps [start, stop).")
    shown = export.copy()
    if corrupted is not None:
        shown["is_corrupted"] = corrupted[shown["sample_id"].to_numpy()]
    shown["manual"] = np.where(np.isin(shown["sample_id"], include), "included", "")
    st.dataframe(shown, hide_index=True, key="flag_table", width="stretch", height=300)
    st.plotly_chart(charts.score_histogram(scores, flags, signal=signal), key="flag_hist", config={"displaylogo": False})
    st.subheader("Most suspicious flagged samples")
    components.gallery(run, export["sample_id"].to_numpy()[:20], scores, key="flag_gallery", score_name="score")


render()
