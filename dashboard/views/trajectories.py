"""Trajectories page: UMAP of per-sample influence trajectories, clusters, the paper's four patterns."""

import numpy as np
import streamlit as st

from dashboard import charts, components, state
from dit_core import explore as ex

KINDS = {
    "window": "Window: removal during each period, measured at the end",
    "accrued": "Accrued: influence built up in each checkpoint interval",
    "cumulative": "Cumulative: influence of the run so far, at each checkpoint",
}


def _selected_ids(event) -> np.ndarray:
    """Sample ids of the points selected on the scatter (from the points' customdata)."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return np.zeros(0, dtype=np.int64)
    ids = []
    for p in points or []:
        cd = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            ids.append(int(cd))
    return np.unique(np.asarray(ids, dtype=np.int64))


def render() -> None:
    ss = st.session_state
    run = state.get_run(ss["run_path"])
    stamp = state.stamp()
    n = run.n_train
    st.title("Influence trajectories")
    st.markdown("Each sample's influence over training, one value per period: embedded with UMAP, clustered, "
                "and sorted into the paper's four patterns.")
    components.sign_convention()

    corrupted = ex.corruption_mask(run)
    defaults = {"traj_kind": "accrued" if state.mode() == "accrued" else "window", "traj_norm": "scale", "traj_method": "umap",
                "traj_k": 4, "traj_color": "pattern", "traj_max": int(min(n, 10000))}
    for key, value in defaults.items():
        if key not in ss:
            ss[key] = value
    c = st.columns([2, 1.4, 1, 1, 1.2])
    kind = c[0].selectbox("Trajectory", list(KINDS), format_func=KINDS.get, key="traj_kind")
    norm = c[1].selectbox("Normalise", list(ex.TRAJECTORY_NORMALIZATIONS), key="traj_norm",
                          help="; ".join(f"{k}: {v}" for k, v in ex.TRAJECTORY_NORMALIZATIONS.items()))
    method = c[2].selectbox("Embedding", ["umap", "pca"], format_func=str.upper, key="traj_method")
    k = c[3].number_input("Clusters (k)", min_value=2, max_value=16, step=1, key="traj_k")
    color_opts = ["cluster", "pattern", "label"] + (["corruption"] if corrupted is not None else [])
    if ss["traj_color"] not in color_opts:
        ss["traj_color"] = "cluster"
    color_by = c[4].selectbox("Colour by", color_opts, key="traj_color")
    if n > 5000:
        st.number_input("Points in the embedding (a random subset of large runs)", min_value=1000, max_value=n, step=1000, key="traj_max")
    max_points = int(ss["traj_max"]) if n > 5000 else n

    T = state.trajectories(stamp, kind, run)
    bounds = ex.trajectory_bounds(run)
    if T.shape[1] < 2:
        st.warning("This run has a single checkpoint, so trajectories have one point; compute influence with "
                   "checkpoints='epochs' to see how influence evolves.")
    with st.spinner(f"Embedding {min(n, max_points):,} trajectories with {method.upper()} (cached after the first time)…"):
        ids, coords = state.embedding(stamp, kind, norm, method, 15, 0.1, max_points, run)
    with st.spinner("Clustering…"):
        cl = state.clusters(stamp, kind, norm, int(k), run)
    pat = state.patterns(stamp, kind, run)

    labels = run.samples["label"].to_numpy()
    colour = {
        "cluster": cl[ids].astype(str),
        "pattern": pat[ids],
        "label": labels[ids].astype(str),
        "corruption": None if corrupted is None else np.where(corrupted[ids], "corrupted", "clean"),
    }[color_by]
    hover = [f"sample {j} · label {labels[j]} · cluster {cl[j]} · {pat[j]}" + (" · corrupted" if corrupted is not None and corrupted[j] else "")
             for j in ids]
    fig = charts.embedding_scatter(coords, ids, colour, color_name=color_by, hover=hover)
    event = st.plotly_chart(fig, key="traj_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                            config={"displaylogo": False})
    st.caption("Click a point, or drag a lasso/box around several, to inspect them below.")
    selected = _selected_ids(event)

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Patterns")
        ptab = ex.group_table(pat, list(ex.PATTERNS), corrupted=corrupted, name="pattern")
        st.dataframe(ptab, hide_index=True, key="traj_pattern_table", width="stretch")
        st.caption("Stable; early influencers (matter most early); late bloomers (matter most late); fluctuating "
                   "(influence keeps changing sign) — rule in dit_core.patterns.classify_patterns.")
        if kind == "accrued":
            st.caption("Accrued trajectories are differences of cumulative influence between checkpoints and change "
                       "sign often, so many samples count as fluctuating; the Window trajectory is the clearer basis "
                       "for the patterns.")
    with right:
        st.subheader("Clusters")
        cluster_ids = sorted(np.unique(cl).tolist())
        ctab = ex.group_table(cl, cluster_ids, corrupted=corrupted, patterns=pat, name="cluster")
        st.dataframe(ctab, hide_index=True, key="traj_cluster_table", width="stretch")
    groups = cl.astype(str) if color_by != "pattern" else pat
    st.plotly_chart(charts.group_means(ex.group_profiles(T, groups), bounds,
                                       title="Mean trajectory per " + ("pattern" if color_by == "pattern" else "cluster")),
                    key="traj_means", config={"displaylogo": False})

    st.subheader("Inspect")
    options = (["selected points"] if selected.size else []) + [f"cluster {g}" for g in cluster_ids] + [f"pattern: {p}" for p in ex.PATTERNS]
    signature = (len(selected), int(selected.sum()), int(selected[:1].sum()))
    if selected.size and ss.get("traj_last_selection") != signature:  # a new selection on the map: inspect it
        ss["traj_inspect"] = "selected points"
    ss["traj_last_selection"] = signature if selected.size else None
    if ss.get("traj_inspect") not in options:
        ss["traj_inspect"] = options[0]
    choice = st.selectbox("Samples to inspect", options, key="traj_inspect")
    if choice == "selected points":
        members = selected
    elif choice.startswith("cluster "):
        members = np.flatnonzero(cl == int(choice.split(" ")[1]))
    else:
        members = np.flatnonzero(pat == choice.split(": ", 1)[1])
    if members.size == 0:
        st.info("No samples in this group.")
        return
    activity = np.abs(T).sum(axis=1)  # how much the sample's influence moves over the periods, either sign
    order = members[np.argsort(-activity[members], kind="stable")]
    st.caption(f"{members.size:,} samples; the most influential first (largest sum of |influence| over the periods).")
    st.plotly_chart(charts.trajectory_lines(T, order, bounds, title=f"Trajectories: {choice}"), key="traj_lines",
                    config={"displaylogo": False})
    components.gallery(run, order[:20], activity, key="traj_members", score_name="sum of |influence|")


render()
