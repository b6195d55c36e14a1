"""Stage-3 training recipes side by side: rollout RMSE of MeshGraphNets trained on ground-truth meshes, per recipe and
seed, against constant velocity (docs/results.md, "Stage 3: rollouts that hold together").

    python -m benchmarks.stage3_recipe --dataset data/tiny --seeds 0 1 [--recipes plain yaw warmup both]

Every recipe uses the demo's model (latent 64, 6 blocks, rollout length 8, lr 1e-3, batch 4) and about the same
training time on one thread; they differ only in the two options of issue 14's stage-3 work:

* ``plain``: 250 steps of the rollout-8 loss (the demo before them);
* ``yaw``: the same, with ``data.yaw_augment`` (windows turned about the up axis);
* ``warmup``: ``model.one_step_warmup`` 800 one-step steps, then 100 rollout-8 steps;
* ``both``: the warm-up and the augmentation (the demo's preset now);
* ``long_warmup``, ``more_rollout``: ``both`` with twice the one-step steps (~2x the time), or with 500 rollout
  steps after the warm-up (~2.6x): what the time the worker processes free could buy.

Prints one Markdown row per (recipe, seed) and the mean per recipe: RMSE x1e-3 world units on the test splits
(interpolation = frames < ``--train_horizon``, extrapolation = the rest), and each over constant velocity.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import numpy as np
import torch

from clods_pl.data.format import read_dataset
from clods_pl.stages.dynamics import DynamicsModule
from clods_pl.stages.dynamics_data import DynamicsDataModule
from clods_pl.stages.evaluation import evaluate_rollouts

RECIPES: dict[str, tuple[int, int, bool]] = {  # name: (max_steps, one_step_warmup, yaw_augment)
    "plain": (250, 0, False),
    "yaw": (250, 0, True),
    "warmup": (900, 800, False),
    "both": (900, 800, True),
    "long_warmup": (1700, 1600, True),  # twice the one-step steps, the same 100 rollout steps
    "more_rollout": (1300, 800, True),  # the preset's warm-up, then 500 rollout steps instead of 100
}
SPLITS = ("test_viewed", "test_unviewed")


def columns(result: dict) -> list[float]:
    """Viewed interp., viewed extrap., unviewed interp., unviewed extrap. RMSE in x1e-3 world units."""
    return [result["splits"][s][k] * 1e3 for s in SPLITS for k in ("interpolation", "extrapolation")]


def train(dataset: str, recipe: str, seed: int) -> tuple[DynamicsModule, float]:
    steps, warmup, yaw = RECIPES[recipe]
    L.seed_everything(seed, verbose=False)
    module = DynamicsModule(
        latent=64,
        blocks=6,
        rollout_length=8,
        noise_std=0.003,
        normalizer_steps=20,
        lr=1e-3,
        lr_min=1e-5,
        lr_decay_steps=2000,
        one_step_warmup=warmup,
    )
    data = DynamicsDataModule(dataset, source="gt", windows_per_epoch=64, batch_size=4, yaw_augment=yaw)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return module, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="data/tiny")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--train_horizon", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ds = read_dataset(args.dataset)
    cv = columns(evaluate_rollouts(None, ds, SPLITS, args.train_horizon))
    print("| recipe | seed | train s | viewed interp. | viewed extrap. | unviewed interp. | unviewed extrap. |")
    print("|---|---|---|---|---|---|---|")
    print("| const. velocity | | | " + " | ".join(f"{c:.1f}" for c in cv) + " |")
    for recipe in args.recipes:
        rows = []
        for seed in args.seeds:
            module, seconds = train(args.dataset, recipe, seed)
            row = columns(evaluate_rollouts(module.model, ds, SPLITS, args.train_horizon))
            rows.append(row)
            print(f"| {recipe} | {seed} | {seconds:.0f} | " + " | ".join(f"{c:.1f}" for c in row) + " |", flush=True)
        mean = np.mean(rows, axis=0)
        cells = " | ".join(f"**{m:.1f}** ({m / c:.2f})" for m, c in zip(mean, cv))
        print(f"| {recipe}: mean (/ const. vel.) | | | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
