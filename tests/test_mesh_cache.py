"""Stage-2 mesh cache: round trip, resume state, stale stage-1 hash, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest

from clods_pl.errors import ManifestError
from clods_pl.stages.mesh_cache import MeshCache, MeshCacheError

V, T = 5, 4


@pytest.fixture()
def mesh() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(V, 3)).astype(np.float32), np.array([[0, 1, 2], [1, 3, 2], [2, 3, 4]], np.int64)


def test_create_set_frame_and_reload(tmp_path, mesh) -> None:
    verts0, faces = mesh
    path = tmp_path / "meshes" / "a.npz"
    cache = MeshCache.create(path, verts0, faces, T, "hash-a")
    assert path.exists() and cache.frames_done == 1 and not cache.complete
    assert np.isnan(cache.verts[1:]).all() and np.array_equal(cache.verts[0], verts0)
    v1 = verts0 + 0.1
    cache.set_frame(1, v1, loss=0.5, edge_loss=0.01, iterations=7, gt_metrics={"rmse": 0.2})
    back = MeshCache.load(path)  # saved by set_frame
    assert back.frames_done == 2 and back.stage1_hash == "hash-a"
    np.testing.assert_array_equal(back.verts[1], v1)
    assert back.losses[1] == np.float32(0.5) and back.edge_losses[1] == np.float32(0.01)
    assert back.iterations[1] == 7 and back.gt_metrics["rmse"][1] == np.float32(0.2)
    assert np.isnan(back.gt_metrics["rmse"][2])
    np.testing.assert_array_equal(back.faces, faces)
    with pytest.raises(ValueError):
        back.set_frame(3, v1, 0.0, 0.0)  # frame 2 not done yet
    # redoing an earlier frame drops the later ones (they depended on it)
    back.set_frame(2, v1, 0.1, 0.0)
    back.set_frame(1, v1 + 1, 0.1, 0.0)
    assert MeshCache.load(path).frames_done == 2


def test_open_resumes_refuses_other_stage1_hash_and_overwrite_rebuilds(tmp_path, mesh) -> None:
    verts0, faces = mesh
    path = tmp_path / "a.npz"
    c = MeshCache.open(path, verts0, faces, T, "aaaa1111")
    c.set_frame(1, verts0, 0.1, 0.0)
    assert MeshCache.open(path, verts0, faces, T, "aaaa1111").frames_done == 2
    with pytest.raises(
        ManifestError,
        match=r"stage-1 checkpoint aaaa1111, current is bbbb2222; "
        r"`clods-pl pipeline` recovers it again, "
        r"or `clods-pl stage2 --stage2.model.overwrite true`",
    ):
        MeshCache.open(path, verts0, faces, T, "bbbb2222")
    rebuilt = MeshCache.open(path, verts0, faces, T, "bbbb2222", overwrite=True)
    assert rebuilt.frames_done == 1 and MeshCache.load(path).stage1_hash == "bbbb2222"
    with pytest.raises(MeshCacheError, match="another mesh or frame count"):
        MeshCache.open(path, verts0, faces, T + 1, "bbbb2222")
    with pytest.raises(MeshCacheError, match="another mesh"):
        MeshCache.open(path, verts0 + 1, faces, T, "bbbb2222")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_key", "bad_frames_done"])
def test_corrupt_cache_raises_one_line_error(tmp_path, mesh, damage) -> None:
    verts0, faces = mesh
    path = tmp_path / "a.npz"
    c = MeshCache.create(path, verts0, faces, T, "h")
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "missing_key":
        arrays = c.arrays()
        del arrays["stage1_hash"]
        np.savez(path, **arrays)
    else:
        arrays = c.arrays()
        arrays["frames_done"] = np.asarray(T + 3)
        np.savez(path, **arrays)
    with pytest.raises(MeshCacheError) as info:
        MeshCache.open(path, verts0, faces, T, "h")
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "--stage2.model.overwrite true" in msg
    assert MeshCache.open(path, verts0, faces, T, "h", overwrite=True).frames_done == 1


def test_recovery_summary_names_the_worst_frame(tmp_path, mesh, monkeypatch) -> None:
    """Review (session 13): the summary's frame-1, last-frame and drift columns missed a wrong fold in the middle of
    a sequence (small's traj_0007 at 3.6% for frames 7-11 read 0.34 / 0.46 / 1.34)."""
    from types import SimpleNamespace

    import torch

    import clods_pl.data.format as fmt
    from clods_pl.stages.recovery_metrics import recovery_summary

    verts0, faces = mesh
    cache = MeshCache.create(tmp_path / "a.npz", verts0, faces, 5, "h")
    for t, err in zip(range(1, 5), (0.01, 0.05, 0.02, 0.012)):  # frame 2 folds wrong and comes back
        cache.set_frame(t, verts0, 0.0, 0.0, gt_metrics={"rmse": err})
    rest = SimpleNamespace(mesh_pos=torch.tensor([[0.0, 0.0], [2.0, 1.0]]))  # flag size 2
    monkeypatch.setattr(fmt, "read_dataset", lambda *a, **k: SimpleNamespace(trajectory=lambda name: rest))
    per = recovery_summary("ds", tmp_path, ["a"])["trajectories"]["a"]
    assert per["worst_rel_rmse"] == pytest.approx(0.025) and per["worst_frame"] == 2
    assert per["first_rel_rmse"] == pytest.approx(0.005) and per["last_rel_rmse"] == pytest.approx(0.006)
