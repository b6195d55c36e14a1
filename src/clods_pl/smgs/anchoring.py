"""Mesh anchoring of Gaussians: fixed barycentric weights, face frames, rotations and edge-length scales.

Everything here is differentiable in the vertex positions (``tests/test_smgs_geometry.py`` gradchecks it in
float64, including folded and nearly degenerate faces).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clods_pl.render.projection import quat_to_rotmat

SAMPLINGS = ("uniform", "random")
_FRAME_EPS = 1e-12


def barycentric_weights(num_faces: int, per_face: int, sampling: str = "uniform", seed: int = 0) -> Tensor:
    """Fixed barycentric weights of the Gaussians of every face.

    ``uniform``: centroids of the n^2 congruent sub-triangles of a face (n = ceil(sqrt(K))), K of them spread
    evenly; ``random``: Dirichlet(1, 1, 1) samples drawn with ``seed``.

    Returns:
        beta: (F, K, 3) float32, rows on the simplex.
    """
    if per_face < 1:
        raise ValueError(f"gaussians_per_face must be >= 1, got {per_face}")
    if sampling == "uniform":
        n = max(1, math.ceil(math.sqrt(per_face)))
        pts = []
        for i in range(n):
            for j in range(n - i):
                # upward sub-triangle with corner (i, j) in lattice units, then the downward one next to it
                pts.append(((i + 1 / 3) / n, (j + 1 / 3) / n))
                if j < n - i - 1:
                    pts.append(((i + 2 / 3) / n, (j + 2 / 3) / n))
        idx = torch.linspace(0, len(pts) - 1, per_face).round().long()
        uv = torch.tensor(pts, dtype=torch.float64)[idx]
        beta = torch.cat([1.0 - uv.sum(1, keepdim=True), uv], dim=1)
        return beta.float().unsqueeze(0).expand(num_faces, per_face, 3).contiguous()
    if sampling == "random":
        g = torch.Generator().manual_seed(seed)
        e = -torch.log(torch.rand(num_faces, per_face, 3, generator=g).clamp_min(1e-12))
        return (e / e.sum(-1, keepdim=True)).float()
    raise ValueError(f"unknown sampling '{sampling}'; choose from {SAMPLINGS}")


def face_frames(verts: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal frame of every face by Gram-Schmidt.

    Args:
        verts: (..., V, 3) world (leading dims: a batch of meshes of one topology). faces: (F, 3) int64.
    Returns:
        R: (..., F, 3, 3) with columns (r1 along edge v0->v1, r2 in-plane, r3 = normal);
        e1_len: (..., F) |v1 - v0|; h: (..., F) in-plane height of v2 over edge v0->v1.
    """
    v0, v1, v2 = verts[..., faces[:, 0], :], verts[..., faces[:, 1], :], verts[..., faces[:, 2], :]
    e1, e2 = v1 - v0, v2 - v0
    e1_len = torch.sqrt((e1 * e1).sum(-1) + _FRAME_EPS)
    r1 = e1 / e1_len.unsqueeze(-1)
    e2p = e2 - (e2 * r1).sum(-1, keepdim=True) * r1
    h = torch.sqrt((e2p * e2p).sum(-1) + _FRAME_EPS)
    r2 = e2p / h.unsqueeze(-1)
    r3 = torch.linalg.cross(r1, r2, dim=-1)
    return torch.stack([r1, r2, r3], dim=-1), e1_len, h


def inplane_rotation(theta: Tensor) -> Tensor:
    """(…,) angles -> (…, 3, 3) rotations about the local normal (third axis)."""
    c, s = torch.cos(theta), torch.sin(theta)
    z, o = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices (…, 3, 3) -> unit quaternions (…, 4) wxyz with w >= 0 (differentiable, all branches)."""
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    tr = m00 + m11 + m22
    d21, d02, d10 = R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]
    s01, s02, s12 = R[..., 0, 1] + R[..., 1, 0], R[..., 0, 2] + R[..., 2, 0], R[..., 1, 2] + R[..., 2, 1]
    cands = torch.stack(
        [
            torch.stack([1 + tr, d21, d02, d10], -1),
            torch.stack([d21, 1 + m00 - m11 - m22, s01, s02], -1),
            torch.stack([d02, s01, 1 - m00 + m11 - m22, s12], -1),
            torch.stack([d10, s02, s12, 1 - m00 - m11 + m22], -1),
        ],
        dim=-2,
    )  # (..., 4, 4): row k is 4 * q * q_k, well conditioned when q_k is the largest component
    diag = torch.stack([1 + tr, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(-1, keepdim=True)
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Quaternions (…, 4) wxyz (normalised inside) -> rotation matrices (…, 3, 3): the rasterizer's conversion."""
    return quat_to_rotmat(q)


def anchor_gaussians(
    verts: Tensor, faces: Tensor, beta: Tensor, log_scale: Tensor, normal_eps: float, theta: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Centres, rotations and scales of the mesh-anchored Gaussians.

    Args:
        verts: (..., V, 3) world (leading dims: a batch of meshes of one topology). faces: (F, 3).
        beta: (F, K, 3) barycentric weights. log_scale: (F, K, 2) learned log multipliers of the in-plane scales.
        normal_eps: scale along the normal (world units). theta: (F, K) in-plane angles or None.
    Returns:
        means (..., F*K, 3), quats (..., F*K, 4) wxyz, scales (..., F*K, 3), rotations (..., F*K, 3, 3).

    In-plane base scales are the face's edge length and height divided by ``2 sqrt(K)`` (GaMeS-style: half the
    extent a Gaussian covers when K of them share the face).
    """
    F, K, _ = beta.shape
    lead = verts.shape[:-2]
    tri = verts[..., faces, :]  # (..., F, 3, 3)
    means = torch.einsum("fkj,...fjc->...fkc", beta.to(verts.dtype), tri)
    R, e1_len, h = face_frames(verts, faces)
    R = R.unsqueeze(-3).expand(*lead, F, K, 3, 3)
    if theta is not None:
        R = R @ inplane_rotation(theta)
    base = torch.stack([e1_len, h], -1).unsqueeze(-2) / (2.0 * math.sqrt(K))  # (..., F, 1, 2)
    inplane = base * torch.exp(log_scale)
    scales = torch.cat([inplane, torch.full_like(inplane[..., :1], normal_eps)], -1)
    R = R.reshape(*lead, F * K, 3, 3)
    return means.reshape(*lead, F * K, 3), matrix_to_quaternion(R), scales.reshape(*lead, F * K, 3), R
