"""DIT dashboard: ``streamlit run dashboard/app.py`` (optionally ``-- --run PATH``).

Opens on the bundled sample run (``sample_runs/``) and lets a person open any other run
directory. The entry point sets up session state, the run picker and the shared window
in the sidebar, then routes to the pages in ``dashboard/views/`` with ``st.navigation``.
All computation lives in :mod:`dit_core.explore`; the pages only render it.

Sign convention: positive influence = removing the sample would raise the query; for a
loss query positive = the sample helped, negative = it hurt.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dit_core import DITError  # noqa: E402
from dit_core import explore as ex  # noqa: E402

from dashboard import state  # noqa: E402

log = logging.getLogger("dit.dashboard")
HERE = Path(__file__).resolve().parent

st.set_page_config(
    page_title="DIT — Dynamic Influence Tracker",
    page_icon=":material/timeline:",
    layout="wide",
    menu_items={"Get help": None, "Report a bug": None, "About": "DIT — Dynamic Influence Tracker: time-varying training-sample influence."},
)


def _on_pick_sample() -> None:
    name = st.session_state.get("picker_sample")
    if name:
        samples = state.sample_runs()
        if name in samples:
            state.open_run_path(samples[name])


def _on_open_path() -> None:
    text = (st.session_state.get("picker_path") or "").strip()
    if not text:
        st.session_state["run_error"] = "Enter the path of a run directory (a folder with manifest.json) to open it."
        return
    if state.open_run_path(text):
        samples = state.sample_runs()
        resolved = {str(p.resolve()): name for name, p in samples.items()}
        st.session_state["picker_sample"] = resolved.get(str(Path(text).expanduser().resolve()))


def _sidebar_run_picker() -> None:
    sb = st.sidebar
    sb.subheader("Run")
    samples = state.sample_runs()
    if samples:
        sb.selectbox(
            "Bundled sample run", list(samples), key="picker_sample", index=None, placeholder="choose a sample run",
            on_change=_on_pick_sample,
        )
    else:
        sb.caption("No bundled sample runs found under sample_runs/.")
    sb.text_input("Open a run directory", key="picker_path", placeholder="path/to/run_dir", on_change=_on_open_path,
                  help="A directory written by `dit train` / dit_core.record, with influence from `dit compute`.")
    sb.button("Open run", key="picker_open", on_click=_on_open_path, width="stretch")


def _sidebar_window(run) -> None:
    ss = st.session_state
    sb = st.sidebar
    sb.subheader("Window")
    w = state.window(run)
    ss["window_slider"] = w
    sb.slider("Window (training steps)", min_value=0, max_value=run.n_steps, step=1, key="window_slider",
              on_change=state.on_slider_change, help="Same window as a brush on the Timeline chart.")
    eff = state.effective_window(run)
    sb.caption(state.describe_window(run, *w))
    if eff != tuple(w):
        sb.caption(f"Accrued influence uses checkpoints: snapped to {state.describe_window(run, *eff)}")
    c1, c2 = sb.columns(2)
    conv = ex.convergence_window(run)
    c1.button("Convergence", key="win_convergence", on_click=state.set_window, args=conv, width="stretch",
              help="The last 20% of training (whole epochs).")
    c2.button("Whole run", key="win_full", on_click=state.set_window, args=(0, run.n_steps), width="stretch")
    sb.radio(
        "Influence", options=list(ex.MODES), key="influence_mode",
        format_func=lambda m: {"window": "Window influence", "accrued": "Accrued influence"}[m],
        help="Window: removal during the window, measured at the end of training. "
        "Accrued (the paper's definition): influence built up between the checkpoints around the window.",
    )
    sb.caption(ex.MODES[state.mode()].capitalize() + ".")
    if len(run.queries) > 1:
        if ss.get("query") not in run.queries:
            ss["query"] = state.query(run)
        sb.selectbox("Query", run.queries, key="query",
                     help="The quantity whose change the influence measures; computed with `dit compute --query`.")
    else:
        sb.caption(f"Query: {state.query(run)}")
    sb.caption(ex.SIGN_CONVENTION)


def _welcome() -> None:
    st.title("DIT — Dynamic Influence Tracker")
    st.info(
        "No run is open. Choose a bundled sample run or enter the path of a run directory in the sidebar. "
        "Record one with `dit train digits --out runs/digits` and compute its influence with `dit compute runs/digits`."
    )


def main() -> None:
    state.init_state()
    run = state.ensure_run()
    if run is not None:
        state.consume_brush(run)
    _sidebar_run_picker()
    if run is not None:
        _sidebar_window(run)

    pages = [
        st.Page(str(HERE / "views" / "timeline.py"), title="Timeline", icon=":material/timeline:", url_path="timeline", default=True),
        st.Page(str(HERE / "views" / "window.py"), title="Window view", icon=":material/view_column:", url_path="window"),
        st.Page(str(HERE / "views" / "trajectories.py"), title="Trajectories", icon=":material/scatter_plot:", url_path="trajectories"),
        st.Page(str(HERE / "views" / "flags.py"), title="Flags & export", icon=":material/flag:", url_path="flags"),
    ]
    page = st.navigation(pages)
    if st.session_state.get("run_error"):
        still = f" Still showing {Path(st.session_state['run_path']).name}." if run is not None and st.session_state.get("run_path") else ""
        st.error(st.session_state["run_error"] + still, icon=":material/error:")
    if run is None:
        _welcome()
        return
    try:
        page.run()
    except DITError as exc:  # bad input or a run that lacks something: say what, no traceback
        st.error(str(exc))
    except Exception as exc:  # show a message, not a traceback; details go to the server log
        log.exception("page %s failed", page.title)
        st.error(f"This page hit an unexpected error ({type(exc).__name__}: {exc}). Details are in the server log.")


main()
