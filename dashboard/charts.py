"""Plotly figures of the DIT dashboard (drawing only; the numbers come from dit_core.explore)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dit_core import explore as ex

HELPFUL = "#2e8b57"
HARMFUL = "#c0392b"
HARMFUL_DARK = "#7b1f16"
WINDOW_FILL = "rgba(255, 193, 7, 0.22)"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
PATTERN_COLORS = {"stable": "#7f7f7f", "early influencer": "#1f77b4", "late bloomer": "#ff7f0e", "fluctuating": "#9467bd"}
PATTERN_ORDER = {p: i for i, p in enumerate(ex.PATTERNS)}


def timeline(steps: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame, window: tuple[int, int], *, mode: str, n_steps: int) -> go.Figure:
    """Loss curves (top) and the per-period influence strip (bottom), sharing the step axis.

    ``dragmode="select"`` with horizontal-only selection: dragging across the chart
    box-selects a range of steps, which the app turns into the window.
    """
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.6, 0.4],
        subplot_titles=("Loss", "Influence per " + ("epoch" if mode == "window" else "checkpoint interval") + " (sum over samples)"),
    )
    x, y = ex.downsample(steps["step"].to_numpy() + 0.5, steps["batch_loss"].to_numpy(), 3000)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name="training loss (per step)", line=dict(color="#9aa5b1", width=1),
                             hovertemplate="step %{x:.0f}<br>train loss %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=epochs["end_step"], y=epochs["train_loss"], mode="lines", name="training loss (epoch mean)",
                             line=dict(color="#52606d", width=2), hovertemplate="step %{x}<br>train loss %{y:.4f}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=epochs["end_step"], y=epochs["val_loss"], mode="lines+markers", name="validation loss (per epoch)",
                             line=dict(color="#1f77b4", width=2), marker=dict(size=5),
                             hovertemplate="step %{x}<br>val loss %{y:.4f}<extra></extra>"), row=1, col=1)
    centres = (summary["start"] + summary["stop"]) / 2
    widths = (summary["stop"] - summary["start"]) * 0.9
    fig.add_trace(go.Bar(x=centres, y=summary["helpful"], width=widths, name="helpful (sum of positive)", marker_color=HELPFUL,
                         customdata=summary[["start", "stop"]], hovertemplate="steps %{customdata[0]}–%{customdata[1]}<br>helpful %{y:.3g}<extra></extra>"),
                  row=2, col=1)
    fig.add_trace(go.Bar(x=centres, y=summary["harmful"], width=widths, name="harmful (sum of negative)", marker_color=HARMFUL,
                         customdata=summary[["start", "stop"]], hovertemplate="steps %{customdata[0]}–%{customdata[1]}<br>harmful %{y:.3g}<extra></extra>"),
                  row=2, col=1)
    if "harmful_corrupted" in summary:
        fig.add_trace(go.Scatter(x=centres, y=summary["harmful_corrupted"], mode="markers", name="harmful from corrupted labels",
                                 marker=dict(color=HARMFUL_DARK, symbol="line-ew-open", size=12, line=dict(width=2)),
                                 hovertemplate="harmful from corrupted %{y:.3g}<extra></extra>"), row=2, col=1)
    for row in (1, 2):
        fig.add_vrect(x0=window[0], x1=window[1], fillcolor=WINDOW_FILL, line_width=0, layer="below", row=row, col=1)
    fig.update_xaxes(range=[0, n_steps], row=1, col=1)
    fig.update_xaxes(range=[0, n_steps], title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="influence", row=2, col=1)
    fig.update_layout(
        dragmode="select", selectdirection="h", barmode="relative", height=560,
        margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", yanchor="top", y=-0.16, x=0),
        hovermode="closest",
    )
    return fig


def _binned_bars(fig: go.Figure, values: np.ndarray, groups: list[tuple[str, np.ndarray, str, float]]) -> None:
    """Histogram bars binned on the server (ex.histogram_counts): only the counts go to the browser."""
    edges, counts = ex.histogram_counts(values, {name: mask for name, mask, _, _ in groups})
    centers, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    for name, _, colour, opacity in groups:
        fig.add_trace(go.Bar(x=centers, y=counts[name], width=widths, name=name, marker_color=colour, opacity=opacity,
                             hovertemplate="%{y} samples in [%{customdata[0]:.3g}, %{customdata[1]:.3g})<extra>" + name + "</extra>",
                             customdata=np.stack([edges[:-1], edges[1:]], axis=1)))


def histogram(scores: np.ndarray, corrupted: np.ndarray | None, *, title: str) -> go.Figure:
    fig = go.Figure()
    s = np.asarray(scores, dtype=np.float64)
    everyone = np.ones(s.shape, dtype=bool)
    if corrupted is None:
        _binned_bars(fig, s, [("all samples", everyone, "#52606d", 1.0)])
    else:
        c = np.asarray(corrupted, dtype=bool)
        _binned_bars(fig, s, [("clean label", ~c, "#52606d", 0.7), ("corrupted label", c, HARMFUL, 0.7)])
    fig.add_vline(x=0, line_dash="dot", line_color="#333")
    fig.update_layout(barmode="overlay", height=300, title=title, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="influence (positive = helped, negative = hurt)", yaxis_title="samples")
    return fig


def early_late_scatter(early: np.ndarray, late: np.ndarray, corrupted: np.ndarray | None, split: int, max_points: int = 5000) -> go.Figure:
    ids = ex.subsample_ids(len(early), max_points, seed=0)
    fig = go.Figure()
    groups = [("all samples", np.ones(len(ids), bool), "#52606d")] if corrupted is None else [
        ("clean label", ~corrupted[ids], "#52606d"), ("corrupted label", corrupted[ids], HARMFUL)]
    for name, sel, color in groups:
        fig.add_trace(go.Scattergl(x=early[ids][sel], y=late[ids][sel], mode="markers", name=name, customdata=ids[sel],
                                   marker=dict(size=4, color=color, opacity=0.6),
                                   hovertemplate="sample %{customdata}<br>early %{x:.3g}<br>late %{y:.3g}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="#999")
    fig.add_vline(x=0, line_dash="dot", line_color="#999")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=30, b=10), dragmode="zoom",
                      xaxis_title=f"early influence (steps 0–{split})", yaxis_title=f"late influence (steps {split}–end)")
    return fig


def embedding_scatter(coords: np.ndarray, ids: np.ndarray, color: np.ndarray, *, color_name: str, hover: list[str]) -> go.Figure:
    """UMAP/PCA scatter; ``customdata`` holds sample ids so a selection maps back to samples."""
    fig = go.Figure()
    color = np.asarray(color).astype(str)
    cats = sorted(pd.unique(color), key=lambda c: (PATTERN_ORDER.get(c, len(PATTERN_ORDER)), _natural_key(c)))
    use_gl = len(ids) > 5000
    Trace = go.Scattergl if use_gl else go.Scatter
    for i, c in enumerate(cats):
        sel = color == c
        col = PATTERN_COLORS.get(c, PALETTE[i % len(PALETTE)])
        fig.add_trace(Trace(x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=f"{color_name} {c}" if color_name != "pattern" else c,
                            customdata=ids[sel], text=[hover[j] for j in np.flatnonzero(sel)],
                            marker=dict(size=5, color=col, opacity=0.75),
                            hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(height=520, dragmode="lasso", margin=dict(l=10, r=10, t=10, b=10), legend=dict(itemsizing="constant"),
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""))
    return fig


def trajectory_lines(T: np.ndarray, ids: np.ndarray, bounds: np.ndarray, *, max_lines: int = 40, title: str = "") -> go.Figure:
    """Trajectories of the chosen samples (thin) and their mean (thick), over the periods' end steps."""
    x = bounds[1:]
    fig = go.Figure()
    for j in ids[:max_lines]:
        fig.add_trace(go.Scatter(x=x, y=T[j], mode="lines", line=dict(width=1), opacity=0.45, name=f"#{j}", showlegend=False,
                                 hovertemplate=f"sample {j}<br>step %{{x}}<br>influence %{{y:.3g}}<extra></extra>"))
    if len(ids):
        fig.add_trace(go.Scatter(x=x, y=T[ids].mean(axis=0), mode="lines+markers", line=dict(width=3, color="#111"),
                                 name=f"mean of {len(ids)}", hovertemplate="mean %{y:.3g}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="#999")
    fig.update_layout(height=320, title=title, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="training step (end of period)",
                      yaxis_title="influence in period")
    return fig


def group_means(profiles: pd.DataFrame, bounds: np.ndarray, *, title: str) -> go.Figure:
    fig = go.Figure()
    x = bounds[1:]
    groups = sorted(profiles["group"].astype(str).unique(), key=lambda c: (PATTERN_ORDER.get(c, len(PATTERN_ORDER)), _natural_key(c)))
    for i, g in enumerate(groups):
        d = profiles[profiles["group"].astype(str) == g]
        fig.add_trace(go.Scatter(x=x[d["window"].to_numpy()], y=d["mean"], mode="lines", name=f"{g} (n={int(d['n'].iloc[0])})",
                                 line=dict(width=2, color=PATTERN_COLORS.get(g, PALETTE[i % len(PALETTE)]))))
    fig.add_hline(y=0, line_dash="dot", line_color="#999")
    fig.update_layout(height=300, title=title, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="training step (end of period)",
                      yaxis_title="mean influence in period")
    return fig


def score_histogram(scores: np.ndarray, flags: np.ndarray, *, signal: str) -> go.Figure:
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    fig = go.Figure()
    f = np.asarray(flags, dtype=bool)
    _binned_bars(fig, s, [("not flagged", ok & ~f, "#9aa5b1", 1.0), ("flagged", ok & f, HARMFUL, 1.0)])
    fig.update_layout(barmode="overlay", height=260, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis_title=f"{signal} (higher = more suspicious)", yaxis_title="samples")
    return fig


def _natural_key(s: str):
    try:
        return (0, float(s), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(s))
