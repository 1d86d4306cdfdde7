"""Self-contained offline HTML reports: headings, text, tables, images, videos, line plots and 3D point clouds.

Everything is embedded in the one file: PNG images and MP4 videos as base64 data URIs, plotly figures
as inline JSON (numpy arrays are stored as compact base64 typed arrays) and plotly's JavaScript inline
in the page head once. The report opens from disk in any browser with no server, no CDN and no network.

Point clouds are one plotly ``Scatter3d`` trace per timestep with a slider that switches between them;
each timestep is voxel-downsampled to at most ``max_points`` points so reports stay a few MB (plotly's
JavaScript itself is about 4.7 MB).

Example::

    report = HtmlReport("Imagination, episode 3")
    report.add_heading("Metrics")
    report.add_table([{"view": "agentview", "psnr": 23.4}])
    report.add_video("grid.mp4", caption="pred | depth | gt")
    report.add_point_cloud([(points_t, colours_t) for ...], title="fused 4D prediction")
    report.write("report.html")
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xwam.atomic import atomic_write_text
from xwam.geometry.pointcloud import downsample_to_count
from xwam.viz.video import tile_grid, write_video

DEFAULT_MAX_POINTS = 8000

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #1d1d1f; background: #ffffff; }
h1 { font-size: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 6px; }
h2 { font-size: 1.3em; margin-top: 1.6em; } h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
figure { margin: 12px 0 20px; } figcaption { color: #555; font-size: 0.9em; margin-top: 4px; }
img, video { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.plot { width: 100%; }
"""


