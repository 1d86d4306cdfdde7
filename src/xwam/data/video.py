"""Video encoding and decoding for datasets (PyAV), and the two depth encodings datasets use.

RGB is stored as H.264 (``libx264``, ``yuv420p``, CRF 18 by default): visually lossless and read by
every player and by LeRobot.

Depth, in datasets written now, is not a video: it is a ``uint16`` vector of millimetres per frame
in the data parquet (:class:`DepthMillimetres`), because lerobot 0.4.4's own tools re-encode every
video of a file they edit to 8-bit AV1 (``dataset_tools._keep_episodes_from_video_with_av``) and
cannot concatenate FFV1 into ``.mp4`` (``aggregate.concatenate_video_files``), while they copy parquet
columns unchanged. Datasets written before (format 1) store depth as a 12-bit log-quantised grey
video (``gray12le``) compressed with FFV1 (:class:`DepthQuantizer`): lossless and intra-only, so the
only error is the quantiser's and every frame is a key frame. Both still read.

Many episodes share one file: frame ``i`` of a file carries the timestamp ``i / fps`` and an episode
is located by its ``[from_timestamp, to_timestamp)`` range, as in LeRobot v3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from xwam.data.errors import DatasetError

RGB_CODEC = "libx264"
RGB_PIX_FMT = "yuv420p"
DEPTH_CODEC = "ffv1"
DEPTH_PIX_FMT = "gray12le"
# the ``depth.encoding`` a parquet depth feature declares in its info block (DepthMillimetres)
DEPTH_PARQUET_ENCODING = "uint16_mm"


@dataclass(frozen=True)
class DepthQuantizer:
    """Log quantiser mapping metric depth to ``bits``-bit integer codes (LeRobot's depth scheme).

    ``u = (log(d + shift) - log(d_min + shift)) / (log(d_max + shift) - log(d_min + shift))`` and
    ``code = round(u * (2**bits - 1))``. Depth outside ``[d_min, d_max]`` is clipped; non-finite or
    non-positive depth (no return) is stored as ``d_max``. For depth inside the range the round-trip
    error is at most ``(d + shift) * (exp(L / (2 * (2**bits - 1))) - 1)`` with
    ``L = log((d_max + shift) / (d_min + shift))``: with the defaults 0.58 mm at 0.01 m, 0.74 mm at
    1 m and 2.2 mm at 10 m (see :meth:`error_bound`).
    """

    depth_min: float = 0.01
    depth_max: float = 10.0
    shift: float = 3.5
    bits: int = 12

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    @property
    def _log_range(self) -> tuple[float, float]:
        return math.log(self.depth_min + self.shift), math.log(self.depth_max + self.shift)

    def encode(self, depth: np.ndarray) -> np.ndarray:
        """Metric depth (any shape, metres) -> uint16 codes in ``[0, 2**bits - 1]``."""
        lo, hi = self._log_range
        d = np.asarray(depth, dtype=np.float64)
        d = np.where(np.isfinite(d) & (d > 0), d, self.depth_max)
        d = np.clip(d, self.depth_min, self.depth_max)
        u = (np.log(d + self.shift) - lo) / (hi - lo)
        return np.rint(u * self.levels).astype(np.uint16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint16 codes -> float32 metric depth in metres."""
        lo, hi = self._log_range
        u = np.asarray(codes, dtype=np.float64) / self.levels
        return (np.exp(lo + u * (hi - lo)) - self.shift).astype(np.float32)

    def error_bound(self, depth: float | np.ndarray) -> float | np.ndarray:
        """Worst-case absolute round-trip error (metres) for depth inside ``[d_min, d_max]``.

        Half a quantisation step in log space is ``L / (2 * levels)``; mapped back through exp it
        is at most ``(d + shift) * (exp(L / (2 * levels)) - 1)`` (the upper side is the larger).
        """
        lo, hi = self._log_range
        half_step = (hi - lo) / (2 * self.levels)
        return (np.asarray(depth, dtype=np.float64) + self.shift) * math.expm1(half_step)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthQuantizer:
        return cls(**{k: data[k] for k in ("depth_min", "depth_max", "shift", "bits") if k in data})


@dataclass(frozen=True)
class DepthMillimetres:
    """Metric depth as ``uint16`` millimetres, the usual depth-image convention (ROS ``16UC1``).

    ``code = round(depth / scale_m)`` with ``scale_m = 0.001``; ``no_return_code`` (0) marks pixels
    with no depth (non-finite or non-positive input) and decodes to ``+inf`` (geometry treats it as
    invalid, the inverse-depth codec reads it as its far plane). Depth is clipped to
    ``[scale_m, 65535 * scale_m]`` (1 mm to 65.535 m), so inside that range the round-trip error is
    at most ``scale_m / 2`` = 0.5 mm at every distance (the 12-bit log quantiser of format 1 gives
    0.58 mm at 0.01 m, 0.74 mm at 1 m and 2.2 mm at 10 m, and clips at 10 m).
    """

    scale_m: float = 0.001
    no_return_code: int = 0

    MAX_CODE = 65535

    @property
    def depth_max(self) -> float:
        return self.MAX_CODE * self.scale_m

    def encode(self, depth: np.ndarray) -> np.ndarray:
        """Metric depth (any shape, metres) -> uint16 codes (``no_return_code`` where there is none)."""
        d = np.asarray(depth, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        codes = np.clip(np.rint(np.where(valid, d, 0.0) / self.scale_m), 1, self.MAX_CODE)
        return np.where(valid, codes, self.no_return_code).astype(np.uint16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint16 codes -> float32 metres; ``no_return_code`` -> +inf."""
        c = np.asarray(codes)
        metres = c.astype(np.float64) * self.scale_m
        return np.where(c == self.no_return_code, np.inf, metres).astype(np.float32)

    def error_bound(self, depth: float | np.ndarray) -> float | np.ndarray:
        """Worst-case absolute round-trip error (metres) inside ``[scale_m, depth_max]``: half a step
        (plus the float32 output's rounding, below 4e-6 m up to 65 m)."""
        return np.full(np.shape(depth), self.scale_m / 2) if np.ndim(depth) else self.scale_m / 2

    def feature_info(self, height: int, width: int) -> dict[str, Any]:
        """The ``info`` block of the LeRobot feature (lerobot's tools keep it when they rewrite
        ``meta/info.json``, unlike our top-level ``xwam`` block)."""
        return {
            "depth.encoding": DEPTH_PARQUET_ENCODING,
            "depth.height": int(height),
            "depth.width": int(width),
            "depth.unit": "mm",
            "depth.scale_m": self.scale_m,
            "depth.no_return_code": self.no_return_code,
            "depth.is_depth_map": True,
        }

    @classmethod
    def from_feature_info(cls, info: dict[str, Any]) -> DepthMillimetres:
        return cls(
            scale_m=float(info.get("depth.scale_m", 0.001)),
            no_return_code=int(info.get("depth.no_return_code", 0)),
        )


class VideoEncoder:
    """Streams frames into one video file; episodes are appended back to back.

    ``kind="rgb"`` takes (N, H, W, 3) uint8 frames; ``kind="depth"`` takes (N, H, W) uint16 codes
    from :class:`DepthQuantizer`. Frame ``i`` gets the timestamp ``i / fps``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        fps: float,
        kind: str = "rgb",
        crf: int = 18,
        gop: int | None = None,
    ) -> None:
        if kind not in ("rgb", "depth"):
            raise ValueError(f"unknown video kind {kind!r}; use 'rgb' or 'depth'")
        if kind == "rgb" and (width % 2 or height % 2):
            raise ValueError(f"{path}: yuv420p video needs an even width and height, got {width}x{height}")
        self.path = Path(path)
        self.kind = kind
        self.width, self.height = int(width), int(height)
        self.fps = float(fps)
        self.num_frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        from fractions import Fraction

        rate = Fraction(self.fps).limit_denominator(1000)
        if kind == "rgb":
            self._stream = self._container.add_stream(RGB_CODEC, rate=rate)
            self._stream.pix_fmt = RGB_PIX_FMT
            # A key frame every second keeps seeking to an episode start cheap; no B-frames keeps
            # decode order = presentation order.
            self._stream.options = {
                "crf": str(crf),
                "preset": "fast",
                "g": str(gop or max(1, round(self.fps))),
                "bf": "0",
            }
        else:
            self._stream = self._container.add_stream(DEPTH_CODEC, rate=rate)
            self._stream.pix_fmt = DEPTH_PIX_FMT
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.codec_context.time_base = Fraction(1, 1) / rate
        # One reformatter for all frames: PyAV's per-frame conversion rebuilds the swscale context
        # every time, which costs ~2 ms per 128 px frame (70x the conversion itself).
        self._reformatter = VideoReformatter()

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        expected = (self.height, self.width, 3) if self.kind == "rgb" else (self.height, self.width)
        if frames.shape[1:] != expected:
            raise ValueError(
                f"{self.path}: frames of shape {frames.shape[1:]} do not match the video {expected}"
            )
        for frame_array in frames:
            if self.kind == "rgb":
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(frame_array, dtype=np.uint8), format="rgb24"
                )
                frame = self._reformatter.reformat(frame, format=RGB_PIX_FMT)
            else:
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(frame_array, dtype=np.uint16), format="gray12le"
                )
            frame.pts = self.num_frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.num_frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_frames(
    path: str | Path,
    *,
    fps: float,
    first_index: int,
    count: int,
    kind: str = "rgb",
    episode: int | None = None,
    depth_bits: int | None = None,
    declared: str | None = None,
) -> np.ndarray:
    """Decode ``count`` consecutive frames starting at file frame ``first_index``.

    Frames are matched by timestamp (``round(t * fps)``), so files whose first timestamp is not 0
    or that hold many episodes are handled. Returns (count, H, W, 3) uint8 for RGB and
    (count, H, W) uint16 (12-bit codes) or uint8 (8-bit grey) for depth. Any decoder failure, a
    missing file or missing frames raise :class:`DatasetError` naming the file and episode.

    ``depth_bits``: the bit depth the depth quantiser's codes need. A depth video that decodes to
    another bit depth is refused (``declared``, the pixel format the metadata claims, goes in the
    message): a tool that re-encodes the videos (lerobot 0.4.4's ``delete_episodes`` writes 8-bit
    AV1) turns the codes into values that would silently decode to wrong distances.
    """
    path = Path(path)
    where = f"{path}" + (f" (episode {episode})" if episode is not None else "")
    if not path.is_file():
        raise DatasetError(f"video file missing: {where}")
    if count <= 0:
        return np.zeros((0,), dtype=np.uint8)
    wanted_last = first_index + count - 1
    frames: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()  # shared: see VideoEncoder
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{where}: the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if first_index > 0 and stream.time_base is not None:
                # Seek to the key frame at or before the first wanted frame (half a frame early so
                # rounding never skips it).
                target = int(max(0.0, (first_index - 0.5) / fps) / stream.time_base)
                container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                index = int(round(frame.time * fps))
                if index < first_index:
                    continue
                if index > wanted_last:
                    break
                if depth_bits is not None:
                    _check_depth_bits(frame, depth_bits, declared, where)
                frames[index] = _frame_to_array(frame, kind, reformatter)
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot decode video {where}: {exc}") from exc
    missing = [i for i in range(first_index, wanted_last + 1) if i not in frames]
    if missing:
        raise DatasetError(
            f"video {where} is truncated or misaligned: {len(missing)} of the {count} frames "
            f"[{first_index}, {wanted_last}] are missing (first missing: {missing[0]})"
        )
    return np.stack([frames[i] for i in range(first_index, wanted_last + 1)])


def _check_depth_bits(frame: av.VideoFrame, bits: int, declared: str | None, where: str) -> None:
    found = frame.format.components[0].bits
    if found != bits:
        claim = f" (info.json declares {declared})" if declared else ""
        raise DatasetError(
            f"depth video {where} decodes as {frame.format.name} ({found}-bit){claim} but the depth "
            f"quantiser expects {bits}-bit codes: the video was re-encoded by another tool; refusing to "
            f"read it as depth (re-export the depth from the original dataset, or drop the depth features "
            f"from meta/info.json to use RGB only)"
        )


def _frame_to_array(frame: av.VideoFrame, kind: str, reformatter: VideoReformatter) -> np.ndarray:
    if kind == "rgb":
        return reformatter.reformat(frame, format="rgb24").to_ndarray()
    name = frame.format.name
    if name == "gray12le":
        return frame.to_ndarray()
    if name in ("gray", "gray8"):
        return frame.to_ndarray()
    if name.startswith("gray"):  # other high bit depths: bring to 16 bit
        return reformatter.reformat(frame, format="gray16le").to_ndarray()
    # depth stored in a colour video (e.g. an 8-bit inverse-depth MP4): convert to grey (luma)
    return reformatter.reformat(frame, format="gray").to_ndarray()


def probe_video(path: str | Path) -> dict[str, Any]:
    """Codec, pixel format, size and frame count of a video (for `xwam dataset info`)."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pix_fmt = stream.codec_context.pix_fmt
            return {
                "codec": stream.codec_context.name,
                "pix_fmt": pix_fmt,
                "bits": av.VideoFormat(pix_fmt).components[0].bits if pix_fmt else None,
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "frames": stream.frames,
            }
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise DatasetError(f"cannot open video {path}: {exc}") from exc
