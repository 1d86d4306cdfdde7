"""Does the policy use its cameras? Action-chunk error under swapped inputs.

On clips of recorded episodes (usually held-out ones) the policy's sampled chunk is compared with
the recorded chunk under four conditions:

- ``true``: the episode's own current images (every view), state and instruction;
- ``other_images``: the images of a partner episode at the same time index, with the true state;
- ``other_state``: the true images with the partner episode's state at that time index;
- ``blind_chunk``: no model: the partner episode's recorded chunk at that time index is the
  prediction, i.e. what a policy that ignores the observation could at best hope to match.

Episodes are paired cyclically (``e_i`` with ``e_{i+1}``, the last with the first). The partner's
time index is the clip's start clamped to the partner's last full chunk, so the swapped images and
state are exactly the observation its recorded (blind) chunk followed.

Every condition runs on the same clips, and clip ``i`` seeds the policy's generator with
``seed + i`` before each condition: the sampler's noise is identical across conditions, so the
differences come only from the inputs. Errors are in normalised action units (the checkpoint's
statistics), over the valid action dimensions and the whole chunk, averaged over clips; each
dimension's MAE is reported too, because every dimension weighs alike in the overall number and one
the cameras cannot inform (a tiny orientation correction, normalised by its tiny range) dilutes it,
and so are the clips that start an episode apart from the later ones (:func:`errors_by_start`).

If ``other_images`` scores about like ``true`` the policy hardly looks at its cameras; our target is
``other_images / true >= 2``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xwam.atomic import atomic_write_json, atomic_write_text
from xwam.data.layout import OBS_IMAGE_PREFIX, OBS_STATE_KEY

CONDITIONS = ("true", "other_images", "other_state", "blind_chunk")
DESCRIPTIONS = {
    "true": "its own images + state",
    "other_images": "another episode's images, true state",
    "other_state": "true images, another episode's state",
    "blind_chunk": "no model: another episode's recorded chunk",
}
VISION_TARGET = 2.0
CLIPS_PER_EPISODE = 4  # the demo's and the benchmarks' vision check (`xwam diagnose --clips-per-episode` says 4 too)
# the two clip groups of errors_by_start, as the tables name them (diagnose.md, the demo report)
START_GROUPS = {"first": "first chunk of the episode (start 0, from rest)", "later": "later chunks (arm under way)"}
# below this other_images / true ratio the verdict says the chunk hardly depends on the cameras
HARDLY_RATIO = 1.2


@dataclass(frozen=True)
class ClipPlan:
    episode: int
    start: int
    other_episode: int
    other_start: int


def select_episodes(spec: str | list[int] | None, n: int) -> list[int]:
    """Episode indices from a spec: None (all), a Python-style slice (``-3:``), a comma list or ints."""
    if spec is None:
        return list(range(n))
    if isinstance(spec, str):
        spec = spec.strip()
        if ":" in spec:
            try:
                parts = [int(p) if p.strip() else None for p in spec.split(":")]
                return list(range(n))[slice(*parts)]
            except (TypeError, ValueError) as exc:
                raise ValueError(f"--episodes: bad slice {spec!r} (e.g. -5: or 0:10)") from exc
        try:
            picked = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--episodes: expected a slice like -5: or a comma list like 0,3,7; got {spec!r}") from exc
    else:
        picked = [int(x) for x in spec]
    bad = [i for i in picked if not -n <= i < n]
    if bad:
        raise ValueError(f"episode indices {bad} out of range (the dataset has {n} episodes)")
    picked = [i % n for i in picked]
    if len(set(picked)) != len(picked):
        # an episode listed twice could be paired with itself, which would make the swap a no-op
        raise ValueError(f"episode indices listed more than once: {picked}")
    return picked


def plan_clips(lengths: dict[int, int], episodes: list[int], horizon: int, clips_per_episode: int) -> list[ClipPlan]:
    """Evenly spaced starts with a full recorded chunk, each paired with the next episode's same time.

    ``episodes`` must all hold at least one chunk (length >= horizon) and number at least two.
    """
    if clips_per_episode < 1:
        raise ValueError(f"clips_per_episode must be >= 1, got {clips_per_episode}")
    plans = []
    for i, e in enumerate(episodes):
        other = episodes[(i + 1) % len(episodes)]
        last, other_last = lengths[e] - horizon, lengths[other] - horizon
        starts = sorted(set(np.linspace(0, last, num=clips_per_episode).round().astype(int).tolist()))
        plans += [ClipPlan(e, s, other, min(s, other_last)) for s in starts]
    return plans


def chunk_errors(pred: np.ndarray, true: np.ndarray, stats: Any) -> tuple[float, float, list[float]]:
    """(MAE, MSE, MAE per valid dimension) of two (K, A) chunks in robot units, in normalised units
    over the valid dimensions."""
    valid = np.asarray(stats.action_valid, bool)
    diff = (stats.normalize_action(np.asarray(pred, np.float64))
            - stats.normalize_action(np.asarray(true, np.float64)))[:, valid]
    return float(np.abs(diff).mean()), float((diff**2).mean()), np.abs(diff).mean(axis=0).tolist()


def vision_check(
    checkpoint: str | Path,
    data: str | Path,
    episodes: str | list[int] | None = None,
    clips_per_episode: int = CLIPS_PER_EPISODE,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    sampler: list[str] | None = None,
) -> dict[str, Any]:
    """Action-chunk error of a checkpoint's policy under the four conditions (see the module doc).

    ``episodes``: None (all), a spec string (``-3:``, ``0,4``) or a list of indices. ``sampler``:
    ``FIELD=VALUE`` changes to the checkpoint's sampler config (e.g. ``action_steps=10``), to compare
    sampler settings on the same clips and noise. With ``out``, writes ``out/diagnose.json`` (the
    returned dict) and ``out/diagnose.md``.
    """
    import torch
    from tqdm import tqdm

    from xwam.data import open_dataset
    from xwam.policy import XWAMPolicy

    policy = XWAMPolicy.from_checkpoint(checkpoint, device=device)
    if sampler:
        # parsed and validated like `xwam train --set sampler.FIELD=VALUE`
        changed = policy.config.override([f"sampler.{item}" for item in sampler]).sampler
        policy = policy.with_sampler(**dataclasses.asdict(changed))
    m = policy.config.model
    horizon, cams = m.action_horizon, policy.camera_names
    stats = policy.processor.norm_stats
    if not np.asarray(stats.action_valid, bool).any():
        raise ValueError(f"{checkpoint}: the normalisation statistics mark no action dimension valid")
    dataset = open_dataset(data)
    chosen = select_episodes(episodes, dataset.num_episodes)
    # frames with a recorded action (release-format delta-mode episodes have none on their last frame)
    lengths = {e: dataset.episode_length(e) - getattr(dataset, "final_frames_without_action", 0) for e in chosen}
    usable = [e for e in chosen if lengths[e] >= horizon]
    skipped = [e for e in chosen if lengths[e] < horizon]
    if len(usable) < 2:
        raise ValueError(
            f"diagnose needs at least 2 episodes with >= {horizon} steps (each clip is compared with another "
            f"episode); got {len(usable)} of the selected {chosen}"
            + (f" ({len(skipped)} shorter than one chunk)" if skipped else "")
        )
    plans = plan_clips(lengths, usable, horizon, clips_per_episode)

    # Decode each episode once and keep only the frames the clips need (its own starts and the
    # times it is a partner at): full episodes of a large model's data do not fit side by side.
    needed: dict[int, set[int]] = {e: set() for e in usable}
    for p in plans:
        needed[p.episode].add(p.start)
        needed[p.other_episode].add(p.other_start)
    frames: dict[tuple[int, int], dict[str, Any]] = {}
    tasks: dict[int, str] = {}
    height, width, _ = policy.image_shape
    for e in tqdm(usable, desc="diagnose: load", unit="episode", disable=not progress):
        ep = dataset.episode(e, load_depth=False)
        missing = [c for c in cams if c not in ep.rgb]
        if missing:
            raise ValueError(f"episode {e} has no camera(s) {missing}; the model's cameras are {cams}, "
                             f"the dataset's {ep.camera_names}")
        size = tuple(ep.rgb[cams[0]].shape[1:3])
        if size != (height, width):
            raise ValueError(f"the dataset's images are {size[0]}x{size[1]} but the model expects "
                             f"{height}x{width} (image resolution differs)")
        if ep.action.shape[1] != m.action_dim or ep.state.shape[1] != m.state_dim:
            raise ValueError(f"episode {e} has state/action dims {ep.state.shape[1]}/{ep.action.shape[1]}, "
                             f"the model {m.state_dim}/{m.action_dim}")
        tasks[e] = ep.task
        for t in sorted(needed[e]):
            frames[e, t] = {
                "images": {c: np.array(ep.rgb[c][t]) for c in cams},
                "state": np.asarray(ep.state[t], np.float32).copy(),
                "chunk": np.asarray(ep.action[t:t + horizon], np.float32).copy(),
            }
        del ep

    def observation(images: dict[str, np.ndarray], state: np.ndarray, prompt: str) -> dict[str, Any]:
        obs: dict[str, Any] = {OBS_IMAGE_PREFIX + c: images[c] for c in cams}
        obs.update({OBS_STATE_KEY: state, "prompt": prompt})
        return obs

    clips = []
    for i, p in enumerate(tqdm(plans, desc="diagnose", unit="clip", disable=not progress)):
        own, other = frames[p.episode, p.start], frames[p.other_episode, p.other_start]
        prompt = tasks[p.episode]
        inputs = {
            "true": observation(own["images"], own["state"], prompt),
            "other_images": observation(other["images"], own["state"], prompt),
            "other_state": observation(own["images"], other["state"], prompt),
        }
        errors = {}
        for cond, obs in inputs.items():
            # same seed for every condition of a clip: identical sampler noise
            policy.generator.manual_seed(seed + i)
            with torch.no_grad():
                pred = policy.infer(obs)["actions"]
            errors[cond] = chunk_errors(pred, own["chunk"], stats)
        errors["blind_chunk"] = chunk_errors(other["chunk"], own["chunk"], stats)
        clips.append({"episode": p.episode, "start": p.start, "other_episode": p.other_episode,
                      "other_start": p.other_start, "mae": {c: errors[c][0] for c in CONDITIONS},
                      "mse": {c: errors[c][1] for c in CONDITIONS},
                      "mae_per_dimension": {c: errors[c][2] for c in CONDITIONS}})

    conditions = {c: {"mae": float(np.mean([clip["mae"][c] for clip in clips])),
                      "mse": float(np.mean([clip["mse"][c] for clip in clips]))} for c in CONDITIONS}
    base = conditions["true"]["mae"]
    ratios = {f"{c}/true": _ratio(conditions[c]["mae"], base) for c in CONDITIONS[1:]}
    vision_ratio = ratios["other_images/true"]
    # The overall MAE weighs every normalised dimension alike; a dimension the cameras cannot inform
    # (e.g. a small orientation correction scaled up by its tiny range) dilutes the ratio, so show each.
    names = [n for n, ok in zip(stats.action_names, np.asarray(stats.action_valid, bool)) if ok]
    per_dimension = {name: {c: float(np.mean([clip["mae_per_dimension"][c][d] for clip in clips]))
                            for c in CONDITIONS} for d, name in enumerate(names)}
    per_dimension_ratios = {name: _ratio(row["other_images"], row["true"]) for name, row in per_dimension.items()}
    result = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "episodes": usable,
        "skipped_episodes": skipped,
        "pairs": [[e, usable[(i + 1) % len(usable)]] for i, e in enumerate(usable)],
        "clips_per_episode": int(clips_per_episode),
        "seed": int(seed),
        "num_clips": len(clips),
        "action_horizon": int(horizon),
        "action_steps": int(policy.config.sampler.action_steps),
        "sampler": dataclasses.asdict(policy.config.sampler),
        "sampler_changes": list(sampler or []),
        "conditions": conditions,
        "ratios": ratios,
        "per_dimension": per_dimension,
        "per_dimension_other_images/true": per_dimension_ratios,
        "by_start": errors_by_start(clips),
        "vision_target": VISION_TARGET,
        "uses_vision": None if vision_ratio is None else bool(vision_ratio >= VISION_TARGET),
        "clips": clips,
    }
    if out is not None:
        write_outputs(out, result)
    return result


def errors_by_start(clips: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean MAE per condition of the clips that start an episode (start 0: the first chunk, planned from
    rest, where the object's place decides the whole approach) and of the later ones (the arm under way).

    The two can tell very different stories: on the Lift demo the first chunks carry most of the
    error and most of what the cameras decide, and more training shrinks mainly their error."""
    groups = {"first": [c for c in clips if c["start"] == 0], "later": [c for c in clips if c["start"] > 0]}
    out = {}
    for name, members in groups.items():
        if not members:
            continue
        mae = {c: float(np.mean([clip["mae"][c] for clip in members])) for c in CONDITIONS}
        out[name] = {"clips": len(members), "mae": mae, "other_images/true": _ratio(mae["other_images"], mae["true"])}
    return out


