import numpy as np
import pytest

from xwam.viz.rerun_export import export_rerun, rerun_available


def test_export_rerun_writes_a_recording_or_skips_silently(tmp_path):
    frames = [
        (np.random.default_rng(t).uniform(size=(100, 3)), np.full((100, 3), 128, np.uint8)) for t in range(3)
    ]
    result = export_rerun(tmp_path / "clouds.rrd", frames)
    if not rerun_available():
        assert result is None and not (tmp_path / "clouds.rrd").exists()
        pytest.skip(
            "rerun-sdk not installed: export returns None as designed (the writing path is untested here)"
        )
    assert result == tmp_path / "clouds.rrd" and result.stat().st_size > 0
