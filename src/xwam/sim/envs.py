"""robosuite tasks behind one small API: upright RGB, metric depth and OpenCV camera poses per step.

``make_env("Lift")`` builds a Panda task with three cameras by default, named like RoboCasa's views so
that simulated datasets have the same camera layout as RoboCasa data (views sorted by name):

- ``robot0_agentview_left`` / ``robot0_agentview_right``: static cameras behind the robot, one over
  each shoulder, looking at the workspace. robosuite's table-top tasks do not have them, so they are
  added to the scene XML (world-fixed; their pose comes from the task registry);
- ``robot0_eye_in_hand``: robosuite's wrist camera (moves with the hand).

Any camera of the robosuite model (``agentview``, ``frontview``, ``sideview``, ...) can be asked for too.

Conventions (the same as :class:`xwam.data.episode.Episode`):

- images are upright (row 0 is the top of the picture);
- depth is metric z-depth in metres along the optical axis;
- intrinsics are pinhole matrices for the rendered resolution, with pixel ``(row i, col j)`` centred at
  ``(u, v) = (j + 0.5, i + 0.5)`` (see :mod:`xwam.geometry.camera`);
- extrinsics are camera-to-world 4x4 poses in OpenCV camera axes (x right, y down, z forward);
- the state is ``[x, y, z, qw, qx, qy, qz, gripper]`` of the grip site in the world frame, with
  ``qw >= 0``, and ``gripper`` = finger opening normalised to [0, 1] (0 closed, 1 fully open, i.e.
  the distance between the two Panda fingers divided by their 8 cm range);
- the action is the 7-d command of robosuite's OSC_POSE arm controller in the robot base frame:
  ``[dx, dy, dz, dax, day, daz, gripper]`` each in [-1, 1]; xyz scales to +-5 cm and the axis-angle
  to +-0.5 rad per control step; gripper -1 opens, +1 closes.

Rendering on the CPU is dominated by multisample anti-aliasing and mirror reflections, so
``fast_render=True`` (the default) turns both off in the scene XML (``offsamples=0``, material
reflectance 0).

Tasks live in a registry (:data:`TASKS`, :func:`register_task`) so that other robosuite-based suites
(RoboCasa kitchens, where installed) plug in with a :class:`TaskSpec` rather than new code paths.
"""

from __future__ import annotations

import importlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Offscreen rendering needs a headless GL backend; EGL is the fast one on Linux. Respect a user choice.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

STATE_DIM = 8
ACTION_DIM = 7
WRIST_CAMERA = "robot0_eye_in_hand"
DEFAULT_CAMERAS: tuple[str, ...] = ("robot0_agentview_left", "robot0_agentview_right", WRIST_CAMERA)


