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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.gust_floor import SPLITS, TABLE_HEAD, generated_dataset, run_rows, summary_row, trajectory_index
from clods_pl.data.generate import GenerateConfig
from clods_pl.data.gust_floor import one_step_replay, perturbed_replays
from clods_pl.stages.evaluation import frame_squared_errors


def pooled_one_step_rmse(ds, split: str, predict: Callable[[str, Tensor], list[Tensor]]) -> float:
    """RMSE (m) over the trajectories of ``split`` of one-step predictions of frames 2..T-1: ``predict(name, gt)``
    gives one or more (T - 2, V, 3) predictions from ``gt`` (T, V, 3); every vertex and coordinate counts, as in
    the rollout RMSE."""
    errors = []
    for name in ds.names(split):
        gt = ds.trajectory(name).load_gt_verts().float()
        errors += [frame_squared_errors(pred, gt[2:]) for pred in predict(name, gt)]
    return float(np.sqrt(np.concatenate(errors).mean()))


def one_step_rmse(checkpoint: Path, ds, split: str) -> float:
    """A stage-3 model's one-step RMSE (m): frame t+1 from the ground-truth frames t-1, t."""
    from clods_pl.dynamics import graph_from_faces  # noqa: PLC0415  (only --run_dir needs stage 3)
    from clods_pl.stages.dynamics import load_dynamics_model  # noqa: PLC0415  (see above)

    model = load_dynamics_model(checkpoint)

    def predict(name: str, gt: Tensor) -> list[Tensor]:
        traj = ds.trajectory(name)
        graph = graph_from_faces(torch.as_tensor(np.asarray(traj.faces), dtype=torch.int64), gt.shape[1])
        mesh_pos = torch.as_tensor(np.asarray(traj.mesh_pos), dtype=torch.float32)
        node_type = torch.as_tensor(np.asarray(traj.node_type)).long().reshape(-1)
        with torch.no_grad():
            steps = [model.step(gt[t - 1], gt[t], mesh_pos, node_type, graph, gt[t + 1]) for t in range(1, len(gt) - 1)]
        return [torch.stack(steps)]

    return pooled_one_step_rmse(ds, split, predict)


def constant_velocity_one_step_rmse(ds, split: str) -> float:
    """RMSE (m) of x_{t+1} = 2 x_t - x_{t-1}: the size of a frame's acceleration, the scale of a one-step error."""
    return pooled_one_step_rmse(ds, split, lambda name, gt: [2 * gt[1:-1] - gt[:-2]])


def simulator_one_step_rmse(cfg: GenerateConfig, ds, split: str, other_winds: int) -> float:
    """The exact simulator's one-step RMSE (m) (``one_step_replay``): with each trajectory's own wind
    (``other_winds`` 0), else with the winds of ``other_winds`` other draws of the split."""
    winds = [None] if other_winds == 0 else [cfg.physics(10_000 + j, split)[0] for j in range(other_winds)]
    return pooled_one_step_rmse(
        ds, split, lambda name, gt: [one_step_replay(cfg, trajectory_index(name), split, gt, w) for w in winds]
    )


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
    ds, cfg, horizon = generated_dataset(args.dataset, args.train_horizon)
    print(f"RMSE x1e-3 m (interpolation = frames 2-{horizon - 1}, extrapolation = frames >= {horizon})\n")
    print(TABLE_HEAD)
    for rms in args.rms:
        by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        for split in SPLITS:
            for name in ds.names(split):
                gt = ds.trajectory(name).load_gt_verts()
                reps = perturbed_replays(cfg, trajectory_index(name), split, gt.shape[0], args.samples, rms, args.seed)
                by_split[split] += [frame_squared_errors(r, gt) for r in reps]
        label = f"exact simulator erring {1e3 * rms:g} mm a step ({args.samples} replays each)"
        print(summary_row(label, by_split, horizon), flush=True)
    if args.run_dir:
        print("\n".join(run_rows(args.run_dir)) + "\n")
        for ckpt in sorted((Path(args.run_dir) / "stage3").glob("*.ckpt")):
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
