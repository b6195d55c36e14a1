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

import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import GenerateConfig
from clods_pl.data.gust_floor import gust_alternatives
from clods_pl.stages.evaluation import frame_squared_errors, summarize

SPLITS = ("test_viewed", "test_unviewed")
COLUMNS = [(s, k) for s in SPLITS for k in ("interpolation", "extrapolation")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="data/tiny")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train_horizon", type=int, default=None, help="default: the training trajectories' length")
    ap.add_argument("--run_dir", default=None, help="print this run's eval/metrics.json rows beside the floor")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = read_dataset(args.dataset)
    generator = ds.info.extra.get("generator")
    if not generator:
        raise SystemExit(f"{args.dataset}/dataset.json has no generator settings: only built-in data has gusts to vary")
    cfg = GenerateConfig.from_dict(generator)
    horizon = args.train_horizon or ds.trajectory(ds.names("train")[0]).num_frames
    each_by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    mean_by_split: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for name in ds.names(split):
            index = int(re.sub(r"\D", "", name))
            gt = ds.trajectory(name).load_gt_verts()
            copy, alts = gust_alternatives(cfg, index, split, gt.shape[0], args.samples, args.seed)
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
    print("| predictor | Viewed Interp. | Viewed Extrap. | Unviewed Interp. | Unviewed Extrap. |")
    print("|---|---|---|---|---|")
    for label, by_split in rows.items():
        cells = [summarize(by_split[s], horizon)[k] for s, k in COLUMNS]
        text = " | ".join("-" if c is None else f"{1e3 * c:.1f}" for c in cells)
        print(f"| {label} | {text} |")
    if args.run_dir:
        metrics = json.loads((Path(args.run_dir) / "eval" / "metrics.json").read_text())
        for key, method in metrics["methods"].items():
            cells = [method["splits"].get(s, {}).get(k) for s, k in COLUMNS]
            text = " | ".join("-" if c is None else f"{1e3 * c:.1f}" for c in cells)
            print(f"| {key} ({args.run_dir}) | {text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
