"""End to end: the real Streamlit server driven by headless Chromium (Playwright, sync API).

A person's path through the dashboard: it opens on the bundled sample run, they brush a window
on the timeline with the mouse, the window view follows, they flag samples and download the
flagged list. Needs /usr/bin/chromium (``bash scripts/setup.sh --browser``).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dit_core import explore as ex

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboard" / "app.py"
SAMPLE = ROOT / "sample_runs" / "digits_mlp_corrupt20"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 60_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing; install it with `bash scripts/setup.sh --browser`"),
    pytest.mark.skipif(not (SAMPLE / "manifest.json").exists(), reason="bundled sample run sample_runs/digits_mlp_corrupt20 is missing"),
]
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard served by ``streamlit run`` on a free local port; always terminated."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        # address, usage statistics and toolbar come from .streamlit/config.toml (cwd = repo root), as for a user
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not become healthy in 120 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT_MS)
    try:
        yield pg
    finally:
        ctx.close()


def _wait_for(fn, what: str, timeout: float = WAIT_MS / 1000):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def _window_heading(page) -> tuple[int, int] | None:
    h = page.get_by_role("heading", name=re.compile(r"Window: steps \d+–\d+"))
    if h.count() == 0:
        return None
    m = re.search(r"steps (\d+)–(\d+)", h.first.inner_text())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _captions(page) -> list[int]:
    caps = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    return [int(re.match(r"#(\d+)", c.strip()).group(1)) for c in caps if re.match(r"#(\d+)", c.strip())]


def _go(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name).click()
    page.get_by_role("heading", level=1).filter(has_text={"Timeline": "Training timeline", "Window view": "Window view",
                                                          "Flags & export": "Flag suspected"}[name]).wait_for()


def test_brush_window_then_flag_and_export(server, page, tmp_path):
    run = ex.open_run(SAMPLE)
    T = run.n_steps
    page.goto(server)
    page.locator(".stPlotlyChart .nsewdrag").first.wait_for()
    assert _window_heading(page) == (1080, 1350)  # opens on the convergence window

    _go(page, "Window view")
    before = _wait_for(lambda: (c := _captions(page)) and len(c) == 20 and c, "20 thumbnails")
    conv = ex.rank_window(run, 1080, 1350, k=10)
    assert before == conv.helpful.tolist() + conv.harmful.tolist()

    # brush 20%..50% of the x-axis on the loss plot
    _go(page, "Timeline")
    drag = page.locator(".stPlotlyChart .nsewdrag").first
    drag.wait_for()
    bb = drag.bounding_box()
    y = bb["y"] + bb["height"] * 0.5
    page.mouse.move(bb["x"] + bb["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(bb["x"] + bb["width"] * 0.5, y, steps=15)
    page.mouse.up()
    start, stop = _wait_for(lambda: (w := _window_heading(page)) and w != (1080, 1350) and w, "the brushed window")
    assert abs(start - 0.2 * T) <= 0.02 * T and abs(stop - 0.5 * T) <= 0.02 * T, (start, stop)
    thumbs = page.locator('[data-testid="stSidebar"] [data-testid="stSliderThumbValue"]').all_inner_texts()
    assert [int(t) for t in thumbs] == [start, stop]  # the slider follows the brush
    page.wait_for_timeout(500)
    shot = tmp_path / "timeline_brushed.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("DIT_SCREENSHOT_DIR"):  # keep a copy to look at
        keep = Path(os.environ["DIT_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)

    # the window view follows the brushed window
    _go(page, "Window view")
    ranked = ex.rank_window(run, start, stop, k=10)
    after = _wait_for(lambda: (c := _captions(page)) and len(c) == 20 and c != before and c, "the window view to change")
    assert after == ranked.helpful.tolist() + ranked.harmful.tolist()
    assert page.get_by_text(f"steps {start}–{stop}").first.is_visible()

    # flag the 25 most harmful samples of this window and download them
    _go(page, "Flags & export")
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Suspicion score").click()
    page.keyboard.type("dit_window")
    page.keyboard.press("Enter")
    page.get_by_text(f"Window used: steps {start}–{stop}").wait_for()
    k_input = page.locator('[data-testid="stNumberInput"]').filter(has_text="k (most suspicious)").locator("input")
    k_input.fill("25")
    k_input.press("Enter")
    flagged = page.locator('[data-testid="stMetric"]').filter(has_text="Flagged").locator('[data-testid="stMetricValue"]')
    _wait_for(lambda: flagged.inner_text().strip() == "25", "25 flagged samples")
    with page.expect_download() as info:
        page.locator('[data-testid="stDownloadButton"]').filter(has_text="Download CSV").locator("button").click()
    download = info.value
    assert download.suggested_filename == f"dit_flags_{run.run_id}_dit_window.csv"
    got = pd.read_csv(io.BytesIO(Path(download.path()).read_bytes()))

    scores = -run.window_influence(start, stop)
    assert list(got.columns) == list(ex.EXPORT_COLUMNS) and len(got) == 25
    assert got["sample_id"].tolist() == ex.top_k(scores, 25).tolist()
    assert got["rank"].tolist() == list(range(1, 26))
    np.testing.assert_allclose(got["score"], scores[got["sample_id"]], rtol=1e-9)
    assert got["label"].tolist() == run.y_train[got["sample_id"]].tolist()
    assert (got["window_start"] == start).all() and (got["window_stop"] == stop).all()
    assert (got["signal"] == "dit_window").all() and (got["run_id"] == run.run_id).all()


def test_select_points_on_the_trajectory_map(server, page):
    page.goto(server)
    page.locator(".stPlotlyChart .nsewdrag").first.wait_for()
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Trajectories").click()
    page.get_by_text("Click a point, or drag a lasso").wait_for(timeout=180_000)  # first UMAP compiles (numba)
    drag = page.locator(".stPlotlyChart .nsewdrag").first
    bb = drag.bounding_box()
    # lasso (the map's drag mode) around the whole plot area: selects every point
    corners = [(0.01, 0.01), (0.99, 0.01), (0.99, 0.99), (0.01, 0.99), (0.01, 0.02)]
    page.mouse.move(bb["x"] + bb["width"] * corners[0][0], bb["y"] + bb["height"] * corners[0][1])
    page.mouse.down()
    for fx, fy in corners[1:]:
        page.mouse.move(bb["x"] + bb["width"] * fx, bb["y"] + bb["height"] * fy, steps=8)
    page.mouse.up()
    n_train = ex.open_run(SAMPLE).n_train
    page.get_by_text(f"{n_train:,} samples; the most influential first", exact=False).wait_for()
    page.locator(".stPlotlyChart").get_by_text("Trajectories: selected points").wait_for()  # the inspector follows the selection
    _wait_for(lambda: len(_captions(page)) == 20, "20 thumbnails of the selected samples")
