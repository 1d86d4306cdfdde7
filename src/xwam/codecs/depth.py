"""Depth maps as codec input: metric depth <-> 3-channel frames in [-1, 1], and back.

Representation (X-WAM paper, arXiv 2604.26694): like the release, depth is fed to the same frozen image codec as
*inverse depth*, one channel replicated to three. Unlike the release (whose normalisation range is
undocumented) we fix a metric range [near, far] so predictions map back to metres exactly:

    d_n = (1/d - 1/far) / (1/near - 1/far)   in [0, 1]  (near -> 1, far -> 0)
    u   = 2 d_n - 1                          in [-1, 1]

Inverse depth spends the codec's precision where it matters for manipulation (close to the
camera). The round trip is exact up to float rounding for depths in [near, far]: float64 inputs come back
float64 (relative error ~1e-15); float32 frames carry a relative error up to about
far/near/2 x 6e-8 at the far end (~3e-6 for the defaults, ``max_relative_error``). Depths outside
that range are clamped into it first (closer than ``near`` reads back as ``near``, farther than
``far`` or infinite reads back as ``far``); zero or negative depths read back as ``near``; NaN is
rejected. Defaults suit tabletop scenes (0.05 m to 5 m).

Depth kinds. Depth reaches the codec in one of two kinds, and every producer says which
(``Episode.meta["depth_kind"]``, the ``depth_kind`` entry of a clip batch); nothing guesses:

- ``"metric"`` (:data:`DEPTH_KIND_METRIC`): metres, z-depth along the optical axis (our simulator and
  LeRobot datasets). Encoded through :class:`InverseDepthEncoding` (clamped to [near, far], inverted).
- ``"codec_unit"`` (:data:`DEPTH_KIND_CODEC_UNIT`): already the codec's [-1, 1] values, near bright =
  +1. The release's depth videos are 8-bit relative inverse depth of undocumented scale; the
  release's loader feeds a code v to the VAE as v / 127.5 - 1 and never converts it to metres, so
  neither do we (:func:`release_depth_code_to_unit`). Used as it is, channel-replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xwam.codecs.base import _as_tensor

DEFAULT_NEAR_M = 0.05
DEFAULT_FAR_M = 5.0


@dataclass(frozen=True)
class InverseDepthEncoding:
    """Metric depth (metres) <-> codec frames via normalised inverse depth over [near, far]."""

    near: float = DEFAULT_NEAR_M
    far: float = DEFAULT_FAR_M

    def __post_init__(self) -> None:
        if not (0.0 < self.near < self.far < float("inf")):
            raise ValueError(
                f"depth range must satisfy 0 < near < far < inf, got near={self.near}, far={self.far}"
            )

    # ---- scalar maps (same shape in and out) ---------------------------------------------
    def to_unit(self, depth: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Metric depth -> float32 values in [-1, 1] (near -> 1, far -> -1), clamped to [near, far]."""
        d = _as_tensor(depth)
        out_dtype = _output_dtype(d)
        d = d.to(torch.float64)  # float64 inside: the only rounding is the final cast
        if torch.isnan(d).any():
            raise ValueError("depth contains NaN; mark missing depth explicitly before encoding")
        d = d.clamp(self.near, self.far)
        inv_near, inv_far = 1.0 / self.near, 1.0 / self.far
        normalised = (1.0 / d - inv_far) / (inv_near - inv_far)
        return (2.0 * normalised - 1.0).to(out_dtype)

    def from_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Values in [-1, 1] -> float32 metric depth in [near, far] (inputs outside are clamped)."""
        u = _as_tensor(values)
        out_dtype = _output_dtype(u)
        u = u.to(torch.float64).clamp(-1.0, 1.0)
        inv_near, inv_far = 1.0 / self.near, 1.0 / self.far
        inverse = (u + 1.0) * 0.5 * (inv_near - inv_far) + inv_far
        return (1.0 / inverse).to(out_dtype)

    # ---- codec layout ----------------------------------------------------------------------
    def depth_to_frames(self, depth: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Metric depth (..., F, H, W) -> codec frames (..., 3, F, H, W), channel replicated."""
        d = _as_tensor(depth)
        if d.ndim < 3:
            raise ValueError(f"depth must be (..., F, H, W), got shape {tuple(d.shape)}")
        unit = self.to_unit(d).unsqueeze(-4)
        return unit.expand(*unit.shape[:-4], 3, *unit.shape[-3:]).contiguous()

    def frames_to_depth(self, frames: torch.Tensor) -> torch.Tensor:
        """Codec frames (..., 3, F, H, W) -> metric depth (..., F, H, W).

        The three channels are averaged (a decoded depth clip need not keep them equal) and the
        result is clamped to [-1, 1] before inversion.
        """
        x = _as_tensor(frames)
        if x.ndim < 4 or x.shape[-4] != 3:
            raise ValueError(f"depth frames must be (..., 3, F, H, W), got shape {tuple(x.shape)}")
        return self.from_unit(x.mean(dim=-4, dtype=_output_dtype(x)))

    def max_relative_error(self, unit_resolution: float) -> float:
        """Worst relative depth error (at ``far``) caused by an error ``unit_resolution`` in the unit value.

        d(depth)/depth = depth * (1/near - 1/far) / 2 * d(unit): storing the unit value in float32
        (resolution ~6e-8 near -1) bounds the round trip to ~far/near/2 * 6e-8 relative.
        """
        return self.far * (1.0 / self.near - 1.0 / self.far) / 2.0 * unit_resolution


