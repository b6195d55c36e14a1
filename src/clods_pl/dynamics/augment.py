"""Training-data symmetry: rotations about the world's up axis.

Gravity points along -z in this project's worlds (``clods_pl.data.format``; imported MGN data is turned to z-up),
so cloth dynamics are the same in every yaw: a window turned about z is as valid a training sample as the original.
MeshGraphNets' inputs are relative positions and velocities, so the rotation's centre does not matter. A few
trajectories whose wind blows from a narrow range of directions then teach the model every direction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def yaw_matrix(angle: float | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(3, 3) rotation by ``angle`` radians about +z (counter-clockwise seen from above)."""
    a = torch.as_tensor(angle, dtype=torch.float64)
    c, s = float(torch.cos(a)), float(torch.sin(a))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)


def rotate_yaw(verts: Tensor, angle: float | Tensor) -> Tensor:
    """``verts`` (..., 3) world positions turned by ``angle`` radians about the z axis through the origin."""
    return verts @ yaw_matrix(angle, verts.dtype).to(verts.device).T


def random_yaw(generator: torch.Generator | None = None) -> float:
    """An angle uniform in [0, 2 pi) from torch's generator (seeded by ``seed_everything``)."""
    return float(torch.rand((), generator=generator, dtype=torch.float64)) * 2.0 * math.pi
