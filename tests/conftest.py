import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test models are tiny: one thread avoids oversubscription overhead (10-100x slower when cores are busy).
torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from xwam.config import get_preset

    return get_preset("tiny")
