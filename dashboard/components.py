"""Small rendering helpers shared by the dashboard's pages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import dit_core as dit
from dit_core import explore as ex

from . import state


def sign_convention() -> None:
    st.caption(ex.SIGN_CONVENTION)


def run_summary(run: dit.Run) -> None:
    """Key facts about the run, including its optimizer."""
    s = ex.run_summary(run)
    cols = st.columns(5)
    cols[0].metric("Training samples", f"{s['n_train']:,}")
    cols[1].metric("Epochs / steps", f"{s['n_epochs']} / {s['n_steps']:,}")
    cols[2].metric("Optimizer", s["optimizer"].split(" ")[0])
    cols[3].metric("Checkpoints", s["n_checkpoints"])
    cols[4].metric("Corrupted labels", "unknown" if s["n_corrupted"] is None else f"{s['n_corrupted']:,}")
    st.caption(
        f"Run `{s['run_id']}` · data set **{s['dataset']}** · model {s['model']} · optimizer **{s['optimizer']}** · "
        f"learning rate {s['learning_rate']} · batch size {s['batch_size']} · query {s['queries']}"
    )


def label_text(row: pd.Series, names: list[str] | None) -> str:
    def nm(v) -> str:
        v = int(v)
        return names[v] if names and 0 <= v < len(names) and names[v] != str(v) else str(v)

    txt = f"label {nm(row['label'])}"
    if bool(row.get("is_corrupted", False)) and "original_label" in row and pd.notna(row["original_label"]):
        txt += f" (true {nm(row['original_label'])})"
    return txt


def gallery(run: dit.Run, ids: np.ndarray, scores: np.ndarray | None, *, key: str, per_row: int = 5, score_name: str = "influence") -> None:
    """Samples with their data: thumbnails for image-shaped inputs, a table of values for tabular ones."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        st.info("No samples to show.")
        return
    table = ex.sample_table(run, ids, scores)
    names = ex.class_names(run)
    if ex.is_image_data(run.X_train):
        stamp = state.stamp()
        for r0 in range(0, ids.size, per_row):
            cols = st.columns(per_row)
            for c, i in zip(cols, range(r0, min(r0 + per_row, ids.size))):
                row = table.iloc[i]
                cap = f"#{int(row['sample_id'])} · {label_text(row, names)}"
                if scores is not None:
                    cap += f" · {row['score']:+.2g}"
                c.image(state.thumbnail(stamp, int(row["sample_id"]), run), caption=cap, width=72)
    fmt = {"score": st.column_config.NumberColumn(score_name, format="%.4g")} if scores is not None else {}
    st.dataframe(table, hide_index=True, key=f"{key}_table", column_config=fmt, width="stretch",
                 height=min(38 * (len(table) + 1) + 3, 420))
    if not ex.is_image_data(run.X_train) and (run.manifest.get("dataset") or {}).get("standardized"):
        st.caption("Feature values as the model saw them: standardised with the training split's mean and "
                   "standard deviation (units dropped).")
