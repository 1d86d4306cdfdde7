"""The X-WAM transformer: Wan2.2's DiT with multi-view video, state and action tokens and a depth branch.

We own the top-level forward and reuse the submodules of diffusers' ``WanTransformer3DModel``
(patch embedding, condition embedder, blocks, output head), so Wan2.2 weights load unchanged.
One sequence holds, in this order:

    video tokens  (latent frame, view, patch row, patch col)   frame-major; views share RoPE
    state tokens  (one per video frame, token 0 = current state)
    action tokens (one per control step)

Every token carries its own diffusion time (the current frame and state 0 are clean, t = 0), so
the modulation is per token, as in Wan2.2-TI2V. Attention is full and bidirectional.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.utils.checkpoint
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from xwam.config import ModelConfig
from xwam.model.rope import apply_rope, rope_cos_sin, temporal_positions, video_positions

# Model time input = 1000 * sigma (Wan's convention).
TIME_SCALE = 1000.0


def wan_backbone_kwargs(cfg: ModelConfig) -> dict:
    """Arguments of ``WanTransformer3DModel`` for a config (Wan2.2-TI2V-5B layout)."""
    return dict(
        patch_size=tuple(cfg.patch_size),
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        rope_max_seq_len=cfg.rope_max_seq_len,
    )


def token_mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Linear - GELU(tanh) - Linear: the per-token encoders and decoders of actions and states."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(approximate="tanh"), nn.Linear(d_hidden, d_out))


@dataclass
class XWAMOutput:
    """Model predictions. ``video``: velocity (B, V, C, T, h, w); ``actions``/``states``: velocity;
    ``depth``: clean depth latents x0 (B, V, C, T, h, w) when the depth branch ran."""

    video: torch.Tensor
    actions: torch.Tensor | None
    states: torch.Tensor | None
    depth: torch.Tensor | None = None


def _modulation(table: torch.Tensor, mod: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Split (1, n, D) learned table + per-token (B, L, n, D) modulation into n (B, L, D) parts."""
    return [part.squeeze(2) for part in (table.unsqueeze(0) + mod.float()).chunk(n, dim=2)]


