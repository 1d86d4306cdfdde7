"""Typed configuration for the X-WAM model and its sampler, plus named presets.

Configs are plain dataclasses so they serialise to JSON next to every checkpoint and can be
overridden field by field from the command line (``--set model.num_layers=4``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

CodecName = Literal["pixel", "pca", "wan22-vae"]
TextEncoderName = Literal["minilm", "umt5", "none"]
SolverName = Literal["unipc", "euler"]
TimestepMode = Literal["ans", "independent", "synchronous"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the shape of an X-WAM model.

    Video: ``num_views`` cameras, ``num_frames`` frames per clip (frame 0 is the current
    observation), ``frame_skip`` control steps between two video frames. The latent codec maps
    ``1 + tc*k`` frames to ``1 + k`` latent frames (tc = temporal compression) and divides height
    and width by its spatial compression. Actions: ``action_horizon`` steps at the control rate.
    States: one per video frame (``num_frames`` tokens, token 0 = current state).
    """

    # observation / clip layout; camera_names fixes the view order (filled from the training data)
    num_views: int = 3
    camera_names: list[str] = field(default_factory=list)
    image_height: int = 256
    image_width: int = 320
    num_frames: int = 9
    frame_skip: int = 4
    action_horizon: int = 32
    action_dim: int = 14
    state_dim: int = 16
    # latent codec
    codec: CodecName = "wan22-vae"
    latent_channels: int = 48
    spatial_compression: int = 16
    temporal_compression: int = 4
    # pca codec only (other codecs ignore it): how far its components are scaled to unit variance
    # (0: one global scale, latent MSE = pixel MSE; 1: every component unit variance, like
    # per-channel normalised VAE latents). See xwam.codecs.pca for why it matters.
    codec_whitening: float = 0.0
    # DiT backbone (Wan2.2 layout)
    num_layers: int = 30
    num_heads: int = 24
    head_dim: int = 128
    ffn_dim: int = 14336
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    eps: float = 1e-6
    # A learned absolute (row, col) embedding added to every video token. Wan has only RoPE, which
    # places tokens in attention scores but not in the values an action token reads back; the CPU
    # demo's from-scratch model uses it (not yet measured against a run without it). Off for Wan2.2 /
    # release weights (their layout has no such parameter).
    spatial_embedding: bool = False
    # Generate future latent frames as their change from the current frame (frame k - frame 0) rather
    # than as latents: what does not move is then exactly zero, and a model that has learned nothing
    # yet already predicts the present (the processor converts both ways; xwam.processor). For models
    # trained from scratch; Wan2.2 / release weights generate latents.
    video_as_change: bool = False
    # depth branch: the last `depth_layers` blocks are replicated into it (0 disables it)
    depth_layers: int = 10
    # metric range of the depth encoding fed to the codec, and its curve (xwam.codecs.depth):
    # "inverse" depth (the release's representation) or "log" depth (the same relative precision at
    # every distance: what AbsRel scores, and what a scene seen from 4 cm and from 4 m needs)
    depth_near: float = 0.05
    depth_far: float = 5.0
    depth_curve: Literal["inverse", "log"] = "inverse"
    # how the state's quaternions are normalised (xwam.data.stats): "raw" (the release: fed as they
    # are, w >= 0) or "aligned" (moved to the hemisphere of the data's mean orientation, then
    # quantile-normalised like xyz). A hand pointing down has w near 0, so w >= 0 flips the sign of
    # x, y, z each time it tilts through vertical, and the tilts the expert corrects span 0.07 raw.
    # Fixed when the statistics are computed (training); a checkpoint's statistics carry the choice.
    quaternion_norm: Literal["raw", "aligned"] = "raw"
    # what the depth branch predicts (xwam.codecs.depth): "metric" (depth_curve over [near, far], so
    # metres and point clouds) or "codec_unit" (the release's relative 8-bit code: no metric scale).
    # Set by the trainer from the data.
    depth_kind: Literal["metric", "codec_unit"] = "metric"
    # text conditioning
    text_encoder: TextEncoderName = "umt5"
    text_dim: int = 4096
    text_len: int = 512

    def __post_init__(self) -> None:
        # frozen: normalise in place once, here (JSON gives lists back)
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "camera_names", list(self.camera_names))
        self.validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def hidden_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def view_names(self) -> list[str]:
        """Camera names in model view order (view0, view1, ... when the config names none)."""
        return list(self.camera_names) or [f"view{i}" for i in range(self.num_views)]

    @property
    def latent_frames(self) -> int:
        return 1 + (self.num_frames - 1) // self.temporal_compression

    @property
    def latent_height(self) -> int:
        return self.image_height // self.spatial_compression

    @property
    def latent_width(self) -> int:
        return self.image_width // self.spatial_compression

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(latent frames, patch rows, patch cols) of one view after patchify."""
        pt, ph, pw = self.patch_size
        return self.latent_frames // pt, self.latent_height // ph, self.latent_width // pw

    @property
    def num_states(self) -> int:
        return self.num_frames

    @property
    def num_video_tokens(self) -> int:
        t, h, w = self.token_grid
        return t * self.num_views * h * w

    @property
    def num_tokens(self) -> int:
        return self.num_video_tokens + self.num_states + self.action_horizon

    @property
    def control_steps_per_latent_frame(self) -> int:
        return self.frame_skip * self.temporal_compression

    def validate(self) -> None:
        problems = []
        if (self.num_frames - 1) % self.temporal_compression:
            problems.append(
                f"num_frames={self.num_frames} must be 1 + a multiple of temporal_compression="
                f"{self.temporal_compression}"
            )
        if self.image_height % (self.spatial_compression * self.patch_size[1]):
            problems.append(
                f"image_height={self.image_height} must be divisible by spatial_compression*patch="
                f"{self.spatial_compression * self.patch_size[1]}"
            )
        if self.image_width % (self.spatial_compression * self.patch_size[2]):
            problems.append(
                f"image_width={self.image_width} must be divisible by spatial_compression*patch="
                f"{self.spatial_compression * self.patch_size[2]}"
            )
        if self.patch_size[0] != 1:
            problems.append("only a temporal patch size of 1 is supported (Wan2.2 uses (1, 2, 2))")
        if not 0 <= self.depth_layers <= self.num_layers:
            problems.append(f"depth_layers={self.depth_layers} must lie in [0, num_layers={self.num_layers}]")
        if self.head_dim % 2 or self.head_dim < 6:
            problems.append(f"head_dim={self.head_dim} must be even and >= 6 (3D RoPE)")
        if self.camera_names and len(self.camera_names) != self.num_views:
            problems.append(f"camera_names {self.camera_names} must name num_views={self.num_views} cameras")
        if self.quaternion_norm not in ("raw", "aligned"):
            problems.append(f"quaternion_norm={self.quaternion_norm!r} must be 'raw' or 'aligned'")
        if self.action_horizon < 1 or self.num_views < 1:
            problems.append("action_horizon and num_views must be >= 1")
        if self.codec == "pixel" and self.latent_channels != 3 * self.spatial_compression**2:
            problems.append(
                f"the pixel codec gives 3*s^2 = {3 * self.spatial_compression**2} channels, "
                f"but latent_channels={self.latent_channels}"
            )
        if self.codec == "pixel" and self.temporal_compression != 1:
            problems.append("the pixel codec has temporal_compression 1")
        if self.codec == "pca" and not 1 <= self.latent_channels <= 3 * self.spatial_compression**2:
            problems.append(
                f"the pca codec keeps 1..3*s^2 = {3 * self.spatial_compression**2} components per patch, "
                f"but latent_channels={self.latent_channels}"
            )
        if not 0.0 <= self.codec_whitening <= 1.0:
            problems.append(f"codec_whitening={self.codec_whitening} must lie in [0, 1] (0: one global scale)")
        if self.codec == "pca" and self.temporal_compression != 1:
            problems.append("the pca codec has temporal_compression 1 (set model.temporal_compression=1)")
        if self.depth_curve not in ("inverse", "log"):
            problems.append(f"depth_curve={self.depth_curve!r} must be 'inverse' or 'log'")
        if self.depth_kind not in ("metric", "codec_unit"):
            problems.append(f"depth_kind={self.depth_kind!r} must be 'metric' or 'codec_unit'")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class SamplerConfig:
    """How the asynchronous sampler denoises (X-WAM paper, arXiv 2604.26694).

    Frozen: change one with ``dataclasses.replace``, which validates the result again."""

    video_steps: int = 50
    action_steps: int = 10
    shift: float = 5.0
    sigma_max: float = 0.999
    solver: SolverName = "unipc"
    # "policy": stop after the action steps, depth off; "4d": all video steps, depth on
    mode: Literal["policy", "4d"] = "policy"
    depth: bool = True  # only used in 4d mode
    # classifier-free guidance on the instruction (1: off; otherwise each call runs twice)
    guidance_scale: float = 1.0
    # synchronous baseline: actions follow the video grid (for ablations and benchmarks)
    synchronous: bool = False
    # the X-WAM release feeds the model int(1000 sigma) (its scheduler's integer timesteps), not the
    # float; on for release checkpoints (`xwam convert release:`), off for models trained here
    integer_timesteps: bool = False
    # scale of each stream's starting noise, as a temperature: 1 samples the model's whole
    # distribution of futures; below 1 samples nearer its likely ones (less varied, less speckled);
    # 0 is the deterministic flow from zero noise
    video_temperature: float = 1.0
    action_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.video_steps < 1 or self.action_steps < 1:
            raise ValueError("video_steps and action_steps must be >= 1")
        for name in ("video_temperature", "action_temperature"):
            value = getattr(self, name)
            if not 0.0 <= value <= 2.0:
                raise ValueError(f"{name}={value} must lie in [0, 2] (1: the model's full distribution)")
        if self.action_steps > self.video_steps:
            raise ValueError(
                f"action_steps={self.action_steps} cannot exceed video_steps={self.video_steps}: "
                "the action grid runs alongside the first calls of the video grid"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        """Also reads configs written under the old field names (``SAMPLER_RENAMED``)."""
        data = dict(data)
        for old, new in SAMPLER_RENAMED.items():
            if old in data:
                if new in data:
                    raise ValueError(f"sampler config has both {old} and {new} (the same field)")
                data[new] = data.pop(old)
        return _build(cls, data)


# old sampler field names -> current ones, still read from checkpoints' config.json and --set
SAMPLER_RENAMED = {"cfg_scale": "guidance_scale"}


@dataclass(frozen=True)
class PolicyConfig:
    """How a policy prepares observations and executes chunks, beyond the model and the sampler."""

    # centre crop keeping this share of height and width, resized back, before encoding the current
    # frame (1: none). The X-WAM release trains on random 0.95 crops and evaluates on the centre one.
    center_crop: float = 1.0
    # actions executed from each chunk before re-planning (None: half the chunk); the release: 32
    replan_every: int | None = None
    # how the simulator's signals map to the model's (xwam.evaluate): "xwam" (its 8-d state and 7-d
    # OSC command as they are) or "release_single_arm" (the release's RoboCasa convention: 16-d state,
    # the first 7 of 14 action dims with the gripper sign flipped back). Set by training on release data.
    robot_io: Literal["xwam", "release_single_arm"] = "xwam"

    def __post_init__(self) -> None:
        if not 0.0 < self.center_crop <= 1.0:
            raise ValueError(f"policy.center_crop must lie in (0, 1], got {self.center_crop}")
        if self.replan_every is not None and self.replan_every < 1:
            raise ValueError(f"policy.replan_every must be >= 1 (or null), got {self.replan_every}")
        if self.robot_io not in ("xwam", "release_single_arm"):
            raise ValueError(f"policy.robot_io must be 'xwam' or 'release_single_arm', got {self.robot_io!r}")


# what a release checkpoint needs to act as the release does (`xwam convert release:` stores it)
RELEASE_PARITY = ["sampler.integer_timesteps=true", "policy.center_crop=0.95", "policy.replan_every=32"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Training-time noise distribution (X-WAM paper, arXiv 2604.26694)."""

    timestep_mode: TimestepMode = "ans"
    shift: float = 5.0
    clean_action_prob: float = 0.5
    beta_a: float = 1.5
    beta_b: float = 1.0
    text_dropout: float = 0.1
    # share of samples whose current state (state token 0) is zeroed, so that the model must locate
    # the robot from its cameras; 0 (off) as in the paper
    state_dropout: float = 0.0
    # Real-time chunking support: for this share of samples with noisy actions, a random prefix of
    # 1..K/2 actions is given clean (t = 0, excluded from the loss), so at inference the next chunk
    # can be generated as a continuation of actions already committed to the robot.
    action_prefix_prob: float = 0.1
    # Per-modality loss weights (the paper weighs all four 1). On the CPU demo a 5x action weight
    # did not help the policy (16 % vs 28 % closed-loop success on 50 held-out Lift seeds), nor did 3x
    # on the constant-rate demo of 1ba9817 (README, run W2: 96 % vs 100 %, vision ratio 1.38 vs 1.56).
    video_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    state_loss_weight: float = 1.0
    depth_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.state_dropout < 1.0:
            raise ValueError(f"diffusion.state_dropout={self.state_dropout} must lie in [0, 1) (0: off)")

    def loss_weights(self) -> dict[str, float]:
        return {"video": self.video_loss_weight, "action": self.action_loss_weight,
                "state": self.state_loss_weight, "depth": self.depth_loss_weight}


