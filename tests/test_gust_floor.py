"""The gust floor (``clods_pl.data.gust_floor``, ``benchmarks/gust_floor.py``): a generated trajectory simulated
again is its ``gt.npz`` exactly, and its alternatives agree with it up to frame 1 and then part from it."""

from __future__ import annotations

from pathlib import Path

import torch

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import GenerateConfig, generate_dataset
from clods_pl.data.gust_floor import gust_alternatives, one_step_replay, perturbed_replays, regenerate
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


def test_perturbed_replays_err_by_the_given_amount_from_frame_two(tmp_path: Path) -> None:
    """The exact simulator erring like a one-step model: frames 0-1 are the data, frame 2 is off by exactly the
    given RMSE (pinned vertices exact), the error carries on through the velocity; 0 replays the data."""
    ds = read_dataset(generate_dataset(MINI, tmp_path / "ds", progress=False, workers=1))
    gt = ds.trajectory(ds.names("train")[0]).load_gt_verts()
    assert torch.equal(perturbed_replays(MINI, 0, "train", gt.shape[0], 1, 0.0)[0], gt)
    reps = perturbed_replays(MINI, 0, "train", gt.shape[0], 2, 0.01, seed=1)
    assert reps.shape == (2, *gt.shape) and not torch.equal(reps[0], reps[1])
    assert torch.equal(reps[:, :2], gt[:2].expand(2, -1, -1, -1))
    frame2 = ((reps[:, 2] - gt[2]) ** 2).mean(dim=(1, 2)).sqrt()
    assert torch.allclose(frame2, torch.full_like(frame2, 0.01), rtol=1e-4)
    sim, _, _ = regenerate(MINI, 0, "train")
    pinned = sim.free[:, 0] == 0
    assert pinned.any() and torch.allclose(reps[:, :, pinned], gt[:, pinned].expand(2, -1, -1, -1), atol=1e-6)
    last = ((reps[:, -1] - gt[-1]) ** 2).mean(dim=(1, 2)).sqrt()
    assert (last > 0.005).all()  # the velocity error moves the flag on, the constraints do not undo it


def test_one_step_replay_restarts_from_each_ground_truth_frame(tmp_path: Path) -> None:
    """The exact simulator's one-step predictions from ground-truth frames: frame t + 1 from frame t and the velocity
    of frames t - 1, t. Its own wind beats constant velocity; the wind of another trajectory does worse."""
    ds = read_dataset(generate_dataset(MINI, tmp_path / "ds", progress=False, workers=1))
    gt = ds.trajectory(ds.names("train")[0]).load_gt_verts()
    _, params, _ = regenerate(MINI, 0, "train")
    own = one_step_replay(MINI, 0, "train", gt)
    assert own.shape == (gt.shape[0] - 2, *gt.shape[1:])
    assert torch.equal(own, one_step_replay(MINI, 0, "train", gt, params))  # naming its own wind changes nothing
    other, _ = MINI.physics(1000, "train")
    wrong = one_step_replay(MINI, 0, "train", gt, other)

    def rmse(pred: torch.Tensor) -> float:
        return float(((pred - gt[2:]) ** 2).mean().sqrt())

    const_vel = 2 * gt[1:-1] - gt[:-2]
    assert rmse(own) < 0.5 * rmse(const_vel) and rmse(own) < rmse(wrong)
