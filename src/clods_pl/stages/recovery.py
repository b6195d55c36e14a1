"""Stage 2: recover each trajectory's mesh sequence from multi-view video by inverse rendering a frozen SMGS.

Recursive recovery (frame t-1 -> t, t = 1..T-1): initialise ``x_t`` from ``x_{t-1}`` (``init: previous``), plus
the velocity ``x_{t-1} - x_{t-2}`` (``velocity``), or a stage-3 model's prediction (``dynamics``), then optimise
per-vertex world displacements ``dx (V, 3)`` with Adam so that the SMGS render of ``x_init + dx`` matches every
training view of frame t:

    loss = L1(render rgb over bg, target rgb over bg) + alpha_weight * L1(alpha, target alpha) + gamma * L_edge,
    L_edge = mean over edges of ((|e| - |e_rest|) / |e_rest|)^2, rest lengths from ``verts0``,
    (+ prior_weight * mean(((x - x_pred) / sigma_a)^2) over free vertices with a stage-3 model, ``x_pred`` its
    one-step prediction from the recovered frames t-2, t-1 and sigma_a its acceleration scale).

HANDLE vertices follow ``handle_pos`` when the dataset gives it, else stay at ``verts0``; they get no gradient.
Several trajectories are optimised together: their displacements are stacked into one ``(B, V, 3)`` tensor with
one Adam, and the per-trajectory losses are summed (Adam is element-wise, so each trajectory's result does not
depend on its batch mates). Each trajectory stops on its own plateau and keeps its best iterate. The mesh cache
(``stages/mesh_cache.py``) is written atomically after every frame, and a rerun resumes from ``frames_done``.
Ground truth, when the dataset has it, is used for evaluation only (RMSE, Chamfer per frame).

Modules: ``recovery_config`` (settings), ``recovery_losses``, ``recovery_loop`` (frame loop, jobs, caches),
``recovery_cli`` (``clods-pl recover``, loading stage 1, plots), this one (the LightningModule and DataModule).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import DataLoader

from clods_pl.data.splits import STANDARD_SPLITS, names_in_splits
from clods_pl.stages.recovery_cli import (
    load_stage1,
    plot_rmse,
    read_dataset,
    recovery_plot_path,
    with_stage1_background,
)
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError
from clods_pl.stages.recovery_jobs import TrajectoryJob, open_job
from clods_pl.stages.recovery_loop import recover_batch
from clods_pl.stages.recovery_metrics import flag_size

DEFAULT_SPLITS = STANDARD_SPLITS
RC = RecoveryConfig  # its class attributes are the defaults of RecoveryModule's settings


@dataclass
class RecoveryItem:
    """One predict sample: a trajectory to recover and how (not frozen: Lightning maps batches in place)."""

    name: str
    dataset_dir: str
    holdout_views: tuple[int, ...] = ()
    frames: str | None = None


def _collate_items(items: list[RecoveryItem]) -> list[RecoveryItem]:
    return list(items)


class RecoveryDataModule(L.LightningDataModule):
    """Predict dataloader over trajectory names (Lightning shards it across ranks under DDP).

    Args:
        dataset_dir: dataset root. splits: splits whose trajectories are recovered.
        holdout_views: camera indices left out of recovery (kept for novel-view evaluation).
        trajectories: only these names (default all of ``splits``). frames: ``"A:B"`` frame window.
        batch_size: trajectories optimised together.
    """

    def __init__(
        self,
        dataset_dir: str,
        splits: list[str] = list(DEFAULT_SPLITS),
        holdout_views: list[int] = [],
        trajectories: list[str] | None = None,
        frames: str | None = None,
        batch_size: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise RecoveryConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.dataset_dir, self.splits = str(dataset_dir), list(splits)
        self.holdout_views, self.trajectories = [int(v) for v in holdout_views], trajectories
        self.frames, self.batch_size = frames, batch_size
        self.items: list[RecoveryItem] = []

    def read_dataset(self) -> Any:
        return read_dataset(self.dataset_dir)

    def setup(self, stage: str | None = None) -> None:
        ds = self.read_dataset()
        names = names_in_splits(ds, self.splits)
        if self.trajectories is not None:
            unknown = [n for n in self.trajectories if n not in names]
            if unknown:
                raise RecoveryConfigError(
                    f"data.trajectories {unknown} are not in splits {self.splits} of {self.dataset_dir}"
                )
            names = [n for n in names if n in set(self.trajectories)]
        self.items = [RecoveryItem(n, self.dataset_dir, tuple(self.holdout_views), self.frames) for n in names]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, shuffle=False, collate_fn=_collate_items)


class RecoveryModule(L.LightningModule):
    """Stage 2 as a predict-only LightningModule; ``trainer.predict(module, datamodule)`` fills ``cache_dir``.

    Args:
        stage1_checkpoint: stage-1 SMGS checkpoint (its sha256 is stored in every cache).
        cache_dir: folder of ``<traj>.npz`` caches (``runs/<name>/stage2/meshes``); plots go to ``../plots``.
        iterations, lr, lr_final, gamma, alpha_weight, init, extra_starts, dynamics_checkpoint, prior_weight,
        smoothing, plateau_patience, plateau_tol, min_iterations, background, backend: see ``RecoveryConfig``;
        ``background`` None (default): the one stage 1 fitted over.
        overwrite: rebuild every existing cache.
        log_every_n_frames: log per-frame metrics every n frames (1 = every frame).
        recompute_stale: recover again (instead of refusing) a cache made with another stage-1 checkpoint or other
            settings; the orchestrator sets it for ``clods-pl pipeline``, which repairs stale stages.
    """

    # typed arguments for the config parser; the defaults and checks have one home, RecoveryConfig
    def __init__(
        self,
        stage1_checkpoint: str,
        cache_dir: str,
        iterations: int = RC.iterations,
        lr: float = RC.lr,
        lr_final: float = RC.lr_final,
        gamma: float = RC.gamma,
        alpha_weight: float = RC.alpha_weight,
        init: str = RC.init,
        extra_starts: tuple[str, ...] = RC.extra_starts,
        dynamics_checkpoint: str | None = RC.dynamics_checkpoint,
        prior_weight: float = RC.prior_weight,
        smoothing: float = RC.smoothing,
        plateau_patience: int = RC.plateau_patience,
        plateau_tol: float = RC.plateau_tol,
        min_iterations: int = RC.min_iterations,
        background: tuple[float, float, float] | None = None,
        backend: str = RC.backend,
        overwrite: bool = False,
        log_every_n_frames: int = 1,
        recompute_stale: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        settings = {f.name: self.hparams[f.name] for f in fields(RecoveryConfig) if f.name != "background"}
        self.config = RecoveryConfig(**settings, background=RC.background if background is None else tuple(background))
        self.background_from_stage1 = background is None
        if log_every_n_frames < 1:
            raise RecoveryConfigError(f"model.log_every_n_frames must be >= 1, got {log_every_n_frames}")
        self.stage1_checkpoint, self.cache_dir = stage1_checkpoint, Path(cache_dir)
        self.overwrite, self.log_every_n_frames = overwrite, log_every_n_frames
        self.recompute_stale = recompute_stale
        self.renderer: nn.Module | None = None
        self.stage1_hash = ""
        self._datasets: dict[str, Any] = {}
        self._log_step = 0

    # overridable hooks (tests plug in toy renderers / datasets)
    def load_renderer(self) -> tuple[nn.Module, str]:
        """The frozen SMGS and the stage-1 checkpoint hash."""
        return load_stage1(self.stage1_checkpoint, self.device)

    def dataset(self, dataset_dir: str) -> Any:
        if dataset_dir not in self._datasets:
            self._datasets[dataset_dir] = read_dataset(dataset_dir)
        return self._datasets[dataset_dir]

    def _ensure_renderer(self) -> nn.Module:
        """Load the frozen SMGS once (outside inference mode, so its tensors can enter autograd graphs)."""
        if self.renderer is None:
            renderer, self.stage1_hash = self.load_renderer()
            self.renderer = renderer.to(self.device).eval().requires_grad_(False)
            self.config = with_stage1_background(self.config, self.renderer, not self.background_from_stage1)
        return self.renderer

    def _on_frame(self, job: TrajectoryJob, t: int, metrics: dict[str, float]) -> None:
        if t % self.log_every_n_frames and t != job.stop - 1:
            return
        self._log_step += 1
        if self.logger is not None:
            payload = {f"stage2/{k}": v for k, v in metrics.items()}
            payload.update({f"stage2/{job.name}/{k}": v for k, v in metrics.items()})
            payload["stage2/frame"] = float(t)
            self.logger.log_metrics(payload, step=self._log_step)

    def _sigterm_received(self) -> bool:
        """Lightning records a SIGTERM (``kill``, ``scancel``) but its predict loop never acts on it; the frame
        loop asks here after each saved step."""
        return bool(getattr(self._trainer, "received_sigterm", False))

    def predict_step(self, batch: list[RecoveryItem], batch_idx: int = 0) -> list[dict[str, Any]]:
        # Lightning predicts under torch.inference_mode(); the frame loop needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            renderer = self._ensure_renderer()
            jobs = []
            for item in batch:
                traj = self.dataset(item.dataset_dir).trajectory(item.name)
                jobs.append(
                    open_job(
                        item.name,
                        traj,
                        self.cache_dir / f"{item.name}.npz",
                        self.stage1_hash,
                        item.holdout_views,
                        item.frames,
                        self.overwrite,
                        config=self.config,
                        recompute_stale=self.recompute_stale,
                    )
                )
            say = print if rank_zero_only.rank == 0 else None  # one progress line per frame step
            recover_batch(jobs, renderer, self.config, self.device, self._on_frame, say, self._sigterm_received)
        out = []
        for job in jobs:
            size = flag_size(np.asarray(job.traj.mesh_pos))
            plot_rmse(job.cache, job.name, recovery_plot_path(self.cache_dir, job.name), size)
            summary: dict[str, Any] = {
                "name": job.name,
                "frames_done": job.cache.frames_done,
                "cache": str(job.cache.path),
            }
            rmse = job.cache.gt_metrics.get("rmse")
            if rmse is not None:
                summary["rmse_mean"] = float(np.nanmean(rmse[: job.cache.frames_done]))
                summary["rmse_rel_mean"] = summary["rmse_mean"] / size
            out.append(summary)
        return out
