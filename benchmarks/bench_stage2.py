"""Stage-2 time per recovered frame: the frame loop of ``clods_pl.stages.recovery`` on a real dataset and stage-1 SMGS.

    python -m benchmarks.bench_stage2 --dataset data/gpu_bench --stage1 runs/gpu_bench/stage1/smgs.ckpt \
        --device cuda --backends gsplat torch          # -> benchmarks/results/stage2_cuda.json

Recovers frames 1..``frames`` of the first ``trajectories`` trajectories of the dataset (train split first), batched
together (``data.batch_size`` in stage 2), with the given iterations (no early stop: every frame pays the full
budget, so numbers compare across backends), into a temporary cache. Reports wall seconds per recovered
trajectory-frame and per Adam iteration, and the mean vertex error vs ground truth (relative to the flag size).

Same meshes as another commit (issue 13: "within 1e-4 m"): ``--save-meshes DIR`` writes the recovered vertices
(``<backend>.npz``, one (frames + 1, V, 3) array per trajectory); run the other commit's code with the same
arguments and ``--compare-meshes DIR`` to report the largest vertex distance between the two (``max_mesh_diff``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.errors import BackendUnavailableError
from clods_pl.stages.recovery_cli import load_stage1
from clods_pl.stages.recovery_config import RecoveryConfig
from clods_pl.stages.recovery_jobs import open_job
from clods_pl.stages.recovery_loop import recover_batch
from clods_pl.stages.recovery_metrics import flag_size

RESULTS = Path(__file__).resolve().parent / "results"


def bench(
    dataset: str,
    stage1: str,
    backend: str,
    device: torch.device,
    trajectories: int,
    frames: int,
    iterations: int,
    holdout: list[int],
    profile: Path | None = None,
    save_meshes: Path | None = None,
    compare_meshes: Path | None = None,
) -> dict:
    ds = read_dataset(dataset)
    avail = [n for split in sorted(ds.info.splits, key=lambda s: s != "train") for n in ds.names(split)]
    names = [avail[i % len(avail)] for i in range(trajectories)]  # more than the dataset has: each again, for timing
    renderer, h = load_stage1(stage1, device)
    config = RecoveryConfig(
        iterations=iterations, plateau_patience=iterations + 1, min_iterations=iterations, backend=backend
    )
    with tempfile.TemporaryDirectory() as tmp:
        warm = RecoveryConfig(iterations=1, plateau_patience=2, min_iterations=1, backend=backend)
        job = open_job(names[0], ds.trajectory(names[0]), Path(tmp) / "warm.npz", h, holdout, "1:2", True, config=warm)
        recover_batch([job], renderer, warm, device)  # first use: Numba loads its cache, gsplat JIT-compiles
        jobs = [
            open_job(
                n, ds.trajectory(n), Path(tmp) / f"{i}_{n}.npz", h, holdout, f"1:{frames + 1}", True, config=config
            )
            for i, n in enumerate(names)
        ]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        recover_batch(jobs, renderer, config, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        if profile is not None:  # one more frame of 10 iterations under the profiler: where the time goes
            cfg = RecoveryConfig(iterations=10, plateau_patience=11, min_iterations=10, backend=backend)
            jobs2 = [
                open_job(n, ds.trajectory(n), Path(tmp) / f"p_{i}_{n}.npz", h, holdout, "1:2", True, config=cfg)
                for i, n in enumerate(names)
            ]
            acts = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
            )
            with torch.profiler.profile(activities=acts) as prof:
                recover_batch(jobs2, renderer, cfg, device)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=50)
            profile.parent.mkdir(parents=True, exist_ok=True)
            profile.write_text(f"{backend}, {len(names)} trajectories, 1 frame x 10 iterations\n{table}\n")
            print(table)
        meshes = {job.name: np.asarray(job.cache.verts[: frames + 1]) for job in jobs}
        errs = []
        for job in jobs:
            rmse = job.cache.gt_metrics.get("rmse")
            if rmse is not None:
                errs.append(float(np.mean(rmse[1 : frames + 1])) / flag_size(np.asarray(job.traj.mesh_pos)))
    traj0 = ds.trajectory(names[0])
    n_frames = frames * len(names)
    extra = {}
    if save_meshes is not None:
        save_meshes.mkdir(parents=True, exist_ok=True)
        np.savez(save_meshes / f"{backend}.npz", **meshes)
    if compare_meshes is not None:
        other = np.load(compare_meshes / f"{backend}.npz")
        extra["max_mesh_diff"] = max(float(np.abs(meshes[n] - other[n]).max()) for n in names)
    return {
        "backend": backend,
        "device": str(device),
        "trajectories": len(names),
        "distinct_trajectories": len(set(names)),
        "frames_each": frames,
        "iterations": iterations,
        "vertices": int(np.asarray(traj0.verts0).shape[0]),
        "views": len(traj0.cameras) - len(holdout),
        "wall_s": wall,
        "s_per_frame": wall / n_frames,
        "ms_per_iteration": 1e3 * wall / (frames * iterations),
        "mean_rel_error": float(np.mean(errs)) if errs else None,
        **extra,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--stage1", required=True, help="stage-1 checkpoint (smgs.ckpt)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backends", nargs="+", default=["torch"])
    ap.add_argument(
        "--trajectories", type=int, nargs="+", default=[2], help="batch sizes (more than the dataset has: reused)"
    )
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--holdout", type=int, nargs="*", default=[0])
    ap.add_argument("--profile", action="store_true", help="also profile 10 iterations -> stage2_<device>_profile.txt")
    ap.add_argument("--out", default=None)
    ap.add_argument("--save-meshes", type=Path, default=None, help="write the recovered vertices to DIR/<backend>.npz")
    ap.add_argument("--compare-meshes", type=Path, default=None, help="largest vertex distance to DIR/<backend>.npz")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    rows = []
    for backend in a.backends:
        for b in a.trajectories:
            try:
                prof = RESULTS / f"stage2_{device.type}_{backend}_b{b}_profile.txt" if a.profile else None
                row = bench(
                    a.dataset, a.stage1, backend, device, b, a.frames, a.iterations, a.holdout, prof,
                    a.save_meshes, a.compare_meshes,
                )  # fmt: skip
            except BackendUnavailableError as exc:
                row = {"backend": backend, "unavailable": str(exc)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    meta = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "dataset": a.dataset,
    }
    out = Path(a.out) if a.out else RESULTS / f"stage2_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
