"""4D imagination: sample the future multi-view RGB-D video, lift it to world-frame point clouds.

From one observation (current frame of every camera, state, instruction, camera calibration) the
sampler runs in 4D mode (all video steps, depth branch at the last call); RGB and depth latents are
decoded, depth is mapped back to metres, and every predicted frame is fused into one world-frame
point cloud. Static cameras keep their calibration; a wrist camera follows the predicted
end-effector pose: T_world_cam(t) = T_world_ee(predicted state t) @ T_ee_cam, with the hand-eye
transform T_ee_cam read off the current observation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xwam.atomic import atomic_write_json
from xwam.data.episode import Episode
from xwam.data.layout import OBS_IMAGE_PREFIX, OBS_STATE_KEY
from xwam.geometry.pointcloud import fuse_views
from xwam.geometry.transforms import ee_pose_from_state, wrist_camera_poses
from xwam.policy import XWAMPolicy

WRIST_HINTS = ("eye_in_hand", "wrist", "hand")


def is_wrist_camera(name: str) -> bool:
    return any(h in name for h in WRIST_HINTS)


@dataclass
class Imagination:
    """A predicted clip: per camera (F, ...) arrays at the model's video frames."""

    camera_names: list[str]
    rgb: dict[str, np.ndarray]  # (F, H, W, 3) uint8
    depth: dict[str, np.ndarray]  # (F, H, W) metres
    intrinsics: dict[str, np.ndarray]  # (F, 3, 3)
    extrinsics: dict[str, np.ndarray]  # (F, 4, 4) camera-to-world
    states: np.ndarray  # (F, S) predicted states (robot units); state 0 = observed
    actions: np.ndarray  # (K, A) predicted actions (robot units)
    instruction: str
    clouds: list[tuple[np.ndarray, np.ndarray | None]] = field(default_factory=list)
    timing_ms: dict[str, float] = field(default_factory=dict)
    # the expected future (the sampler's first clean estimate, ``expected=True``): the model's mean
    # prediction, decoded the same way, without clouds; see xwam.diffusion.sampler
    expected: Imagination | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rgb": self.rgb, "depth": self.depth, "intrinsics": self.intrinsics, "extrinsics": self.extrinsics}


