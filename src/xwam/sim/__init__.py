"""robosuite simulation: environments, scripted experts and episode recording.

robosuite itself is imported lazily (it is the optional ``sim`` extra), so importing this package
is cheap.
"""

from xwam.sim.envs import (
    DEFAULT_CAMERAS,
    TASKS,
    SimEnv,
    SimObservation,
    StaticCamera,
    TaskSpec,
    make_env,
    register_task,
)
from xwam.sim.experts import make_expert
from xwam.sim.rollout import collect_expert_episodes, record_episode

__all__ = [
    "DEFAULT_CAMERAS",
    "TASKS",
    "SimEnv",
    "SimObservation",
    "StaticCamera",
    "TaskSpec",
    "collect_expert_episodes",
    "make_env",
    "make_expert",
    "record_episode",
    "register_task",
]
