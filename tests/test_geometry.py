"""Mesh topology and camera conventions."""

import math

import pytest
import torch

from clods_pl.geometry import Cameras, grid_mesh, look_at, ring_cameras, unique_edges
from clods_pl.geometry.mesh import face_normals, validate_faces


def test_grid_mesh_counts_and_edges():
    mesh_pos, faces = grid_mesh(4, 3, 1.5, 1.0)
    assert mesh_pos.shape == (12, 2) and faces.shape == (2 * 3 * 2, 3)
    edges = unique_edges(faces)
    # Euler for a disc: V - E + F = 1
    assert 12 - edges.shape[0] + faces.shape[0] == 1
    assert bool((edges[:, 0] < edges[:, 1]).all())
    # all faces counter-clockwise in material space -> +z normals when embedded flat
    verts = torch.cat([mesh_pos, torch.zeros(12, 1)], dim=1)
    assert torch.allclose(face_normals(verts, faces)[:, 2], torch.ones(faces.shape[0]))


def test_validate_faces_rejects_out_of_range():
    _, faces = grid_mesh(3, 3)
    with pytest.raises(ValueError, match="outside"):
        validate_faces(faces, 8)


def test_look_at_projects_target_to_centre_and_front():
    cams = ring_cameras(4, radius=3.0, width=64, height=48, elevations_deg=(20.0,))
    uv, z = cams.project(torch.zeros(1, 3))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0]).expand(4, 2), atol=1e-4)
    assert bool((z > 0).all()) and torch.allclose(z[:, 0], torch.full((4,), 3.0), atol=1e-5)
    # world up (+z) appears upward in the image (smaller v)
    uv_up, _ = cams.project(torch.tensor([[0.0, 0.0, 0.5]]))
    assert bool((uv_up[:, 0, 1] < 24.0).all())


def test_transforms_round_trip_and_opengl_axes():
    cams = ring_cameras(3, radius=2.0, width=32, height=32)
    d = cams.to_transforms()
    back = Cameras.from_transforms(d)
    assert torch.allclose(back.w2c, cams.w2c, atol=1e-5) and torch.allclose(back.K, cams.K)
    # OpenGL camera looks down its -z axis: -z column of c2w points from the camera towards the target
    c2w = torch.tensor(d["frames"][0]["transform_matrix"])
    fwd = -c2w[:3, 2]
    to_target = -c2w[:3, 3] / c2w[:3, 3].norm()
    assert torch.allclose(fwd, to_target, atol=1e-5)


def test_from_transforms_missing_intrinsics_is_clear():
    d = ring_cameras(2, radius=2.0).to_transforms()
    for fr in d["frames"]:
        del fr["fl_x"]
    with pytest.raises(ValueError, match="fl_x"):
        Cameras.from_transforms(d, source="traj/transforms.json")


def test_look_at_is_rigid():
    w2c = look_at(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    r = w2c[:3, :3]
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-6)
    assert math.isclose(float(torch.det(r)), 1.0, abs_tol=1e-5)


def test_handle_track_pins_handles_and_refuses_a_mismatched_handle_pos() -> None:
    """One rule for pinned nodes (stage 2 and stage 3 both use it): a handle_pos whose P is not the number of HANDLE
    nodes is an error naming the trajectory (stage 3 used to skip it silently and leave them free)."""
    import numpy as np

    from clods_pl.errors import DatasetError
    from clods_pl.geometry.mesh import NodeType, handle_track

    node_type = torch.tensor([0, 3, 0, 3])
    idx, hp = handle_track(node_type, None, "t")
    assert idx.tolist() == [1, 3] and hp is None
    idx, hp = handle_track(node_type, np.ones((5, 2, 3)), "t")
    assert hp.shape == (5, 2, 3) and hp.dtype == torch.float32
    with pytest.raises(DatasetError, match=r"trajectory traj_9: handle_pos has shape \(5, 3, 3\).*2 HANDLE"):
        handle_track(node_type, np.ones((5, 3, 3)), "traj_9")
    assert int(NodeType.HANDLE) == 3
