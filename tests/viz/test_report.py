import re
import time

import numpy as np
import pytest
from chromium_devtools import find_chromium, load_page

from xwam.viz.colormap import colorize_depth
from xwam.viz.report import HtmlReport
from xwam.viz.video import write_video_grid

POINT_COLOUR = (220, 30, 30)


def _typical_report(tmp_path, *, timesteps: int = 9, views: int = 3, size: int = 128) -> HtmlReport:
    """A report like the imagine command's: a metrics table, an RGB/depth grid video for 3 views x 9 frames,
    fused clouds for 9 timesteps and a loss curve."""
    rng = np.random.default_rng(0)
    # smooth synthetic frames (noise would not be typical for H.264 sizes)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for v in range(views):
        rgb = np.stack(
            [
                np.stack([xx * 255, yy * 255, np.full_like(xx, 60 * v + 40 * t % 255)], -1)
                for t in range(timesteps)
            ]
        )
        depth = np.stack([0.8 + 0.6 * xx + 0.05 * t for t in range(timesteps)])
        coloured = colorize_depth(depth, 0.7, 1.9)
        rows.append([rgb.astype(np.uint8), coloured, rgb.astype(np.uint8), coloured])
    labels = [[f"view {v} {kind}" for kind in ("pred", "pred depth", "gt", "gt depth")] for v in range(views)]
    video = write_video_grid(tmp_path / "grid.mp4", rows, fps=5, labels=labels)

    clouds = []
    for t in range(timesteps):
        points = rng.uniform(-0.3, 0.3, (3 * size * size, 3))  # as many points as 3 fused views
        points[:, 0] += 0.02 * t
        colours = np.broadcast_to(np.array(POINT_COLOUR, np.uint8), points.shape).copy()
        clouds.append((points, colours))

    report = HtmlReport("Imagined rollout <episode 3>")
    report.add_heading("4D prediction")
    report.add_point_cloud(clouds, title="fused point cloud")
    report.add_heading("Videos")
    report.add_video(video, caption="views x {pred, pred depth, gt, gt depth}", width=4 * size * 2)
    report.add_video(rows[0][0], fps=5, caption="view 0 from frames")
    report.add_heading("Metrics")
    report.add_table(
        [{"view": "left", "psnr": float("inf"), "ssim": 0.98765}, {"view": "<b>wrist</b>", "chamfer": 0.0049}]
    )
    report.add_image(rows[0][1][0], caption="depth frame 0")
    report.add_line_plot({"train": list(np.exp(-np.arange(200) / 50)), "val": (np.arange(0, 200, 20), np.exp(-np.arange(0, 200, 20) / 45))},
                         title="loss", log_y=True)  # fmt: skip
    report.add_text("Generated offline.")
    return report


def test_report_is_self_contained_and_capped(tmp_path):
    report = _typical_report(tmp_path)
    path = report.write(tmp_path / "report" / "index.html")
    text = path.read_text(encoding="utf-8")
    size_mb = path.stat().st_size / 1e6
    print(f"typical report: {size_mb:.2f} MB")
    assert size_mb < 8
    assert "data:video/mp4;base64," in text and "data:image/png;base64," in text
    assert text.count("<video") == 2 and text.count('class="plotly-graph-div"') == 2
    # offline: plotly.js inline, no external scripts, stylesheets or media
    assert not re.search(r'<script[^>]+src=|<link[^>]+href=|src="https?:', text)
    assert len(re.findall(r"<script", text)) >= 3 and "Plotly.newPlot" in text
    assert "&lt;b&gt;wrist&lt;/b&gt;" in text and "&lt;episode 3&gt;" in text and "&infin;" in text
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]


def test_point_cloud_figure_caps_points_and_has_a_slider():
    rng = np.random.default_rng(1)
    report = HtmlReport("clouds")
    clouds = [
        (rng.uniform(size=(30000, 3)), None),
        (rng.uniform(size=(50, 3)), None),
        (np.zeros((0, 3)), None),
    ]
    figure = report.add_point_cloud(clouds, max_points=2000)
    counts = [len(trace.x) for trace in figure.data]
    assert 1000 < counts[0] <= 2000 and counts[1:] == [50, 0]
    assert [trace.visible for trace in figure.data] == [True, False, False]
    steps = figure.layout.sliders[0].steps
    assert [step.args[0]["visible"] for step in steps] == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
    ]
    with pytest.raises(ValueError, match="timestep 0"):
        report.add_point_cloud([(np.zeros((5, 2)), None)])


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary found (apt-get install -y chromium): browser test not run"
)


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    path = _typical_report(tmp_path, timesteps=4).write(tmp_path / "report.html")
    started = time.monotonic()
    page = load_page(
        CHROMIUM,
        path.resolve().as_uri(),
        tmp_path,
        expressions={
            "plots": "document.querySelectorAll('.js-plotly-plot').length",
            "webgl_canvases": "document.querySelectorAll('#figure-1 .gl-container canvas').length",
            "plot_rect": "(() => { const r = document.getElementById('figure-1').getBoundingClientRect();"
            " return [r.left, r.top, r.width, r.height]; })()",
            "video_sizes": "Array.from(document.querySelectorAll('video')).map(v => [v.readyState, v.videoWidth, v.videoHeight])",
            "slider_steps": "document.querySelectorAll('#figure-1 .slider-container .slider-step, #figure-1 .slider-grip').length",
        },
    )
    print(f"chromium check took {time.monotonic() - started:.1f} s; console: {page.console[:5]}")
    assert page.errors == [], page.errors
    assert page.evaluations["plots"] == 2 and page.evaluations["webgl_canvases"] >= 1
    # both embedded MP4s decode: metadata loaded and the right frame size
    assert [size[1:] for size in page.evaluations["video_sizes"]] == [[4 * 128 + 6, 3 * 128 + 4], [128, 128]]
    assert all(size[0] >= 1 for size in page.evaluations["video_sizes"])

    shot = page.screenshot.astype(np.float64)
    assert shot.shape[:2] == (900, 1200) and shot.std() > 10  # not a blank page
    left, top, width, height = (int(round(v)) for v in page.evaluations["plot_rect"])
    region = shot[max(top, 0) : min(top + height, 900), max(left, 0) : left + width]
    assert region.size and region.std() > 10
    red = (region[..., 0] > 150) & (region[..., 1] < 90) & (region[..., 2] < 90)
    assert red.sum() > 2000, f"only {red.sum()} point-coloured pixels in the 3D plot"


@needs_chromium
def test_chromium_check_catches_javascript_errors(tmp_path):
    page_path = tmp_path / "broken.html"
    page_path.write_text(
        "<html><body><p>text</p><script>console.log('all-good-token'); console.error('bad thing');"
        "missingFunction();</script></body></html>"
    )
    page = load_page(CHROMIUM, page_path.as_uri(), tmp_path, settle_seconds=0.2)
    assert any("bad thing" in e for e in page.errors)
    assert any("missingFunction" in e for e in page.errors)
    assert not any("all-good-token" in e for e in page.errors)
    assert any("all-good-token" in c for c in page.console)
