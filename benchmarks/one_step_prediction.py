"""One-step prediction error of stage-3 models against constant velocity, on a run's training trajectories: how
good a starting point ``stage2.model.init: dynamics`` gets (docs/results.md, "Closing the loop").

    python -m benchmarks.one_step_prediction --run_dir runs/demo [--dataset data/tiny]

For every training trajectory and frame t >= 2: the prediction of x_t from frames t-2 and t-1 taken from the ground
truth and from the stage-2 recovered meshes, by constant velocity and by each stage-3 checkpoint of the run; the
error is the vertex RMSE against the ground-truth x_t, in % of the flag size, averaged over frames.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from clods_pl.data.format import read_dataset
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_jobs import DynamicsPrior, TrajectoryJob
from clods_pl.stages.recovery_metrics import flag_size
from clods_pl.stages.run_dir import RunDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", default="runs/demo")
    parser.add_argument("--dataset", default=None, help="default: the run's")
    args = parser.parse_args(argv)
    run = RunDir(args.run_dir)
    ds = read_dataset(args.dataset or run.dataset())
    caches = run.mesh_caches()
    print("| predictor | from GT frames t-2, t-1 (%) | from recovered frames (%) |")
    print("|---|---|---|")
    rows: dict[str, dict[str, list[float]]] = {}
    for source, ckpt in {"constant velocity": None, **run.stage3_checkpoints()}.items():
        prior = None if ckpt is None else DynamicsPrior(str(ckpt))
        errs: dict[str, list[float]] = {"gt": [], "recovered": []}
        for name in ds.names("train"):
            traj = ds.trajectory(name)
            gt = traj.load_gt_verts().numpy()
            size = flag_size(traj.mesh_pos.numpy())
            cache = MeshCache.load(caches[name])
            for kind, verts in (("gt", gt), ("recovered", cache.verts)):
                job = TrajectoryJob(name, traj, cache, [0], traj.num_frames)
                job.cache = SimpleNamespace(verts=verts)  # predict from these frames
                for t in range(2, traj.num_frames):
                    pred = 2 * verts[t - 1] - verts[t - 2] if prior is None else prior.predict(job, t).numpy()
                    errs[kind].append(float(np.sqrt(((pred - gt[t]) ** 2).sum(-1).mean()) / size))
        rows[source] = errs
        label = source if ckpt is None else f"stage-3 model `{source}`"
        print(f"| {label} | {100 * np.mean(errs['gt']):.2f} | {100 * np.mean(errs['recovered']):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
