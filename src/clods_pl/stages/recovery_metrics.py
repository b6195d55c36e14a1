"""Stage-2 evaluation metrics: vertex RMSE, Chamfer distance, the per-trajectory recovery summary.

Ground truth enters only here (evaluation); the recovery optimisation never sees it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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


def recovery_summary(dataset: str, cache_dir: str | os.PathLike, names: list[str]) -> dict[str, Any]:
    """Stage-2 errors vs GT (evaluation only) from the mesh caches, relative to the flag size, per trajectory and
    overall: mean over frames 1..T-1, frame 1, last frame, the worst frame, and last / frame-1 (drift)."""
    from clods_pl.data.format import read_dataset  # noqa: PLC0415  (the data package loads lazily)
    from clods_pl.stages.mesh_cache import MeshCache  # noqa: PLC0415  (the one reader of mesh caches)

    raw: dict[str, Any] = {}
    for name in names:
        cache = MeshCache.load(Path(cache_dir) / f"{name}.npz")
        rmse = cache.gt_metrics.get("rmse")
        if rmse is not None and cache.frames_done > 1:
            raw[name] = rmse[1 : cache.frames_done]
    per: dict[str, Any] = {}
    if raw:
        ds = read_dataset(dataset, validate=False)
        for name, abs_rmse in raw.items():
            rmse = abs_rmse / flag_size(ds.trajectory(name).mesh_pos.numpy())
            per[name] = {
                "mean_rel_rmse": float(rmse.mean()),
                "first_rel_rmse": float(rmse[0]),
                "last_rel_rmse": float(rmse[-1]),
                "worst_rel_rmse": float(rmse.max()),  # a wrong fold mid-sequence, which the ends do not show
                "worst_frame": int(rmse.argmax()) + 1,
                "drift_last_over_first": float(rmse[-1] / max(rmse[0], 1e-12)),
            }
    out: dict[str, Any] = {"trajectories": per}
    if per:
        out["mean_rel_rmse"] = float(np.mean([v["mean_rel_rmse"] for v in per.values()]))
        out["max_drift_last_over_first"] = float(max(v["drift_last_over_first"] for v in per.values()))
    return out
