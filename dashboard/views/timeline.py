"""Timeline page: losses, the per-period influence strip, and brushing the window."""

import streamlit as st

from dashboard import charts, components, state
from dit_core import explore as ex


def render() -> None:
    run = state.get_run(st.session_state["run_path"])
    mode = state.mode()
    win = state.effective_window(run)
    st.title("Training timeline")
    components.run_summary(run)
    with st.spinner("Summarising influence per " + ("epoch…" if mode == "window" else "checkpoint interval…")):
        summary = state.influence_summary(state.stamp(), mode, run)
    fig = charts.timeline(run.steps, run.epochs, summary, win, mode=mode, n_steps=run.n_steps)
    st.plotly_chart(
        fig, key=state.chart_key(), on_select="rerun", selection_mode="box",
        config={"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "autoScale2d"]},
    )
    st.caption(
        "**Drag across the chart** to brush a window of training steps (the shaded band); the slider in the "
        "sidebar sets the same window. Bars: total positive (helpful) and negative (harmful) influence of all "
        "samples in each " + ("epoch, measured at the end of training." if mode == "window" else "checkpoint interval (accrued).")
    )
    components.sign_convention()

    ranking = ex.rank_window(run, *win, mode=mode, k=3, query=state.query(run))
    s = ranking.scores
    st.subheader(f"Window: {state.describe_window(run, ranking.start, ranking.stop)}")
    c = st.columns(4)
    c[0].metric("Total helpful influence", f"{s[s > 0].sum():.4g}")
    c[1].metric("Total harmful influence", f"{s[s < 0].sum():.4g}")
    c[2].metric("Most helpful sample", f"#{ranking.helpful[0]}" if ranking.helpful.size else "–")
    c[3].metric("Most harmful sample", f"#{ranking.harmful[0]}" if ranking.harmful.size else "–")
    st.caption("Open **Window view** for the most helpful and harmful samples of this window, with their data.")


render()
