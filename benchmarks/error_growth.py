"""How much does a one-step error grow over a rollout of the built-in data? The exact simulator, erring like a model.

    python -m benchmarks.error_growth --dataset data/tiny_steady --rms 0.002 0.005 0.01 [--run_dir runs/demo_steady3]

A rollout model errs at every step and goes on from its own error. This script asks what that alone costs: the
generator's own simulator, with each test trajectory's exact conditions (wind, gusts, material), replays it, and
from frame 2 on every frame's positions get a fresh smooth random displacement of RMSE ``--rms`` (and the velocity
that error gives a model's next step; ``clods_pl.data.gust_floor.perturbed_replays``). The replays are scored as
the evaluation scores a model (interpolation = frames 2 .. train_horizon - 1, extrapolation = the rest), x1e-3 m.

With ``--run_dir``, each stage-3 model of the run is scored the same way on one step (frame t+1 from the
ground-truth frames t-1 and t, t >= 1; its one-step RMSE), and the run's rollout rows are printed beside the
table: a model whose one-step RMSE is r should be compared with the replays at ``--rms`` near r. For scale, the
one-step RMSE of constant velocity (the size of a frame's acceleration) and of the exact simulator restarted from
the ground-truth frames t-1, t (velocity from their difference, as a model sees them) with each trajectory's own
wind and with the winds of other draws (what not knowing the wind costs on one step).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import GenerateConfig
from clods_pl.data.gust_floor import one_step_replay, perturbed_replays
from clods_pl.stages.evaluation import frame_squared_errors, summarize

SPLITS = ("test_viewed", "test_unviewed")
COLUMNS = [(s, k) for s in SPLITS for k in ("interpolation", "extrapolation")]


def one_step_rmse(checkpoint: Path, ds, split: str) -> float:
    """RMSE (m) of a stage-3 model's one-step predictions of frames 2..T-1 from ground-truth frames, over the
    trajectories of ``split`` (every vertex and coordinate, as the rollout RMSE)."""
    from clods_pl.dynamics import graph_from_faces  # noqa: PLC0415  (only --run_dir needs stage 3)
    from clods_pl.stages.dynamics import load_dynamics_model  # noqa: PLC0415  (see above)

    model = load_dynamics_model(checkpoint)
    errors = []
    for name in ds.names(split):
        traj = ds.trajectory(name)
        gt = traj.load_gt_verts().float()
        faces = torch.as_tensor(np.asarray(traj.faces), dtype=torch.int64)
        graph = graph_from_faces(faces, gt.shape[1])
        mesh_pos = torch.as_tensor(np.asarray(traj.mesh_pos), dtype=torch.float32)
        node_type = torch.as_tensor(np.asarray(traj.node_type)).long().reshape(-1)
        with torch.no_grad():
            pred = torch.stack(
                [model.step(gt[t - 1], gt[t], mesh_pos, node_type, graph, gt[t + 1]) for t in range(1, gt.shape[0] - 1)]
            )
        errors.append(frame_squared_errors(pred, gt[2:]))
    return float(np.sqrt(np.concatenate(errors).mean()))


def constant_velocity_one_step_rmse(ds, split: str) -> float:
    """RMSE (m) of x_{t+1} = 2 x_t - x_{t-1} on frames 2..T-1 of ``split``: the size of a frame's acceleration, the
    scale a one-step error is measured against."""
    errors = []
    for name in ds.names(split):
        gt = ds.trajectory(name).load_gt_verts().float()
        errors.append(frame_squared_errors(2 * gt[1:-1] - gt[:-2], gt[2:]))
    return float(np.sqrt(np.concatenate(errors).mean()))


def simulator_one_step_rmse(cfg: GenerateConfig, ds, split: str, other_winds: int) -> float:
    """RMSE (m) of the exact simulator's one-step predictions (``one_step_replay``) over ``split``: with each
    trajectory's own wind (``other_winds`` 0), else with the winds of ``other_winds`` other draws of the split."""
    errors = []
    for name in ds.names(split):
        index = int(re.sub(r"\D", "", name))
        gt = ds.trajectory(name).load_gt_verts()
        winds = [None] if other_winds == 0 else [cfg.physics(10_000 + j, split)[0] for j in range(other_winds)]
        errors += [frame_squared_errors(one_step_replay(cfg, index, split, gt, w), gt[2:]) for w in winds]
    return float(np.sqrt(np.concatenate(errors).mean()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/tiny_steady")
    ap.add_argument("--rms", type=float, nargs="+", default=[0.002, 0.005, 0.01], help="per-step errors (m)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--wind_draws", type=int, default=16, help="other winds per trajectory for the one-step row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train_horizon", type=int, default=None, help="default: the training trajectories' length")
    ap.add_argument("--run_dir", default=None, help="score this run's stage-3 models on one step, print its rows")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = read_dataset(args.dataset)
    generator = ds.info.extra.get("generator")
    if not generator:
        raise SystemExit(f"{args.dataset}/dataset.json has no generator settings: only built-in data can be replayed")
    cfg = GenerateConfig.from_dict(generator)
    horizon = args.train_horizon or ds.trajectory(ds.names("train")[0]).num_frames
    print(f"RMSE x1e-3 m (interpolation = frames 2-{horizon - 1}, extrapolation = frames >= {horizon})\n")
    print("| predictor | Viewed Interp. | Viewed Extrap. | Unviewed Interp. | Unviewed Extrap. |")
    print("|---|---|---|---|---|")
    for rms in args.rms:
        by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for split in SPLITS:
            for name in ds.names(split):
                index = int(re.sub(r"\D", "", name))
                gt = ds.trajectory(name).load_gt_verts()
                reps = perturbed_replays(cfg, index, split, gt.shape[0], args.samples, rms, args.seed)
                by_split[split] += [frame_squared_errors(r, gt) for r in reps]
        cells = [summarize(by_split[s], horizon)[k] for s, k in COLUMNS]
        text = " | ".join("-" if c is None else f"{1e3 * c:.1f}" for c in cells)
        print(f"| exact simulator erring {1e3 * rms:g} mm a step ({args.samples} replays each) | {text} |", flush=True)
    if args.run_dir:
        run = Path(args.run_dir)
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        for key, method in metrics["methods"].items():
            cells = [method["splits"].get(s, {}).get(k) for s, k in COLUMNS]
            text = " | ".join("-" if c is None else f"{1e3 * c:.1f}" for c in cells)
            print(f"| {key} ({args.run_dir}) | {text} |")
        print()
        for ckpt in sorted((run / "stage3").glob("*.ckpt")):
            steps = ", ".join(f"{s} {1e3 * one_step_rmse(ckpt, ds, s):.1f}" for s in SPLITS)
            print(f"one-step RMSE x1e-3 m of {ckpt.name}: {steps}")
    steps = ", ".join(f"{s} {1e3 * constant_velocity_one_step_rmse(ds, s):.1f}" for s in SPLITS)
    print(f"one-step RMSE x1e-3 m of constant velocity (the frames' own acceleration): {steps}")
    for label, draws in (
        ("its own wind", 0),
        (f"the wind of another trajectory ({args.wind_draws} draws)", args.wind_draws),
    ):
        steps = ", ".join(f"{s} {1e3 * simulator_one_step_rmse(cfg, ds, s, draws):.1f}" for s in SPLITS)
        print(f"one-step RMSE x1e-3 m of the exact simulator restarted from frames t-1, t with {label}: {steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
