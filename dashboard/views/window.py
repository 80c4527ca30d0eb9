"""Window view: most helpful / harmful samples of the window, the influence distribution, early vs late."""

import math

import streamlit as st

from dashboard import charts, components, state
from dit_core import DITError
from dit_core import explore as ex


def render() -> None:
    ss = st.session_state
    run = state.get_run(ss["run_path"])
    mode = state.mode()
    win = state.effective_window(run)
    st.title("Window view")
    st.markdown(f"**{state.describe_window(run, *win)}** · {ex.MODES[mode]}. Change the window on the Timeline or in the sidebar.")
    components.sign_convention()

    if "wv_k" not in ss:
        ss["wv_k"] = 10
    k = st.slider("Samples per list", min_value=5, max_value=40, step=1, key="wv_k")
    with st.spinner("Ranking the samples of the window…"):
        ranking = ex.rank_window(run, *win, mode=mode, k=k, query=state.query(run))
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Most helpful", help="Largest positive influence: removing them in this window would raise the validation loss.")
        components.gallery(run, ranking.helpful, ranking.scores, key="wv_helpful")
    with right:
        st.subheader("Most harmful", help="Most negative influence: removing them in this window would lower the validation loss.")
        components.gallery(run, ranking.harmful, ranking.scores, key="wv_harmful")

    corrupted = ex.corruption_mask(run)
    st.subheader("Distribution of influence in the window")
    st.plotly_chart(charts.histogram(ranking.scores, corrupted, title=""), key="wv_hist", config={"displaylogo": False})

    st.subheader("Early vs late influence")
    T = run.n_steps
    if T < 3:
        st.info(f"This run has {T} training step{'s' if T != 1 else ''}: too few to split into an early and a late part.")
        return
    if "wv_split" not in ss or not 1 <= int(ss["wv_split"]) <= T - 1:
        ss["wv_split"] = int(T // 2)
    split = st.slider("Split step (early = before it, late = after it)", min_value=1, max_value=max(T - 1, 1), step=1, key="wv_split")
    try:
        with st.spinner("Splitting influence into early and late…"):
            early, late, used, corr = state.early_late(state.stamp(), int(split), mode, run)
    except DITError as exc:
        st.info(str(exc))
        return
    if used != split:
        st.caption(f"Accrued influence: split snapped to checkpoint step {used}.")
    c = st.columns(3)
    fmt = lambda v: "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    c[0].metric("Kendall τ", fmt(corr["kendall_tau"]))
    c[1].metric("Pearson r", fmt(corr["pearson"]))
    c[2].metric("Spearman ρ", fmt(corr["spearman"]))
    st.plotly_chart(charts.early_late_scatter(early, late, corrupted, used), key="wv_scatter", config={"displaylogo": False})
    st.caption("Each point is a sample: its influence from the early part of training against the late part "
               "(window mode: removal in each part, measured at the end; accrued mode: influence built up in each part).")


render()