def _format_cell(value: Any, float_format: str) -> tuple[str, bool]:
    """(html text, is_numeric) of one table cell."""
    if value is None:
        return "&ndash;", True
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value))), False
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan", True
        if math.isinf(value):
            return "&infin;" if value > 0 else "&minus;&infin;", True
        return html.escape(float_format.format(value)), True
    return html.escape(str(value)), False


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    array = np.asarray(image)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (3, 4))
    ):
        raise ValueError(
            f"images must be (H, W), (H, W, 3) or (H, W, 4) uint8, got {array.shape} {array.dtype}"
        )
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class HtmlReport:
    """Builds one offline, self-contained HTML page; add blocks in order, then :meth:`write` it."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._blocks: list[str] = []
        self._has_plotly = False
        self._figure_count = 0

    # ----- text and tables -----------------------------------------------------------------
    def add_heading(self, text: str, level: int = 2) -> None:
        """A section heading (``level`` 2 or 3; the title is the page's only level-1 heading)."""
        if level not in (2, 3, 4):
            raise ValueError(f"heading level must be 2, 3 or 4, got {level}")
        self._blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def add_text(self, text: str) -> None:
        """A paragraph of plain text (HTML is escaped; blank lines start new paragraphs)."""
        for paragraph in str(text).split("\n\n"):
            self._blocks.append(f"<p>{html.escape(paragraph)}</p>")

    def add_table(
        self, rows: Sequence[Mapping[str, Any]], *, caption: str | None = None, float_format: str = "{:.4g}"
    ) -> None:
        """A table from a list of dicts; columns are the keys in order of first appearance."""
        if not rows:
            raise ValueError("add_table needs at least one row")
        columns: list[str] = []
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError(f"table rows must be dicts, got {type(row).__name__}")
            columns += [key for key in row if key not in columns]
        parts = ["<figure><table><thead><tr>"]
        parts += [f"<th>{html.escape(str(c))}</th>" for c in columns]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>")
            for column in columns:
                text, numeric = _format_cell(row.get(column), float_format)
                parts.append(f"<td>{text}</td>" if numeric else f'<td class="text">{text}</td>')
            parts.append("</tr>")
        parts.append("</tbody></table>")
        if caption:
            parts.append(f"<figcaption>{html.escape(caption)}</figcaption>")
        parts.append("</figure>")
        self._blocks.append("".join(parts))

    # ----- media ---------------------------------------------------------------------------
    def add_image(
        self, image: np.ndarray | bytes | str | Path, *, caption: str | None = None, width: int | None = None
    ) -> None:
        """An image: a uint8 array (encoded as PNG), PNG bytes, or a .png/.jpg file."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            suffix = path.suffix.lower()
            mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(suffix)
            if mime is None:
                raise ValueError(f"{path}: only .png and .jpg images can be embedded")
            data = path.read_bytes()
        elif isinstance(image, bytes):
            if not image.startswith(b"\x89PNG"):
                raise ValueError("image bytes must be a PNG file")
            data, mime = image, "image/png"
        else:
            data, mime = _png_bytes(image), "image/png"
        size = f' width="{int(width)}"' if width else ""
        self._add_media(
            f'<img src="data:{mime};base64,{base64.b64encode(data).decode()}"{size} alt="">', caption
        )

    def add_video(
        self,
        video: np.ndarray | bytes | str | Path,
        *,
        caption: str | None = None,
        fps: float = 5.0,
        width: int | None = None,
    ) -> None:
        """A looping video: an MP4 file or its bytes, or ``(T, H, W, 3) uint8`` frames (encoded at ``fps``).
        ``width`` sets the displayed width in pixels (small clips can be shown enlarged)."""
        if isinstance(video, (str, Path)):
            path = Path(video)
            if not path.is_file():
                raise FileNotFoundError(f"video not found: {path}")
            data = path.read_bytes()
        elif isinstance(video, bytes):
            data = video
        else:
            with tempfile.TemporaryDirectory() as folder:
                data = write_video(
                    Path(folder) / "clip.mp4", tile_grid([[np.asarray(video)]]), fps
                ).read_bytes()
        if data[4:8] != b"ftyp":
            raise ValueError("videos must be MP4 files (no 'ftyp' box found)")
        source = f"data:video/mp4;base64,{base64.b64encode(data).decode()}"
        size = f' width="{int(width)}"' if width else ""
        self._add_media(
            f'<video controls loop autoplay muted playsinline{size} src="{source}"></video>', caption
        )

    def _add_media(self, element: str, caption: str | None) -> None:
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._blocks.append(f"<figure>{element}{caption_html}</figure>")

    # ----- plotly figures ------------------------------------------------------------------
    def add_figure(self, figure: Any, *, height: int = 480) -> Any:
        """Any plotly figure, rendered with the inline plotly.js of the page; returns the figure."""
        self._figure_count += 1
        self._has_plotly = True
        self._blocks.append(
            figure.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"figure-{self._figure_count}",
                default_height=f"{height}px",
                config={"responsive": True, "displaylogo": False},
            )
        )
        return figure

    def add_line_plot(
        self,
        series: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
        *,
        title: str = "",
        x_label: str = "step",
        y_label: str = "loss",
        log_y: bool = False,
    ) -> Any:
        """Line plot of named series: each is a list of y values (x = 0, 1, ...) or an ``(x, y)`` pair;
        returns the plotly figure."""
        import plotly.graph_objects as go

        if not series:
            raise ValueError("add_line_plot needs at least one series")
        figure = go.Figure()
        for name, values in series.items():
            if isinstance(values, tuple) and len(values) == 2:
                x, y = np.asarray(values[0], dtype=np.float64), np.asarray(values[1], dtype=np.float64)
            else:
                y = np.asarray(values, dtype=np.float64)
                x = np.arange(y.shape[0], dtype=np.float64)
            if x.shape != y.shape or y.ndim != 1:
                raise ValueError(f"series {name!r}: x {x.shape} and y {y.shape} must be equal-length 1-D")
            figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=str(name)))
        figure.update_layout(
            title=title or None,
            xaxis_title=x_label,
            yaxis_title=y_label,
            yaxis_type="log" if log_y else "linear",
            margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 50},
            template="plotly_white",
        )
        return self.add_figure(figure, height=400)

    def add_point_cloud(
        self,
        frames: Sequence[tuple[np.ndarray, np.ndarray | None]],
        *,
        title: str = "",
        frame_labels: Sequence[str] | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        point_size: float = 2.0,
    ) -> Any:
        """Interactive 3D point clouds, one per timestep, with a slider to step through them.

        ``frames`` holds ``(points (N, 3), colours (N, 3) uint8 or None)`` per timestep (uncoloured clouds
        are shaded by height). Each timestep is voxel-downsampled to at most ``max_points`` points. The
        axes are fixed to the bounds of all timesteps (equal scale on every axis), so the view does not
        jump while stepping. Returns the plotly figure.
        """
        import plotly.graph_objects as go

        if not frames:
            raise ValueError("add_point_cloud needs at least one timestep")
        labels = list(frame_labels) if frame_labels is not None else [f"t={t}" for t in range(len(frames))]
        if len(labels) != len(frames):
            raise ValueError(f"{len(frames)} timesteps but {len(labels)} frame labels")
        clouds = []
        for t, (points, colours) in enumerate(frames):
            points = np.asarray(points)
            if points.ndim != 2 or points.shape[1] != 3:
                raise ValueError(f"timestep {t}: points must be (N, 3), got {points.shape}")
            keep = np.all(np.isfinite(points), axis=1)
            points = points[keep]
            colours = np.asarray(colours)[keep] if colours is not None else None
            if points.shape[0]:
                points, colours, _ = downsample_to_count(points, colours, max_points)
            clouds.append((points.astype(np.float32), colours))

        non_empty = [p for p, _ in clouds if p.shape[0]]
        if non_empty:
            stacked = np.concatenate(non_empty)
            low, high = stacked.min(axis=0), stacked.max(axis=0)
        else:
            low, high = np.zeros(3), np.ones(3)
        centre, half = (low + high) / 2, max(float(np.max(high - low)) / 2, 1e-3) * 1.05
        figure = go.Figure()
        for t, (points, colours) in enumerate(clouds):
            if colours is not None:
                colour = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours.tolist()]
                marker = {"size": point_size, "color": colour}
            else:
                marker = {"size": point_size, "color": points[:, 2], "colorscale": "Turbo"}
            figure.add_trace(
                go.Scatter3d(
                    x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="markers", marker=marker,
                    name=labels[t], visible=t == 0, hoverinfo="skip",
                )
            )  # fmt: skip
        steps = [
            {
                "method": "update",
                "label": labels[t],
                "args": [{"visible": [i == t for i in range(len(clouds))]}],
            }
            for t in range(len(clouds))
        ]
        axis = {"showbackground": False, "gridcolor": "#ddd"}
        figure.update_layout(
            title=title or None,
            showlegend=False,
            margin={"l": 0, "r": 0, "t": 40 if title else 10, "b": 0},
            scene={
                "xaxis": {**axis, "range": [centre[0] - half, centre[0] + half], "title": "x (m)"},
                "yaxis": {**axis, "range": [centre[1] - half, centre[1] + half], "title": "y (m)"},
                "zaxis": {**axis, "range": [centre[2] - half, centre[2] + half], "title": "z (m)"},
                "aspectmode": "cube",
                "uirevision": "keep-camera",
            },
            sliders=[
                {"active": 0, "steps": steps, "currentvalue": {"prefix": "timestep: "}, "pad": {"t": 10}}
            ]
            if len(clouds) > 1
            else [],
        )
        return self.add_figure(figure, height=600)

    # ----- output --------------------------------------------------------------------------
    def to_html(self) -> str:
        """The complete page as a string."""
        head = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>",
            f"<style>{_STYLE}</style>",
        ]
        if self._has_plotly:
            from plotly.offline import get_plotlyjs

            head.append(f'<script type="text/javascript">{get_plotlyjs()}</script>')
        head.append("</head><body>")
        body = [f"<h1>{html.escape(self.title)}</h1>", *self._blocks, "</body></html>"]
        return "\n".join(head + body)

    def write(self, path: str | Path) -> Path:
        """Write the page to ``path`` atomically (temporary file in the same folder, then rename)."""
        return atomic_write_text(path, self.to_html())
