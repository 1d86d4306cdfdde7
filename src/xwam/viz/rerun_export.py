"""Optional export of per-timestep point clouds to a Rerun recording (``.rrd``).

Rerun (``rerun-sdk``) is not a dependency: :func:`export_rerun` returns None when it is not importable,
so callers can offer the export opportunistically next to the HTML report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xwam.atomic import atomic_path


def rerun_available() -> bool:
    """Whether ``rerun-sdk`` can be imported."""
    try:
        import rerun  # noqa: F401
    except ImportError:
        return False
    return True


def export_rerun(
    path: str | Path,
    frames: Sequence[tuple[np.ndarray, np.ndarray | None]],
    *,
    entity: str = "world/points",
    timeline: str = "timestep",
    radius: float = 0.003,
    application_id: str = "xwam",
) -> Path | None:
    """Save ``(points (N, 3), colours (N, 3) uint8 or None)`` per timestep as a Rerun ``.rrd`` file.

    Timestep t is logged at sequence t on ``timeline``. Returns the path, or None when rerun-sdk is not
    installed. The file is written under a temporary name and renamed when complete.
    """
    if not rerun_available():
        return None
    import rerun as rr

    path = Path(path)
    with atomic_path(path) as temp_name:
        recording = rr.RecordingStream(application_id)
        recording.save(str(temp_name))
        for t, (points, colours) in enumerate(frames):
            points = np.asarray(points, dtype=np.float32)
            if points.ndim != 2 or points.shape[1] != 3:
                raise ValueError(f"timestep {t}: points must be (N, 3), got {points.shape}")
            if hasattr(recording, "set_time"):  # rerun >= 0.23
                recording.set_time(timeline, sequence=t)
            else:
                recording.set_time_sequence(timeline, t)
            recording.log(entity, rr.Points3D(points, colors=colours, radii=radius))
        recording.flush()
        recording.disconnect()
    return path