DEPTH_KIND_METRIC = "metric"
DEPTH_KIND_CODEC_UNIT = "codec_unit"
DEPTH_KINDS = (DEPTH_KIND_METRIC, DEPTH_KIND_CODEC_UNIT)


def check_depth_kind(kind: object, where: str = "depth") -> str:
    """``kind`` if it is one of :data:`DEPTH_KINDS`, else ValueError (a missing kind is never guessed)."""
    if kind is None:
        raise ValueError(
            f"{where}: the depth kind is missing; say whether the depth is {DEPTH_KIND_METRIC!r} (metres) or "
            f"{DEPTH_KIND_CODEC_UNIT!r} (the codec's [-1, 1] units, e.g. release depth videos)"
        )
    if kind not in DEPTH_KINDS:
        raise ValueError(f"{where}: unknown depth kind {kind!r} (known: {', '.join(DEPTH_KINDS)})")
    return str(kind)


def release_depth_code_to_unit(codes: np.ndarray) -> np.ndarray:
    """8-bit depth codes (uint8, any shape) -> float32 codec units ``v / 127.5 - 1`` in [-1, 1], as the
    release's loader maps its depth videos (code 255, the nearest, -> +1; code 0 -> -1)."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise ValueError(f"release depth codes must be uint8, got {codes.dtype}")
    return (codes.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).astype(np.float32)


def depth_to_codec_frames(depth: np.ndarray | torch.Tensor, kind: str,
                          encoding: InverseDepthEncoding) -> torch.Tensor:
    """Depth (..., F, H, W) of ``kind`` -> codec frames (..., 3, F, H, W) in [-1, 1], channel replicated.

    ``metric`` goes through ``encoding`` (inverse depth over [near, far]); ``codec_unit`` is used as it
    is and must already lie in [-1, 1] (metres mislabelled as units would not, and are refused).
    """
    kind = check_depth_kind(kind)
    if kind == DEPTH_KIND_METRIC:
        return encoding.depth_to_frames(depth)
    u = _as_tensor(depth)
    if u.ndim < 3:
        raise ValueError(f"depth must be (..., F, H, W), got shape {tuple(u.shape)}")
    u = u.to(_output_dtype(u))
    if torch.isnan(u).any() or (u.numel() and (u.min() < -1.0 or u.max() > 1.0)):
        raise ValueError(
            f"depth of kind {DEPTH_KIND_CODEC_UNIT!r} must lie in [-1, 1] (got values in "
            f"[{float(u.min()):.4g}, {float(u.max()):.4g}]); metric depth must be labelled {DEPTH_KIND_METRIC!r}"
        )
    unit = u.unsqueeze(-4)
    return unit.expand(*unit.shape[:-4], 3, *unit.shape[-3:]).contiguous()


def _output_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (exact round trips for analysis); everything else comes back float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def relative_inverse_depth_from_uint8(video: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The release's 8-bit inverse-depth video -> relative inverse depth in [0, 1] (1 = nearest).

    Accepts (..., H, W) or (..., H, W, 3) uint8 (channels are averaged). The release does not
    document the range those 8 bits span, so the result is *relative*: it cannot be turned into
    metres without calibration (e.g. ``align_relative_inverse_depth`` against reference depth).
    """
    x = _as_tensor(video)
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 inverse-depth frames, got {x.dtype}")
    values = x.to(torch.float32)
    if x.ndim >= 3 and x.shape[-1] == 3:
        values = values.mean(dim=-1)
    return values / 255.0


def relative_inverse_depth_to_frames(relative: torch.Tensor) -> torch.Tensor:
    """Relative inverse depth (..., F, H, W) in [0, 1] -> codec frames (..., 3, F, H, W) in [-1, 1].

    This is how the release feeds its depth videos to the VAE (8-bit value / 127.5 - 1); see also
    :func:`release_depth_code_to_unit` and the ``codec_unit`` depth kind.
    """
    r = _as_tensor(relative).to(torch.float32)
    if r.ndim < 3:
        raise ValueError(f"relative inverse depth must be (..., F, H, W), got shape {tuple(r.shape)}")
    unit = (2.0 * r.clamp(0.0, 1.0) - 1.0).unsqueeze(-4)
    return unit.expand(*unit.shape[:-4], 3, *unit.shape[-3:]).contiguous()


def align_relative_inverse_depth(
    relative: torch.Tensor,
    reference_depth: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, float]:
    """Fit inverse metric depth ~= scale * relative + shift by least squares; return metric depth.

    ``reference_depth`` holds metric depth (metres) on the same grid; ``valid`` masks the pixels
    to fit on (default: finite, positive reference depth). Returns (depth in metres, scale,
    shift). Pixels whose fitted inverse depth is not positive come back as +inf.
    """
    r = _as_tensor(relative).to(torch.float64)
    ref = _as_tensor(reference_depth).to(torch.float64)
    if r.shape != ref.shape:
        raise ValueError(
            f"relative depth {tuple(r.shape)} and reference depth {tuple(ref.shape)} differ in shape"
        )
    mask = torch.isfinite(ref) & (ref > 0)
    if valid is not None:
        mask &= _as_tensor(valid).to(torch.bool)
    if int(mask.sum()) < 2:
        raise ValueError("need at least two valid reference pixels to align relative inverse depth")
    x, y = r[mask], 1.0 / ref[mask]
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    solution = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1)
    scale, shift = float(solution[0]), float(solution[1])
    inverse = scale * r + shift
    depth = torch.where(inverse > 0, 1.0 / inverse.clamp_min(1e-12), torch.full_like(inverse, float("inf")))
    return depth.to(torch.float32), scale, shift