def _ratio(error: float, true_error: float) -> float | None:
    """error / true_error, None when the true error is 0 (the tables print n/a)."""
    return error / true_error if true_error > 0 else None


def vision_verdict(ratio: float, target: float = VISION_TARGET) -> str:
    """The words beside the ratio: below HARDLY_RATIO the cameras hardly move the chunk; between that
    and the target they do, by less than the target asks (a recovery policy can sit there and still
    fall to blind-replay success in closed loop when shown another episode's images)."""
    if ratio >= target:
        return "met: the chunk depends on the cameras"
    if ratio < HARDLY_RATIO:
        return "NOT met: the chunk hardly depends on the cameras"
    return "NOT met: the cameras change the chunk, by less than the target"


def markdown(result: dict[str, Any]) -> str:
    """The four conditions as a table, and the verdict on vision."""
    episodes = result["episodes"]
    lines = [
        f"Action-chunk error of `{result['checkpoint']}` on {result['num_clips']} clips of `{result['data']}` "
        f"(episodes {', '.join(map(str, episodes))}; {result['action_horizon']} actions per chunk; "
        f"normalised action units, valid dimensions; seed {result['seed']}"
        + (f"; sampler changed: {', '.join(result['sampler_changes'])}" if result.get("sampler_changes") else "")
        + ")",
        "",
        "| condition | policy input | MAE | MSE | MAE / true |",
        "|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        row = result["conditions"][cond]
        ratio = 1.0 if cond == "true" else result["ratios"][f"{cond}/true"]
        ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {cond} | {DESCRIPTIONS[cond]} | {row['mae']:.4f} | {row['mse']:.4f} | {ratio_text} |")
    ratio = result["ratios"]["other_images/true"]
    lines.append("")
    if ratio is None:
        lines.append("other_images / true: n/a (the true error is 0)")
    else:
        verdict = vision_verdict(ratio, result["vision_target"])
        lines.append(f"other_images / true = {ratio:.2f} (target >= {result['vision_target']:g}, {verdict}); "
                     f"other_state / true = {_fmt(result['ratios']['other_state/true'])}; "
                     f"blind_chunk / true = {_fmt(result['ratios']['blind_chunk/true'])}")
    per_dimension = result.get("per_dimension")
    if per_dimension and "per_dimension_other_images/true" in result:
        lines += ["", "MAE per action dimension (which dimensions the cameras inform):", "",
                  "| dimension | " + " | ".join(CONDITIONS) + " | other_images / true |",
                  "|---|" + "---|" * (len(CONDITIONS) + 1)]
        ratios = result["per_dimension_other_images/true"]
        for name, row in per_dimension.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in CONDITIONS) + f" | {_fmt(ratios[name])} |")
    by_start = result.get("by_start")
    if by_start:
        lines += ["", "MAE by where the clip starts (the first chunk plans from rest; later ones with the arm under way):",
                  "", "| clips | count | " + " | ".join(CONDITIONS) + " | other_images / true |",
                  "|---|---|" + "---|" * (len(CONDITIONS) + 1)]
        for name, row in by_start.items():
            lines.append(f"| {START_GROUPS[name]} | {row['clips']} | " + " | ".join(f"{row['mae'][c]:.4f}" for c in CONDITIONS)
                         + f" | {_fmt(row['other_images/true'])} |")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def write_outputs(out: str | Path, result: dict[str, Any]) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "diagnose.json", "md": out / "diagnose.md"}
    atomic_write_json(paths["json"], result)  # a reader (the demo report) never sees half a file
    atomic_write_text(paths["md"], markdown(result))
    return paths
