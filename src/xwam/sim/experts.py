"""Scripted experts that read the simulator's true object poses and emit OSC_POSE commands.

Each expert is a small state machine over phases (approach, descend, grasp, lift, carry, place,
release, retreat). In every phase it servos the grip site towards a target position with the gripper
pointing down and the fingers closing across the object (yaw chosen modulo the object's symmetry),
and converts the world-frame error into a controller command. A failed grasp (object not following
the hand) sends it back to the approach phase.

Noise (``noise > 0``) makes demonstrations differ beyond the object layout: Gaussian noise on the
arm command, of standard deviation ``noise`` (in command units, where 1 = 5 cm / 0.5 rad), plus
small per-episode jitter of the approach height and grasp point. It is seeded by the episode seed.

Use: ``expert = make_expert(env, noise=0.05)``; ``expert.reset(seed)`` after ``env.reset``; then
``action = expert(obs)`` each step (:func:`xwam.sim.rollout.record_episode` does this).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xwam.sim.envs import SimEnv, SimObservation

# OSC_POSE output limits (robosuite's default Panda controller): command 1.0 = 5 cm or 0.5 rad.
POS_SCALE = 0.05
ROT_SCALE = 0.5
OPEN, CLOSE = -1.0, 1.0


def _axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation matrix."""
    cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-7:
        return np.zeros(3)
    axis = np.array(
        [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
    )
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ~ pi: axis from the symmetric part
        sym = (rotation + np.eye(3)) / 2.0
        axis = sym[:, int(np.argmax(np.diag(sym)))]
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def _yaw(rotation: np.ndarray) -> float:
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


class ScriptedExpert:
    """Shared servoing and phase bookkeeping; subclasses define the task's phases in ``plan``."""

    #: how far (radians) the object's yaw symmetry repeats: pi/2 for cubes, None for round objects
    yaw_symmetry: float | None = np.pi / 2

    def __init__(self, env: SimEnv, *, noise: float = 0.0, gain: float = 1.5) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.env = env
        self.noise = float(noise)
        self.gain = float(gain)
        self._rng = np.random.default_rng()
        self.reset(None)

    # -- episode bookkeeping ----------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (call after ``env.reset``)."""
        self._rng = np.random.default_rng(None if seed is None else [int(seed), 0x5EED])
        self.phase = "approach"
        self._phase_steps = 0
        self._grip_yaw: float | None = None
        self._hold_pos: np.ndarray | None = None
        jitter = self.noise > 0
        self.approach_height = 0.10 + (self._rng.uniform(-0.02, 0.03) if jitter else 0.0)
        self.grasp_offset = (
            self._rng.uniform(-0.004, 0.004, size=3) * np.array([1, 1, 0.5]) if jitter else np.zeros(3)
        )

    def _goto(self, phase: str) -> None:
        self.phase = phase
        self._phase_steps = 0
        self._hold_pos = None

    # -- sim access -------------------------------------------------------------------------
    @property
    def rs(self) -> Any:
        return self.env.robosuite_env

    def body_pose(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.env.sim.data
        return np.array(data.body_xpos[body_id]), np.array(data.body_xmat[body_id]).reshape(3, 3)

    def hand_pose(self) -> tuple[np.ndarray, np.ndarray]:
        data = self.env.sim.data
        site = self.env._eef_site
        return np.array(data.site_xpos[site]), np.array(data.site_xmat[site]).reshape(3, 3)

    def _controller_rotation(self) -> np.ndarray:
        # The OSC "base" input frame; identity for the fixed-base table-top robots.
        robot = self.rs.robots[0]
        ctrl = robot.composite_controller.part_controllers.get(self.env._arm)
        ori = getattr(ctrl, "origin_ori", None)
        return np.eye(3) if ori is None else np.asarray(ori).reshape(3, 3)

    # -- control ----------------------------------------------------------------------------
    def target_rotation(self, object_rot: np.ndarray | None) -> np.ndarray:
        """Gripper pointing down, fingers closing across the object (yaw nearest to the current one)."""
        _, hand_rot = self.hand_pose()
        # fingers slide along the grip site's y axis
        current = float(np.arctan2(hand_rot[1, 1], hand_rot[0, 1]))
        if self._grip_yaw is None:
            desired = current
            if object_rot is not None and self.yaw_symmetry is not None:
                base = _yaw(object_rot)
                k = np.round(_wrap(current - base) / self.yaw_symmetry)
                desired = base + k * self.yaw_symmetry
            self._grip_yaw = desired
        y_axis = np.array([np.cos(self._grip_yaw), np.sin(self._grip_yaw), 0.0])
        z_axis = np.array([0.0, 0.0, -1.0])
        x_axis = np.cross(y_axis, z_axis)
        return np.stack([x_axis, y_axis, z_axis], axis=1)

    def servo(
        self, target_pos: np.ndarray, target_rot: np.ndarray, gripper: float, max_speed: float = 1.0
    ) -> np.ndarray:
        pos, rot = self.hand_pose()
        base = self._controller_rotation()
        dpos = base.T @ (target_pos - pos)
        drot = base.T @ _axis_angle(target_rot @ rot.T)
        arm = np.concatenate(
            [
                np.clip(self.gain * dpos / POS_SCALE, -max_speed, max_speed),
                np.clip(self.gain * drot / ROT_SCALE, -1, 1),
            ]
        )
        if self.noise > 0:
            arm = arm + self._rng.normal(0.0, self.noise, size=6)
        return np.concatenate([np.clip(arm, -1.0, 1.0), [gripper]]).astype(np.float32)

    def reached(self, target_pos: np.ndarray, tol: float) -> bool:
        pos, _ = self.hand_pose()
        return bool(np.linalg.norm(target_pos - pos) < tol)

    def __call__(self, obs: SimObservation) -> np.ndarray:
        action = self.plan(obs)
        self._phase_steps += 1
        return action

    def plan(self, obs: SimObservation) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- reusable pick / place phases ---------------------------------------------------------
    def pick(
        self, obj_pos: np.ndarray, obj_rot: np.ndarray | None, grasp_z_offset: float, carry_z: float
    ) -> np.ndarray | None:
        """Approach, descend, close and lift; returns an action, or None once lifted to ``carry_z``."""
        rot = self.target_rotation(obj_rot)
        grasp = obj_pos + np.array([0.0, 0.0, grasp_z_offset]) + self.grasp_offset
        above = grasp + np.array([0.0, 0.0, self.approach_height])
        if self.phase == "approach":
            _, hand_rot = self.hand_pose()
            aligned = np.linalg.norm(_axis_angle(rot @ hand_rot.T)) < 0.08
            if (self.reached(above, 0.015) and aligned) or self._phase_steps > 80:
                self._goto("descend")
            return self.servo(above, rot, OPEN)
        if self.phase == "descend":
            if self.reached(grasp, 0.008) or self._phase_steps > 40:
                self._goto("grasp")
            return self.servo(grasp, rot, OPEN, max_speed=0.6)
        if self.phase == "grasp":
            if self._hold_pos is None:
                self._hold_pos = self.hand_pose()[0]
            action = self.servo(self._hold_pos, rot, CLOSE)
            if self._phase_steps >= 8:
                self._goto("lift")
            return action
        if self.phase == "lift":
            pos, _ = self.hand_pose()
            if self._hold_pos is None:
                self._hold_pos = pos.copy()
            # object must follow the hand; otherwise open and try again
            if pos[2] - self._hold_pos[2] > 0.04 and obj_pos[2] < pos[2] - 0.12:
                self._grip_yaw = None
                self._goto("approach")
                return self.servo(pos + np.array([0, 0, 0.03]), rot, OPEN)
            target = np.array([pos[0], pos[1], carry_z])
            target[:2] = self._hold_pos[:2]
            if abs(pos[2] - carry_z) < 0.02 or self._phase_steps > 60:
                return None
            return self.servo(target, rot, CLOSE)
        return None


class LiftExpert(ScriptedExpert):
    """Grasp the cube and raise it 15 cm.

    The gripper keeps its yaw: Lift's 4 cm cube fits the Panda's 8 cm opening at any yaw (its
    diagonal is 5.7 cm) and the closing fingers square it up, so the demonstrations carry no
    rotation for a policy to infer from small images (100 % over 50 seeds either way).

    Its yaw target is the yaw the hand starts with, which later observations do not show, so its
    small yaw corrections are not a function of the observed pose. Turning to a fixed yaw instead
    was measured (README, run X): the corrections became predictable but the first chunk gained a
    larger state-driven turn, and the vision check fell, so the start yaw stays.
    """

    yaw_symmetry = None

    def plan(self, obs: SimObservation) -> np.ndarray:
        cube_pos, cube_rot = self.body_pose(self.rs.cube_body_id)
        table = self.env.table_top_z
        if self.phase in ("approach", "descend", "grasp", "lift"):
            action = self.pick(cube_pos, cube_rot, grasp_z_offset=0.0, carry_z=table + 0.2)
            if action is not None:
                return action
            self._goto("hold")
        pos, _ = self.hand_pose()
        if self._hold_pos is None:
            self._hold_pos = pos.copy()
        return self.servo(self._hold_pos, self.target_rotation(None), CLOSE)


class PlaceExpert(ScriptedExpert):
    """Pick an object, carry it above a goal, lower it to a release height, open and retreat."""

    carry_height = 0.15  # above the support surface, for the grip site

    def object_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def goal(self) -> tuple[np.ndarray, float]:
        """Goal xy for the object's body origin, and the body-origin z at which to release it."""
        raise NotImplementedError

    grasp_z_offset = 0.0

    def plan(self, obs: SimObservation) -> np.ndarray:
        obj_pos, obj_rot = self.object_pose()
        goal_xy, release_z = self.goal()
        carry_z = release_z + self.carry_height
        if self.phase in ("approach", "descend", "grasp", "lift"):
            action = self.pick(obj_pos, obj_rot, self.grasp_z_offset, carry_z)
            if action is not None:
                return action
            self._goto("carry")
        rot = self.target_rotation(obj_rot)
        pos, _ = self.hand_pose()
        # Aim with the object's own position, so an off-centre grasp is corrected for.
        offset = pos - obj_pos
        if self.phase in ("carry", "lower") and obj_pos[2] < pos[2] - 0.15:  # dropped on the way
            self._grip_yaw = None
            self._goto("approach")
            return self.servo(pos, rot, OPEN)
        if self.phase == "carry":
            target = np.array([goal_xy[0] + offset[0], goal_xy[1] + offset[1], carry_z])
            if (
                np.linalg.norm(obj_pos[:2] - goal_xy) < 0.01 and abs(pos[2] - carry_z) < 0.03
            ) or self._phase_steps > 100:
                self._goto("lower")
            return self.servo(target, rot, CLOSE)
        if self.phase == "lower":
            target = np.array([goal_xy[0] + offset[0], goal_xy[1] + offset[1], release_z + offset[2]])
            if obj_pos[2] - release_z < 0.005 or self._phase_steps > 50:
                self._goto("release")
            return self.servo(target, rot, CLOSE, max_speed=0.5)
        if self.phase == "release":
            if self._hold_pos is None:
                self._hold_pos = pos.copy()
            action = self.servo(self._hold_pos, rot, OPEN)
            if self._phase_steps >= 8:
                self._goto("retreat")
            return action
        # retreat and stay
        if self._hold_pos is None:
            self._hold_pos = pos + np.array([0.0, 0.0, 0.1])
        return self.servo(self._hold_pos, rot, OPEN)


class StackExpert(PlaceExpert):
    """Put the red cube (A) on the green cube (B)."""

    def object_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        return self.body_pose(self.rs.cubeA_body_id)

    def goal(self) -> tuple[np.ndarray, float]:
        b_pos, _ = self.body_pose(self.rs.cubeB_body_id)
        a_half = float(self.rs.cubeA.size[2])
        b_half = float(self.rs.cubeB.size[2])
        # release with 5 mm of air under cube A
        return b_pos[:2], float(b_pos[2] + b_half + a_half + 0.005)


class PickPlaceCanExpert(PlaceExpert):
    """Move the can into its quadrant of the goal bin."""

    yaw_symmetry = None  # a can is round: keep the current yaw
    grasp_z_offset = 0.0
    carry_height = 0.2

    def _can_index(self) -> int:
        return self.rs.object_to_id["can"]

    def object_pose(self) -> tuple[np.ndarray, np.ndarray | None]:
        obj = self.rs.objects[self._can_index()]
        pos, _ = self.body_pose(self.rs.obj_body_id[obj.name])
        return pos, None

    def goal(self) -> tuple[np.ndarray, float]:
        target = np.array(self.rs.target_bin_placements[self._can_index()])
        obj = self.rs.objects[self._can_index()]
        # body origin sits -bottom_offset above the can's bottom; release 2 cm above the bin floor
        bottom = float(-obj.bottom_offset[2])
        return target[:2], float(self.env.table_top_z + bottom + 0.02)


EXPERTS: dict[str, Callable[..., ScriptedExpert]] = {
    "Lift": LiftExpert,
    "Stack": StackExpert,
    "PickPlaceCan": PickPlaceCanExpert,
}


def make_expert(env: SimEnv, *, noise: float = 0.0) -> ScriptedExpert:
    """The scripted expert for ``env``'s task."""
    if env.task_name not in EXPERTS:
        raise ValueError(
            f"no scripted expert for task {env.task_name!r}; experts exist for: {', '.join(sorted(EXPERTS))}"
        )
    return EXPERTS[env.task_name](env, noise=noise)
