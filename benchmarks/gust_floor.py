"""How far can any rollout follow the ground truth of the built-in data? The error floor of unknown gusts.

    python -m benchmarks.gust_floor --dataset data/tiny [--samples 8] [--run_dir runs/demo]

Every trajectory of the built-in generator (``clods_pl.data.generate``) blows in gusty wind: a mean wind plus
three sinusoidal gusts with random phases (``clods_pl.data.simulator.wind_at``). A rollout model sees frames 0 and
1 and predicts the rest; nothing in two frames tells it the phases of the gusts to come. This script measures what
that costs a predictor that knows everything else exactly (the simulator, the material, the mean wind, the
state at frames 0 and 1):

1. it re-simulates each test trajectory from its generator seed and checks the copy matches ``gt.npz``;
2. it simulates ``--samples`` alternatives that are identical up to frame 1 and then blow with gusts of other
   phases (the same periods and strength; the wind is continuous at frame 1: w(t) = w_alt(t) - w_alt(t1) + w(t1));
3. it scores them as the evaluation scores a model (``clods_pl.stages.evaluation``: interpolation = frames 2 ..
   train_horizon - 1, extrapolation = the rest):

* **one alternative**: an exact simulator guessing the gusts (the RMSE of a random alternative, averaged);
* **their mean**: the mean of the alternatives, an estimate of the best any predictor of the ground truth from
  frames 0-1 can do on average (a lower bound of sorts: the mean of ``--samples`` draws still carries their noise).

With ``--run_dir``, the run's rollout rows (``eval/metrics.json``) are printed beside them. x1e-3 m.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import GenerateConfig
from clods_pl.data.gust_floor import gust_alternatives
from clods_pl.stages.evaluation import frame_squared_errors, summarize

SPLITS = ("test_viewed", "test_unviewed")
COLUMNS = [(s, k) for s in SPLITS for k in ("interpolation", "extrapolation")]
TABLE_HEAD = (
    "| predictor | Viewed Interp. | Viewed Extrap. | Unviewed Interp. | Unviewed Extrap. |\n|---|---|---|---|---|"
)


def generated_dataset(path: str, train_horizon: int | None) -> tuple[Any, GenerateConfig, int]:
    """The dataset at ``path``, the generator settings it was made with, and the frame where extrapolation starts
    (``train_horizon``, default the training trajectories' length); one line and exit for data not generated here."""
    ds = read_dataset(path)
    generator = ds.info.extra.get("generator")
    if not generator:
        raise SystemExit(f"{path}/dataset.json has no generator settings: only built-in data can be re-simulated")
    horizon = train_horizon or ds.trajectory(ds.names("train")[0]).num_frames
    return ds, GenerateConfig.from_dict(generator), horizon


def trajectory_index(name: str) -> int:
    """The generator's index of trajectory ``name`` (``traj_0006`` -> 6)."""
    return int(re.sub(r"\D", "", name))


def table_row(label: str, cells: list[float | None]) -> str:
    """A Markdown row of the four columns, x1e-3 m."""
    return f"| {label} | " + " | ".join("-" if c is None else f"{1e3 * c:.1f}" for c in cells) + " |"


def summary_row(label: str, by_split: dict[str, list[np.ndarray]], horizon: int) -> str:
    """:func:`table_row` of per-frame MSE arrays per split, summarised as the evaluation does."""
    return table_row(label, [summarize(by_split[s], horizon)[k] for s, k in COLUMNS])


def run_rows(run_dir: str) -> list[str]:
    """The rollout rows of a run (``eval/metrics.json``) as table rows."""
    metrics = json.loads((Path(run_dir) / "eval" / "metrics.json").read_text())
    return [
        table_row(f"{key} ({run_dir})", [method["splits"].get(s, {}).get(k) for s, k in COLUMNS])
        for key, method in metrics["methods"].items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/tiny")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train_horizon", type=int, default=None, help="default: the training trajectories' length")
    ap.add_argument("--run_dir", default=None, help="print this run's eval/metrics.json rows beside the floor")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds, cfg, horizon = generated_dataset(args.dataset, args.train_horizon)
    each_by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    mean_by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for name in ds.names(split):
            gt = ds.trajectory(name).load_gt_verts()
            copy, alts = gust_alternatives(cfg, trajectory_index(name), split, gt.shape[0], args.samples, args.seed)
            mismatch = float((copy - gt).abs().max())
            each = np.stack([frame_squared_errors(a, gt) for a in alts])
            mean = frame_squared_errors(alts.mean(0), gt)
            if mismatch > 1e-4:
                raise SystemExit(f"{name}: the re-simulated copy differs from gt.npz by {mismatch:.2e} m")
            each_by_split[split] += list(each)
            mean_by_split[split].append(mean)
            print(f"{name} ({split}): copy matches gt.npz to {mismatch:.1e} m", flush=True)
    rows = {
        f"one alternative (exact simulator, other gust phases; {args.samples} per trajectory)": each_by_split,
        f"mean of the {args.samples} alternatives": mean_by_split,
    }
    print(f"\nRMSE x1e-3 m (interpolation = frames 2-{horizon - 1}, extrapolation = frames >= {horizon})\n")
    print(TABLE_HEAD)
    for label, by_split in rows.items():
        print(summary_row(label, by_split, horizon))
    if args.run_dir:
        print("\n".join(run_rows(args.run_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