def self_attention(
    attn: nn.Module,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Wan self-attention on ``x`` that also returns its post-RoPE keys/values.

    ``extra_kv`` (B, L', heads, d) are appended to this stream's own keys/values: the depth branch
    attends over [own K/V ; main branch K/V].
    """
    if getattr(attn, "fused_projections", False):
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
    else:
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    q = attn.norm_q(q).unflatten(2, (attn.heads, -1))
    k = attn.norm_k(k).unflatten(2, (attn.heads, -1))
    v = v.unflatten(2, (attn.heads, -1))
    q = apply_rope(q, *rope)
    k = apply_rope(k, *rope)
    keys, values = (k, v) if extra_kv is None else (torch.cat([k, extra_kv[0]], 1), torch.cat([v, extra_kv[1]], 1))
    out = dispatch_attention_fn(
        q, keys, values, attn_mask=None, dropout_p=0.0, is_causal=False,
        backend=getattr(attn.processor, "_attention_backend", None),
    )
    out = out.flatten(2, 3).type_as(q)
    out = attn.to_out[1](attn.to_out[0](out))
    return out, (k, v)


class XWAMBlock(WanTransformerBlock):
    """A Wan2.2 block run with per-token modulation, exposing its K/V and reading extra K/V.

    Same parameters, state-dict keys and arithmetic as diffusers' ``WanTransformerBlock`` (Wan2.2
    weights load unchanged); ``forward`` additionally returns the block's post-RoPE K/V and appends
    ``extra_kv`` to its own, which is how a depth block reads its main-branch twin. Blocks are called
    as modules, so hooks (FSDP2 unsharding, activation checkpointing, profilers) see every call.
    """

    @classmethod
    def from_wan(cls, block: WanTransformerBlock) -> XWAMBlock:
        """The same block as an ``XWAMBlock``, holding the very same parameter tensors (no copy)."""
        if isinstance(block, cls):
            return block
        attn2 = block.attn2
        with torch.device("meta"):
            new = cls(
                dim=block.norm1.normalized_shape[0],
                ffn_dim=block.ffn.net[0].proj.out_features,
                num_heads=block.attn1.heads,
                cross_attn_norm=not isinstance(block.norm2, nn.Identity),
                eps=block.norm1.eps,
                added_kv_proj_dim=attn2.add_k_proj.in_features if getattr(attn2, "add_k_proj", None) is not None
                else None,
            )
        new.load_state_dict(block.state_dict(keep_vars=True), assign=True)
        new.train(block.training)
        return new

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        mod: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``mod``: per-token modulation (B, L, 6, D); returns the new ``x`` and this block's K/V."""
        shift, scale, gate, c_shift, c_scale, c_gate = _modulation(self.scale_shift_table, mod, 6)
        h = (self.norm1(x.float()) * (1 + scale) + shift).type_as(x)
        attn_out, kv = self_attention(self.attn1, h, rope, extra_kv)
        x = (x.float() + attn_out * gate).type_as(x)
        h = self.norm2(x.float()).type_as(x)
        x = x + self.attn2(h, context, None, None)
        h = (self.norm3(x.float()) * (1 + c_scale) + c_shift).type_as(x)
        x = (x.float() + self.ffn(h).float() * c_gate).type_as(x)
        return x, kv


class DepthBranch(nn.Module):
    """Replicated last-M blocks that read the main branch's K/V and predict clean depth latents.

    Unilateral: the main branch never reads depth, so its outputs do not change with the branch
    on or off; depth gradients still reach the shared and main weights through the K/V.
    """

    def __init__(self, source_blocks: list[nn.Module], dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in source_blocks)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) * 0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.normal_(self.head.bias, std=0.02)

    def copy_from(self, source_blocks: list[nn.Module]) -> None:
        """Re-initialise the depth blocks as weight copies of ``source_blocks`` (e.g. after loading Wan)."""
        for dst, src in zip(self.blocks, source_blocks, strict=True):
            dst.load_state_dict(src.state_dict())

    def output(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = _modulation(self.modulation, temb.unsqueeze(2), 2)
        return self.head((self.norm(x.float()) * (1 + scale) + shift).type_as(x))


class XWAMTransformer(nn.Module):
    """X-WAM diffusion transformer. See the module docstring for the token layout."""

    def __init__(self, cfg: ModelConfig, backbone: WanTransformer3DModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else WanTransformer3DModel(**wan_backbone_kwargs(cfg))
        self.backbone.blocks = nn.ModuleList(XWAMBlock.from_wan(b) for b in self.backbone.blocks)
        dim = cfg.hidden_dim
        self.view_embedding = nn.Embedding(cfg.num_views, dim)
        nn.init.normal_(self.view_embedding.weight, std=0.02)
        self.spatial_embedding: nn.Parameter | None = None
        if cfg.spatial_embedding:
            _, rows, cols = cfg.token_grid
            self.spatial_embedding = nn.Parameter(torch.randn(rows, cols, dim) * 0.02)
        self.action_encoder = token_mlp(cfg.action_dim, dim, dim)
        self.action_decoder = token_mlp(dim, dim, cfg.action_dim)
        self.state_encoder = token_mlp(cfg.state_dim, dim, dim)
        self.state_decoder = token_mlp(dim, dim, cfg.state_dim)
        self.depth_branch: DepthBranch | None = None
        if cfg.depth_layers > 0:
            self.depth_branch = DepthBranch(
                list(self.backbone.blocks[cfg.num_layers - cfg.depth_layers :]),
                dim,
                cfg.latent_channels * math.prod(cfg.patch_size),
                cfg.eps,
            )
        self.gradient_checkpointing = False
        # Embed each distinct time once and gather per token (exact up to fp32 matmul rounding);
        # False embeds every token separately, exactly as diffusers does.
        self.dedup_timesteps = True
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- sequence layout --------------------------------------------------------------------
    def _rope(self, grid: tuple[int, int, int], num_states: int, num_actions: int, device: torch.device):
        key = (grid, num_states, num_actions, str(device))
        if key not in self._rope_cache:
            cfg = self.cfg
            pos = [video_positions(grid[0], cfg.num_views, grid[1], grid[2])]
            if num_states:
                pos.append(temporal_positions(num_states, cfg.temporal_compression))
            if num_actions:
                pos.append(temporal_positions(num_actions, cfg.control_steps_per_latent_frame))
            self._rope_cache[key] = rope_cos_sin(torch.cat(pos).to(device), cfg.head_dim, cfg.rope_theta)
        return self._rope_cache[key]

    def token_timesteps(
        self,
        grid: tuple[int, int, int],
        t_video: torch.Tensor,
        t_action: torch.Tensor | None,
        num_states: int,
        num_actions: int,
        condition_frames: int = 1,
        action_prefix_len: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token diffusion time (B, L) in [0, 1]: conditioning frames and state 0 are clean, and so
        are the first ``action_prefix_len[b]`` actions (committed actions, real-time chunking)."""
        frames, h, w = grid
        per_frame = self.cfg.num_views * h * w
        batch = t_video.shape[0]
        video = t_video.float()[:, None].expand(batch, frames * per_frame).clone()
        video[:, : condition_frames * per_frame] = 0.0
        parts = [video]
        if num_states:
            states = t_action.float()[:, None].expand(batch, num_states).clone()
            states[:, 0] = 0.0
            parts.append(states)
        if num_actions:
            actions = t_action.float()[:, None].expand(batch, num_actions)
            if action_prefix_len is not None:
                steps = torch.arange(num_actions, device=actions.device)
                actions = actions.masked_fill(steps[None] < action_prefix_len.to(actions.device)[:, None], 0.0)
            parts.append(actions)
        return torch.cat(parts, dim=1)

    def _time_embedding(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """temb (B, L, D) and block modulation (B, L, 6, D), in fp32.

        Only a handful of distinct times occur per batch, so the sinusoid and MLPs run on the unique
        values and are gathered back per token.
        """
        emb = self.backbone.condition_embedder
        if self.dedup_timesteps:
            unique, inverse = torch.unique(timesteps * TIME_SCALE, return_inverse=True)
        else:
            unique = (timesteps * TIME_SCALE).flatten()
            inverse = torch.arange(unique.numel(), device=unique.device).view(timesteps.shape)
        with torch.autocast(device_type=unique.device.type, enabled=False):
            freq = emb.timesteps_proj(unique).float()
            temb = emb.time_embedder(freq.to(emb.time_embedder.linear_1.weight.dtype)).float()
            proj = emb.time_proj(emb.act_fn(temb).to(emb.time_proj.weight.dtype)).float()
        # index_select, not temb[inverse]: its backward accumulates in a fixed order on any thread count
        index = inverse.flatten()
        temb = temb.index_select(0, index).unflatten(0, inverse.shape)
        return temb, proj.index_select(0, index).unflatten(0, inverse.shape).unflatten(-1, (6, -1))

    # ---- forward ----------------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        t_video: torch.Tensor,
        t_action: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        states: torch.Tensor | None = None,
        depth: bool = False,
        condition_frames: int = 1,
        action_prefix_len: torch.Tensor | None = None,
    ) -> XWAMOutput:
        """Predict velocities (and optionally clean depth latents).

        video: (B, V, C, T, h, w) noisy latents; text: (B, L_text, text_dim); t_video, t_action: (B,)
        sigmas in [0, 1]; actions: (B, K, action_dim); states: (B, S, state_dim); ``action_prefix_len`` (B,)
        marks that many leading actions as clean (committed).
        """
        cfg, bb = self.cfg, self.backbone
        batch, views, _, frames, height, width = video.shape
        if views != cfg.num_views:
            raise ValueError(f"expected {cfg.num_views} views, got {views}")
        pt, ph, pw = cfg.patch_size
        grid = (frames // pt, height // ph, width // pw)
        num_states = 0 if states is None else states.shape[1]
        num_actions = 0 if actions is None else actions.shape[1]
        if (num_states or num_actions) and t_action is None:
            raise ValueError("t_action is required when action or state tokens are given")

        # video tokens: per-view patchify, then (frame, view, row, col) order plus the view embedding
        tokens = bb.patch_embedding(video.flatten(0, 1))  # (B*V, D, T, h', w')
        tokens = tokens.unflatten(0, (batch, views)).permute(0, 3, 1, 4, 5, 2)  # (B, T, V, h', w', D)
        tokens = tokens + self.view_embedding.weight.to(tokens.dtype)[None, None, :, None, None, :]
        if self.spatial_embedding is not None:
            if tuple(self.spatial_embedding.shape[:2]) != grid[1:]:
                raise ValueError(f"video token grid {grid[1:]} does not match the spatial embedding's "
                                 f"{tuple(self.spatial_embedding.shape[:2])} (image size differs from the config)")
            tokens = tokens + self.spatial_embedding.to(tokens.dtype)
        parts = [tokens.flatten(1, 4)]
        if num_states:
            parts.append(self.state_encoder(states.to(tokens.dtype)))
        if num_actions:
            parts.append(self.action_encoder(actions.to(tokens.dtype)))
        x = torch.cat(parts, dim=1).contiguous()
        num_video = parts[0].shape[1]

        timesteps = self.token_timesteps(grid, t_video, t_action, num_states, num_actions, condition_frames,
                                         action_prefix_len)
        temb, mod = self._time_embedding(timesteps)
        context = bb.condition_embedder.text_embedder(text.to(x.dtype))
        rope = self._rope(grid, num_states, num_actions, x.device)

        run_depth = depth and self.depth_branch is not None
        first_depth = cfg.num_layers - (cfg.depth_layers if run_depth else 0)
        d = None
        for i, block in enumerate(bb.blocks):
            if i == first_depth:
                d = x[:, :num_video]
            x, kv = self._run(block, x, context, mod, rope)
            if d is not None:
                vrope = (rope[0][:, :num_video], rope[1][:, :num_video])
                d, _ = self._run(self.depth_branch.blocks[i - first_depth], d, context,
                                 mod[:, :num_video], vrope, extra_kv=kv)

        # heads: video velocity through Wan's output head, actions/states through their decoders
        shift, scale = _modulation(bb.scale_shift_table, temb[:, :num_video].unsqueeze(2), 2)
        xv = x[:, :num_video]
        out_video = bb.proj_out((bb.norm_out(xv.float()) * (1 + scale) + shift).type_as(xv))
        out_states = self.state_decoder(x[:, num_video : num_video + num_states]) if num_states else None
        out_actions = self.action_decoder(x[:, num_video + num_states :]) if num_actions else None
        out_depth = self.depth_branch.output(d, temb[:, :num_video]) if d is not None else None
        return XWAMOutput(
            video=self._unpatchify(out_video, batch, grid),
            actions=out_actions,
            states=out_states,
            depth=self._unpatchify(out_depth, batch, grid) if out_depth is not None else None,
        )

    def _run(self, block: XWAMBlock, x, context, mod, rope, extra_kv=None):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, context, mod, rope, extra_kv, use_reentrant=False)
        return block(x, context, mod, rope, extra_kv)

    def _unpatchify(self, tokens: torch.Tensor, batch: int, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.cfg.patch_size
        t, h, w = grid
        x = tokens.reshape(batch, t, self.cfg.num_views, h, w, pt, ph, pw, -1)
        x = x.permute(0, 2, 8, 1, 5, 3, 6, 4, 7)  # (B, V, C, t, pt, h, ph, w, pw)
        return x.reshape(batch, self.cfg.num_views, -1, t * pt, h * ph, w * pw)

    # ---- conveniences -------------------------------------------------------------------------
    def enable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = True

    def reset_depth_branch_from_backbone(self) -> None:
        """Copy the last M backbone blocks into the depth branch (after loading backbone weights)."""
        if self.depth_branch is not None:
            m = self.cfg.depth_layers
            self.depth_branch.copy_from(list(self.backbone.blocks[self.cfg.num_layers - m :]))
