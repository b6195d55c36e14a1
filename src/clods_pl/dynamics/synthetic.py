"""Small in-memory stand-ins for the dataset reader: analytic flag-wave trajectories for tests and benchmarks.

``InMemoryDataset`` implements the part of ``clods_pl.data.format.Dataset`` that stage 3 and evaluation use
(``names(split)``, ``trajectory(name)`` with ``faces``, ``mesh_pos``, ``node_type``, ``verts0``, ``handle_pos``,
``num_frames``, ``load_gt_verts()``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from clods_pl.geometry import NodeType, grid_mesh


@dataclass
class InMemoryTrajectory:
    """Arrays of one trajectory; ``gt_verts (T, V, 3)`` float32 world."""

    faces: np.ndarray
    mesh_pos: np.ndarray
    node_type: np.ndarray
    gt_verts: np.ndarray
    handle_pos: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.gt_verts.shape[0])

    @property
    def verts0(self) -> np.ndarray:
        return self.gt_verts[0]

    def load_gt_verts(self) -> np.ndarray:
        return self.gt_verts


@dataclass
class InMemoryDataset:
    """``splits`` maps split name -> trajectory names; ``trajs`` maps name -> :class:`InMemoryTrajectory`."""

    trajs: dict[str, InMemoryTrajectory]
    splits: dict[str, list[str]] = field(default_factory=dict)

    def names(self, split: str | None = None) -> list[str]:
        return list(self.trajs) if split is None else list(self.splits.get(split, []))

    def trajectory(self, name: str) -> InMemoryTrajectory:
        return self.trajs[name]


def flag_wave_trajectory(
    nx: int = 6,
    ny: int = 5,
    frames: int = 16,
    amplitude: float = 0.05,
    omega: float = 0.6,
    wavenumber: float = 2.0,
    phase: float = 0.0,
    size: float = 1.0,
) -> InMemoryTrajectory:
    """A flag of ``nx * ny`` vertices in the x-z plane pinned along x = 0 (HANDLE column), with a travelling
    wave ``y = amplitude * x * sin(omega t - wavenumber x + phase)`` (world up +z, flag towards +x)."""
    mesh_pos, faces = grid_mesh(nx, ny, size, size)
    u, v = mesh_pos[:, 0].double(), mesh_pos[:, 1].double()
    t = torch.arange(frames, dtype=torch.float64)[:, None]
    y = amplitude * u * torch.sin(omega * t - wavenumber * u + phase)
    verts = torch.stack([u.expand_as(y), y, v.expand_as(y)], dim=-1).float()
    node_type = torch.full((nx * ny,), int(NodeType.NORMAL), dtype=torch.int64)
    node_type[mesh_pos[:, 0] == 0] = int(NodeType.HANDLE)
    return InMemoryTrajectory(faces.numpy(), mesh_pos.numpy(), node_type.numpy(), verts.numpy())


def wave_dataset(
    train: int = 3,
    test_viewed: int = 1,
    test_unviewed: int = 1,
    frames: int = 16,
    test_frames: int | None = None,
    nx: int = 6,
    ny: int = 5,
) -> InMemoryDataset:
    """Wave trajectories with distinct phases; splits ``train``, ``test_viewed``, ``test_unviewed``."""
    trajs, splits = {}, {}
    k = 0
    for split, count in (("train", train), ("test_viewed", test_viewed), ("test_unviewed", test_unviewed)):
        splits[split] = []
        for _ in range(count):
            name = f"{split}_{k:03d}"
            n = frames if split == "train" else (test_frames or frames)
            trajs[name] = flag_wave_trajectory(nx, ny, n, phase=0.7 * k + (math.pi / 2 if "unviewed" in split else 0))
            splits[split].append(name)
            k += 1
    return InMemoryDataset(trajs, splits)
