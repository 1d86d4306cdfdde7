import dataclasses

import numpy as np
import pytest
import torch

from xwam.config import get_preset
from xwam.data.stats import NormStats
from xwam.model.checkpoint import save_checkpoint
from xwam.model.transformer import XWAMTransformer
from xwam.policy import XWAMPolicy

CAMERAS = ["cam_left", "cam_right"]


def make_stats(cfg, seed=0):
    rng = np.random.default_rng(seed)
    state = rng.normal(size=(500, cfg.state_dim)).astype(np.float32)
    action = rng.normal(scale=0.5, size=(500, cfg.action_dim)).astype(np.float32)
    return NormStats.from_arrays(state, action)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, camera_names=CAMERAS))
    torch.manual_seed(0)
    model = XWAMTransformer(preset.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, preset, norm_stats=make_stats(preset.model).to_dict())
    return path


def observation(policy, seed=0, flat=True):
    rng = np.random.default_rng(seed)
    h, w, _ = policy.image_shape
    images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.camera_names}
    state = rng.normal(size=policy.config.model.state_dim).astype(np.float32)
    if flat:
        return {**{f"observation/images/{c}": v for c, v in images.items()}, "observation/state": state,
                "prompt": "lift the cube"}
    return {"images": images, "state": state, "prompt": "lift the cube"}


def test_policy_returns_unnormalised_chunks_with_timing(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    assert policy.camera_names == CAMERAS
    meta = policy.metadata
    assert meta["image_keys"] == ["observation/images/cam_left", "observation/images/cam_right"]
    out = policy.infer(observation(policy))
    k, a = policy.config.model.action_horizon, policy.config.model.action_dim
    assert out["actions"].shape == (k, a) and out["actions"].dtype == np.float32
    assert out["states"].shape == (policy.config.model.num_states, policy.config.model.state_dim)
    t = out["timing"]
    assert t["dit_calls"] == policy.config.sampler.action_steps and t["infer_ms"] >= t["dit_ms"] > 0
    # nested observation layout gives the same answer for the same seed
    p2 = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    np.testing.assert_allclose(p2.infer(observation(p2, flat=False))["actions"], out["actions"], rtol=1e-5, atol=1e-6)


def test_policy_validation_messages(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    good = observation(policy)
    cases = {
        "missing image for camera 'cam_right'": {k: v for k, v in good.items() if "cam_right" not in k},
        "must be uint8": {**good, "observation/images/cam_left": good["observation/images/cam_left"].astype(np.float32)},
        "must have shape": {**good, "observation/images/cam_left": good["observation/images/cam_left"][:, :, :2]},
        "NaN": {**good, "observation/state": np.full_like(good["observation/state"], np.nan)},
        "state must have shape": {**good, "observation/state": good["observation/state"][:3]},
        "prompt must be a string": {**good, "prompt": 5},
        "missing state": {k: v for k, v in good.items() if k != "observation/state"},
    }
    for message, obs in cases.items():
        with pytest.raises(ValueError, match=message):
            policy.validate(obs)
    policy.validate(good)


def test_select_action_replans_every_n_actions(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint, replan_every=2)
    actions = [policy.select_action(observation(policy, seed=i)) for i in range(5)]
    assert policy.chunker.plans == 3 and all(a.shape == (policy.config.model.action_dim,) for a in actions)
    policy.reset()
    policy.select_action(observation(policy))
    assert policy.chunker.plans == 4


def test_real_time_chunking_honours_the_committed_prefix(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint, replan_every=2, rtc_delay=2)
    first = [policy.select_action(observation(policy, seed=0)) for _ in range(2)]
    committed = [policy.chunker.queue[0].copy(), policy.chunker.queue[1].copy()]
    nxt = [policy.select_action(observation(policy, seed=1)) for _ in range(2)]
    assert len(first) == 2
    # the re-planned chunk starts with exactly the actions that were already committed
    np.testing.assert_allclose(nxt[0], committed[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nxt[1], committed[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rtc_delay"):
        XWAMPolicy.from_checkpoint(tiny_checkpoint, replan_every=2, rtc_delay=10)


def test_with_sampler_builds_a_validated_copy(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint, replan_every=2)
    fewer = policy.with_sampler(action_steps=2)
    assert fewer.config.sampler.action_steps == 2 and policy.config.sampler.action_steps == 4
    assert fewer.sampler.cfg is fewer.config.sampler and fewer.model is policy.model
    assert fewer.chunker.replan_every == 2
    assert fewer.infer(observation(fewer))["timing"]["dit_calls"] == 2
    with pytest.raises(ValueError, match="cannot exceed"):
        policy.with_sampler(action_steps=99)


def test_infer_batch_gives_each_observation_its_own_prefix(tiny_checkpoint):
    policy = XWAMPolicy.from_checkpoint(tiny_checkpoint)
    a = policy.config.model.action_dim
    rng = np.random.default_rng(3)
    prefixes = [rng.normal(size=(3, a)).astype(np.float32), None, rng.normal(size=(1, a)).astype(np.float32)]
    observations = [{**observation(policy, seed=i), "action_prefix": p} for i, p in enumerate(prefixes)]
    outputs = policy.infer_batch(observations)
    for out, prefix in zip(outputs, prefixes):
        if prefix is not None:
            np.testing.assert_allclose(out["actions"][: len(prefix)], prefix, rtol=1e-5, atol=1e-5)
    # the keyword form of infer is the same as the observation's own field
    np.testing.assert_allclose(policy.infer(observation(policy), action_prefix=prefixes[2])["actions"][:1],
                               prefixes[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="action_prefix"):
        policy.infer(observation(policy), action_prefix=np.zeros((9, a), np.float32))