@dataclass
class ClipTruth:
    """Ground truth at the predicted frames (from a recorded episode)."""

    rgb: dict[str, np.ndarray]
    depth: dict[str, np.ndarray] | None
    intrinsics: dict[str, np.ndarray] | None
    extrinsics: dict[str, np.ndarray] | None
    states: np.ndarray
    actions: np.ndarray
    frame_indices: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rgb": self.rgb}
        for key in ("depth", "intrinsics", "extrinsics"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def frozen_present(truth: ClipTruth) -> dict[str, Any]:
    """The "nothing moves" prediction of a clip: frame 0's RGB, depth and cameras of every view repeated
    for every frame, in :func:`xwam.geometry.metrics.evaluate_4d`'s layout (the keys of
    :meth:`ClipTruth.as_dict`). Scored like the model, it is the baseline a world model must beat:
    how much of the future is already in the present.

    Static cameras keep their (constant) ground-truth pose. The wrist camera keeps frame 0's pose for
    its point cloud too, rather than the recorded later poses: this baseline predicts no motion, of
    the scene or of the hand."""
    frames = len(truth.frame_indices)

    def repeat_first(table: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
        if table is None:
            return None
        return {c: np.repeat(np.asarray(v)[:1], frames, axis=0) for c, v in table.items()}

    out: dict[str, Any] = {"rgb": repeat_first(truth.rgb)}
    for key in ("depth", "intrinsics", "extrinsics"):
        table = repeat_first(getattr(truth, key))
        if table is not None:
            out[key] = table
    return out


def clip_from_episode(episode: Episode, start: int, num_frames: int, frame_skip: int, horizon: int,
                      cameras: list[str]) -> ClipTruth:
    """Ground-truth frames start, start+s, ... and actions start..start+K-1 of an episode."""
    last = start + (num_frames - 1) * frame_skip
    if start < 0 or last >= episode.length:
        raise ValueError(f"start {start} needs frames up to {last}, but the episode has {episode.length} frames "
                         f"(valid starts: 0..{episode.length - 1 - (num_frames - 1) * frame_skip})")
    missing = [c for c in cameras if c not in episode.rgb]
    if missing:
        raise ValueError(f"the episode has no camera(s) {missing}; it has {episode.camera_names}")
    idx = np.arange(start, last + 1, frame_skip)
    pick = lambda table: None if table is None else {c: np.asarray(table[c])[idx] for c in cameras}  # noqa: E731
    actions = np.asarray(episode.action[start:start + horizon], np.float32)
    return ClipTruth(rgb=pick(episode.rgb), depth=pick(episode.depth), intrinsics=pick(episode.intrinsics),
                     extrinsics=pick(episode.extrinsics), states=np.asarray(episode.state[idx], np.float32),
                     actions=actions, frame_indices=idx)


def imagine(
    policy: XWAMPolicy,
    images: dict[str, np.ndarray],
    state: np.ndarray,
    instruction: str,
    intrinsics: dict[str, np.ndarray],
    extrinsics: dict[str, np.ndarray],
    *,
    seed: int = 0,
    max_depth: float | None = None,
    voxel: float | None = 0.005,
    expected: bool = False,
) -> Imagination:
    """Sample one 4D future from the current observation (images (H, W, 3) uint8 per camera,
    state in robot units, intrinsics (3, 3) and camera-to-world extrinsics (4, 4) per camera).
    ``expected``: also decode the model's mean future into ``Imagination.expected``."""
    import time

    processor = policy.processor
    cams = policy.camera_names
    obs = {OBS_IMAGE_PREFIX + c: images[c] for c in cams}
    obs.update({OBS_STATE_KEY: np.asarray(state, np.float32), "prompt": instruction})
    policy.validate(obs)
    missing = [c for c in cams if c not in intrinsics or c not in extrinsics]
    if missing:
        raise ValueError(f"camera calibration missing for {missing}")
    t0 = time.perf_counter()
    images_batch = np.stack([images[c] for c in cams])[None]  # (1, V, H, W, 3)
    conditioning = processor.conditioning(images_batch, np.asarray(state, np.float32)[None], [instruction],
                                          unconditional_text=policy.config.sampler.guidance_scale != 1.0)
    gen = torch.Generator(device=processor.device).manual_seed(seed)
    result = policy.sampler.sample(conditioning, mode="4d", depth=True, generator=gen, expected=expected)
    t1 = time.perf_counter()
    if result.depth is None:
        raise RuntimeError("this checkpoint has no depth branch (model.depth_layers = 0): no 4D output")
    actions = processor.unnormalize_actions(result.actions)[0].cpu().numpy()
    decode = dict(policy=policy, state=state, intrinsics=intrinsics, extrinsics=extrinsics, actions=actions,
                  instruction=instruction)
    imag = _decoded(result.video, result.depth, result.states, **decode)
    imag.timing_ms = {"sample_ms": (t1 - t0) * 1000}
    if expected:
        imag.expected = _decoded(result.expected_video, result.expected_depth, result.expected_states, **decode)
    imag.clouds = fused_clouds(imag.depth, imag.intrinsics, imag.extrinsics, imag.rgb, cams, max_depth, voxel)
    imag.timing_ms["total_ms"] = (time.perf_counter() - t0) * 1000
    return imag


def _decoded(video: torch.Tensor, depth: torch.Tensor, states_normalised: torch.Tensor, *, policy: XWAMPolicy,
             state: np.ndarray, intrinsics: dict[str, np.ndarray], extrinsics: dict[str, np.ndarray],
             actions: np.ndarray, instruction: str) -> Imagination:
    """Sampler latents of one clip -> RGB, metric depth, robot-unit states and per-frame cameras."""
    processor, cams = policy.processor, policy.camera_names
    rgb = processor.decode_video(video)[0].cpu().numpy()  # (V, F, H, W, 3)
    depth_m = processor.decode_depth(depth)[0].cpu().numpy()  # (V, F, H, W)
    states = processor.unnormalize_states(states_normalised)[0].cpu().numpy()
    states[0] = np.asarray(state, np.float32)
    frames = rgb.shape[1]
    # decoded depth frames at the latent rate: a pixel codec gives one per video frame
    K, E = {}, {}
    for cam in cams:
        K[cam] = np.repeat(np.asarray(intrinsics[cam], np.float64)[None], frames, 0)
        if is_wrist_camera(cam):
            T_ee_cam = np.linalg.inv(ee_pose_from_state(np.asarray(state, np.float64))) @ np.asarray(extrinsics[cam])
            E[cam] = wrist_camera_poses(states.astype(np.float64), T_ee_cam)
        else:
            E[cam] = np.repeat(np.asarray(extrinsics[cam], np.float64)[None], frames, 0)
    return Imagination(camera_names=list(cams), rgb={c: rgb[v] for v, c in enumerate(cams)},
                       depth={c: depth_m[v] for v, c in enumerate(cams)}, intrinsics=K, extrinsics=E,
                       states=states, actions=actions, instruction=instruction)


def fused_clouds(depth, intrinsics, extrinsics, rgb, cams, max_depth=None, voxel=0.005):
    """One world-frame point cloud per timestep from per-camera (F, ...) arrays."""
    from xwam.geometry.pointcloud import voxel_downsample

    frames = next(iter(depth.values())).shape[0]
    clouds = []
    for t in range(frames):
        points, colours = fuse_views([depth[c][t] for c in cams], [intrinsics[c][t] for c in cams],
                                     [extrinsics[c][t] for c in cams], [rgb[c][t] for c in cams],
                                     max_depth=max_depth)
        if voxel:
            points, colours = voxel_downsample(points, colours, voxel)
        clouds.append((points, colours))
    return clouds


def write_outputs(out: str | Path, imag: Imagination, truth: ClipTruth | None, *, fps: float, near: float,
                  far: float, title: str = "xwam imagine", metrics: dict[str, Any] | None = None) -> dict[str, Path]:
    """MP4 grid, one PLY per timestep, an offline HTML report and a JSON summary."""
    from xwam.geometry.ply import write_ply
    from xwam.viz import HtmlReport, colorize_depth, write_video_grid

    out = Path(out)
    (out / "clouds").mkdir(parents=True, exist_ok=True)
    columns = (["pred RGB", "pred depth"] + (["mean RGB", "mean depth"] if imag.expected else [])
               + (["true RGB", "true depth"] if truth else []))
    rows = []
    # short labels: at 64-128 px per cell only a few characters fit
    cell_labels = [[f"{_short(cam)} {col}" for col in columns] for cam in imag.camera_names]
    labels = columns
    for cam in imag.camera_names:
        row = [imag.rgb[cam], colorize_depth(imag.depth[cam], near, far)]
        if imag.expected is not None:
            row += [imag.expected.rgb[cam], colorize_depth(imag.expected.depth[cam], near, far)]
        if truth is not None:
            row.append(truth.rgb[cam])
            row.append(colorize_depth(truth.depth[cam], near, far) if truth.depth is not None else None)
        rows.append(row)
    video_path = out / "imagination.mp4"
    write_video_grid(video_path, rows, fps=fps, labels=cell_labels)
    ply_paths = []
    for t, (points, colours) in enumerate(imag.clouds):
        path = out / "clouds" / f"t{t:02d}.ply"
        write_ply(path, points, colours)
        ply_paths.append(path)
    summary = {
        "instruction": imag.instruction, "cameras": imag.camera_names, "frames": len(imag.clouds),
        "points_per_frame": [int(len(p)) for p, _ in imag.clouds], "timing_ms": imag.timing_ms,
        "predicted_actions": imag.actions.tolist(), "predicted_states": imag.states.tolist(),
    }
    if truth is not None:
        summary["true_actions"] = truth.actions.tolist()
        summary["frame_indices"] = truth.frame_indices.tolist()
    if metrics is not None:
        summary["metrics"] = metrics
    atomic_write_json(out / "summary.json", summary)
    report = HtmlReport(title)
    report.add_heading(title)
    report.add_text(f"Instruction: {imag.instruction!r}. Rows: {', '.join(imag.camera_names)}. "
                    f"Columns: {', '.join(labels)}. Depth colours span {near:g}-{far:g} m.")
    report.add_video(video_path)
    if metrics is not None:
        report.add_heading("4D quality against the recorded future", level=2)
        report.add_table(metrics_rows(metrics))
    report.add_heading("Fused world-frame point cloud per predicted frame", level=2)
    report.add_point_cloud(imag.clouds)
    report.write(out / "report.html")
    return {"video": video_path, "report": out / "report.html", "summary": out / "summary.json",
            "clouds": out / "clouds"}


def _short(camera: str) -> str:
    for prefix in ("robot0_", "observation.images."):
        camera = camera.removeprefix(prefix)
    return camera.replace("agentview_", "").replace("eye_in_hand", "wrist")


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for group in ("static", "all"):
        block = metrics.get(group)
        if not block:
            continue
        row = {"views": group}
        for name, value in block["mean"].items():
            row[name] = None if value is None else round(float(value), 4)
        rows.append(row)
    return rows
