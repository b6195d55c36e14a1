"""Stage-2 evaluation metrics: vertex RMSE, Chamfer distance, novel-view PSNR/SSIM.

Ground truth enters only here (evaluation); the recovery optimisation never sees it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from clods_pl.render.types import composite

try:  # pytorch3d is optional; the torch fallback computes the same quantity
    from pytorch3d.loss import chamfer_distance as _p3d_chamfer  # type: ignore
except Exception:  # pragma: no cover - depends on the environment
    _p3d_chamfer = None

HAS_PYTORCH3D = _p3d_chamfer is not None


def vertex_rmse(pred: Tensor, gt: Tensor) -> Tensor:
    """Root-mean-square vertex distance.

    Args:
        pred, gt: (..., V, 3) world positions.
    Returns:
        (...,) sqrt(mean over V of ||pred - gt||^2).
    """
    return ((pred - gt) ** 2).sum(-1).mean(-1).sqrt()


def chamfer_distance_torch(x: Tensor, y: Tensor) -> Tensor:
    """Symmetric Chamfer distance as pytorch3d defines it (squared distances, mean over points, summed).

    Args:
        x: (B, N, 3) or (N, 3); y: (B, M, 3) or (M, 3).
    Returns:
        (B,) or scalar: mean_i min_j |x_i - y_j|^2 + mean_j min_i |x_i - y_j|^2.
    """
    squeeze = x.ndim == 2
    if squeeze:
        x, y = x[None], y[None]
    d = torch.cdist(x.double(), y.double()) ** 2  # (B, N, M)
    out = (d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)).to(x.dtype)
    return out[0] if squeeze else out


def chamfer_distance(x: Tensor, y: Tensor) -> Tensor:
    """Chamfer distance between point sets (pytorch3d's ``chamfer_distance`` when importable).

    Args:
        x: (N, 3); y: (M, 3). Returns: scalar tensor.
    """
    if _p3d_chamfer is not None:
        loss, _ = _p3d_chamfer(x[None].float(), y[None].float())
        return loss
    return chamfer_distance_torch(x, y)


def flag_size(mesh_pos: Tensor | np.ndarray) -> float:
    """Size of the cloth used to make errors relative: the longest side of the rest-shape bounding box.

    Args:
        mesh_pos: (V, 2) material coordinates (or (V, 3) rest positions).
    """
    p = torch.as_tensor(mesh_pos, dtype=torch.float64)
    return float((p.max(0).values - p.min(0).values).max())


def per_frame_gt_metrics(pred: Tensor, gt: Tensor) -> dict[str, float]:
    """``{"rmse", "chamfer"}`` of one frame; pred, gt: (V, 3)."""
    return {"rmse": float(vertex_rmse(pred, gt)), "chamfer": float(chamfer_distance(pred, gt))}


# ----- novel views ----------------------------------------------------------------------------------------
@dataclass
class NovelViewResult:
    """Per-frame image metrics on views held out from recovery.

    Attributes:
        frames: (N,) frame indices evaluated; psnr, ssim: (N,) means over the views of each frame.
    """

    frames: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray

    def summary(self) -> dict[str, float]:
        return {"psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)), "frames": int(len(self.frames))}


@torch.no_grad()
def evaluate_novel_views(smgs: Any, dataset_traj: Any, recovered_verts: Tensor | np.ndarray, views: Sequence[int],
                         background: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "torch",
                         frames: Sequence[int] | None = None) -> NovelViewResult:
    """PSNR and SSIM (torchmetrics) of the SMGS render of the recovered meshes on held-out ``views``.

    Args:
        smgs: renderer with ``render(verts (V, 3), cameras, background (3,), backend) -> rgb (C, H, W, 3)``.
        dataset_traj: trajectory with ``cameras`` and ``image_tensor(t) -> (C, H, W, 4)`` float32 in [0, 1].
        recovered_verts: (T, V, 3) world.
        views: camera indices to evaluate (those left out of recovery).
        frames: frame indices (default all).
    """
    if not len(views):
        raise ValueError("evaluate_novel_views needs at least one held-out view")
    verts = torch.as_tensor(np.asarray(recovered_verts), dtype=torch.float32)
    param = next(iter(smgs.parameters()), None) if hasattr(smgs, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    verts = verts.to(device)
    cams = dataset_traj.cameras[list(views)].to(device)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    frames = list(range(verts.shape[0])) if frames is None else list(frames)
    psnr, ssim = [], []
    for t in frames:
        target = composite(torch.as_tensor(dataset_traj.image_tensor(t))[list(views)].to(device), bg)
        rgb = smgs.render(verts[t], cams, bg, backend).rgb.clamp(0.0, 1.0)
        pred_n, tgt_n = rgb.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)  # (C, 3, H, W)
        psnr.append(float(peak_signal_noise_ratio(pred_n, tgt_n, data_range=1.0)))
        ssim.append(float(structural_similarity_index_measure(pred_n, tgt_n, data_range=1.0)))
    return NovelViewResult(np.asarray(frames), np.asarray(psnr, np.float32), np.asarray(ssim, np.float32))


def novel_view_table(results: Mapping[str, Sequence[NovelViewResult] | NovelViewResult]) -> Any:
    """Tabulate novel-view metrics per opacity mode.

    Args:
        results: opacity mode (``static|world|mesh|dual``) -> one result or a list (one per trajectory).
    Returns:
        pandas DataFrame indexed by mode with columns ``psnr``, ``ssim`` (means over all frames) and ``frames``.
    """
    import pandas as pd  # noqa: PLC0415  (only the novel-view table needs pandas)

    rows = []
    for mode, res in results.items():
        lst = [res] if isinstance(res, NovelViewResult) else list(res)
        psnr = np.concatenate([r.psnr for r in lst]) if lst else np.zeros(0)
        ssim = np.concatenate([r.ssim for r in lst]) if lst else np.zeros(0)
        rows.append({"opacity_mode": mode, "psnr": float(psnr.mean()) if psnr.size else float("nan"),
                     "ssim": float(ssim.mean()) if ssim.size else float("nan"), "frames": int(psnr.size)})
    return pd.DataFrame(rows).set_index("opacity_mode")


def recovery_summary(dataset: str, cache_dir: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """Stage-2 errors vs GT (evaluation only) from the mesh caches, relative to the flag size, per trajectory and
    overall: mean over frames 1..T-1, frame 1, last frame, and last / frame-1 (drift)."""
    from clods_pl.data.format import read_dataset  # noqa: PLC0415  (the data package loads lazily)
    from clods_pl.stages.mesh_cache import MeshCache  # noqa: PLC0415  (the one reader of mesh caches)

    raw: dict[str, Any] = {}
    for name in names:
        cache = MeshCache.load(Path(cache_dir) / f"{name}.npz")
        rmse = cache.gt_metrics.get("rmse")
        if rmse is not None and cache.frames_done > 1:
            raw[name] = rmse[1:cache.frames_done]
    per: dict[str, Any] = {}
    if raw:
        ds = read_dataset(dataset, validate=False)
        for name, abs_rmse in raw.items():
            rmse = abs_rmse / flag_size(ds.trajectory(name).mesh_pos.numpy())
            per[name] = {"mean_rel_rmse": float(rmse.mean()), "first_rel_rmse": float(rmse[0]),
                         "last_rel_rmse": float(rmse[-1]),
                         "drift_last_over_first": float(rmse[-1] / max(rmse[0], 1e-12))}
    out: dict[str, Any] = {"trajectories": per}
    if per:
        out["mean_rel_rmse"] = float(np.mean([v["mean_rel_rmse"] for v in per.values()]))
        out["max_drift_last_over_first"] = float(max(v["drift_last_over_first"] for v in per.values()))
    return out
