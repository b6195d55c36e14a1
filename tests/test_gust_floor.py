"""The gust floor (``clods_pl.data.gust_floor``, ``benchmarks/gust_floor.py``): a generated trajectory simulated
again is its ``gt.npz`` exactly, and its alternatives agree with it up to frame 1 and then part from it."""

from __future__ import annotations

from pathlib import Path

import torch

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import GenerateConfig, generate_dataset
from clods_pl.data.gust_floor import gust_alternatives, regenerate
from clods_pl.data.simulator import wind_at

MINI = GenerateConfig(
    name="mini",
    splits={"train": 1, "test_viewed": 1, "test_unviewed": 1},
    num_frames=6,
    num_views=2,
    resolution=16,
    grid=(5, 4),
    substeps=4,
    iterations=4,
    supersample=1,
    seed=3,
)


def test_simulator_wind_override_with_the_same_wind_changes_nothing():
    sim, params, g = regenerate(MINI, 0, "train")
    start = g.get_state()
    a = sim.simulate(params, 4, torch.Generator().set_state(start))
    b = sim.simulate(params, 4, torch.Generator().set_state(start), wind=lambda t: wind_at(params, t))
    assert torch.equal(a, b)


def test_gust_alternatives_copy_the_data_then_part_after_frame_one(tmp_path: Path) -> None:
    ds = read_dataset(generate_dataset(MINI, tmp_path / "ds", progress=False, workers=1))
    for index, name in enumerate(ds.names("train") + ds.names("test_viewed") + ds.names("test_unviewed")):
        split = ("train", "test_viewed", "test_unviewed")[index]
        gt = ds.trajectory(name).load_gt_verts()
        copy, alts = gust_alternatives(MINI, index, split, gt.shape[0], samples=2, seed=0)
        assert torch.equal(copy, gt), name  # the generator's draws, replayed in its order
        assert alts.shape == (2, *gt.shape)
        assert torch.equal(alts[:, :2], gt[:2].expand(2, -1, -1, -1))  # what a model sees is the same
        assert (alts[:, -1] - gt[-1]).abs().max() > 1e-4  # the gusts after it are not
        assert not torch.equal(alts[0], alts[1])
