"""xwam checkpoints: a folder with ``model.safetensors``, ``config.json`` and ``norm_stats.json``.

Frozen codecs and text encoders are not stored (they are rebuilt from the config); a codec fitted
on the training data (``pca``) is, as ``codec.safetensors``.

- Atomic: everything goes to a temporary sibling folder published in one atomic step
  (``xwam.atomic.atomic_write_dir``), so a crash mid-save never leaves a half-written checkpoint.
- Verified: ``manifest.json``, written last, lists every file with its size and SHA-256;
  :func:`verify_checkpoint` (run by every load) reports a missing, truncated or edited file with the
  checkpoint's path and the reason. ``XWAM_VERIFY_CHECKSUMS=0`` skips the hashing (sizes are still
  checked) for very large checkpoints. Folders written before manifests existed load unverified.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
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
MANIFEST_FILE = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or damaged; the message names the folder and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"damaged checkpoint {path}: {reason}")
        self.path, self.reason = Path(path), reason

    def __reduce__(self) -> tuple:
        # rebuilt from its own arguments when it crosses a process boundary (evaluation workers)
        return type(self), (self.path, self.reason)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | Path) -> None:
    """Record every file below ``folder`` (size and SHA-256); written last, so its presence also
    says the folder was finished."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": files}, indent=2) + "\n")


def verify_checkpoint(path: str | Path, *, checksums: bool | None = None) -> bool:
    """Raise :class:`CheckpointError` unless every file the manifest lists is there, whole and
    unchanged. Returns False (verifying nothing) for a folder without a manifest."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(path, "no such folder")
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        return False
    if checksums is None:
        checksums = os.environ.get("XWAM_VERIFY_CHECKSUMS", "1") != "0"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(path, f"unreadable {MANIFEST_FILE} ({exc})") from exc
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(path, f"{name} is missing")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(path, f"{name} has {size} bytes, the manifest says {entry['bytes']} (truncated?)")
        if checksums and _sha256(file) != entry["sha256"]:
            raise CheckpointError(path, f"{name} does not match its checksum (changed or corrupted after saving)")
    return True


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

    def write(tmp: Path) -> None:
        write_checkpoint_files(tmp, state, config, norm_stats, metadata, codec_state)
        write_manifest(tmp)

    return atomic_write_dir(path, write)


def write_checkpoint_files(
    folder: Path,
    state: dict[str, torch.Tensor],
    config: XWAMConfig,
    norm_stats: dict[str, Any] | None,
    metadata: dict[str, str] | None = None,
    codec_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """The files of one loadable checkpoint (weights, config, statistics, fitted codec) in ``folder``;
    the caller adds its own files, then :func:`write_manifest`."""
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
    """Load an xwam checkpoint folder: (model in eval mode, config, normalisation stats or None).

    The folder is verified against its manifest first (:class:`CheckpointError` if damaged)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not is_xwam_checkpoint(path):
        raise ValueError(f"{path} is not an xwam checkpoint (expected {MODEL_FILE} and {CONFIG_FILE})")
    if not verify_checkpoint(path):
        print(f"xwam: {path} has no {MANIFEST_FILE} (written before checkpoints were verified); loading it "
              "unverified", file=sys.stderr)
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
