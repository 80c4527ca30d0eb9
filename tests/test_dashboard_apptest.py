"""The dashboard in Streamlit's AppTest harness, on the bundled sample run.

Every page renders without an exception; the sidebar slider, buttons and mode toggle drive the
window; the flag widgets drive the flagged set; the downloaded export bytes are checked
against dit_core.explore. (Brushing the timeline with the mouse needs a browser: see
test_dashboard_browser.py.)
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from dit_core import explore as ex

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
SAMPLE = ROOT / "sample_runs" / "digits_mlp_corrupt20"
TIMEOUT = 180

pytestmark = pytest.mark.skipif(not (SAMPLE / "manifest.json").exists(), reason="bundled sample run sample_runs/digits_mlp_corrupt20 is missing")


class _RecordingStorage(MemoryMediaFileStorage):
    """Keeps the bytes of every media file (downloads) so tests can read what a user would get."""

    files: dict[str, bytes] = {}

    def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
        fid = super().load_and_get_id(path_or_data, mimetype, kind, filename)
        if isinstance(path_or_data, (bytes, bytearray)):
            _RecordingStorage.files[fid] = bytes(path_or_data)
        return fid


@pytest.fixture
def media(monkeypatch):
    _RecordingStorage.files = {}
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", _RecordingStorage)
    return _RecordingStorage.files


@pytest.fixture(scope="module")
def run():
    return ex.open_run(SAMPLE)


def _app(argv=None, monkeypatch=None) -> AppTest:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "argv", argv or ["dashboard/app.py"])
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


@pytest.fixture
def at(monkeypatch) -> AppTest:
    return _app(["dashboard/app.py"], monkeypatch)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _tables(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def _download(at: AppTest, media: dict, fmt: str) -> bytes:
    btn = next(b for b in at.download_button if b.label == f"Download {fmt.upper()}")
    fid = btn.proto.url.rsplit("/", 1)[-1].split(".")[0]
    return media[fid]


# ----------------------------------------------------------------------------- pages
def test_opens_on_sample_run_and_every_page_renders(at, run):
    _ok(at)
    assert at.session_state["run_path"].endswith("digits_mlp_corrupt20")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training samples"] == f"{run.n_train:,}" and metrics["Optimizer"] == run.manifest["optimizer"]["name"]
    assert any("optimizer **sgd" in c.value for c in at.caption)
    assert any("Sign convention" in c.value for c in at.sidebar.caption)
    assert at.slider(key="window_slider").value == (1080, 1350)  # convergence window by default
    assert any("steps 1080–1350" in h.value for h in at.subheader)

    at.switch_page("views/window.py").run()
    _ok(at)
    helpful, harmful = _tables(at)[:2]
    r = ex.rank_window(run, 1080, 1350, k=10)
    assert helpful["sample_id"].tolist() == r.helpful.tolist() and harmful["sample_id"].tolist() == r.harmful.tolist()
    assert len(at.get("image")) == 20  # thumbnails of the 8x8 digits
    metrics = {m.label: m.value for m in at.metric}
    early, late, used = ex.early_late(run, run.n_steps // 2)  # the page's default split: half-way
    corr = ex.correlations(early, late)
    assert used == run.n_steps // 2
    assert metrics == {"Kendall τ": f"{corr['kendall_tau']:.3f}", "Pearson r": f"{corr['pearson']:.3f}", "Spearman ρ": f"{corr['spearman']:.3f}"}

    at.switch_page("views/trajectories.py").run()
    _ok(at)
    patterns = next(t for t in _tables(at) if "pattern" in t.columns)
    ref = pd.Series(ex.trajectory_patterns(run.trajectories("window"))).value_counts()
    assert patterns.set_index("pattern")["samples"].to_dict() == {p: int(ref.get(p, 0)) for p in ex.PATTERNS}

    at.switch_page("views/flags.py").run()
    _ok(at)
    assert [b.label for b in at.download_button] == ["Download CSV", "Download JSON", "Download PARQUET"]
    assert at.selectbox(key="flag_signal").value == ex.default_signal(run)

    at.switch_page("views/timeline.py").run()
    _ok(at)


# ----------------------------------------------------------------------------- window
def test_slider_buttons_and_mode_drive_the_window(at, run):
    at.slider(key="window_slider").set_value((450, 900)).run()
    _ok(at)
    assert at.session_state["window"] == (450, 900)
    assert any("steps 450–900" in h.value for h in at.subheader)
    r = ex.rank_window(run, 450, 900, k=3)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Most harmful sample"] == f"#{r.harmful[0]}" and metrics["Most helpful sample"] == f"#{r.helpful[0]}"

    at.switch_page("views/window.py").run()
    helpful, harmful = _tables(at)[:2]
    r = ex.rank_window(run, 450, 900, k=10)
    assert harmful["sample_id"].tolist() == r.harmful.tolist()
    np.testing.assert_allclose(harmful["score"], r.scores[r.harmful])

    at.radio(key="influence_mode").set_value("accrued").run()
    at.slider(key="window_slider").set_value((100, 500)).run()
    _ok(at)
    assert any("snapped to steps 90–495" in c.value for c in at.sidebar.caption)
    helpful, harmful = _tables(at)[:2]
    r = ex.rank_window(run, 100, 500, mode="accrued", k=10)
    assert (r.start, r.stop) == (90, 495) and harmful["sample_id"].tolist() == r.harmful.tolist()

    at.button(key="win_full").click().run()
    _ok(at)
    assert at.slider(key="window_slider").value == (0, run.n_steps)
    at.button(key="win_convergence").click().run()
    assert at.slider(key="window_slider").value == (1080, 1350)


def test_trajectory_controls(at, run):
    at.switch_page("views/trajectories.py").run()
    at.selectbox(key="traj_method").set_value("pca").run()
    at.number_input(key="traj_k").set_value(3).run()
    at.selectbox(key="traj_color").set_value("corruption").run()
    at.selectbox(key="traj_inspect").set_value("cluster 1").run()
    _ok(at)
    labels = ex.cluster_trajectories(ex.trajectory_features(run.trajectories("window"), "scale"), 3, seed=0)
    clusters = next(t for t in _tables(at) if "cluster" in t.columns)
    assert clusters["samples"].tolist() == np.bincount(labels).tolist()
    members = _tables(at)[-1]["sample_id"].to_numpy()
    assert 0 < members.size <= 20 and (labels[members] == 1).all()


# ----------------------------------------------------------------------------- flags
def test_flags_and_export(at, run, media):
    at.slider(key="window_slider").set_value((450, 900)).run()
    at.switch_page("views/flags.py").run()
    at.selectbox(key="flag_signal").set_value("dit_window").run()
    at.number_input(key="flag_k").set_value(25).run()
    scores = -run.window_influence(450, 900)
    top = int(np.argmax(scores))
    at.text_input(key="flag_include").set_value("0, 1").run()
    at.text_input(key="flag_exclude").set_value(str(top)).run()
    _ok(at)

    flags = ex.select_flags(scores, k=25, include=[0, 1], exclude=[top])
    expect = ex.flag_table(run, flags, scores, signal="dit_window", window=(450, 900))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Flagged"] == str(int(flags.sum())) == "26"  # 25 - 1 excluded + 2 included (0, 1 not in top 25)
    fm = ex.flag_metrics(flags, ex.corruption_mask(run), scores)
    assert metrics["Precision"] == f"{fm['precision']:.3f}" and metrics["AUROC of the score"] == f"{fm['auroc']:.3f}"

    csv = pd.read_csv(io.BytesIO(_download(at, media, "csv")))
    js = pd.DataFrame(json.loads(_download(at, media, "json")))
    pq = pd.read_parquet(io.BytesIO(_download(at, media, "parquet")))
    for got in (csv, js, pq):
        assert list(got.columns) == list(ex.EXPORT_COLUMNS)
        assert got["sample_id"].tolist() == expect["sample_id"].tolist()
        assert top not in got["sample_id"].tolist() and {0, 1} <= set(got["sample_id"])
        assert (got["window_start"] == 450).all() and (got["window_stop"] == 900).all()
        assert (got["signal"] == "dit_window").all() and (got["run_id"] == run.run_id).all()
        np.testing.assert_allclose(got["score"].astype(float), expect["score"], rtol=1e-9)

    at.radio(key="flag_method").set_value("threshold").run()
    at.number_input(key="flag_threshold").set_value(0.002).run()
    at.text_input(key="flag_include").set_value("").run()
    at.text_input(key="flag_exclude").set_value("").run()
    _ok(at)
    assert {m.label: m.value for m in at.metric}["Flagged"] == f"{int((scores > 0.002).sum()):,}"

    at.text_input(key="flag_include").set_value("5, 99999").run()
    assert not at.exception
    assert any("out of range" in e.value for e in at.error)


# ----------------------------------------------------------------------------- run picker
def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(SAMPLE, dst)
    return dst


def test_run_picker_reports_bad_runs_and_opens_good_ones(at, tmp_path):
    missing = tmp_path / "nope"
    half = _copy(tmp_path, "half")
    (half / "manifest.json").unlink()
    old = _copy(tmp_path, "old")
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 7
    (old / "manifest.json").write_text(json.dumps(m))
    raw = _copy(tmp_path, "raw")
    shutil.rmtree(raw / "influence")
    broken = _copy(tmp_path, "broken")
    (broken / "steps.parquet").write_bytes(b"garbage")
    cases = {missing: "does not exist", half: "half-written", old: "format version 7", raw: "dit compute", broken: "could not be read"}
    for path, message in cases.items():
        at.text_input(key="picker_path").set_value(str(path)).run()
        assert not at.exception, path
        assert [e.value for e in at.error if message in e.value], (path, [e.value for e in at.error])
        assert at.session_state["run_path"].endswith("digits_mlp_corrupt20")  # the open run stays open
        assert any(m.label == "Training samples" for m in at.metric)

    good = _copy(tmp_path, "good")
    at.text_input(key="picker_path").set_value(str(good)).run()
    _ok(at)
    assert at.session_state["run_path"] == str(good)
    assert at.selectbox(key="picker_sample").value is None
    at.selectbox(key="picker_sample").set_value("digits_mlp_corrupt20").run()
    _ok(at)
    assert at.session_state["run_path"].endswith("sample_runs/digits_mlp_corrupt20")


def test_run_on_the_command_line(monkeypatch, tmp_path):
    good = _copy(tmp_path, "cli_run")
    at = _app(["dashboard/app.py", "--run", str(good)], monkeypatch)
    _ok(at)
    assert at.session_state["run_path"] == str(good)
    bad = _app(["dashboard/app.py", "--run", str(tmp_path / "missing")], monkeypatch)
    assert not bad.exception
    assert any("does not exist" in e.value for e in bad.error)
    assert bad.session_state["run_path"].endswith("digits_mlp_corrupt20")  # falls back to the sample run


# ----------------------------------------------------------------------------- tabular data
TABULAR = ROOT / "sample_runs" / "breast_cancer_mlp_momentum"


def test_tabular_sample_run_shows_feature_values_and_its_optimizer(at):
    tab = ex.open_run(TABULAR)
    at.selectbox(key="picker_sample").set_value("breast_cancer_mlp_momentum").run()
    _ok(at)
    assert at.session_state["run_path"].endswith("breast_cancer_mlp_momentum")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Training samples"] == f"{tab.n_train:,}" and metrics["Optimizer"] == "sgd"
    assert any("momentum=0.9" in c.value or "momentum 0.9" in c.value for c in at.caption), [c.value for c in at.caption]
    w = ex.convergence_window(tab)
    assert at.slider(key="window_slider").value == w

    at.switch_page("views/window.py").run()
    _ok(at)
    assert len(at.get("image")) == 0  # tabular: no thumbnails ...
    helpful, harmful = _tables(at)[:2]
    r = ex.rank_window(tab, *w, k=10)
    assert harmful["sample_id"].tolist() == r.harmful.tolist()
    names = ex.feature_names(tab)
    assert names[0] == "mean radius" and "mean radius" in harmful.columns  # ... but the feature values
    np.testing.assert_allclose(harmful["mean radius"].astype(float), tab.X_train[r.harmful, 0], rtol=1e-6)
    assert any("standardised" in c.value for c in at.caption)  # the values are not in the names' units

    at.switch_page("views/flags.py").run()
    _ok(at)
    assert at.selectbox(key="flag_signal").value == "aum"


# ----------------------------------------------------------------------------- tiny runs
def test_a_run_of_two_steps_renders_every_page(at, tmp_path, record_iris):
    """The smallest runs (one minibatch per epoch, two epochs) open on every page without an error."""
    import dit_core as dit

    path = record_iris(tmp_path / "tiny", epochs=2, batch_size=100000)
    run = dit.load_run(path)
    assert run.n_steps == 2
    at.text_input(key="picker_path").set_value(str(path)).run()
    _ok(at)
    assert at.session_state["run_path"] == str(path)
    for page in ("views/window.py", "views/trajectories.py", "views/flags.py", "views/timeline.py"):
        at.switch_page(page).run()
        _ok(at)
        if page == "views/window.py":
            assert any("too few to split" in i.value for i in at.info)


def test_the_query_is_chosen_in_the_sidebar(at, tmp_path, record_iris):
    """A run with several queries shows the one chosen in the sidebar; a run without val_loss opens on its own."""
    import dit_core as dit

    run = dit.load_run(record_iris(tmp_path / "two", queries=("val_loss", "class_loss=1"), epochs=4))
    at.text_input(key="picker_path").set_value(str(run.path)).run()
    _ok(at)
    assert at.selectbox(key="query").value == "val_loss" and at.selectbox(key="query").options == ["val_loss", "class_loss=1"]
    at.button(key="win_full").click().run()
    at.switch_page("views/window.py").run()
    _ok(at)
    assert _tables(at)[1]["sample_id"].tolist() == ex.rank_window(run, 0, run.n_steps, k=10).harmful.tolist()
    at.selectbox(key="query").set_value("class_loss=1").run()
    _ok(at)
    other = ex.rank_window(run, 0, run.n_steps, k=10, query="class_loss=1")
    assert _tables(at)[1]["sample_id"].tolist() == other.harmful.tolist()
    assert other.harmful.tolist() != ex.rank_window(run, 0, run.n_steps, k=10).harmful.tolist()

    only = dit.load_run(record_iris(tmp_path / "only", queries=("class_loss=0",), epochs=3))
    at.text_input(key="picker_path").set_value(str(only.path)).run()
    _ok(at)
    assert at.session_state["run_path"] == str(only.path)
    assert any("Query: class_loss=0" in c.value for c in at.sidebar.caption)
    for page in ("views/window.py", "views/flags.py", "views/timeline.py"):
        at.switch_page(page).run()
        _ok(at)
