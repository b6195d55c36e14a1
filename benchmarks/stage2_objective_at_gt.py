"""Stage 2's objective at the ground-truth mesh against at the meshes it recovered: is the truth its minimum?

    python -m benchmarks.stage2_objective_at_gt --run_dir runs/small [--traj traj_0000 traj_0002 traj_0005]

For every frame t >= 1 of the given training trajectories: the stage-2 frame loss (photometric L1 + alpha + gamma x
edge strain, with the settings each mesh cache records) of the ground-truth mesh, of the run's plain stage-2 mesh and
of each ``clods-pl refine`` round's mesh, all against the same multi-view target. If the recovered meshes score lower
than the truth, the objective is minimised away from it and no better start can take stage 2 below that floor
(docs/results.md, "Closing the loop").
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_cli import load_stage1
from clods_pl.stages.recovery_config import RecoveryConfig
from clods_pl.stages.recovery_jobs import open_job
from clods_pl.stages.recovery_losses import frame_loss
from clods_pl.stages.run_dir import MESH_CACHE_DIR, RunDir


def config_of(cache: MeshCache) -> tuple[RecoveryConfig, list[int]]:
    """The ``RecoveryConfig`` and held-out views a mesh cache was recovered with."""
    model = {k[len("model.") :]: v for k, v in cache.settings.items() if k.startswith("model.")}
    model["background"] = tuple(model["background"])
    model["dynamics_checkpoint"] = None  # a digest in the cache; the loss does not use it
    return RecoveryConfig(**model), list(cache.settings.get("data.holdout_views", []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", default="runs/small")
    ap.add_argument("--traj", nargs="+", default=["traj_0000", "traj_0002", "traj_0005"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = RunDir(args.run_dir)
    ds = read_dataset(run.dataset())
    renderer, digest = load_stage1(str(run.stage1_checkpoint()))
    sources = {"plain stage 2": Path(args.run_dir) / "stage2" / MESH_CACHE_DIR}
    for d in sorted((Path(args.run_dir) / "refine").glob("round*/stage2/" + MESH_CACHE_DIR)):
        sources[f"refine {d.parts[-3]}"] = d
    losses: dict[str, list[float]] = {"ground truth": [], **{k: [] for k in sources}}
    for name in args.traj:
        caches = {k: MeshCache.load(d / f"{name}.npz") for k, d in sources.items()}
        config, holdout = config_of(caches["plain stage 2"])
        with tempfile.TemporaryDirectory() as tmp:
            job = open_job(name, ds.trajectory(name), Path(tmp) / "x.npz", digest, holdout, None, True, config=config)
            cams, bg = job.traj.cameras[job.views], torch.as_tensor(config.background)
            meshes = {"ground truth": job.gt_verts.numpy(), **{k: c.verts for k, c in caches.items()}}
            for t in range(1, job.gt_verts.shape[0]):
                target = job.target(t)
                for key, verts in meshes.items():
                    with torch.no_grad():
                        total, _, _ = frame_loss(
                            renderer, torch.as_tensor(verts[t]), cams, target, bg, job.edges, job.rest, config
                        )
                    losses[key].append(float(total))
    gt = np.asarray(losses["ground truth"])
    print("| mesh | mean stage-2 loss | frames where the truth scores higher |")
    print("|---|---|---|")
    for key, values in losses.items():
        v = np.asarray(values)
        higher = "-" if key == "ground truth" else f"{int((gt > v).sum())} / {len(v)}"
        print(f"| {key} | {v.mean():.6f} | {higher} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
