"""Visual outputs: depth colour maps, MP4 grids, offline HTML reports and optional Rerun export."""

from xwam.viz.colormap import colorize_depth, turbo
from xwam.viz.report import HtmlReport
from xwam.viz.rerun_export import export_rerun, rerun_available
from xwam.viz.video import read_video, tile_grid, write_video, write_video_grid

__all__ = [
    "HtmlReport",
    "colorize_depth",
    "export_rerun",
    "read_video",
    "rerun_available",
    "tile_grid",
    "turbo",
    "write_video",
    "write_video_grid",
]
