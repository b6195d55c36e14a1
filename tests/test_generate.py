"""Dataset generator: a small dataset round-trips through the reader, bit-for-bit reproducible; presets in sync."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from clods_pl.data.format import read_dataset
from clods_pl.data.generate import PRESETS, GenerateConfig, generate_dataset

ROOT = Path(__file__).resolve().parents[1]
MINI = GenerateConfig(name="mini", splits={"train": 1, "test_unviewed": 1}, num_frames=4, num_views=2,
                      resolution=24, grid=(5, 4), substeps=3, iterations=8, supersample=2)


def test_generate_reads_back_and_is_reproducible(tmp_path: Path) -> None:
    a = generate_dataset(MINI, tmp_path / "a", progress=False)
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
    assert (a / "traj_0000/physics.json").is_file()


def test_preset_yaml_files_match_code() -> None:
    for name, cfg in PRESETS.items():
        raw = yaml.safe_load((ROOT / "experiments" / "data" / f"{name}.yaml").read_text())
        assert GenerateConfig.from_dict(raw) == cfg, name
    assert PRESETS["tiny"].num_trajectories == 4 and PRESETS["tiny"].resolution == 64
