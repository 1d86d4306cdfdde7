"""What a run records besides checkpoints: ``metrics.jsonl`` (one JSON line per logged step and
validation), TensorBoard scalars and images, and validation PNGs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from xwam.atomic import atomic_write_text
from xwam.train.samples import write_png

METRICS_FILE = "metrics.jsonl"


class RunLog:
    """Logging of one rank: rank 0 writes, the others do nothing."""

    def __init__(self, run_dir: Path, step: int, *, enabled: bool, tensorboard: bool) -> None:
        self.run_dir, self.enabled, self.writer = run_dir, enabled, None
        self.metrics_path = run_dir / METRICS_FILE
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None)
            except ImportError:
                print("xwam train: tensorboard is not installed; logging to metrics.jsonl only", file=sys.stderr)

    def _truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run logs them again) and lines cut by a crash."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines() if step else []:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(self.metrics_path, "".join(f"{x}\n" for x in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            prefix = "val" if record.get("split") == "val" else "train"
            for key, value in record.items():
                if key not in ("step", "split", "time") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])

    def image(self, name: str, step: int, image: np.ndarray) -> None:
        if not self.enabled:
            return
        write_png(self.run_dir / "val" / f"step-{step:08d}" / f"{name}.png", image)
        if self.writer is not None:
            self.writer.add_image(f"val/{name}", image, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
