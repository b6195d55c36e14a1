"""Tiny stand-in stages with the orchestrator's contract, for pipeline tests (no rendering, seconds to run)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset


class FitModule(L.LightningModule):
    def __init__(self, lr: float = 0.1, width: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class FitData(L.LightningDataModule):
    def __init__(
        self, dataset_dir: str, width: int = 2, mesh_cache_dir: str | None = None, source: str = "recovered"
    ) -> None:
        super().__init__()
        self.dataset_dir, self.width, self.mesh_cache_dir, self.source = dataset_dir, width, mesh_cache_dir, source

    def train_dataloader(self):
        if self.source in ("recovered",) and self.mesh_cache_dir is not None:
            assert any(Path(self.mesh_cache_dir).glob("*.npz")), "stage 3 needs stage 2's caches"
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, self.width, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class PredictModule(L.LightningModule):
    def __init__(
        self, stage1_checkpoint: str, cache_dir: str, scale: float = 1.0, recompute_stale: bool = False
    ) -> None:
        super().__init__()
        self.stage1_checkpoint, self.cache_dir, self.scale = stage1_checkpoint, Path(cache_dir), scale
        self.recompute_stale = recompute_stale

    def predict_step(self, batch, batch_idx):
        assert Path(self.stage1_checkpoint).is_file()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        from clods_pl.utils.files import checkpoint_digest

        made_from = checkpoint_digest(self.stage1_checkpoint)  # as the real caches record it
        from clods_pl.stages.mesh_cache import MeshCache

        for name in batch:  # a real (3-frame, 4-vertex) cache, as stage 2 writes them
            MeshCache(
                self.cache_dir / f"{name}.npz",
                np.full((3, 4, 3), self.scale, np.float32),
                np.array([[0, 1, 2]]),
                3,
                np.zeros(3, np.float32),
                np.zeros(3, np.float32),
                np.zeros(3, np.int64),
                made_from,
            ).save()
        return None


class PredictData(L.LightningDataModule):
    def __init__(self, dataset_dir: str, trajectories: list[str] | None = None) -> None:
        super().__init__()
        self.dataset_dir, self.batch_size = dataset_dir, 1  # what stage 2 reads of its DataModule: items, batch_size
        self.items = [SimpleNamespace(name=n) for n in (trajectories or ["traj_a", "traj_b"])]

    def predict_dataloader(self):
        return DataLoader([i.name for i in self.items], batch_size=1, collate_fn=lambda b: b)


def run_evaluation(
    dataset_dir: str,
    checkpoints: dict,
    out_dir: str,
    splits: list[str] = ["test"],
    videos: int = 0,
    training: dict | None = None,
) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"methods": {k: {"checkpoint_exists": Path(v).is_file()} for k, v in checkpoints.items()}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return metrics
