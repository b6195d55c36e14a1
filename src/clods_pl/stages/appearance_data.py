"""Stage 1's data: the first-frame views of the training trajectories (``AppearanceDataModule``), with random view
subsets per training step and every held-out view for validation."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from clods_pl.data.format import read_dataset
from clods_pl.data.splits import training_views
from clods_pl.errors import DatasetError
from clods_pl.geometry import Cameras
from clods_pl.utils.settings import AT_LEAST_0, AT_LEAST_1, check_ranges


@dataclass
class AppearanceView:
    """Frame ``t`` of trajectory ``traj``: verts (V, 3), images (C, H, W, 4) float [0, 1], its cameras."""

    traj: str
    t: int
    verts: Tensor
    images: Tensor
    cameras: Cameras


def _collate_one(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]


class _RandomViews(Dataset):
    """``length`` samples, each a random frame with a random subset of its training views."""

    def __init__(self, frames: list[AppearanceView], views: list[int], per_batch: int, length: int, seed: int) -> None:
        self.frames, self.views, self.per_batch, self.length, self.seed = frames, views, per_batch, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + i)
        f = self.frames[rng.randrange(len(self.frames))]
        views = sorted(rng.sample(self.views, min(self.per_batch, len(self.views))))
        return {"verts": f.verts, "images": f.images[views], "cameras": f.cameras[views], "name": f"{f.traj}/{f.t}"}


class _FixedViews(Dataset):
    def __init__(self, frames: list[AppearanceView], views: list[int]) -> None:
        self.frames, self.views = frames, views

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Any]:
        f = self.frames[i]
        return {
            "verts": f.verts,
            "images": f.images[self.views],
            "cameras": f.cameras[self.views],
            "name": f"{f.traj}/{f.t}",
        }


class AppearanceDataModule(L.LightningDataModule):
    """First-frame multi-view images of the training trajectories, kept in memory.

    Args:
        dataset_dir: dataset folder (filled in by the orchestrator).
        split: trajectories to fit on. holdout_views: views never trained on, used for validation PSNR/SSIM.
        views_per_batch: training views per step. steps_per_epoch: random batches per epoch.
        extra_mesh_frames: "N meshes" setting: also fit frames 1..N with their ground-truth meshes.
        max_trajectories: use only the first trajectories of the split (None: all).
    """

    def __init__(
        self,
        dataset_dir: str,
        split: str = "train",
        holdout_views: list[int] = [0],
        views_per_batch: int = 2,
        steps_per_epoch: int = 100,
        extra_mesh_frames: int = 0,
        max_trajectories: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        check_ranges(
            "stage1.data",
            locals(),
            {
                "views_per_batch": AT_LEAST_1,
                "steps_per_epoch": AT_LEAST_1,
                "max_trajectories": AT_LEAST_1,
                "extra_mesh_frames": AT_LEAST_0,
            },
        )
        self.dataset_dir, self.split, self.holdout_views = dataset_dir, split, [int(v) for v in holdout_views]
        self.views_per_batch, self.steps_per_epoch = views_per_batch, steps_per_epoch
        self.extra_mesh_frames, self.max_trajectories = extra_mesh_frames, max_trajectories
        self.seed, self.num_workers = seed, num_workers
        self.frames: list[AppearanceView] = []
        self.train_views: list[int] = []
        self.topology: dict[str, Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.frames:
            return

        ds = read_dataset(self.dataset_dir)
        names = ds.names(self.split)[: self.max_trajectories]
        if not names:
            raise DatasetError(f"{self.dataset_dir}: split '{self.split}' has no trajectories for stage 1")
        first = ds.trajectory(names[0])
        C = len(first.cameras)
        self.train_views = training_views(C, self.holdout_views, "stage1.data.holdout_views")
        self.topology = {"faces": first.faces, "mesh_pos": first.mesh_pos, "verts0": first.verts0}
        for name in names:
            tr = ds.trajectory(name)
            if not torch.equal(tr.faces, first.faces):
                raise DatasetError(f"{tr.root}: mesh topology differs from {first.root}; stage 1 needs one shared mesh")
            if len(tr.cameras) != C:
                raise DatasetError(f"{tr.root}: has {len(tr.cameras)} views, {first.root} has {C}")
            self.frames.append(AppearanceView(name, 0, tr.verts0, tr.image_tensor(0), tr.cameras))
            if self.extra_mesh_frames > 0:
                gt = tr.load_gt_verts()
                for t in range(1, min(self.extra_mesh_frames + 1, tr.num_frames)):
                    self.frames.append(AppearanceView(name, t, gt[t], tr.image_tensor(t), tr.cameras))

    def train_dataloader(self) -> DataLoader:
        ds = _RandomViews(self.frames, self.train_views, self.views_per_batch, self.steps_per_epoch, self.seed)
        return DataLoader(ds, batch_size=1, shuffle=False, collate_fn=_collate_one, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.holdout_views:
            return []
        frames0 = [f for f in self.frames if f.t == 0]
        return DataLoader(_FixedViews(frames0, self.holdout_views), batch_size=1, collate_fn=_collate_one)
