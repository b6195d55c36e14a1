"""The paper's Table 2: novel-view synthesis on the held-out views of every (strided) frame of the test trajectories.

Each appearance model is rendered on the ground-truth mesh of the frame (evaluation only), so the table compares
appearance models and nothing else: SMGS with the opacity field of the run (``dual``, CloDS), the same fit with
static per-Gaussian opacity (GaMeS-style) and the world-only / mesh-only ablations, against an upper bound that
sees the frame itself: per-frame Gaussians (free centres, opacities, colours and scales), started from the run's
SMGS on that frame's mesh, rendered as it renders, and fitted to that frame's training views.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from clods_pl.data.format import read_dataset
from clods_pl.data.splits import training_views
from clods_pl.errors import ClodsError, DatasetError
from clods_pl.geometry import Cameras
from clods_pl.render.types import composite
from clods_pl.smgs import OPACITY_MODES, SMGS
from clods_pl.smgs.model import render_gaussians
from clods_pl.utils.files import atomic_write_json, atomic_write_text

NOVEL_VIEWS_FILE = "novel_views.json"
NOVEL_VIEWS_TABLE = "novel_view_table.md"
RECOVERED_RENDERS = "recovered_renders.png"  # eval/: input image | SMGS render of the recovered mesh
UPPER_BOUND = "upper_bound"
ROW_LABELS = {
    UPPER_BOUND: "Per-frame 3DGS (upper bound)",
    "dual": "SMGS (CloDS: world + mesh opacity)",
    "static": "GaMeS-style (static opacity)",
    "world": "SMGS, world-only opacity",
    "mesh": "SMGS, mesh-only opacity",
}
ROW_ORDER = (UPPER_BOUND, "dual", "static", "world", "mesh")
DEFINITION = (
    "PSNR (dB) and SSIM of renders against the images of the held-out views, averaged over every "
    "evaluated frame and view of the test trajectories; each model renders the frame's ground-truth mesh "
    "(evaluation only), so rows differ only in appearance."
)


@dataclass
class NovelViewSettings:
    """``eval.novel_views``: the novel-view table (docs/results.md).

    Attributes:
        enabled: write ``eval/novel_views.json`` and its table.
        ablations: opacity modes refitted from the run's stage-1 settings for the other rows (``static`` is the
            GaMeS-style row); the run's own stage 1 is the ``dual`` row whatever its mode.
        splits: trajectories to evaluate. frame_stride: every n-th frame.
        upper_bound_steps: Adam steps of the per-frame 3DGS fit (0: no upper-bound row).
        upper_bound_frame_stride: fit the upper bound on every n-th evaluated frame only (it costs a fit each).
    """

    enabled: bool = True
    ablations: list[str] = field(default_factory=lambda: ["static", "world", "mesh"])
    splits: list[str] = field(default_factory=lambda: ["test_viewed", "test_unviewed"])
    frame_stride: int = 1
    upper_bound_steps: int = 150
    upper_bound_frame_stride: int = 5

    def __post_init__(self) -> None:
        bad = [m for m in self.ablations if m not in OPACITY_MODES]
        if bad:
            raise ClodsError(f"eval.novel_views.ablations {bad}: each must be one of {', '.join(OPACITY_MODES)}")
        if self.frame_stride < 1 or self.upper_bound_frame_stride < 1 or self.upper_bound_steps < 0:
            raise ClodsError(
                "eval.novel_views.frame_stride and upper_bound_frame_stride must be >= 1 and upper_bound_steps >= 0"
            )


def image_metrics(pred: Tensor, target: Tensor, lpips: Any = None) -> dict[str, float]:
    """pred, target: (C, H, W, 3) in [0, 1] -> mean PSNR, SSIM (and LPIPS) over the C views."""
    p, t = pred.clamp(0, 1).permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    out = {
        "psnr": float(
            peak_signal_noise_ratio(p, t, data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)).mean()
        ),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=1.0)),
    }
    if lpips is not None:
        out["lpips"] = float(lpips(p * 2 - 1, t * 2 - 1))
    return out


def fit_frame_gaussians(
    smgs: SMGS,
    verts: Tensor,
    images: Tensor,
    cameras: Cameras,
    background: Tensor,
    steps: int,
    backend: str = "torch",
    lr: float = 0.003,
) -> Callable[[Cameras], Tensor]:
    """Free Gaussians fitted to one frame (the per-frame 3DGS upper bound); returns ``render(cameras) -> rgb``.

    Start: a copy of ``smgs`` on ``verts`` (V, 3) whose every Gaussian gets its own free centre offset and opacity
    (the opacity field is replaced by per-Gaussian values equal to its output), keeping its colours (both sides),
    scales and renderer (antialiasing, coverage pass). Then offsets, opacities, colours and scales are optimised
    with Adam on ``images`` (C, H, W, 4) of ``cameras`` (the frame's training views): L1 on RGB plus 0.5 L1 on alpha,
    ``steps`` times. Rotations stay in the face frames (a flat Gaussian's only free angle is in-plane, which a
    free centre and two scales already cover at these sizes).
    """
    free = SMGS(smgs.faces, smgs.mesh_pos, smgs.verts0, **{**smgs.options, "opacity_mode": "static"})
    state = {k: v for k, v in smgs.state_dict().items() if not k.startswith("opacity.")}
    free.load_state_dict(state, strict=False)
    with torch.no_grad():
        free.opacity.logits.copy_(torch.logit(smgs.gaussians(verts).opacities.clamp(1e-4, 1 - 1e-4)))
    offset = torch.zeros(free.num_gaussians, 3, requires_grad=True)
    extent = float((verts.max(0).values - verts.min(0).values).max())
    groups = free.param_groups(lr_color=2 * lr, lr_opacity=5 * lr, lr_scale=0.5 * lr)
    opt = torch.optim.Adam([*groups, {"params": [offset], "lr": 0.01 * lr * extent}], eps=1e-15)

    def render(cams: Cameras) -> Any:
        g = free.gaussians(verts, cams)
        g.means = g.means + offset
        return render_gaussians(g, cams, background, backend, free.antialiased, free.coverage_scale, free.supersample)

    target, target_alpha = composite(images, background), images[..., 3:]
    with torch.enable_grad():  # also when called under no_grad
        for _ in range(steps):
            out = render(cameras)
            loss = (out.rgb - target).abs().mean() + 0.5 * (out.alpha - target_alpha).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    free.requires_grad_(False)
    offset.requires_grad_(False)
    return lambda cams: render(cams).rgb


@dataclass(frozen=True)
class UpperBoundJob:
    """One frame's upper-bound fit and its metrics on the held-out views (a job for a worker process)."""

    traj: str
    frame: int
    smgs: SMGS
    verts: Tensor  # (V, 3) the frame's ground-truth mesh
    images: Tensor  # (C_train, H, W, 4) the frame's training views
    cameras: Cameras  # their cameras
    held_cameras: Cameras
    target: Tensor  # (C_held, H, W, 3) the held-out views over the background
    background: Tensor
    steps: int
    backend: str
    lpips: Any = None


def upper_bound_metrics(job: UpperBoundJob) -> dict[str, Any]:
    """:func:`fit_frame_gaussians` on ``job``'s frame, then its :func:`image_metrics` on the held-out views."""
    render = fit_frame_gaussians(job.smgs, job.verts, job.images, job.cameras, job.background, job.steps, job.backend)
    with torch.no_grad():
        rgb = render(job.held_cameras)
    return {"traj": job.traj, "frame": job.frame, **image_metrics(rgb, job.target, job.lpips)}


def upper_bound_jobs(
    dataset: Any,
    smgs: SMGS,
    holdout_views: Sequence[int],
    background: Sequence[float],
    settings: NovelViewSettings,
    backend: str = "torch",
    lpips: Any = None,
) -> list[UpperBoundJob]:
    """The upper-bound fits :func:`novel_view_rows` needs (every ``upper_bound_frame_stride``-th evaluated frame of
    ``settings.splits``), started from ``smgs``; none when ``settings.upper_bound_steps`` is 0."""
    if settings.upper_bound_steps <= 0:
        return []
    bg = torch.as_tensor(background, dtype=torch.float32)
    held = [int(v) for v in holdout_views]
    jobs = []
    for name in [n for s in settings.splits for n in dataset.names(s)]:
        traj = dataset.trajectory(name)
        train = training_views(len(traj.cameras), held, "stage1.data.holdout_views")
        gt = traj.load_gt_verts()
        frames = list(range(0, traj.num_frames, max(1, settings.frame_stride)))
        for t in frames[:: max(1, settings.upper_bound_frame_stride)]:
            images = traj.image_tensor(t)
            target = composite(images[held], bg)
            jobs.append(
                UpperBoundJob(
                    name, t, smgs, gt[t], images[train], traj.cameras[train], traj.cameras[held], target, bg,
                    settings.upper_bound_steps, backend, lpips,
                )
            )  # fmt: skip
    return jobs


def novel_view_rows(
    dataset: Any,
    models: Mapping[str, SMGS],
    holdout_views: Sequence[int],
    background: Sequence[float],
    settings: NovelViewSettings,
    backend: str = "torch",
    lpips: Any = None,
    upper_bound_from: str = "dual",
    upper_bound: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Metrics per row (``models`` keys, plus :data:`UPPER_BOUND` when ``settings.upper_bound_steps > 0``).

    Args:
        dataset: an opened dataset with GT meshes for ``settings.splits``. models: row key -> fitted SMGS.
        holdout_views: the views no model was fitted on (evaluated); the others train the upper bound.
        upper_bound: the :func:`upper_bound_metrics` of :func:`upper_bound_jobs` when already computed (e.g. in
            worker processes); None: fitted here, from ``models[upper_bound_from]``.
    Returns:
        ``{"rows": {key: {"label", "psnr", "ssim", ["lpips"], "frames", "per_frame": [...]}}, ...}``.
    """
    names = [n for s in settings.splits for n in dataset.names(s)]
    if not names:
        raise DatasetError(f"eval.novel_views.splits {settings.splits} hold no trajectories")
    if not holdout_views:
        raise ClodsError("stage1.data.holdout_views is empty: the novel-view table needs a held-out view")
    bg = torch.as_tensor(background, dtype=torch.float32)
    held = [int(v) for v in holdout_views]
    per: dict[str, list[dict[str, Any]]] = {k: [] for k in models}
    for name in names:
        traj = dataset.trajectory(name)
        training_views(len(traj.cameras), held, "stage1.data.holdout_views")  # a clear error for a bad holdout
        gt = traj.load_gt_verts()
        for t in range(0, traj.num_frames, max(1, settings.frame_stride)):
            target = composite(traj.image_tensor(t)[held], bg)
            with torch.no_grad():
                for key, smgs in models.items():
                    rgb = smgs.render(gt[t], traj.cameras[held], bg, backend).rgb
                    per[key].append({"traj": name, "frame": t, **image_metrics(rgb, target, lpips)})
    if upper_bound is None:
        jobs = upper_bound_jobs(dataset, models[upper_bound_from], held, background, settings, backend, lpips)
        upper_bound = [upper_bound_metrics(job) for job in jobs]
    per[UPPER_BOUND] = [dict(item) for item in upper_bound]
    rows = {}
    ub_frames = {(it["traj"], it["frame"]) for it in per[UPPER_BOUND]}
    for key, items in per.items():
        if not items:
            continue
        row: dict[str, Any] = {"label": ROW_LABELS.get(key, key), "frames": len(items)}
        for metric in ("psnr", "ssim", "lpips"):
            vals = [it[metric] for it in items if metric in it]
            if vals:
                row[metric] = float(np.mean(vals))
                row[f"{metric}_std_over_frames"] = float(np.std(vals))
        same = [it["psnr"] for it in items if (it["traj"], it["frame"]) in ub_frames]
        if same:  # the upper bound is fitted on a subset of frames: every row on that subset too
            row["psnr_upper_bound_frames"] = float(np.mean(same))
        row["per_frame"] = items
        rows[key] = row
    return {
        "definition": DEFINITION,
        "holdout_views": [int(v) for v in holdout_views],
        "splits": list(settings.splits),
        "trajectories": names,
        "rows": rows,
    }


def novel_view_table_markdown(result: Mapping[str, Any]) -> str:
    """The table of :func:`novel_view_rows` (rows in the paper's order, best value per column in bold)."""
    rows = result.get("rows", {})
    keys = sorted(rows, key=lambda k: (ROW_ORDER.index(k) if k in ROW_ORDER else len(ROW_ORDER), k))
    metrics = [m for m in ("psnr", "ssim", "lpips") if any(m in rows[k] for k in keys)]
    heads = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}
    models = [k for k in keys if k != UPPER_BOUND]
    best = {
        m: (min if m == "lpips" else max)((rows[k][m] for k in models if m in rows[k]), default=None) for m in metrics
    }
    same = any("psnr_upper_bound_frames" in rows[k] for k in keys)
    lines = [
        "| Appearance model | "
        + " | ".join(heads[m] for m in metrics)
        + " | frames |"
        + (" PSNR on the upper bound's frames |" if same else ""),
        "|---" * (len(metrics) + 2 + same) + "|",
    ]
    for k in keys:
        cells = []
        for m in metrics:
            v = rows[k].get(m)
            s = "-" if v is None or math.isnan(v) else (f"{v:.2f}" if m == "psnr" else f"{v:.4f}")
            cells.append(f"**{s}**" if k != UPPER_BOUND and v is not None and v == best[m] and len(models) > 1 else s)
        sub_psnr = rows[k].get("psnr_upper_bound_frames")
        tail = (f" {sub_psnr:.2f} |" if sub_psnr is not None else " - |") if same else ""
        lines.append(f"| {rows[k]['label']} | " + " | ".join(cells) + f" | {rows[k]['frames']} |" + tail)
    return "\n".join(lines) + "\n"


def write_novel_view_results(result: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """``<out_dir>/novel_views.json`` and ``novel_view_table.md``; returns the JSON path."""
    out = Path(out_dir) / NOVEL_VIEWS_FILE
    atomic_write_json(out, dict(result))
    atomic_write_text(Path(out_dir) / NOVEL_VIEWS_TABLE, novel_view_table_markdown(result))
    return out


def run_novel_view_evaluation(
    dataset_dir: str | os.PathLike,
    models: Mapping[str, SMGS],
    holdout_views: Sequence[int],
    background: Sequence[float],
    out_dir: str | os.PathLike,
    settings: NovelViewSettings,
    backend: str = "torch",
    lpips: Any = None,
    upper_bound: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Open the dataset, compute :func:`novel_view_rows` and write them (see :func:`write_novel_view_results`)."""
    result = novel_view_rows(
        read_dataset(dataset_dir), models, holdout_views, background, settings, backend, lpips, "dual", upper_bound
    )
    return write_novel_view_results(result, out_dir)


def fit_appearance_variant(
    module_cls: type,
    datamodule_cls: type,
    model_kwargs: dict[str, Any],
    data_kwargs: dict[str, Any],
    trainer_kwargs: dict[str, Any],
    seed: int,
    root: str | os.PathLike,
) -> SMGS:
    """Fit one stage-1 variant (an ablation row) in-process, without loggers or checkpoints; returns its SMGS in
    eval mode. ``module_cls``/``datamodule_cls``: the stage-1 LightningModule/DataModule; kwargs as in the config."""
    import lightning as L  # noqa: PLC0415  (only the ablation rows train; the metrics alone do not need Lightning)

    L.seed_everything(seed, workers=True, verbose=False)
    model = module_cls(**{**model_kwargs, "export_ply": False})
    data = datamodule_cls(**data_kwargs)
    kwargs = {
        **trainer_kwargs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root),
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    L.Trainer(**kwargs).fit(model, datamodule=data)
    return model.smgs.eval().requires_grad_(False)
