"""Stage 3's data: trajectories in memory from a source (``recovered``, ``gt``, ``gt:N``, ``mixed:N``; see
``stages/dynamics.py``) and windows of ``rollout_length + 2`` frames (``DynamicsDataModule``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clods_pl.data.format import read_dataset
from clods_pl.dynamics import MeshGraph, batch_graphs, graph_from_faces
from clods_pl.dynamics.augment import random_yaw, rotate_yaw
from clods_pl.errors import ClodsError, DatasetError
from clods_pl.geometry.mesh import handle_track
from clods_pl.stages.mesh_cache import MeshCache

SOURCE_KINDS = ("recovered", "gt", "gt:N", "mixed:N")


class DynamicsConfigError(ClodsError):
    """A stage-3 setting is invalid; the message names the setting."""


@dataclass
class TrajectoryData:
    """One trajectory in memory.

    Attributes:
        verts: (T, V, 3) float32 world positions (GT or recovered; HANDLE nodes overwritten by ``handle_pos``).
        mesh_pos: (V, 2) float32 material coordinates. node_type: (V,) int64. graph: mesh edges, both directions.
    """

    name: str
    verts: Tensor
    mesh_pos: Tensor
    node_type: Tensor
    graph: MeshGraph
    source: str = "gt"


def parse_source(source: str) -> tuple[str, int | None]:
    """``"gt"`` -> ("gt", None), ``"gt:4"`` -> ("gt", 4), ``"mixed:4"`` -> ("mixed", 4), ``"recovered"``."""
    kind, _, n = source.partition(":")
    if kind in ("recovered", "gt") and not n:
        return kind, None
    if kind in ("gt", "mixed") and n.isdigit():
        return kind, int(n)
    raise DynamicsConfigError(f"data.source={source!r} is not one of {SOURCE_KINDS} (N a non-negative integer)")


def load_mesh_cache(path: str | os.PathLike, num_frames: int) -> np.ndarray:
    """Verts (T, V, 3) float32 from a complete stage-2 mesh cache; refuses missing, corrupt, non-finite or
    unfinished caches (``MeshCache.load`` checks every finished frame is finite)."""

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mesh cache {path} is missing; run stage 2 (clods-pl stage2) or use data.source=gt")
    cache = MeshCache.load(path)
    if cache.frames_done < num_frames or cache.num_frames < num_frames:
        raise DatasetError(
            f"mesh cache {path} is incomplete ({cache.frames_done}/{num_frames} frames done); "
            "finish stage 2 (clods-pl stage2 resumes it) before stage 3"
        )
    return cache.verts[:num_frames]


def trajectory_data(traj: Any, name: str, verts: np.ndarray | Tensor, source: str) -> TrajectoryData:
    """Bundle verts with a dataset trajectory's topology; HANDLE nodes follow ``traj.handle_pos`` when given."""
    verts = torch.as_tensor(np.asarray(verts), dtype=torch.float32).clone()
    node_type = torch.as_tensor(np.asarray(traj.node_type)).long().reshape(-1)
    faces = torch.as_tensor(np.asarray(traj.faces)).long()
    if verts.shape[1] != node_type.shape[0]:
        raise DatasetError(
            f"trajectory {name}: {source} verts have {verts.shape[1]} vertices, the mesh has "
            f"{node_type.shape[0]}; regenerate the {source} meshes for this dataset"
        )
    idx, hp = handle_track(node_type, getattr(traj, "handle_pos", None), name)
    if hp is not None:
        if hp.shape[0] < verts.shape[0]:
            raise DatasetError(
                f"trajectory {name}: handle_pos has {hp.shape[0]} frames, the {source} meshes {verts.shape[0]}; "
                "regenerate the dataset"
            )
        verts[:, idx] = hp[: verts.shape[0]]
    mesh_pos = torch.as_tensor(np.asarray(traj.mesh_pos), dtype=torch.float32)
    return TrajectoryData(name, verts, mesh_pos, node_type, graph_from_faces(faces, node_type.shape[0]), source)


def load_trajectories(
    dataset: Any, names: Sequence[str], source: str, mesh_cache_dir: str | None = None
) -> list[TrajectoryData]:
    """Load the trajectories ``names`` of ``dataset`` (a ``clods_pl.data.format.Dataset``) from ``source``.

    ``gt:N`` keeps the first N names with GT; ``mixed:N`` uses GT for the first N and recovered for the rest.
    """
    kind, n = parse_source(source)
    out = []
    for i, name in enumerate(names):
        use_gt = kind == "gt" and (n is None or i < n) or kind == "mixed" and i < (n or 0)
        if kind == "gt" and not use_gt:
            continue
        traj = dataset.trajectory(name)
        if use_gt:
            out.append(trajectory_data(traj, name, traj.load_gt_verts(), "gt"))
        else:
            if not mesh_cache_dir:
                raise DynamicsConfigError(f"data.source={source!r} needs data.mesh_cache_dir (stage-2 meshes)")
            verts = load_mesh_cache(Path(mesh_cache_dir) / f"{name}.npz", int(traj.num_frames))
            out.append(trajectory_data(traj, name, verts, "recovered"))
    return out


def collate_windows(samples: list[tuple[TrajectoryData, Tensor]]) -> dict[str, Any]:
    """Disjoint union of windows: ``verts (W, sum V, 3)``, ``mesh_pos (sum V, 2)``, ``node_type``, ``graph``."""
    return {
        "verts": torch.cat([w for _, w in samples], dim=1),
        "mesh_pos": torch.cat([t.mesh_pos for t, _ in samples]),
        "node_type": torch.cat([t.node_type for t, _ in samples]),
        "graph": batch_graphs([t.graph for t, _ in samples]),
    }


