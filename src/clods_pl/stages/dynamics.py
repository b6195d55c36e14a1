"""Stage 3: MeshGraphNets cloth dynamics trained with an autoregressive rollout loss.

``DynamicsDataModule`` keeps whole trajectories in memory (MGN ports are input-bound) and samples windows of
``rollout_length + 2`` frames. ``DynamicsModule`` rolls the model out ``rollout_length`` steps from the first two
frames of each window and sums the per-step position MSE on NORMAL nodes; gradients flow through the whole
rollout. Normalizer statistics (buffers, saved in the checkpoint) accumulate during the first
``normalizer_steps`` training steps and are frozen afterwards.

Trajectory sources (``data.source``):

* ``recovered``: stage-2 mesh caches ``<mesh_cache_dir>/<traj>.npz`` (key ``verts (T, V, 3)``; must be complete),
* ``gt``: the dataset's ground-truth meshes (supervised MeshGraphNets, "MGN"),
* ``gt:N``: ground truth of only the first N training trajectories ("MGN*"),
* ``mixed:N``: ground truth for the first N training trajectories, recovered meshes for the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from clods_pl.dynamics import MeshGraphNet
from clods_pl.errors import DatasetError
from clods_pl.geometry import NodeType
from clods_pl.stages.dynamics_data import DynamicsConfigError
from clods_pl.utils.settings import AT_LEAST_0, AT_LEAST_1, POSITIVE, UNIT_INTERVAL, check_ranges

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def exponential_lr_factor(step: int, lr: float, lr_min: float, decay_steps: float) -> float:
    """Multiplier of ``lr`` at ``step``: ``((lr - lr_min) * 0.1 ** (step / decay_steps) + lr_min) / lr``."""
    return ((lr - lr_min) * 0.1 ** (step / decay_steps) + lr_min) / lr


class DynamicsModule(L.LightningModule):
    """Trains :class:`MeshGraphNet` with a rollout loss.

    Args:
        latent, blocks, mlp_layers, message_passing: model size and backend (MGN: 128, 15, 2).
        rollout_length: steps T of the training rollout (windows must hold T + 2 frames).
        noise_std, noise_gamma: training noise on x_1 of NORMAL nodes; the step-1 target moves by
            (1 - gamma) * noise (MGN cloth: 0.003, 0.1).
        normalizer_steps: training steps that feed the normalizers (MGN: 1000); frozen afterwards.
        train_during_normalizer_steps: also update weights in those steps (MGN: False, stats only).
        lr, lr_min, lr_decay_steps: Adam lr decays as (lr - lr_min) 0.1^(step / lr_decay_steps) + lr_min.
        one_step_warmup: after the normalizer steps, train this many steps on one-step predictions (MGN's original
            objective; each window contributes one random (t-1, t) -> t+1 triple) before the rollout loss. An
            untrained model's rollouts diverge, so the rollout loss learns slowly from scratch; one-step steps are
            ~6x cheaper (docs/results.md: on the demo's data, at equal training time, rollout error -8 to -37% alone,
            -7 to -63% with ``data.yaw_augment``). 0: rollout loss from the start.
        normalize_loss: divide the position MSE by the mean squared acceleration std (the output normalizer's),
            i.e. measure errors in normalised-acceleration units, so the loss is O(1) whatever the cloth's scale.
        compile_mode: ``None`` (eager) or a ``torch.compile`` mode for the training steps' encode-process-decode
            (``reduce-overhead``: fused kernels and CUDA graphs, for GPUs; ``default``: fusion only). Same function;
            the first steps pay the compile (about a minute). Evaluation always runs eager.
    """

    def __init__(
        self,
        latent: int = 128,
        blocks: int = 15,
        mlp_layers: int = 2,
        message_passing: str = "native",
        rollout_length: int = 8,
        noise_std: float = 0.003,
        noise_gamma: float = 0.1,
        normalizer_steps: int = 1000,
        train_during_normalizer_steps: bool = False,
        lr: float = 1e-4,
        lr_min: float = 1e-6,
        lr_decay_steps: float = 5e6,
        normalize_loss: bool = True,
        compile_mode: str | None = None,
        one_step_warmup: int = 0,
    ) -> None:
        super().__init__()
        if rollout_length < 1:
            raise DynamicsConfigError(f"stage3.model.rollout_length={rollout_length}; it must be >= 1")
        if one_step_warmup < 0:
            raise DynamicsConfigError(f"stage3.model.one_step_warmup={one_step_warmup}; it must be >= 0")
        check_ranges(
            "stage3.model",
            locals(),
            {
                "latent": AT_LEAST_1,
                "blocks": AT_LEAST_1,
                "mlp_layers": AT_LEAST_1,
                "noise_std": AT_LEAST_0,
                "noise_gamma": UNIT_INTERVAL,
                "normalizer_steps": AT_LEAST_0,
                "lr": POSITIVE,
                "lr_min": AT_LEAST_0,
                "lr_decay_steps": POSITIVE,
            },
        )
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise DynamicsConfigError(f"model.compile_mode={compile_mode!r} is not one of {COMPILE_MODES} (or null)")
        if compile_mode is not None and message_passing != "native":
            raise DynamicsConfigError(f"model.compile_mode={compile_mode!r} needs model.message_passing=native")
        self.save_hyperparameters()
        self.model = MeshGraphNet(latent, blocks, mlp_layers, message_passing)
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.int64))
        self._host_steps: int | None = None  # host copy of train_steps: no GPU sync per step

    @property
    def accumulating(self) -> bool:
        """True while the normalizers still collect statistics."""
        if self._host_steps is None:
            self._host_steps = int(self.train_steps)  # once (also after loading a checkpoint: see below)
        return self._host_steps < self.hparams.normalizer_steps

    @property
    def one_step(self) -> bool:
        """True during the one-step warm-up (after the normalizer steps, ``one_step_warmup`` steps long)."""
        hp = self.hparams
        steps = self._host_steps if self._host_steps is not None else int(self.train_steps)
        return hp.normalizer_steps <= steps < hp.normalizer_steps + hp.one_step_warmup

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._host_steps = None  # re-read from the restored buffer

    def rollout_loss(
        self, batch: dict[str, Any], noise: bool, accumulate: bool, steps: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rollout of ``steps`` (default ``rollout_length``) from frames 0, 1 of every window; returns (loss,
        per-step position MSE (steps,) on NORMAL nodes)."""
        verts, mesh_pos, node_type, graph = batch["verts"], batch["mesh_pos"], batch["node_type"], batch["graph"]
        steps = self.hparams.rollout_length if steps is None else steps
        if verts.shape[0] < steps + 2:
            raise DynamicsConfigError(
                f"windows have {verts.shape[0]} frames but model.rollout_length={steps} "
                f"needs {steps + 2}; set data.rollout_length to {steps}"
            )
        model = self.model
        normal = node_type == int(NodeType.NORMAL)
        if accumulate:
            accel = verts[2:] - 2.0 * verts[1:-1] + verts[:-2]
            model.output_normalizer.accumulate(accel.reshape(-1, 3))
        x0, x1 = verts[0], verts[1]
        targets = verts[2 : steps + 2].clone()
        if noise and self.hparams.noise_std > 0:
            n = torch.randn_like(x1) * self.hparams.noise_std * normal.unsqueeze(-1)
            x1 = x1 + n
            targets[0] = targets[0] + (1.0 - self.hparams.noise_gamma) * n
        pred = model.rollout(
            x0, x1, steps, mesh_pos, node_type, graph, prescribed=verts[2 : steps + 2], accumulate=accumulate
        )
        per_step = ((pred - targets)[:, normal] ** 2).mean(dim=(1, 2))
        loss = per_step.sum()
        if self.hparams.normalize_loss:
            loss = loss / (model.output_normalizer.std().mean().to(loss.dtype) ** 2).detach()
        return loss, per_step.detach()

    def on_train_start(self) -> None:
        if self.hparams.compile_mode is not None and not self.model.compiled:
            self.model.compile_core(self.hparams.compile_mode)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.model.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA graphs (no-op otherwise)
        accumulate = self.accumulating
        train = not accumulate or self.hparams.train_during_normalizer_steps
        one_step = self.one_step
        if one_step:
            batch = {**batch, "verts": random_triples(batch["verts"], batch["graph"].batch_num_nodes)}
        with torch.set_grad_enabled(train):
            loss, per_step = self.rollout_loss(batch, noise=True, accumulate=accumulate, steps=1 if one_step else None)
        self.train_steps += 1
        self._host_steps = (self._host_steps or 0) + 1
        bs = len(batch["graph"].batch_num_nodes)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/rollout_rmse_normal", per_step.mean().sqrt(), batch_size=bs)
        self.log("train/step1_rmse_normal", per_step[0].sqrt(), batch_size=bs)
        if train:
            return loss
        # Normalizer-only step: a zero loss that reaches every parameter, so the optimizer step changes nothing
        # (Adam with zero gradients) while DDP, which cannot skip a step, still sees each rank's gradients.
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Normaliser-only steps run the closure (forward, zero loss, backward: DDP still syncs) but never step the
        optimizer: Adam stepping on zero gradients would decay its moments and inflate the first real updates."""
        self._optimizer_skipped = self.accumulating and not self.hparams.train_during_normalizer_steps
        if self._optimizer_skipped:
            if optimizer_closure is not None:
                optimizer_closure()
            return
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """The learning-rate schedule counts optimizer steps: none while the optimizer is skipped (and torch does not
        warn about a scheduler stepping before its optimizer)."""
        if not getattr(self, "_optimizer_skipped", False):
            super().lr_scheduler_step(scheduler, metric)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, per_step = self.rollout_loss(batch, noise=False, accumulate=False)
        bs = len(batch["graph"].batch_num_nodes)
        self.log("val/loss", loss, prog_bar=True, batch_size=bs)
        self.log("val/rollout_rmse_normal", per_step.mean().sqrt(), batch_size=bs)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: exponential_lr_factor(s, hp.lr, hp.lr_min, hp.lr_decay_steps)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def random_triples(verts: Tensor, nodes_per_window: Sequence[int]) -> Tensor:
    """Three consecutive frames (t-1, t, t+1) of every window, t random per window.

    Args:
        verts: (W, sum V, 3) windows batched along the vertices. nodes_per_window: V of each window.
    Returns:
        (3, sum V, 3).
    """
    counts = torch.as_tensor(list(nodes_per_window), device=verts.device)
    start = torch.randint(verts.shape[0] - 2, (counts.numel(),), device=verts.device).repeat_interleave(counts)
    node = torch.arange(verts.shape[1], device=verts.device)
    return torch.stack([verts[start + k, node] for k in range(3)])


def load_dynamics_model(
    checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu", message_passing: str | None = None
) -> MeshGraphNet:
    """The trained :class:`MeshGraphNet` (with its normalizers) of a stage-3 checkpoint, in eval mode."""
    path = Path(checkpoint)
    if not path.is_file():
        raise DatasetError(f"stage-3 checkpoint {path} is missing; run stage 3 (clods-pl stage3) first")
    module = DynamicsModule.load_from_checkpoint(str(path), map_location=map_location)
    model = module.model.eval()
    if message_passing is not None and message_passing != model.message_passing:
        model.set_message_passing(message_passing)
    return model
