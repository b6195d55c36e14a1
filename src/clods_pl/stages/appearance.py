"""Stage 1: fit the SMGS appearance (colour, scales, opacity field) on the first-frame meshes (the LightningModule;
its data module is ``appearance_data``).

One appearance is fitted for the whole dataset: every trajectory shows the same cloth (same texture and mesh
topology) from a different initial state, so the Gaussians of all training trajectories share their parameters
and each is rendered with its own first-frame vertices ``verts0``. In the "N meshes" setting
(``data.extra_mesh_frames = N``) the ground-truth meshes of frames 1..N of each training trajectory are used too.
Loss: ``(1 - ssim_weight) L1 + ssim_weight (1 - SSIM)`` on RGB composited over the background, plus
``alpha_weight`` L1 on the alpha (coverage) image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from clods_pl.errors import ClodsError
from clods_pl.render.types import composite
from clods_pl.smgs import OPACITY_MODES, SMGS, export_ply
from clods_pl.smgs.io import SMGS_KEY, smgs_record
from clods_pl.stages.lpips import local_lpips
from clods_pl.utils.loggers import log_images
from clods_pl.utils.settings import AT_LEAST_0, AT_LEAST_1, OPEN_UNIT_INTERVAL, UNIT_INTERVAL, check_ranges

TOPOLOGY_KEY = SMGS_KEY
PLY_NAME = "smgs_frame0.ply"


class AppearanceModule(L.LightningModule):
    """SMGS appearance fitting. SMGS options are documented in :class:`clods_pl.smgs.SMGS`.

    Args:
        lr_*: Adam learning rates per parameter group. ssim_weight: D-SSIM weight (0.2). alpha_weight: L1 weight on
        the alpha image. backend: rasterizer (torch on the CPU, gsplat on CUDA). background: RGB behind the cloth.
        antialiased: the rasterizer's antialiased mode (see :class:`clods_pl.smgs.SMGS`; stage 2 follows it).
        supersample: s x s samples per pixel, averaged, as a camera pixel integrates its area (see
            :class:`clods_pl.smgs.SMGS`; stage 2 follows it). docs/results.md: +2.9 dB held out on the demo at 2.
        log_images_every_n_epochs: image grids (prediction | target | error) of held-out views.
    """

    def __init__(
        self,
        gaussians_per_face: int = 2,
        sampling: str = "uniform",
        opacity_mode: str = "dual",
        sh_degree: int = 0,
        pe_frequencies: int = 4,
        mlp_hidden: int = 64,
        mlp_layers: int = 2,
        normal_eps: float = 1e-4,
        learn_inplane_rotation: bool = False,
        two_sided: bool = True,
        init_opacity: float = 0.5,
        antialiased: bool = True,
        init_log_scale: float = 0.0,
        coverage_scale: float | None = None,
        lambert_light: bool = False,
        supersample: int = 1,
        lr_color: float = 0.01,
        lr_opacity: float = 0.05,
        lr_scale: float = 0.005,
        lr_mlp: float = 1e-3,
        lr_rotation: float = 1e-3,
        ssim_weight: float = 0.2,
        alpha_weight: float = 0.5,
        backend: str = "torch",
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        log_images_every_n_epochs: int = 1,
        export_ply: bool = True,
    ) -> None:
        super().__init__()
        if gaussians_per_face < 1:
            raise ClodsError(f"stage1.model.gaussians_per_face={gaussians_per_face}; it must be >= 1")
        if coverage_scale is not None and not coverage_scale > 0:
            raise ClodsError(f"stage1.model.coverage_scale={coverage_scale}; it must be > 0, or null for one pass")
        if opacity_mode not in OPACITY_MODES:
            raise ClodsError(f"stage1.model.opacity_mode={opacity_mode!r}; choose one of {OPACITY_MODES}")
        if supersample < 1:
            raise ClodsError(f"stage1.model.supersample={supersample}; it must be >= 1 (1: one sample per pixel)")
        check_ranges(
            "stage1.model",
            locals(),
            {
                "init_opacity": OPEN_UNIT_INTERVAL,
                **dict.fromkeys(("lr_color", "lr_opacity", "lr_scale", "lr_mlp", "lr_rotation"), AT_LEAST_0),
                "ssim_weight": UNIT_INTERVAL,
                "alpha_weight": AT_LEAST_0,
                "background": UNIT_INTERVAL,
                "mlp_hidden": AT_LEAST_1,
                "mlp_layers": AT_LEAST_1,
                "pe_frequencies": AT_LEAST_0,
                "sh_degree": AT_LEAST_0,
            },
        )
        self.save_hyperparameters()
        self.smgs: SMGS | None = None
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._lpips: Any = None
        self._lpips_checked = False
        self.register_buffer("background", torch.tensor(background, dtype=torch.float32), persistent=False)

    # ----- model construction ------------------------------------------------------------------------
    def smgs_options(self) -> dict[str, Any]:
        keys = (
            "gaussians_per_face",
            "sampling",
            "opacity_mode",
            "sh_degree",
            "pe_frequencies",
            "mlp_hidden",
            "mlp_layers",
            "normal_eps",
            "learn_inplane_rotation",
            "two_sided",
            "init_opacity",
            "antialiased",
            "init_log_scale",
            "coverage_scale",
            "lambert_light",
            "supersample",
        )
        return {k: self.hparams[k] for k in keys}

    def build(self, faces: Tensor, mesh_pos: Tensor, verts0: Tensor) -> None:
        """Create the SMGS for this mesh topology (idempotent)."""
        if self.smgs is None:
            self.smgs = SMGS(faces, mesh_pos, verts0, **self.smgs_options()).to(self.device)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self.trainer is not None else None
        if self.smgs is None and dm is not None:
            dm.setup(stage)
            self.build(**dm.topology)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        assert self.smgs is not None
        checkpoint[TOPOLOGY_KEY] = smgs_record(self.smgs, self.background, self.hparams.backend)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.smgs is None:
            rec = checkpoint[TOPOLOGY_KEY]
            self.build(rec["faces"], rec["mesh_pos"], rec["verts0"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        assert self.smgs is not None, "SMGS is built in setup(); fit with a datamodule"
        h = self.hparams
        return torch.optim.Adam(
            self.smgs.param_groups(h.lr_color, h.lr_opacity, h.lr_scale, h.lr_mlp, h.lr_rotation), eps=1e-15
        )

    # ----- steps ---------------------------------------------------------------------------------------
    def render_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """-> predicted RGB (C,H,W,3) over the background, predicted alpha (C,H,W,1), target RGB (C,H,W,3)."""
        assert self.smgs is not None
        out = self.smgs.render(batch["verts"].to(self.device), batch["cameras"], self.background, self.hparams.backend)
        target = batch["images"].to(self.device)
        return out.rgb, out.alpha, composite(target, self.background)

    def loss(self, pred: Tensor, alpha: Tensor, target_rgb: Tensor, target_alpha: Tensor) -> dict[str, Tensor]:
        l1 = (pred - target_rgb).abs().mean()
        ssim = ssim_fn(pred.permute(0, 3, 1, 2), target_rgb.permute(0, 3, 1, 2), data_range=1.0)
        a1 = (alpha - target_alpha).abs().mean()
        w = self.hparams.ssim_weight
        total = (1 - w) * l1 + w * (1 - ssim) + self.hparams.alpha_weight * a1
        return {"loss": total, "l1": l1, "ssim": ssim, "alpha_l1": a1}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        pred, alpha, target = self.render_batch(batch)
        parts = self.loss(pred, alpha, target, batch["images"][..., 3:4].to(self.device))
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=1)
        self.log("train/loss", parts["loss"], prog_bar=True, batch_size=1)
        return parts["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred, alpha, target = self.render_batch(batch)
        p, t = pred.clamp(0, 1).permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
        self.val_psnr.update(p, t)
        self.val_ssim.update(p, t)
        lpips = self._lpips_metric()
        if lpips is not None:
            lpips.update(p * 2 - 1, t * 2 - 1)
        every = max(1, self.hparams.log_images_every_n_epochs)
        if batch_idx == 0 and self.current_epoch % every == 0 and self.trainer.loggers:
            err = (pred - target).abs().clamp(0, 1)
            grid = torch.cat([pred.clamp(0, 1), target, err], dim=2).detach().cpu().numpy()  # views x (H, 3W)
            log_images(
                self.trainer.loggers,
                "stage1/heldout_pred_target_error",
                list(grid),
                step=self.global_step,
                captions=[f"{batch['name']} view {i}" for i in range(len(grid))],
            )

    def on_validation_epoch_end(self) -> None:
        self.log("val/psnr", self.val_psnr.compute(), prog_bar=True)
        self.log("val/ssim", self.val_ssim.compute())
        self.val_psnr.reset()
        self.val_ssim.reset()
        if self._lpips is not None:
            self.log("val/lpips", self._lpips.compute())
            self._lpips.reset()

    def _lpips_metric(self) -> Any:
        """LPIPS when its backbone weights are available locally; otherwise None with one notice (no downloads)."""
        if not self._lpips_checked:
            self._lpips_checked = True
            self._lpips, notice = local_lpips(self.device)
            if notice is not None:
                if self._trainer is None:
                    print(notice)
                else:
                    self.print(notice)
        return self._lpips

    def on_fit_end(self) -> None:
        if self.hparams.export_ply and self.smgs is not None and self.trainer.is_global_zero:
            out = Path(self.trainer.default_root_dir) / PLY_NAME
            with torch.no_grad():
                export_ply(out, self.smgs.gaussians(self.smgs.verts0))