class RandomWindows(Dataset):
    """``length`` windows of ``window`` frames drawn uniformly over all (trajectory, start) pairs; with
    ``yaw_augment`` each turned by a random angle about the up axis (:mod:`clods_pl.dynamics.augment`)."""

    def __init__(self, trajectories: list[TrajectoryData], window: int, length: int, yaw_augment: bool = False) -> None:
        self.trajs = [t for t in trajectories if t.verts.shape[0] >= window]
        if not self.trajs:
            raise DatasetError(
                f"no training trajectory has the {window} frames a window needs; "
                "lower data.rollout_length or use longer trajectories"
            )
        self.window, self.length, self.yaw_augment = window, length, yaw_augment
        self.counts = torch.tensor([t.verts.shape[0] - window + 1 for t in self.trajs], dtype=torch.float64)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[TrajectoryData, Tensor]:
        k = int(torch.multinomial(self.counts, 1))
        start = int(torch.randint(int(self.counts[k]), ()))
        t = self.trajs[k]
        w = t.verts[start : start + self.window]
        return t, rotate_yaw(w, random_yaw()) if self.yaw_augment else w


class FixedWindows(Dataset):
    """Non-overlapping windows from the start of every trajectory (deterministic; for validation)."""

    def __init__(self, trajectories: list[TrajectoryData], window: int) -> None:
        self.items = [(t, s) for t in trajectories for s in range(0, t.verts.shape[0] - window + 1, window)]
        self.window = window

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[TrajectoryData, Tensor]:
        t, s = self.items[i]
        return t, t.verts[s : s + self.window]


class DynamicsDataModule(L.LightningDataModule):
    """Windows of ``rollout_length + 2`` frames from in-memory trajectories.

    Args:
        dataset_dir: dataset root (``clods_pl.data.format``).
        source: ``recovered`` | ``gt`` | ``gt:N`` | ``mixed:N`` (see module docstring).
        mesh_cache_dir: folder of stage-2 caches ``<traj>.npz`` (needed by ``recovered`` and ``mixed:N``).
        rollout_length: autoregressive steps per window; None (default): the model's ``rollout_length`` (one
            setting for both; set it only to train on longer windows than the model rolls out, as a sweep over
            ``model.rollout_length`` does). windows_per_epoch: training windows per epoch.
        batch_size: windows per batch (batched as one disjoint graph). train_split / val_split: dataset splits;
            ``val_split=None`` disables validation.
        yaw_augment: turn every training window by a random angle about the world's up axis (+z). Gravity is
            along z, so the dynamics are the same in every yaw and a few trajectories' wind directions then cover
            all of them (docs/results.md: on the demo's data the unviewed-wind rollout error falls by a third).
            Off: MGN's training data.
    """

    def __init__(
        self,
        dataset_dir: str,
        source: str = "recovered",
        mesh_cache_dir: str | None = None,
        rollout_length: int | None = None,
        windows_per_epoch: int = 256,
        batch_size: int = 4,
        train_split: str = "train",
        val_split: str | None = None,
        num_workers: int = 0,
        yaw_augment: bool = False,
    ) -> None:
        super().__init__()
        parse_source(source)
        for name, value in (
            ("rollout_length", rollout_length),
            ("windows_per_epoch", windows_per_epoch),
            ("batch_size", batch_size),
        ):
            if value is not None and value < 1:
                raise DynamicsConfigError(f"stage3.data.{name}={value}; it must be >= 1")
        self.dataset_dir, self.source, self.mesh_cache_dir = dataset_dir, source, mesh_cache_dir
        self.rollout_length, self.windows_per_epoch, self.batch_size = rollout_length, windows_per_epoch, batch_size
        self.train_split, self.val_split, self.num_workers = train_split, val_split, num_workers
        self.yaw_augment = yaw_augment
        self.train: list[TrajectoryData] = []
        self.val: list[TrajectoryData] = []

    def _read_dataset(self) -> Any:
        return read_dataset(self.dataset_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train:
            return
        ds = self._read_dataset()
        self.train = load_trajectories(ds, list(ds.names(self.train_split)), self.source, self.mesh_cache_dir)
        if not self.train:
            raise DatasetError(
                f"{self.dataset_dir}: split {self.train_split!r} gave no trajectories for data.source={self.source!r}"
            )
        if self.val_split:  # validation always against ground truth
            self.val = load_trajectories(ds, list(ds.names(self.val_split)), "gt")

    @property
    def window(self) -> int:
        """Frames per window: ``rollout_length + 2``, the model's rollout length when ``rollout_length`` is None."""
        steps = self.rollout_length
        if steps is None:
            model = self.trainer.lightning_module if self.trainer is not None else None
            steps = getattr(getattr(model, "hparams", None), "rollout_length", None)
            if steps is None:
                raise DynamicsConfigError(
                    "stage3.data.rollout_length is None and no DynamicsModule is attached "
                    "to give it; set data.rollout_length or fit through a Trainer"
                )
        return int(steps) + 2

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            RandomWindows(self.train, self.window, self.windows_per_epoch, self.yaw_augment),
            self.batch_size,
            collate_fn=collate_windows,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val:
            return []
        return DataLoader(
            FixedWindows(self.val, self.window),
            self.batch_size,
            collate_fn=collate_windows,
            num_workers=self.num_workers,
        )
