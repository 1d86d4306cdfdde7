"""How much of the expert's action the robot's state alone predicts, under each quaternion normalisation.

    python benchmarks/state_probe.py runs/demo [--out benchmarks/results/state_quaternions/probe.json]

A small MLP (state -> the current action, no images) is trained on a finished `xwam demo` run's
training demonstrations and scored on its noise-free held-out episodes, once per
``ModelConfig.quaternion_norm``: the statistics and the normalisation are the ones training uses
(:func:`xwam.train.data.resolve_norm_stats`, :meth:`NormStats.normalize_state`). Errors are MAE in
normalised action units per dimension, as the vision check reports them. Baseline, same episodes:
the training frames' mean action (a probe that learned nothing). Same seed, data and steps in every
row; only the state's quaternion normalisation differs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from xwam.atomic import atomic_write_json
from xwam.data import open_dataset
from xwam.data.stats import gather_state_action
from xwam.train.data import resolve_norm_stats

MODES = ("raw", "aligned")


def probe(data: Path, heldout: Path, steps: int, seed: int) -> dict:
    train_ds = open_dataset(data)
    train_state, train_action = gather_state_action(train_ds)
    test_state, test_action = gather_state_action(open_dataset(heldout))
    names = list(getattr(train_ds, "action_names", None) or [f"a{i}" for i in range(train_action.shape[1])])
    rows: dict[str, dict] = {}
    for mode in MODES:
        stats = resolve_norm_stats([train_ds], [str(data)], None, mode)
        x_train, x_test = (torch.tensor(stats.normalize_state(s), dtype=torch.float32) for s in (train_state, test_state))
        y_train, y_test = (torch.tensor(stats.normalize_action(a), dtype=torch.float32) for a in (train_action, test_action))
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 256), torch.nn.GELU(),
                                  torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, y_train.shape[1]))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        batches = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            i = torch.randint(0, len(x_train), (256,), generator=batches)
            loss = ((net(x_train[i]) - y_train[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            held = (net(x_test) - y_test).abs().mean(0).numpy()
            seen = (net(x_train) - y_train).abs().mean(0).numpy()
        mean_action = (y_test - y_train.mean(0)).abs().mean(0).numpy()
        rows[mode] = {"heldout_mae": dict(zip(names, held.tolist())), "heldout_mae_mean": float(held.mean()),
                      "train_mae_mean": float(seen.mean()),
                      "baseline_mean_action_mae": dict(zip(names, mean_action.tolist()))}
    return {"train_frames": len(train_state), "heldout_frames": len(test_state), "steps": steps, "seed": seed,
            "modes": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("demo", type=Path, help="a finished `xwam demo` output folder (data/ and heldout/)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/state_quaternions/probe.json"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = probe(args.demo / "data", args.demo / "heldout", args.steps, args.seed)
    result["demo"] = str(args.demo)
    result["seconds"] = round(time.perf_counter() - start, 1)
    names = list(result["modes"]["raw"]["heldout_mae"])
    print(f"held-out MAE per action dimension (normalised units), {result['heldout_frames']} frames")
    print("quaternions | " + " | ".join(names) + " | mean")
    base = result["modes"]["raw"]["baseline_mean_action_mae"]
    print("mean action (baseline) | " + " | ".join(f"{base[n]:.3f}" for n in names)
          + f" | {np.mean(list(base.values())):.3f}")
    for mode, row in result["modes"].items():
        print(f"{mode} | " + " | ".join(f"{row['heldout_mae'][n]:.3f}" for n in names) + f" | {row['heldout_mae_mean']:.3f}")
    atomic_write_json(args.out, result)
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
