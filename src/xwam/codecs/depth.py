"""Depth maps as codec input: metric depth <-> 3-channel frames in [-1, 1], and back.

Representation (X-WAM paper, arXiv 2604.26694): like the release, depth is fed to the same image
codec as a one-channel map replicated to three. Unlike the release (8-bit inverse depth of
undocumented range) we fix a metric range [near, far] so predictions map back to metres exactly,
and the map from metres to the codec's [-1, 1] follows one of two curves (near -> +1, far -> -1):

    inverse:  d_n = (1/d - 1/far) / (1/near - 1/far)        u = 2 d_n - 1
    log:      d_n = (ln far - ln d) / (ln far - ln near)     u = 2 d_n - 1

Why two. A codec-unit error du costs a relative depth error of ``d (1/near - 1/far) / 2 du`` under
the inverse curve (it grows with distance: x15 at 1.5 m for 0.05-5 m) and ``ln(far/near) / 2 du``
under the log curve (the same at every distance, x2.3 for 0.05-5 m). The diffusion loss is a
codec-unit MSE, so the inverse curve spends the model on the wrist camera's few centimetres and
leaves the static cameras' metre-scale scene almost unweighted: on the CPU demo (0.05-5 m, a wrist
camera at 4-25 cm, static cameras at 0.5-4.7 m) the static views' depth came out at AbsRel 0.32
even for the observed frame. ``log`` weighs every distance by its relative error, which is what
AbsRel and delta1 score. ``inverse`` stays the default: it is the release's representation, which
pretrained depth branches expect.

The round trip is exact up to float rounding for depths in [near, far]: float64 inputs come back
float64 (relative error ~1e-15); float32 frames carry the relative error ``max_relative_error``
gives for float32's resolution (~3e-6 at the far end for the inverse curve and the defaults).
Depths outside the range are clamped into it first (closer than ``near`` reads back as ``near``,
farther than ``far`` or infinite reads back as ``far``); zero or negative depths read back as
``near``; NaN is rejected. Defaults suit tabletop scenes (0.05 m to 5 m).

Depth kinds. Depth reaches the codec in one of two kinds, and every producer says which
(``Episode.meta["depth_kind"]``, the ``depth_kind`` entry of a clip batch); nothing guesses:

- ``"metric"`` (:data:`DEPTH_KIND_METRIC`): metres, z-depth along the optical axis (our simulator and
  LeRobot datasets). Encoded through :class:`DepthEncoding` (clamped to [near, far], then the curve).
- ``"codec_unit"`` (:data:`DEPTH_KIND_CODEC_UNIT`): already the codec's [-1, 1] values, near bright =
  +1. The release's depth videos are 8-bit relative inverse depth of undocumented scale; the
  release's loader feeds a code v to the VAE as v / 127.5 - 1 and never converts it to metres, so
  neither do we (:func:`release_depth_code_to_unit`). Used as it is, channel-replicated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xwam.codecs.base import _as_tensor

DEFAULT_NEAR_M = 0.05
DEFAULT_FAR_M = 5.0


DEPTH_CURVES = ("inverse", "log")


@dataclass(frozen=True)
class DepthEncoding:
    """Metric depth (metres) <-> codec frames via a normalised ``curve`` (``inverse`` or ``log``
    depth, see the module doc) over [near, far]."""

    near: float = DEFAULT_NEAR_M
    far: float = DEFAULT_FAR_M
    curve: str = "inverse"

    def __post_init__(self) -> None:
        if not (0.0 < self.near < self.far < float("inf")):
            raise ValueError(
                f"depth range must satisfy 0 < near < far < inf, got near={self.near}, far={self.far}"
            )
        if self.curve not in DEPTH_CURVES:
            raise ValueError(f"depth curve must be one of {DEPTH_CURVES}, got {self.curve!r}")

    @classmethod
    def of_model(cls, model: Any) -> DepthEncoding:
        """The encoding an ``xwam.config.ModelConfig`` trains and decodes its metric depth with."""
        return cls(near=model.depth_near, far=model.depth_far, curve=model.depth_curve)

    def _coordinate(self, depth: torch.Tensor) -> torch.Tensor:
        # the quantity the curve is linear in: inverse depth or log depth
        return 1.0 / depth if self.curve == "inverse" else -torch.log(depth)

    # ---- scalar maps (same shape in and out) ---------------------------------------------
    def to_unit(self, depth: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Metric depth -> float32 values in [-1, 1] (near -> 1, far -> -1), clamped to [near, far]."""
        d = _as_tensor(depth)
        out_dtype = _output_dtype(d)
        d = d.to(torch.float64)  # float64 inside: the only rounding is the final cast
        if torch.isnan(d).any():
            raise ValueError("depth contains NaN; mark missing depth explicitly before encoding")
        d = d.clamp(self.near, self.far)
        lo, hi = self._range()
        normalised = (self._coordinate(d) - lo) / (hi - lo)
        return (2.0 * normalised - 1.0).to(out_dtype)

    def from_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Values in [-1, 1] -> float32 metric depth in [near, far] (inputs outside are clamped)."""
        u = _as_tensor(values)
        out_dtype = _output_dtype(u)
        u = u.to(torch.float64).clamp(-1.0, 1.0)
        lo, hi = self._range()
        coordinate = (u + 1.0) * 0.5 * (hi - lo) + lo
        depth = 1.0 / coordinate if self.curve == "inverse" else torch.exp(-coordinate)
        return depth.to(out_dtype)

    def _range(self) -> tuple[float, float]:
        # the curve's coordinate at far (-> -1) and at near (-> +1)
        ends = self._coordinate(torch.tensor([self.far, self.near], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

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

    def max_relative_error(self, unit_resolution: float, depth: float | None = None) -> float:
        """Relative depth error at ``depth`` (default: the worst, at ``far``) caused by an error
        ``unit_resolution`` in the unit value.

        inverse: d(depth)/depth = depth (1/near - 1/far) / 2 d(unit), growing with distance (storing
        the unit value in float32, resolution ~6e-8 near -1, bounds the round trip to ~far/near/2 x
        6e-8); log: ln(far/near) / 2 d(unit) at every distance.
        """
        if self.curve == "log":
            return math.log(self.far / self.near) / 2.0 * unit_resolution
        at = self.far if depth is None else float(depth)
        return at * (1.0 / self.near - 1.0 / self.far) / 2.0 * unit_resolution


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
                          encoding: DepthEncoding) -> torch.Tensor:
    """Depth (..., F, H, W) of ``kind`` -> codec frames (..., 3, F, H, W) in [-1, 1], channel replicated.

    ``metric`` goes through ``encoding`` (its curve over [near, far]); ``codec_unit`` is used as it
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
