"""Dataset writer/reader round trip and one clear error per kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clods_pl.data.format import DatasetInfo, read_dataset
from clods_pl.data.writer import write_dataset_info, write_trajectory
from clods_pl.errors import DatasetError
from clods_pl.geometry import NodeType, grid_mesh, ring_cameras

T, C, S = 3, 2, 16


def _write(root: Path, name: str = "traj_000", gt: bool = True, handles: bool = True) -> None:
    mesh_pos, faces = grid_mesh(3, 3)
    V = mesh_pos.shape[0]
    node_type = torch.zeros(V, dtype=torch.int64)
    node_type[[0, 3, 6]] = int(NodeType.HANDLE)
    verts0 = torch.cat([mesh_pos, torch.zeros(V, 1)], 1)
    gt_verts = verts0.expand(T, V, 3) + torch.arange(T).view(T, 1, 1) * 0.01
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(T, C, S, S, 4), dtype=np.uint8)
    write_trajectory(
        root,
        name,
        ring_cameras(C, 2.0, width=S, height=S),
        frames,
        faces,
        mesh_pos,
        node_type,
        verts0,
        gt_verts=gt_verts if gt else None,
        handle_pos=gt_verts[:, [0, 3, 6]] if handles else None,
        physics={"wind": 1.0},
    )


@pytest.fixture
def ds_root(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    _write(root)
    write_dataset_info(root, DatasetInfo(name="t", dt=0.02, splits={"train": ["traj_000"]}))
    return root


def test_round_trip(ds_root: Path) -> None:
    ds = read_dataset(ds_root)
    assert ds.names("train") == ["traj_000"]
    tr = ds.trajectory("traj_000")
    assert tr.num_frames == T and len(tr.cameras) == C
    frames = tr.load_frames()
    assert frames.shape == (T, C, S, S, 4) and frames.dtype == np.uint8
    expect = np.random.default_rng(0).integers(0, 256, size=(T, C, S, S, 4), dtype=np.uint8)
    assert np.array_equal(frames, expect)
    img = tr.image_tensor(1)
    assert img.shape == (C, S, S, 4) and float(img.max()) <= 1.0
    gt = tr.load_gt_verts()
    assert gt.shape == (T, 9, 3) and torch.allclose(gt[0], tr.verts0)
    assert tr.handle_pos is not None and tr.handle_pos.shape == (T, 3, 3)
    assert tr.faces.dtype == torch.int64 and tr.node_type.tolist().count(int(NodeType.HANDLE)) == 3
    ref = ring_cameras(C, 2.0, width=S, height=S)
    assert torch.allclose(tr.cameras.w2c, ref.w2c, atol=1e-5)


def _expect(root: Path, match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        read_dataset(root)


def test_missing_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    _expect(tmp_path / "x", "dataset.json: missing")


def test_missing_folder(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", "does not exist")


def test_unknown_format_version(ds_root: Path) -> None:
    p = ds_root / "dataset.json"
    d = json.loads(p.read_text())
    d["version"] = 99
    p.write_text(json.dumps(d))
    _expect(ds_root, "unsupported format version 99")
    d["version"] = 1
    d["format"] = "other"
    p.write_text(json.dumps(d))
    _expect(ds_root, "unknown format 'other'")


def test_listed_trajectory_missing(ds_root: Path) -> None:
    write_dataset_info(ds_root, DatasetInfo(name="t", dt=0.02, splits={"train": ["traj_000", "traj_001"]}))
    _expect(ds_root, "traj_001: trajectory listed")


def test_missing_view(ds_root: Path) -> None:
    shutil.rmtree(ds_root / "traj_000" / "images" / "view_01")
    _expect(ds_root, "view_01: missing view folder")


def test_frame_count_mismatch(ds_root: Path) -> None:
    (ds_root / "traj_000" / "images" / "view_01" / "00002.png").unlink()
    _expect(ds_root, r"different frame counts \(view_00=3, view_01=2\)")


def test_faces_past_v(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "mesh.npz"
    with np.load(p) as z:
        d = dict(z)
    d["faces"][0, 0] = 42
    np.savez(p, **d)
    _expect(ds_root, "faces index vertex 42 but there are only V=9")


@pytest.mark.parametrize("key,fname", [("verts0", "mesh.npz"), ("handle_pos", "mesh.npz"), ("verts", "gt.npz")])
def test_nan_vertices(ds_root: Path, key: str, fname: str) -> None:
    p = ds_root / "traj_000" / fname
    with np.load(p) as z:
        d = dict(z)
    d[key].reshape(-1)[4] = np.nan
    np.savez(p, **d)
    _expect(ds_root, f"'{key}' contains 1 NaN/inf")  # gt.npz too: at read time, before any stage runs


def test_non_square_image(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "images" / "view_00" / "00000.png"
    Image.fromarray(np.zeros((16, 12, 4), np.uint8), "RGBA").save(p)
    _expect(ds_root, "image is 12x16, the format needs square images")


def test_wrong_size_image(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "images" / "view_00" / "00002.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(p)
    _expect(ds_root, "image is 8x8 but the cameras say 16x16")


def test_rgb_without_alpha(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "images" / "view_00" / "00000.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(p)
    _expect(ds_root, "needs RGBA")


def test_cameras_without_intrinsics(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "transforms.json"
    d = json.loads(p.read_text())
    for fr in d["frames"]:
        fr.pop("fl_y")
    d.pop("fl_y", None)
    p.write_text(json.dumps(d))
    _expect(ds_root, "transforms.json: frame 0 has no 'fl_y'")


def test_gt_length_mismatch(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "gt.npz"
    with np.load(p) as z:
        v = z["verts"]
    np.savez(p, verts=v[:2])
    _expect(ds_root, "has 2 frames but the images have 3")  # at read time


def test_no_gt_is_clear(tmp_path: Path) -> None:
    _write(tmp_path, gt=False, handles=False)
    write_dataset_info(tmp_path, DatasetInfo(name="t", dt=0.02, splits={"test_unviewed": ["traj_000"]}))
    tr = read_dataset(tmp_path).trajectory("traj_000")
    assert not tr.has_gt and tr.handle_pos is None
    with pytest.raises(DatasetError, match="no ground-truth meshes"):
        tr.load_gt_verts()


def test_unknown_split_is_clear(ds_root: Path) -> None:
    with pytest.raises(DatasetError, match="no split 'val'"):
        read_dataset(ds_root).names("val")


# ----- issue 11: inputs that used to give silently wrong results or late failures --------------------------------
def test_rgb_middle_frame_is_refused_at_read_and_at_decode(ds_root: Path) -> None:
    """A middle frame saved as RGB used to be decoded with alpha = 255 everywhere."""
    p = ds_root / "traj_000" / "images" / "view_01" / "00001.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(p)
    _expect(ds_root, r"view_01/00001.png: image is RGB, the format needs RGBA")
    tr = read_dataset(ds_root, validate=False).trajectory  # decode path too (a file replaced after validation)
    with pytest.raises(DatasetError, match="needs RGBA"):
        Image.fromarray(np.zeros((16, 16, 4), np.uint8), "RGBA").save(p)
        t = tr("traj_000")
        Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(p)
        t.load_frame(1)


def test_gap_in_frame_numbering_and_stray_file(ds_root: Path) -> None:
    view = ds_root / "traj_000" / "images" / "view_00"
    (view / "00002.png").rename(view / "00007.png")
    for v in ("view_01",):
        (ds_root / "traj_000" / "images" / v / "00002.png").rename(ds_root / "traj_000" / "images" / v / "00007.png")
    _expect(ds_root, r"missing \['00002.png'\], unexpected \['00007.png'\]")
    for v in ("view_00", "view_01"):
        (ds_root / "traj_000" / "images" / v / "00007.png").rename(ds_root / "traj_000" / "images" / v / "00002.png")
        view = ds_root / "traj_000" / "images" / v
        shutil.copy(view / "00000.png", view / "._00003.png")
    _expect(ds_root, r"unexpected \['._00003.png'\] \(remove or rename them\)")


def test_no_normal_node_is_refused(tmp_path: Path) -> None:
    """Every node a HANDLE made every method's RMSE 0 (a vacuous evaluation) and the run 'succeeded'."""
    root = tmp_path / "ds"
    _write(root)
    mesh = dict(np.load(root / "traj_000" / "mesh.npz"))
    mesh["node_type"] = np.full_like(mesh["node_type"], int(NodeType.HANDLE))
    mesh.pop("handle_pos")
    np.savez(root / "traj_000" / "mesh.npz", **mesh)
    write_dataset_info(root, DatasetInfo(name="t", dt=0.02, splits={"train": ["traj_000"]}))
    _expect(root, "node_type has no NORMAL")


def test_trajectory_in_two_splits_is_refused(ds_root: Path) -> None:
    write_dataset_info(
        ds_root, DatasetInfo(name="t", dt=0.02, splits={"train": ["traj_000"], "test_viewed": ["traj_000"]})
    )
    _expect(ds_root, "trajectory 'traj_000' is in splits '(train|test_viewed)' and '(train|test_viewed)'")


def test_truncated_png_is_refused_at_read(ds_root: Path) -> None:
    p = ds_root / "traj_000" / "images" / "view_01" / "00001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _expect(ds_root, r"view_01/00001.png: truncated or corrupt PNG \(no IEND chunk")
