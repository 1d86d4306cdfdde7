"""xwam checkpoints: a folder with ``model.safetensors``, ``config.json`` and ``norm_stats.json``.

Frozen codecs and text encoders are not stored (they are rebuilt from the config); a codec fitted
on the training data (``pca``) is, as ``codec.safetensors``. Writes are
atomic: everything goes to a temporary sibling folder that replaces the target in one rename, so a
crash mid-save never leaves a half-written checkpoint in place of the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from xwam.atomic import atomic_write_dir  # also imported from here by the trainer
from xwam.config import XWAMConfig
from xwam.model.transformer import XWAMTransformer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATS_FILE = "norm_stats.json"
CODEC_FILE = "codec.safetensors"


def is_xwam_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / MODEL_FILE).exists() and (path / CONFIG_FILE).exists()


def save_checkpoint(
    path: str | Path,
    model: XWAMTransformer,
    config: XWAMConfig,
    norm_stats: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    codec_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write an xwam checkpoint folder atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write_dir(
        path, lambda tmp: write_checkpoint_files(tmp, state, config, norm_stats, metadata, codec_state))


def write_checkpoint_files(
    folder: Path,
    state: dict[str, torch.Tensor],
    config: XWAMConfig,
    norm_stats: dict[str, Any] | None,
    metadata: dict[str, str] | None = None,
    codec_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """The files of one loadable checkpoint (weights, config, statistics, fitted codec) in ``folder``."""
    save_file(state, str(folder / MODEL_FILE), metadata={"format": "pt", **(metadata or {})})
    config.to_json(folder / CONFIG_FILE)
    if norm_stats is not None:
        (folder / STATS_FILE).write_text(json.dumps(norm_stats, indent=2, sort_keys=True) + "\n")
    if codec_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in codec_state.items()}, str(folder / CODEC_FILE))


def load_codec_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The fitted codec stored in a checkpoint folder, or None when it has none."""
    file = Path(path) / CODEC_FILE
    if not file.exists():
        return None
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises its own error type for truncated files
        raise ValueError(f"cannot read {file}: {exc}") from exc


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[XWAMTransformer, XWAMConfig, dict[str, Any] | None]:
    """Load an xwam checkpoint folder: (model in eval mode, config, normalisation stats or None)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not is_xwam_checkpoint(path):
        raise ValueError(f"{path} is not an xwam checkpoint (expected {MODEL_FILE} and {CONFIG_FILE})")
    try:
        config = XWAMConfig.from_json(path / CONFIG_FILE)
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path / CONFIG_FILE} is not a valid xwam config: {exc}") from exc
    model = XWAMTransformer(config.model)
    try:
        state = load_file(str(path / MODEL_FILE))
    except Exception as exc:  # safetensors raises its own error type for truncated files
        raise ValueError(f"cannot read {path / MODEL_FILE}: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path / MODEL_FILE} does not match its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    stats = json.loads((path / STATS_FILE).read_text()) if (path / STATS_FILE).exists() else None
    return model.to(device=device, dtype=dtype).eval(), config, stats
