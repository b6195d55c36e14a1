"""Dataset generator: a small dataset round-trips through the reader, bit-for-bit reproducible; presets in sync."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import PRESETS, GenerateConfig, default_cameras, generate_dataset, render_sequence
from clods_pl.data.simulator import FlagMesh

ROOT = Path(__file__).resolve().parents[1]
MINI = GenerateConfig(
    name="mini",
    splits={"train": 1, "test_unviewed": 1},
    num_frames=4,
    num_views=2,
    resolution=24,
    grid=(5, 4),
    substeps=3,
    iterations=8,
    supersample=2,
)


def test_generate_reads_back_and_is_reproducible(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    a = generate_dataset(MINI, tmp_path / "a", progress=False)
    assert torch.get_num_threads() == threads  # the generator's thread setting does not leak
    b = generate_dataset(MINI, tmp_path / "b", progress=False)
    ds = read_dataset(a)
    assert ds.names("train") == ["traj_0000"] and ds.names("test_unviewed") == ["traj_0001"]
    tr = ds.trajectory("traj_0001")
    assert tr.num_frames == 4 and len(tr.cameras) == 2 and tr.verts0.shape == (20, 3)
    gt = tr.load_gt_verts()
    assert np.allclose(gt[0].numpy(), tr.verts0.numpy())
    frames = tr.load_frames()
    assert frames.shape == (4, 2, 24, 24, 4) and frames[..., 3].max() == 255  # the cloth is in view
    for rel in ("traj_0000/gt.npz", "traj_0001/images/view_01/00003.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    az = {n: json.loads((a / n / "physics.json").read_text())["wind_azimuth_deg"] for n in ("traj_0000", "traj_0001")}
    lo, hi = MINI.viewed_azimuth_deg
    assert lo <= az["traj_0000"] <= hi  # training winds from the viewed range
    assert abs(az["traj_0001"]) >= MINI.unviewed_azimuth_deg[0] > hi  # unviewed: winds training never saw


def test_default_cameras_frame_the_cloth() -> None:
    mesh = FlagMesh.make(4, 3, 1.0, 0.7, 0.3)
    verts = torch.stack([mesh.rest, mesh.rest + torch.tensor([0.0, 0.4, -0.3])])  # (T=2, V, 3)
    cams = default_cameras(verts, 3, 40, 30)
    pix, z = cams.project(verts.reshape(-1, 3))
    assert bool((z > 0).all()) and bool((pix >= 0).all()) and bool((pix[..., 0] <= 40).all())
    assert bool((pix[..., 1] <= 30).all())
    frames = render_sequence(verts, mesh.faces, mesh.mesh_pos, cams, renderer="torch", supersample=1, progress=False)
    assert frames.shape == (2, 3, 30, 40, 4) and frames.dtype == np.uint8
    assert ((frames[..., 3] > 0).reshape(6, -1).mean(-1) > 0.03).all()  # every view sees a fair share of cloth


def test_preset_yaml_files_match_code() -> None:
    for name, cfg in PRESETS.items():
        raw = yaml.safe_load((ROOT / "experiments" / "data" / f"{name}.yaml").read_text())
        assert GenerateConfig.from_dict(raw) == cfg, name
    assert PRESETS["tiny"].num_trajectories == 8 and PRESETS["tiny"].resolution == 64


def test_test_trajectories_can_be_longer_than_training_ones(tmp_path) -> None:
    """``test_num_frames``: the test splits get more frames, so evaluation has frames beyond the training length."""
    from clods_pl.data.format import read_dataset
    from clods_pl.errors import ClodsError

    cfg = GenerateConfig(
        name="ext",
        splits={"train": 1, "test_viewed": 1},
        num_frames=3,
        test_num_frames=5,
        num_views=2,
        resolution=16,
        grid=(4, 3),
        substeps=2,
        iterations=2,
        supersample=1,
    )
    ds = read_dataset(generate_dataset(cfg, tmp_path / "ds", progress=False))
    assert ds.trajectory(ds.names("train")[0]).num_frames == 3
    test = ds.trajectory(ds.names("test_viewed")[0])
    assert test.num_frames == 5 and test.load_gt_verts().shape[0] == 5
    with pytest.raises(ClodsError, match="test_num_frames=2"):
        GenerateConfig.from_dict({"test_num_frames": 2})


def test_diffuse_out_of_range_is_refused_in_one_line() -> None:
    from clods_pl.errors import ClodsError

    assert GenerateConfig.from_dict({"diffuse": 0.0}).diffuse == 0.0
    with pytest.raises(ClodsError, match=r"diffuse=1.5; the Lambert share of the light must be in \[0, 1\]"):
        GenerateConfig.from_dict({"diffuse": 1.5})


def test_steady_wind_changes_only_the_gusts_and_the_swing() -> None:
    """``gustiness`` and ``lateral_swing_deg`` ranges of (0, 0) give a wind constant in time; every other physical
    parameter of every trajectory is the one the default ranges draw (the same random draws)."""
    from clods_pl.data.simulator import wind_at

    steady = GenerateConfig.from_dict({**MINI.to_dict(), "gustiness": [0, 0], "lateral_swing_deg": [0, 0]})
    for index, split in ((0, "train"), (1, "test_unviewed")):
        gusty, _ = MINI.physics(index, split)
        calm, _ = steady.physics(index, split)
        assert gusty.gustiness > 0.1 and gusty.lateral_swing_deg > 1.0
        assert calm.gustiness == 0.0 and calm.lateral_swing_deg == 0.0
        others = {k: v for k, v in gusty.to_dict().items() if k not in ("gustiness", "lateral_swing_deg")}
        assert {k: v for k, v in calm.to_dict().items() if k in others} == others
        winds = torch.stack([wind_at(calm, t) for t in (0.0, 0.37, 1.1, 2.9)])
        assert torch.allclose(winds, winds[:1].expand_as(winds))
        gusts = torch.stack([wind_at(gusty, t) for t in (0.0, 0.37, 1.1, 2.9)])
        assert float((gusts - gusts[:1]).abs().max()) > 0.1


def test_wind_ranges_out_of_order_are_refused_in_one_line() -> None:
    from clods_pl.errors import ClodsError

    with pytest.raises(ClodsError, match=r"gustiness=\[0.6, 0.2\]; give a range \[low, high\] with 0 <= low <= high"):
        GenerateConfig.from_dict({"gustiness": [0.6, 0.2]})
    with pytest.raises(ClodsError, match=r"lateral_swing_deg=\[-5, 5\]"):
        GenerateConfig.from_dict({"lateral_swing_deg": [-5, 5]})


def test_shared_conditions_give_every_trajectory_the_same_physics_but_its_own_start() -> None:
    """`shared_conditions`: trajectory 0's wind and material for all; test_unviewed its own wind direction (from the
    unviewed range); each its own pre-roll (start)."""
    cfg = GenerateConfig(shared_conditions=True, gustiness=(0.0, 0.0), lateral_swing_deg=(0.0, 0.0))
    p0, p1 = (cfg.physics(i, "train")[0] for i in (0, 1))
    unviewed = cfg.physics(2, "test_unviewed")[0]
    own = GenerateConfig(gustiness=(0.0, 0.0), lateral_swing_deg=(0.0, 0.0)).physics(1, "train")[0]
    assert p1.preroll_s == own.preroll_s != p0.preroll_s
    assert replace(p1, preroll_s=p0.preroll_s) == p0
    assert abs(unviewed.wind_azimuth_deg) >= 45.0 and unviewed.wind_speed == p0.wind_speed
    assert own.wind_speed != p0.wind_speed  # without the setting, each trajectory draws its own
