"""Triangle-mesh topology: grid meshes, unique edges, node types, normals."""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch
from torch import Tensor

from clods_pl.errors import DatasetError


class NodeType(IntEnum):
    """MeshGraphNets node types (deepmind-research ``meshgraphnets/common.py``); one-hot size ``SIZE``."""

    NORMAL = 0
    OBSTACLE = 1
    AIRFOIL = 2
    HANDLE = 3
    INFLOW = 4
    OUTFLOW = 5
    WALL_BOUNDARY = 6
    SIZE = 9


def grid_mesh(nx: int, ny: int, width: float = 1.0, height: float = 1.0) -> tuple[Tensor, Tensor]:
    """A regular triangulated grid of ``nx * ny`` vertices.

    Returns:
        mesh_pos: (V, 2) float32 rest-state material coordinates in [0, width] x [0, height];
            vertex ``i * nx + j`` sits at column ``j``, row ``i``.
        faces: (F, 3) int64, F = 2 (nx-1)(ny-1), counter-clockwise in material space, diagonals alternate.
    """
    if nx < 2 or ny < 2:
        raise ValueError(f"grid_mesh needs nx, ny >= 2, got {nx}x{ny}")
    xs = torch.linspace(0.0, width, nx)
    ys = torch.linspace(0.0, height, ny)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    mesh_pos = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1).float()
    faces = []
    for i in range(ny - 1):
        for j in range(nx - 1):
            a, b = i * nx + j, i * nx + j + 1
            c, d = (i + 1) * nx + j, (i + 1) * nx + j + 1
            if (i + j) % 2 == 0:
                faces += [(a, b, d), (a, d, c)]
            else:
                faces += [(a, b, c), (b, d, c)]
    return mesh_pos, torch.tensor(faces, dtype=torch.int64)


def unique_edges(faces: Tensor) -> Tensor:
    """Undirected edges of a triangle mesh.

    Args:
        faces: (F, 3) int64.
    Returns:
        (E, 2) int64 with ``edges[:, 0] < edges[:, 1]``, sorted lexicographically, no duplicates.
    """
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    e, _ = torch.sort(e, dim=1)
    return torch.unique(e, dim=0)


def face_normals(verts: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """Per-face normals.

    Args:
        verts: (..., V, 3) float. faces: (F, 3) int64.
    Returns:
        (..., F, 3); unit length when ``normalize`` (area-weighted otherwise).
    """
    v0, v1, v2 = verts[..., faces[:, 0], :], verts[..., faces[:, 1], :], verts[..., faces[:, 2], :]
    n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-12) if normalize else n


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals; verts (V, 3) -> (V, 3)."""
    fn = face_normals(verts, faces, normalize=False)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn.index_add_(0, faces[:, k], fn)
    return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)


def edge_lengths(verts: Tensor, edges: Tensor) -> Tensor:
    """Lengths of ``edges`` (E, 2) for verts (..., V, 3) -> (..., E)."""
    return (verts[..., edges[:, 0], :] - verts[..., edges[:, 1], :]).norm(dim=-1)


def validate_faces(faces: Tensor, num_verts: int) -> None:
    """Raise ``ValueError`` when faces are not (F, 3) integers in ``[0, num_verts)``."""
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.dtype.is_floating_point:
        raise ValueError(f"faces must be integers, got {faces.dtype}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= num_verts):
        raise ValueError(
            f"faces index vertices outside [0, {num_verts}): min {int(faces.min())}, max {int(faces.max())}"
        )


def handle_track(node_type: Tensor, handle_pos: object, name: str) -> tuple[Tensor, Tensor | None]:
    """The HANDLE (pinned) nodes of a trajectory and where they are prescribed to be.

    Args:
        node_type: (V,) MeshGraphNets node types. handle_pos: (T, P, 3) positions of the P HANDLE nodes in index
            order, or None (they stay at the first frame). name: the trajectory, for the error message.
    Returns:
        (indices (P,) int64 of the HANDLE nodes, positions (T, P, 3) float32 or None). A ``handle_pos`` whose P is
        not the number of HANDLE nodes is refused (it would pin the wrong vertices).
    """
    idx = torch.nonzero(torch.as_tensor(node_type).reshape(-1) == int(NodeType.HANDLE)).reshape(-1)
    if handle_pos is None:
        return idx, None
    hp = torch.as_tensor(np.asarray(handle_pos), dtype=torch.float32)
    if hp.ndim != 3 or hp.shape[1:] != (idx.numel(), 3):
        raise DatasetError(
            f"trajectory {name}: handle_pos has shape {tuple(hp.shape)} but node_type marks {idx.numel()} HANDLE "
            f"nodes (expected (T, {idx.numel()}, 3)); regenerate the dataset"
        )
    return idx, hp