@dataclass(frozen=True)
class XWAMConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    preset: str = "custom"
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XWAMConfig:
        return cls(
            model=_build(ModelConfig, data.get("model", {})),
            sampler=SamplerConfig.from_dict(data.get("sampler", {})),
            diffusion=_build(DiffusionConfig, data.get("diffusion", {})),
            preset=data.get("preset", "custom"),
            policy=_build(PolicyConfig, data.get("policy", {})),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> XWAMConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def override(self, assignments: list[str]) -> XWAMConfig:
        """Return a copy with ``section.field=value`` assignments applied (values parsed as JSON)."""
        data = self.to_dict()
        for item in assignments:
            if "=" not in item or "." not in item.split("=", 1)[0]:
                raise ValueError(f"override {item!r} must look like section.field=value (e.g. model.num_layers=4)")
            key, raw = item.split("=", 1)
            section, name = key.split(".", 1)
            if section == "sampler":
                name = SAMPLER_RENAMED.get(name, name)
            if section not in ("model", "sampler", "diffusion", "policy"):
                raise ValueError(f"unknown config section {section!r} in {item!r}")
            valid = {f.name for f in fields(type(getattr(self, section)))}
            if name not in valid:
                raise ValueError(f"unknown field {name!r} in section {section!r}; valid: {sorted(valid)}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw  # bare strings such as model.codec=pixel
            data[section][name] = value
        return XWAMConfig.from_dict(data)


def _build(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**data)


def _tiny() -> XWAMConfig:
    # Wan2.2-shaped but tiny: seconds on a CPU, for unit tests.
    model = ModelConfig(
        num_views=2,
        image_height=16,
        image_width=16,
        num_frames=3,
        frame_skip=2,
        action_horizon=4,
        action_dim=7,
        state_dim=8,
        codec="pixel",
        latent_channels=12,
        spatial_compression=2,
        temporal_compression=1,
        num_layers=3,
        num_heads=2,
        head_dim=32,
        ffn_dim=128,
        rope_max_seq_len=32,
        depth_layers=1,
        text_encoder="none",
        text_dim=32,
        text_len=8,
    )
    return XWAMConfig(model=model, sampler=SamplerConfig(video_steps=8, action_steps=4), preset="tiny")


def _small() -> XWAMConfig:
    # The CPU demo model, trained from scratch in minutes on two cores. 16x16-pixel tokens (8x8
    # patches, 2x2 patchify) keep the sequence at 155 tokens: the cost of a step is linear in it. The
    # PCA codec keeps 32 components per 8x8 patch, so a token outputs 128 values through a 256-wide
    # model (the exact pixel codec's 768 could not pass it: the video was never learned).
    model = ModelConfig(
        num_views=3,
        camera_names=["robot0_agentview_left", "robot0_agentview_right", "robot0_eye_in_hand"],
        image_height=64,
        image_width=64,
        num_frames=3,
        frame_skip=4,
        action_horizon=8,
        action_dim=7,
        state_dim=8,
        codec="pca",
        latent_channels=32,
        # components scaled by sigma_k**0.5: with one global scale (0) the small components drown in
        # the noise and decode as speckle, with unit variance (1) the large ones are under-weighted and
        # decode as blocks; 0.5 beat both on the demo (sample PSNR 18.49 vs 17.88 / 15.23 dB)
        codec_whitening=0.5,
        spatial_compression=8,
        temporal_compression=1,
        num_layers=4,
        num_heads=4,
        head_dim=64,
        ffn_dim=768,
        rope_max_seq_len=64,
        depth_layers=1,
        spatial_embedding=True,
        # the wrist camera sees 4-25 cm, the static cameras 0.5-4.7 m: inverse depth left the static
        # views' depth at AbsRel 0.32 (see xwam.codecs.depth); log depth weighs both alike
        depth_curve="log",
        text_encoder="minilm",
        text_dim=384,
        text_len=16,
    )
    # Most samples keep noisy actions (the paper's 0.5 leaves half the batch without an action loss):
    # on a 14-minute budget the policy is what the demo is judged on.
    diffusion = DiffusionConfig(clean_action_prob=0.2)
    # Sampling both streams at temperature 0.5 (measured on the demo's checkpoint, 12 held-out clips):
    # the sampled future's PSNR over all views rose from 19.00 to 19.61 dB (frozen present 19.41),
    # SSIM 0.57 -> 0.71, depth AbsRel 0.149 -> 0.151; the open-loop action error fell 0.099 -> 0.093
    # and closed-loop success stayed 49-50/50
    sampler = SamplerConfig(video_steps=20, action_steps=5, video_temperature=0.5, action_temperature=0.5)
    return XWAMConfig(model=model, sampler=sampler, diffusion=diffusion, preset="small")


def _wan22_ti2v_5b() -> XWAMConfig:
    # The paper's model: Wan2.2-TI2V-5B backbone, 3 views at 256x320, 9 frames, 32x14 actions.
    return XWAMConfig(model=ModelConfig(), sampler=SamplerConfig(), preset="wan22-ti2v-5b")


PRESETS = {"tiny": _tiny, "small": _small, "wan22-ti2v-5b": _wan22_ti2v_5b}


def get_preset(name: str) -> XWAMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
