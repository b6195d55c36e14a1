"""Stage-1 appearance study: held-out PSNR of the tiny demo's stage 1 under the settings that lead from the old
preset to the current one (docs/results.md, "What capped stage 1").

    python -m benchmarks.stage1_appearance [--dataset data/tiny] [--out benchmarks/results/stage1_appearance.json]
                                           [--only "per pixel"]

Every variant runs ``clods-pl stage1`` with ``experiments/flag_tiny.yaml`` plus its overrides in a fresh run
directory (one thread), then renders the fitted SMGS on frame 0 of each training trajectory in the held-out view
and reports PSNR over the whole image, PSNR over the pixels the cloth fully covers, and the mean rendered alpha
there. The dataset must have the held-out view 1 (the tiny preset: 8 views on two elevation rings).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from clods_pl.data.format import read_dataset
from clods_pl.pipeline.cli import main as cli
from clods_pl.render.types import composite
from clods_pl.smgs.io import load_smgs
from clods_pl.stages.run_dir import STAGE1_CKPT

OLD = [
    "--stage1.model.antialiased",
    "false",
    "--stage1.model.gaussians_per_face",
    "4",
    "--stage1.model.init_log_scale",
    "0.0",
    "--stage1.model.coverage_scale",
    "null",
    "--stage1.model.lr_scale",
    "0.01",
    "--stage1.model.backend",
    "torch",
]
VARIANTS = {
    "old preset (classic 3DGS, 4 per face)": OLD,
    "old preset, 12 epochs": OLD + ["--stage1.trainer.max_epochs", "12"],
    "+ antialiased": OLD + ["--stage1.model.antialiased", "true"],
    "+ antialiased, 16 per face": OLD
    + ["--stage1.model.antialiased", "true", "--stage1.model.gaussians_per_face", "16"],
    "+ antialiased, 16 per face, small fixed scales (one pass)": OLD
    + [
        "--stage1.model.antialiased",
        "true",
        "--stage1.model.gaussians_per_face",
        "16",
        "--stage1.model.init_log_scale",
        "-0.5",
        "--stage1.model.lr_scale",
        "0.0",
    ],
    "+ antialiased, 16 per face, small fixed scales, coverage pass x2": OLD
    + [
        "--stage1.model.antialiased",
        "true",
        "--stage1.model.gaussians_per_face",
        "16",
        "--stage1.model.init_log_scale",
        "-0.5",
        "--stage1.model.lr_scale",
        "0.0",
        "--stage1.model.coverage_scale",
        "2.0",
    ],
    "scales learned, lr 0.005; cpu backend, 1 sample per pixel (before supersampling)": [
        "--stage1.model.supersample",
        "1",
    ],
    "current preset (+ 2 x 2 samples per pixel)": [],
    "current preset, 3 x 3 samples per pixel": ["--stage1.model.supersample", "3"],
    "current preset, 4 x 4 samples per pixel": ["--stage1.model.supersample", "4"],
}


def held_out_metrics(run_dir: Path, dataset: str, view: int) -> dict[str, float]:
    smgs, settings = load_smgs(run_dir / "stage1" / STAGE1_CKPT)
    ds = read_dataset(dataset)
    bg = torch.tensor(settings.background)
    out: dict[str, list[float]] = {"psnr": [], "psnr_cloth": [], "alpha_cloth": []}
    for name in ds.names("train"):
        traj = ds.trajectory(name)
        images = traj.image_tensor(0)[[view]]
        with torch.no_grad():
            r = smgs.render(traj.verts0, traj.cameras[[view]], bg, settings.backend)
        target = composite(images, bg)
        se = ((r.rgb.clamp(0, 1) - target) ** 2).mean(-1)[0]
        cloth = images[0, ..., 3] > 0.99
        out["psnr"].append(-10 * math.log10(float(se.mean())))
        out["psnr_cloth"].append(-10 * math.log10(float(se[cloth].mean())))
        out["alpha_cloth"].append(float(r.alpha[0, ..., 0][cloth].mean()))
    return {k: sum(v) / len(v) for k, v in out.items()} | {"per_trajectory_psnr": out["psnr"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="data/tiny")
    parser.add_argument("--view", type=int, default=1, help="the held-out view")
    parser.add_argument("--out", default="benchmarks/results/stage1_appearance.json")
    parser.add_argument("--only", default=None, help="run the variants whose label contains this text")
    args = parser.parse_args(argv)
    results = {}
    variants = {k: v for k, v in VARIANTS.items() if args.only is None or args.only in k}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides) in enumerate(variants.items()):
            run = Path(tmp) / f"v{i}"
            t0 = time.perf_counter()
            code = cli(
                [
                    "stage1",
                    "--config",
                    "experiments/flag_tiny.yaml",
                    "--dataset",
                    args.dataset,
                    "--run_dir",
                    str(run),
                    "--threads",
                    "1",
                    "--stage1.data.holdout_views",
                    f"[{args.view}]",
                    *overrides,
                ]
            )
            if code != 0:
                print(f"[bench] {label}: stage1 failed ({code})")
                return 1
            results[label] = held_out_metrics(run, args.dataset, args.view) | {
                "seconds": time.perf_counter() - t0,
                "overrides": overrides,
            }
            r = results[label]
            print(
                f"[bench] {label}: held-out PSNR {r['psnr']:.2f} dB (cloth pixels {r['psnr_cloth']:.2f} dB, "
                f"alpha there {r['alpha_cloth']:.3f}) in {r['seconds']:.0f} s",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"dataset": args.dataset, "held_out_view": args.view, "variants": results}, indent=2)
    )
    print("| stage-1 setting | held-out PSNR (dB) | on cloth pixels (dB) | alpha on cloth | time (s) |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['psnr']:.2f} | {r['psnr_cloth']:.2f} | {r['alpha_cloth']:.3f} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
