"""Stage-2 recovery error per frame for a few (lr, smoothing) settings on one trajectory: the fine-mesh experiment
of docs/results.md ("Fine meshes").

    python -m benchmarks.stage2_settings --dataset data/fine64 --stage1 runs/fine64/stage1/smgs.ckpt \\
        --frames 1:5 --settings 1.2e-2:0 2.57e-3:2 5e-3:5

Each setting ``LR:SMOOTHING`` recovers the first training trajectory with the demo preset's stage-2 options
(``flag_tiny.yaml``: 120 iterations, plateau patience 15, alpha weight 0.1, velocity start, held-out view 1) into a
temporary cache and prints the vertex error per frame in % of the flag size and the iterations each frame used.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from clods_pl.data.format import read_dataset
from clods_pl.stages.recovery_cli import load_stage1
from clods_pl.stages.recovery_config import RecoveryConfig
from clods_pl.stages.recovery_loop import recover_trajectory
from clods_pl.stages.recovery_metrics import flag_size


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--stage1", required=True, help="stage-1 checkpoint (smgs.ckpt)")
    ap.add_argument("--frames", default="1:5", help="A:B frames to recover")
    ap.add_argument("--settings", nargs="+", default=["1.2e-2:0"], help="LR:SMOOTHING pairs")
    ap.add_argument("--backend", default="cpu")
    a = ap.parse_args(argv)
    ds = read_dataset(a.dataset)
    renderer, digest = load_stage1(a.stage1, "cpu")
    name = ds.names("train")[0]
    traj = ds.trajectory(name)
    size = flag_size(np.asarray(traj.mesh_pos))
    rows = []
    for setting in a.settings:
        lr, smoothing = (float(x) for x in setting.split(":"))
        cfg = RecoveryConfig(
            iterations=120, lr=lr, gamma=1.0, alpha_weight=0.1, init="velocity", plateau_patience=15,
            smoothing=smoothing, backend=a.backend,
        )  # fmt: skip
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            cache = recover_trajectory(name, traj, renderer, Path(tmp) / "c.npz", digest, cfg, [1], a.frames)
            done = cache.frames_done
            start = int(a.frames.split(":")[0] or 0)
            error = np.asarray(cache.gt_metrics["rmse"])[start:done] / size * 100
            row = {
                "lr": lr,
                "smoothing": smoothing,
                "error_pct": np.round(error, 2).tolist(),
                "iterations": np.asarray(cache.iterations)[start:done].tolist(),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        print(row, flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