# ---------------------------------------------------------------------------------------------
# task registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StaticCamera:
    """A world-fixed camera added to the scene, given by its position and the point it looks at."""

    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fovy_deg: float = 60.0

    def mujoco_xyaxes(self) -> str:
        """MuJoCo's ``xyaxes`` attribute: camera x (right) and y (up) in world axes; it looks along -z."""
        forward = np.asarray(self.target, dtype=np.float64) - np.asarray(self.position, dtype=np.float64)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
        if np.linalg.norm(right) < 1e-6:
            raise ValueError(f"camera at {self.position} looks straight up or down; give it a tilted target")
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return " ".join(f"{v:.6f}" for v in (*right, *up))


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task.

    ``env_name`` is the robosuite-registered environment class name (RoboCasa registers its kitchen
    tasks with robosuite the same way). ``added_cameras`` are inserted into the scene XML; suites
    whose scenes already have the cameras leave it empty. ``table_top_z`` reads the height of the
    support surface from the live robosuite env (used by tests and by the experts).
    """

    name: str
    env_name: str
    instruction: str
    robot: str = "Panda"
    added_cameras: dict[str, StaticCamera] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    default_horizon: int = 300
    table_top_z: Callable[[Any], float] | None = None
    #: cameras the suite's own scene has, to validate names before building (empty: checked after)
    scene_cameras: tuple[str, ...] = ()
    #: a module whose import registers ``env_name`` with robosuite (e.g. ``"robocasa"``)
    register_module: str | None = None


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    """Add (or replace) a task in the registry used by :func:`make_env`."""
    TASKS[spec.name] = spec


def _shoulder_cameras(target: tuple[float, float, float]) -> dict[str, StaticCamera]:
    # Behind and above the Panda base (at x = -0.56), one to each side, looking at the workspace:
    # like RoboCasa's left/right agent views. "Left" is +y, the robot's left when it faces +x.
    tx, ty, tz = target
    return {
        "robot0_agentview_left": StaticCamera((tx - 0.4, ty + 0.55, tz + 0.45), target, fovy_deg=55.0),
        "robot0_agentview_right": StaticCamera((tx - 0.4, ty - 0.55, tz + 0.45), target, fovy_deg=55.0),
    }


# Cameras in robosuite's table-top and bins scenes.
_ROBOSUITE_SCENE_CAMERAS = (
    "frontview",
    "birdview",
    "agentview",
    "sideview",
    "robot0_robotview",
    WRIST_CAMERA,
)


def _table_top_z(env: Any) -> float:
    return float(env.model.mujoco_arena.table_top_abs[2])


def _bin_floor_z(env: Any) -> float:
    # Bins are 2 cm thick boxes centred at bin*_pos.
    return float(env.bin1_pos[2] + 0.02)


register_task(
    TaskSpec(
        name="Lift",
        env_name="Lift",
        instruction="lift the red cube",
        added_cameras=_shoulder_cameras((0.0, 0.0, 0.82)),
        scene_cameras=_ROBOSUITE_SCENE_CAMERAS,
        default_horizon=200,
        table_top_z=_table_top_z,
    )
)
register_task(
    TaskSpec(
        name="Stack",
        env_name="Stack",
        instruction="stack the red cube on the green cube",
        added_cameras=_shoulder_cameras((0.0, 0.0, 0.82)),
        scene_cameras=_ROBOSUITE_SCENE_CAMERAS,
        default_horizon=300,
        table_top_z=_table_top_z,
    )
)
register_task(
    TaskSpec(
        name="PickPlaceCan",
        env_name="PickPlaceCan",
        instruction="pick up the can and place it in the bin on the left",
        added_cameras=_shoulder_cameras((0.1, 0.0, 0.85)),
        scene_cameras=_ROBOSUITE_SCENE_CAMERAS,
        default_horizon=400,
        table_top_z=_bin_floor_z,
    )
)


# ---------------------------------------------------------------------------------------------
# observation
# ---------------------------------------------------------------------------------------------
@dataclass
class SimObservation:
    """One observation, per camera name: ``rgb`` (H, W, 3) uint8 upright, ``depth`` (H, W) float32
    metres, ``intrinsics`` (3, 3) float64, ``extrinsics`` (4, 4) float64 camera-to-world (OpenCV axes).
    ``state`` is the (8,) float32 end-effector state, ``success`` the task's success flag, ``step``
    the number of actions applied since reset."""

    rgb: dict[str, np.ndarray]
    depth: dict[str, np.ndarray]
    intrinsics: dict[str, np.ndarray]
    extrinsics: dict[str, np.ndarray]
    state: np.ndarray
    success: bool
    step: int
    #: (16,) the same hand in the X-WAM release's RoboCasa convention (:meth:`SimEnv.release_state`)
    release_state: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# XML edits
# ---------------------------------------------------------------------------------------------
def _edit_scene_xml(xml: str, added_cameras: dict[str, StaticCamera], fast_render: bool) -> str:
    root = ET.fromstring(xml)
    worldbody = root.find("worldbody")
    if worldbody is None:
        raise RuntimeError("robosuite scene XML has no <worldbody>")
    existing = {cam.get("name") for cam in root.iter("camera")}
    for name, cam in added_cameras.items():
        if name in existing:  # the suite's own scene already provides it
            continue
        ET.SubElement(
            worldbody,
            "camera",
            {
                "name": name,
                "mode": "fixed",
                "pos": " ".join(f"{v:.6f}" for v in cam.position),
                "xyaxes": cam.mujoco_xyaxes(),
                "fovy": f"{cam.fovy_deg:g}",
            },
        )
    if fast_render:
        visual = root.find("visual")
        if visual is None:
            visual = ET.SubElement(root, "visual")
        quality = visual.find("quality")
        if quality is None:
            quality = ET.SubElement(visual, "quality")
        quality.set("offsamples", "0")  # no MSAA: the offscreen buffer is rendered once per pixel
        for material in root.iter("material"):
            material.set("reflectance", "0")  # mirror reflections re-render the scene per reflector
    return ET.tostring(root, encoding="unicode")


_PATCHED_CLASSES: dict[str, type] = {}


def _patched_env_class(env_name: str, register_module: str | None = None) -> type:
    """The robosuite env class with our scene edits applied wherever it builds its simulation.

    robosuite runs ``edit_model_xml`` every time it (re)compiles the model, including hard resets,
    so edits made there survive resets. Our settings travel on the instance (``_xwam_*``)."""
    if env_name in _PATCHED_CLASSES:
        return _PATCHED_CLASSES[env_name]
    if register_module is not None:
        try:
            importlib.import_module(register_module)
        except ImportError as err:
            raise RuntimeError(
                f"environment {env_name!r} needs the package {register_module!r}: {err}"
            ) from err
    from robosuite.environments.base import REGISTERED_ENVS

    if env_name not in REGISTERED_ENVS:
        raise ValueError(f"robosuite has no environment {env_name!r} (is its suite installed?)")
    base = REGISTERED_ENVS[env_name]

    def edit_model_xml(self: Any, xml_str: str) -> str:
        xml_str = base.edit_model_xml(self, xml_str)
        return _edit_scene_xml(xml_str, self._xwam_added_cameras, self._xwam_fast_render)

    def __init__(
        self: Any, *args: Any, xwam_added_cameras: dict, xwam_fast_render: bool, **kwargs: Any
    ) -> None:
        self._xwam_added_cameras = xwam_added_cameras
        self._xwam_fast_render = xwam_fast_render
        base.__init__(self, *args, **kwargs)

    # The name keeps robosuite's registry (keyed by class name) free of clashes with the originals.
    cls = type(f"XwamPatched{env_name}", (base,), {"__init__": __init__, "edit_model_xml": edit_model_xml})
    _PATCHED_CLASSES[env_name] = cls
    return cls


# ---------------------------------------------------------------------------------------------
# the environment
# ---------------------------------------------------------------------------------------------
def _quat_wxyz_from_matrix(rotation: np.ndarray) -> np.ndarray:
    import mujoco

    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation, dtype=np.float64).reshape(9))
    return quat if quat[0] >= 0 else -quat  # q and -q are the same rotation: pick w >= 0


class SimEnv:
    """A robosuite task with the xwam observation/action conventions (see the module docstring)."""

    def __init__(
        self,
        spec: TaskSpec,
        *,
        cameras: Sequence[str],
        height: int,
        width: int,
        seed: int | None,
        fast_render: bool,
        horizon: int,
        control_freq: float,
        hard_reset: bool,
    ) -> None:
        from robosuite.controllers import load_composite_controller_config

        self.spec = spec
        self.camera_names: list[str] = list(cameras)
        self.height = int(height)
        self.width = int(width)
        self.horizon = int(horizon)
        self.fast_render = fast_render
        # the robot's own default composite config: OSC_POSE on the arm(s), GRIP on the gripper(s)
        controller = load_composite_controller_config(robot=spec.robot)
        env_cls = _patched_env_class(spec.env_name, spec.register_module)
        self._env = env_cls(
            robots=spec.robot,
            controller_configs=controller,
            has_renderer=False,
            has_offscreen_renderer=bool(self.camera_names),
            use_camera_obs=bool(self.camera_names),
            camera_names=self.camera_names or None,
            camera_heights=self.height,
            camera_widths=self.width,
            camera_depths=True,
            control_freq=control_freq,
            horizon=self.horizon,
            ignore_done=True,  # we end episodes ourselves (see step)
            hard_reset=hard_reset,
            renderer="mujoco",
            seed=seed,
            xwam_added_cameras=dict(spec.added_cameras),
            xwam_fast_render=fast_render,
            **spec.env_kwargs,
        )
        robot = self._env.robots[0]
        self._arm = robot.arms[0]
        self._eef_site = robot.eef_site_id[self._arm]
        self._steps = 0
        self._last_raw: dict[str, Any] | None = None

    # -- properties -------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return self.spec.instruction

    @property
    def task_name(self) -> str:
        return self.spec.name

    @property
    def control_freq(self) -> float:
        return float(self._env.control_freq)

    @property
    def robosuite_env(self) -> Any:
        """The underlying robosuite environment (for experts that read true object poses)."""
        return self._env

    @property
    def sim(self) -> Any:
        return self._env.sim

    @property
    def table_top_z(self) -> float:
        """Height (world z, metres) of the surface objects rest on."""
        if self.spec.table_top_z is None:
            raise RuntimeError(f"task {self.spec.name!r} does not define its table height")
        return self.spec.table_top_z(self._env)

    @property
    def steps(self) -> int:
        return self._steps

    # -- api --------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> SimObservation:
        """Start a new episode; a given seed fixes the object layout and the robot's start noise."""
        # robosuite's samplers hold a reference to env.rng (one generator for the env's life), so
        # reseed it in place: every consumer then draws from the new stream.
        if seed is not None:
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        raw = self._env.reset()
        self._steps = 0
        # robot/gripper/object references move on hard resets
        robot = self._env.robots[0]
        self._eef_site = robot.eef_site_id[self._arm]
        return self._observe(raw)

    def step(self, action: np.ndarray) -> tuple[SimObservation, bool]:
        """Apply one OSC_POSE command for one control period; ``done`` is True at the horizon."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} values, got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action has non-finite values: {action}")
        raw, _reward, _done, _info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        return self._observe(raw), self._steps >= self.horizon

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> SimEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------------
    def end_effector_state(self) -> np.ndarray:
        """(8,) float32: grip-site xyz, quaternion wxyz (w >= 0), normalised gripper opening."""
        data = self.sim.data
        pos = np.array(data.site_xpos[self._eef_site])
        quat = _quat_wxyz_from_matrix(np.array(data.site_xmat[self._eef_site]).reshape(3, 3))
        return np.concatenate([pos, quat, [self.gripper_opening()]]).astype(np.float32)

    def release_state(self) -> np.ndarray:
        """(16,) float32: the hand as the X-WAM release's RoboCasa client reports it, so a model trained
        on release data can act here: xyz in the arm controller's base frame, the quaternion (w, x, y,
        z; w >= 0) of ``R_base_eef`` times a +90 degree turn about z (the release relabels the hand's
        axes), the first finger joint over its 0.04 m travel (1 = open), then 8 zeros (no right arm)."""
        data = self.sim.data
        pos = np.array(data.site_xpos[self._eef_site])
        rot = np.array(data.site_xmat[self._eef_site]).reshape(3, 3)
        robot = self._env.robots[0]
        ctrl = robot.composite_controller.part_controllers.get(self._arm)
        origin_pos = getattr(ctrl, "origin_pos", None)
        origin_ori = getattr(ctrl, "origin_ori", None)
        if origin_pos is None or origin_ori is None:  # before the controller's first update: the base body
            base = self.sim.model.body_name2id(robot.robot_model.root_body)
            origin_pos, origin_ori = data.xpos[base], data.xmat[base].reshape(3, 3)
        origin_ori = np.asarray(origin_ori).reshape(3, 3)
        rz90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        gripper = robot.gripper[self._arm]
        joint = self.sim.model.joint_name2id(gripper.joints[0])
        finger = float(data.qpos[self.sim.model.jnt_qposadr[joint]]) / 0.04
        state = np.zeros(16, np.float32)
        state[:3] = origin_ori.T @ (pos - np.asarray(origin_pos))
        state[3:7] = _quat_wxyz_from_matrix(origin_ori.T @ rot @ rz90)
        state[7] = np.clip(finger, 0.0, 1.0)
        return state

    def gripper_opening(self) -> float:
        """Finger opening in [0, 1]: the summed finger joint travel over its full range."""
        gripper = self._env.robots[0].gripper[self._arm]
        model = self.sim.model
        travel = 0.0
        full = 0.0
        for joint in gripper.joints:
            jid = model.joint_name2id(joint)
            lo, hi = model.jnt_range[jid]
            q = float(self.sim.data.qpos[model.jnt_qposadr[jid]])
            # Panda: finger 1 opens towards +0.04, finger 2 towards -0.04; measure from the closed end.
            travel += (q - lo) if abs(hi) >= abs(lo) else (hi - q)
            full += hi - lo
        return float(np.clip(travel / full, 0.0, 1.0)) if full > 0 else 0.0

    def success(self) -> bool:
        return bool(self._env._check_success())

    def _observe(self, raw: dict[str, Any]) -> SimObservation:
        import robosuite.macros as macros
        from robosuite.utils.camera_utils import (
            get_camera_extrinsic_matrix,
            get_camera_intrinsic_matrix,
            get_real_depth_map,
        )

        # robosuite returns OpenGL images (bottom row first) unless its macro asks for OpenCV order
        flip = macros.IMAGE_CONVENTION == "opengl"
        rgb: dict[str, np.ndarray] = {}
        depth: dict[str, np.ndarray] = {}
        intrinsics: dict[str, np.ndarray] = {}
        extrinsics: dict[str, np.ndarray] = {}
        for cam in self.camera_names:
            image = raw[f"{cam}_image"]
            zbuf = raw[f"{cam}_depth"][..., 0]
            if flip:
                image, zbuf = image[::-1], zbuf[::-1]
            rgb[cam] = np.ascontiguousarray(image, dtype=np.uint8)
            depth[cam] = np.ascontiguousarray(
                get_real_depth_map(self.sim, np.clip(zbuf, 0.0, 1.0)), dtype=np.float32
            )
            intrinsics[cam] = get_camera_intrinsic_matrix(self.sim, cam, self.height, self.width)
            extrinsics[cam] = get_camera_extrinsic_matrix(self.sim, cam)
        return SimObservation(
            rgb=rgb,
            depth=depth,
            intrinsics=intrinsics,
            extrinsics=extrinsics,
            state=self.end_effector_state(),
            success=self.success(),
            step=self._steps,
            release_state=self.release_state(),
        )


def _spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[task]


def make_env(
    task: str,
    *,
    cameras: Sequence[str] = DEFAULT_CAMERAS,
    height: int = 128,
    width: int = 128,
    seed: int | None = None,
    fast_render: bool = True,
    horizon: int | None = None,
    control_freq: float = 20.0,
    hard_reset: bool = True,
) -> SimEnv:
    """Build a task from the registry.

    ``cameras`` may be empty (no rendering: fast state-only rollouts). ``horizon`` defaults to the
    task's. ``hard_reset=True`` (robosuite's default) rebuilds the scene on every reset, which
    re-samples object sizes as well as poses (about 1 s per reset); False keeps the first sizes and
    only re-samples poses.
    """
    spec = _spec(task)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    cameras = list(cameras)
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"duplicate camera names in {cameras}")
    if spec.scene_cameras:
        valid = set(spec.scene_cameras) | set(spec.added_cameras)
        bad = [c for c in cameras if c not in valid]
        if bad:
            raise ValueError(
                f"unknown camera(s) {bad} for task {task!r}; valid cameras: {', '.join(sorted(valid))}"
            )
    env = SimEnv(
        spec,
        cameras=cameras,
        height=height,
        width=width,
        seed=seed,
        fast_render=fast_render,
        horizon=horizon if horizon is not None else spec.default_horizon,
        control_freq=control_freq,
        hard_reset=hard_reset,
    )
    # Suites outside our list (e.g. RoboCasa) are checked against the compiled model instead.
    model_cams = {env.sim.model.camera_id2name(i) for i in range(env.sim.model.ncam)}
    bad = [c for c in cameras if c not in model_cams]
    if bad:
        env.close()
        raise ValueError(
            f"unknown camera(s) {bad} for task {task!r}; valid cameras: {', '.join(sorted(model_cams))}"
        )
    return env
