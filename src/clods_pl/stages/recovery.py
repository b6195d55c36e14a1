"""Stage 2: recover each trajectory's mesh sequence from multi-view video by inverse rendering a frozen SMGS.

Recursive recovery (frame t-1 -> t, t = 1..T-1): initialise ``x_t`` from ``x_{t-1}`` (plus the velocity
``x_{t-1} - x_{t-2}`` when ``extrapolate``), then optimise per-vertex world displacements ``dx (V, 3)`` with Adam so
that the SMGS render of ``x_init + dx`` matches every training view of frame t:

    loss = L1(render rgb over bg, target rgb over bg) + alpha_weight * L1(alpha, target alpha) + gamma * L_edge,
    L_edge = mean over edges of ((|e| - |e_rest|) / |e_rest|)^2, rest lengths from ``verts0``.

HANDLE vertices follow ``handle_pos`` when the dataset gives it, else stay at ``verts0``; they get no gradient.
Several trajectories are optimised together: their displacements are stacked into one ``(B, V, 3)`` tensor with
one Adam, and the per-trajectory losses are summed (Adam is element-wise, so each trajectory's result does not
depend on its batch mates). Each trajectory stops on its own plateau and keeps its best iterate. The mesh cache
(``stages/mesh_cache.py``) is written atomically after every frame, and a rerun resumes from ``frames_done``.
Ground truth, when the dataset has it, is used for evaluation only (RMSE, Chamfer per frame).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from clods_pl.data.splits import STANDARD_SPLITS, names_in_splits
from clods_pl.errors import ClodsError
from clods_pl.geometry import NodeType, unique_edges
from clods_pl.smgs.io import load_smgs
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_metrics import (  # noqa: F401  (re-exported for callers of stage 2)
    NovelViewResult,
    chamfer_distance,
    composite,
    evaluate_novel_views,
    flag_size,
    novel_view_table,
    per_frame_gt_metrics,
    vertex_rmse,
)
from clods_pl.utils.files import checkpoint_digest

RUN_MODE = "predict"
DEFAULT_SPLITS = STANDARD_SPLITS
PLOTS_DIRNAME = "plots"
CLI_IGNORED_OPTIONS = ("log_every_n_frames",)


class RecoveryConfigError(ClodsError):
    """A stage-2 setting is invalid; the message names the setting."""


class Renderer(Protocol):
    """What stage 2 needs from the frozen SMGS."""

    def render(self, verts: Tensor, cameras: Any, background: Tensor, backend: str) -> Any:
        """verts (V, 3) world -> object with ``rgb (C, H, W, 3)`` (over ``background``) and ``alpha (C, H, W, 1)``."""


@dataclass
class RecoveryConfig:
    """Optimisation settings of one frame step.

    Attributes:
        iterations: max Adam steps per frame. lr: Adam learning rate (metres per step scale).
        gamma: weight of the edge-strain loss. alpha_weight: weight of the alpha L1 term (0 = off).
        extrapolate: initialise with constant velocity instead of the previous frame.
        plateau_patience: stop a trajectory after this many steps without relative improvement
            ``plateau_tol``. min_iterations: never stop before this many steps.
        background: (3,) colour both render and target are composited over. backend: rasterizer backend.
    """

    iterations: int = 150
    lr: float = 2e-3
    gamma: float = 1.0
    alpha_weight: float = 1.0
    extrapolate: bool = True
    plateau_patience: int = 20
    plateau_tol: float = 1e-4
    min_iterations: int = 10
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.min_iterations < 0 or self.plateau_patience < 1:
            raise RecoveryConfigError("model.iterations and model.min_iterations must be >= 0 and "
                                      "model.plateau_patience >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RecoveryConfigError(f"model.lr must be a positive number, got {self.lr}")
        if self.gamma < 0 or self.alpha_weight < 0:
            raise RecoveryConfigError("model.gamma and model.alpha_weight must be >= 0")
        if len(self.background) != 3:
            raise RecoveryConfigError(f"model.background must be 3 floats, got {self.background}")


def recovery_settings(config: RecoveryConfig, holdout_views: Sequence[int]) -> dict[str, Any]:
    """What determines a recovered frame, as stored in each mesh cache: every ``RecoveryConfig`` field and the
    held-out views (a resume with other settings would mix two recoveries in one sequence)."""
    out: dict[str, Any] = {f"model.{k}": (list(v) if isinstance(v, tuple) else v)
                           for k, v in dataclasses.asdict(config).items()}
    out["data.holdout_views"] = sorted(int(v) for v in holdout_views)
    return out


# ----- losses ---------------------------------------------------------------------------------------------
def rest_edge_lengths(verts0: Tensor, edges: Tensor) -> Tensor:
    """(E,) rest lengths of ``edges (E, 2)`` on ``verts0 (V, 3)``, floored to avoid division by zero."""
    return (verts0[edges[:, 0]] - verts0[edges[:, 1]]).norm(dim=-1).clamp_min(1e-8)


def edge_strain_loss(verts: Tensor, edges: Tensor, rest: Tensor) -> Tensor:
    """Mean squared relative edge strain ``((|e| - |e_rest|) / |e_rest|)^2``.

    Args:
        verts: (..., V, 3) world. edges: (E, 2) int64. rest: (..., E) or (E,) rest lengths.
    Returns:
        (...,) loss, zero at rest.
    """
    d = verts[..., edges[:, 0], :] - verts[..., edges[:, 1], :]
    length = (d.pow(2).sum(-1) + 1e-20).sqrt()
    return ((length - rest) / rest).pow(2).mean(-1)


def photometric_loss(rgb: Tensor, alpha: Tensor, target_rgba: Tensor, background: Tensor,
                     alpha_weight: float) -> Tensor:
    """L1 of render vs target, both over ``background``, plus optional alpha L1.

    Args:
        rgb: (C, H, W, 3) render over ``background``. alpha: (C, H, W, 1). target_rgba: (C, H, W, 4) in [0, 1].
    Returns:
        scalar.
    """
    loss = (rgb - composite(target_rgba, background)).abs().mean()
    if alpha_weight > 0:
        loss = loss + alpha_weight * (alpha - target_rgba[..., 3:4]).abs().mean()
    return loss


def compose_verts(x_init: Tensor, dx: Tensor, pinned: Tensor, pinned_pos: Tensor) -> Tensor:
    """(..., V, 3) ``x_init + dx`` with the ``pinned (..., V)`` rows replaced by ``pinned_pos`` (no gradient there)."""
    return torch.where(pinned[..., None], pinned_pos, x_init + dx)


def frame_loss(renderer: Renderer, verts: Tensor, cameras: Any, target: Tensor, background: Tensor,
               edges: Tensor, rest: Tensor, config: RecoveryConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Total loss of one trajectory at ``verts (V, 3)`` against ``target (C, H, W, 4)``.

    Returns:
        (total, photometric (detached), edge (detached)) scalars; total = photo + gamma * edge.
    """
    out = renderer.render(verts, cameras, background, config.backend)
    photo = photometric_loss(out.rgb, out.alpha, target, background, config.alpha_weight)
    edge = edge_strain_loss(verts, edges, rest)
    return photo + config.gamma * edge, photo.detach(), edge.detach()


# ----- one frame step for a batch of trajectories --------------------------------------------------------------
@dataclass
class FrameResult:
    """Output of ``recover_frame`` for B trajectories: verts (B, V, 3), photo/edge losses (B,), iterations (B,)."""

    verts: Tensor
    photo: Tensor
    edge: Tensor
    iterations: Tensor


def recover_frame(renderer: Renderer, x_init: Tensor, pinned: Tensor, pinned_pos: Tensor,
                  targets: Sequence[Tensor], cameras: Sequence[Any], edges: Tensor, rest: Tensor,
                  config: RecoveryConfig) -> FrameResult:
    """Optimise displacements so the renders of ``x_init + dx`` match ``targets``, for B trajectories at once.

    Args:
        renderer: frozen SMGS (``render(verts (V, 3), cameras, background, backend)``).
        x_init: (B, V, 3) world initial guess. pinned: (B, V) bool. pinned_pos: (B, V, 3) prescribed positions
            (only the pinned rows are used). targets: B tensors (C_b, H, W, 4) in [0, 1]. cameras: B camera sets.
        edges: (E, 2) int64. rest: (B, E) rest lengths.
    Returns:
        ``FrameResult`` with each trajectory's best iterate (lowest total loss) and its loss parts.
    """
    B = x_init.shape[0]
    device = x_init.device
    bg = torch.as_tensor(config.background, dtype=x_init.dtype, device=device)
    dx = torch.zeros_like(x_init, requires_grad=True)
    opt = torch.optim.Adam([dx], lr=config.lr)

    def losses(b: int) -> tuple[Tensor, Tensor, Tensor]:
        verts = compose_verts(x_init[b], dx[b], pinned[b], pinned_pos[b])
        return frame_loss(renderer, verts, cameras[b], targets[b], bg, edges, rest[b], config)

    best = [math.inf] * B
    best_dx = torch.zeros_like(x_init)
    best_photo, best_edge = [0.0] * B, [0.0] * B
    since_best, used = [0] * B, [0] * B
    active = list(range(B))
    for it in range(config.iterations + 1):  # +1: the last pass only evaluates the final iterate
        if not active:
            break
        opt.zero_grad(set_to_none=False)
        parts = [losses(b) for b in active]
        total = torch.stack([loss for loss, _, _ in parts]).sum()
        # one host sync per iteration for every trajectory's loss parts (not one per trajectory and part)
        values = torch.stack([torch.stack([t.detach().double() for t in part]) for part in parts]).tolist()
        still: list[int] = []
        for b, (value, photo, edge) in zip(active, values):
            since_best[b] = 0 if value < best[b] * (1.0 - config.plateau_tol) or best[b] == math.inf \
                else since_best[b] + 1
            if value < best[b]:
                best[b], best_photo[b], best_edge[b] = value, photo, edge
                best_dx[b] = dx.detach()[b]
            used[b] = it
            if it < config.iterations and (it < config.min_iterations or since_best[b] < config.plateau_patience):
                still.append(b)
        if it == config.iterations:
            break
        total.backward()
        opt.step()
        active = still
    verts = compose_verts(x_init, best_dx, pinned, pinned_pos)
    return FrameResult(verts.detach(), torch.tensor(best_photo, dtype=torch.float64),
                       torch.tensor(best_edge, dtype=torch.float64), torch.tensor(used, dtype=torch.int64))


# ----- trajectories -------------------------------------------------------------------------------------------
def parse_frames(frames: str | None, num_frames: int) -> tuple[int | None, int]:
    """``"A:B"`` -> (A, B) with B exclusive; ``None``/``""`` -> (None, T); missing ends -> None / T."""
    if not frames:
        return None, num_frames
    parts = str(frames).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a = int(parts[0]) if parts[0].strip() else None
        b = int(parts[1]) if parts[1].strip() else num_frames
    except ValueError:
        raise RecoveryConfigError(
            f"frames={frames!r} must look like 'A:B' (e.g. '1:8'; either end may be empty)") from None
    if b > num_frames or b < 1 or (a is not None and not 0 <= a < b):
        raise RecoveryConfigError(f"frames={frames!r} is outside 0..{num_frames} (A < B <= {num_frames} frames)")
    return a, b


def train_views(num_views: int, holdout_views: Sequence[int]) -> list[int]:
    """Indices of the views used for recovery: all except ``holdout_views`` (checked)."""
    bad = [v for v in holdout_views if not 0 <= int(v) < num_views]
    if bad:
        raise RecoveryConfigError(f"data.holdout_views {bad} are outside 0..{num_views - 1}")
    views = [i for i in range(num_views) if i not in {int(v) for v in holdout_views}]
    if not views:
        raise RecoveryConfigError(f"data.holdout_views holds out all {num_views} views; keep at least one")
    return views


@dataclass
class TrajectoryJob:
    """Everything the frame loop needs for one trajectory.

    Attributes:
        traj: dataset trajectory (``cameras``, ``faces``, ``node_type``, ``verts0``, ``handle_pos``,
            ``image_tensor(t)``). cache: its mesh cache. views: camera indices used. stop: last frame + 1.
        gt_verts: (T, V, 3) ground truth for evaluation only, or None.
    """

    name: str
    traj: Any
    cache: MeshCache
    views: list[int]
    stop: int
    gt_verts: Tensor | None = None
    pinned: Tensor = field(init=False)
    rest: Tensor = field(init=False)
    edges: Tensor = field(init=False)

    def __post_init__(self) -> None:
        verts0 = torch.as_tensor(np.asarray(self.traj.verts0), dtype=torch.float32)
        self.edges = unique_edges(torch.as_tensor(np.asarray(self.traj.faces), dtype=torch.int64))
        self.rest = rest_edge_lengths(verts0, self.edges)
        self.pinned = torch.as_tensor(np.asarray(self.traj.node_type)) == int(NodeType.HANDLE)
        self.verts0 = verts0
        handle = getattr(self.traj, "handle_pos", None)
        self.handle_pos = None if handle is None else torch.as_tensor(np.asarray(handle), dtype=torch.float32)
        if self.handle_pos is not None and self.handle_pos.shape[1] != int(self.pinned.sum()):
            raise ClodsError(f"trajectory {self.name}: handle_pos has {self.handle_pos.shape[1]} points but "
                             f"node_type marks {int(self.pinned.sum())} HANDLE nodes; regenerate the dataset")

    @property
    def next_frame(self) -> int:
        return self.cache.frames_done

    @property
    def pending(self) -> bool:
        return self.next_frame < self.stop

    def pinned_positions(self, t: int) -> Tensor:
        """(V, 3): ``verts0`` with HANDLE rows at ``handle_pos[t]`` when given."""
        pos = self.verts0.clone()
        if self.handle_pos is not None:
            pos[self.pinned] = self.handle_pos[t]
        return pos

    def initial_guess(self, t: int, extrapolate: bool) -> Tensor:
        """(V, 3) initial ``x_t`` from the finished frames ``t-1`` (and ``t-2``)."""
        prev = torch.from_numpy(self.cache.verts[t - 1].copy())
        if extrapolate and t >= 2:
            prev = prev + (prev - torch.from_numpy(self.cache.verts[t - 2].copy()))
        return prev

    def target(self, t: int) -> Tensor:
        """(C, H, W, 4) float32 target frame ``t`` restricted to the recovery views."""
        img = torch.as_tensor(self.traj.image_tensor(t), dtype=torch.float32)
        return img[self.views]


FrameCallback = Callable[[TrajectoryJob, int, dict[str, float]], None]


def open_job(name: str, traj: Any, cache_path: str | os.PathLike, stage1_hash: str,
             holdout_views: Sequence[int] = (), frames: str | None = None, overwrite: bool = False,
             evaluate_gt: bool = True, config: RecoveryConfig | None = None,
             recompute_stale: bool = False) -> TrajectoryJob:
    """Open (resume) or create the cache of one trajectory and check the requested frame window.

    A cache recovered with another stage-1 checkpoint or other settings (``config``, ``holdout_views``) is
    recovered again from frame 0 when ``recompute_stale``, else refused (``MeshCacheError`` naming the change)."""
    T = int(traj.num_frames)
    start, stop = parse_frames(frames, T)
    settings = recovery_settings(config or RecoveryConfig(), holdout_views)
    cache = MeshCache.open(cache_path, np.asarray(traj.verts0, np.float32), np.asarray(traj.faces, np.int64), T,
                           stage1_hash, overwrite=overwrite, settings=settings, recompute_stale=recompute_stale)
    if start is not None and start > cache.frames_done:
        raise RecoveryConfigError(f"frames={frames!r} for {name} needs frames 0..{start - 1} recovered first, but "
                                  f"{cache_path} has {cache.frames_done}; use frames '{cache.frames_done}:{stop}'")
    gt = None
    if evaluate_gt and bool(getattr(traj, "has_gt", False)):
        gt = torch.as_tensor(np.asarray(traj.load_gt_verts()), dtype=torch.float32)
        if cache.frames_done == 1 and "rmse" not in cache.gt_metrics:
            for k, v in per_frame_gt_metrics(torch.from_numpy(cache.verts[0].copy()), gt[0]).items():
                cache.set_gt_metric(k, 0, v)
    return TrajectoryJob(name, traj, cache, train_views(len(traj.cameras), holdout_views), stop, gt)


def recover_batch(jobs: Sequence[TrajectoryJob], renderer: Renderer, config: RecoveryConfig,
                  device: torch.device | str = "cpu", on_frame: FrameCallback | None = None) -> None:
    """Run the frame loop for several trajectories together until each reaches its ``stop`` frame.

    Trajectories may be at different frames (e.g. after a resume); each step advances every pending one by one
    frame and saves its cache. ``on_frame(job, t, metrics)`` is called after each saved frame.
    """
    device = torch.device(device)
    jobs = list(jobs)
    sizes = {j.verts0.shape[0] for j in jobs}
    if len(sizes) > 1:
        raise RecoveryConfigError(f"data.batch_size > 1 needs trajectories with one vertex count, got {sorted(sizes)}")
    edges_set = {tuple(j.edges.shape) for j in jobs}
    if len(edges_set) > 1 or any(not torch.equal(j.edges, jobs[0].edges) for j in jobs):
        raise RecoveryConfigError("data.batch_size > 1 needs trajectories with one mesh topology; use batch_size 1")
    cams = {id(j): j.traj.cameras[j.views].to(device) for j in jobs}
    while True:
        todo = [j for j in jobs if j.pending]
        if not todo:
            return
        ts = [j.next_frame for j in todo]
        x_init = torch.stack([j.initial_guess(t, config.extrapolate) for j, t in zip(todo, ts)]).to(device)
        pin_pos = torch.stack([j.pinned_positions(t) for j, t in zip(todo, ts)]).to(device)
        pinned = torch.stack([j.pinned for j in todo]).to(device)
        rest = torch.stack([j.rest for j in todo]).to(device)
        targets = [j.target(t).to(device) for j, t in zip(todo, ts)]
        with torch.enable_grad():
            res = recover_frame(renderer, x_init, pinned, pin_pos, targets, [cams[id(j)] for j in todo],
                                todo[0].edges.to(device), rest, config)
        verts = res.verts.cpu()
        for b, (job, t) in enumerate(zip(todo, ts)):
            metrics = {"photo_loss": float(res.photo[b]), "edge_loss": float(res.edge[b]),
                       "iterations": float(res.iterations[b])}
            gt_metrics = per_frame_gt_metrics(verts[b], job.gt_verts[t]) if job.gt_verts is not None else {}
            job.cache.set_frame(t, verts[b].numpy(), metrics["photo_loss"], metrics["edge_loss"],
                                int(res.iterations[b]), gt_metrics)
            metrics.update(gt_metrics)
            if on_frame is not None:
                on_frame(job, t, metrics)


def recover_trajectory(name: str, traj: Any, renderer: Renderer, cache_path: str | os.PathLike, stage1_hash: str,
                       config: RecoveryConfig | None = None, holdout_views: Sequence[int] = (),
                       frames: str | None = None, overwrite: bool = False, device: torch.device | str = "cpu",
                       on_frame: FrameCallback | None = None, evaluate_gt: bool = True) -> MeshCache:
    """Recover (or resume) one trajectory into ``cache_path``; returns the updated cache."""
    config = config or RecoveryConfig()
    job = open_job(name, traj, cache_path, stage1_hash, holdout_views, frames, overwrite, evaluate_gt, config)
    recover_batch([job], renderer, config, device, on_frame)
    return job.cache


def plot_rmse(cache: MeshCache, name: str, out_path: str | os.PathLike, size: float | None = None) -> Path | None:
    """Plot the per-frame recovery RMSE (relative to ``size`` when given) to ``out_path``; None without GT."""
    rmse = cache.gt_metrics.get("rmse")
    if rmse is None:
        return None
    import matplotlib  # noqa: PLC0415  (plots only: keeps matplotlib out of the stage's import time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3))
    y = rmse[: cache.frames_done] / size * 100 if size else rmse[: cache.frames_done]
    ax.plot(np.arange(cache.frames_done), y, marker="o", ms=3)
    ax.set_xlabel("frame")
    ax.set_ylabel("vertex RMSE (% of flag size)" if size else "vertex RMSE")
    ax.set_title(f"stage-2 recovery: {name}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def load_stage1(stage1_checkpoint: str, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """The frozen SMGS of a stage-1 checkpoint (``smgs.io.load_smgs``: strict, with the background and backend it
    was fitted with in ``smgs.fitted_with``) and the checkpoint's digest (weights and settings)."""
    path = Path(stage1_checkpoint)
    if not path.is_file():
        raise RecoveryConfigError(f"model.stage1_checkpoint {path} does not exist; run stage 1 first (clods-pl stage1)")
    smgs, _settings = load_smgs(str(path))
    smgs = smgs.to(device).eval()
    smgs.requires_grad_(False)
    return smgs, checkpoint_digest(path)


def with_stage1_background(config: RecoveryConfig, renderer: Any, explicit: bool) -> RecoveryConfig:
    """``config`` with the background stage 1 fitted the SMGS over, unless the user set ``model.background``
    (``explicit``): targets and renders are composited over it, so by default stage 2 cannot disagree with
    stage 1."""
    fitted = getattr(renderer, "fitted_with", None)
    if explicit or fitted is None:
        return config
    return dataclasses.replace(config, background=tuple(float(v) for v in fitted.background))


def _read_dataset(dataset_dir: str) -> Any:
    from clods_pl.data.format import read_dataset  # noqa: PLC0415  (the data package loads lazily)

    return read_dataset(dataset_dir)


def recover_cli(dataset_dir: str, stage1_checkpoint: str, cache_dir: str, traj: str, frames: str | None = None,
                holdout_views: Sequence[int] = (), overwrite: bool = False, device: str = "cpu",
                **options: Any) -> MeshCache:
    """``clods-pl recover --traj NAME --frames A:B``: recover one trajectory; ``options`` are the stage-2 model
    settings (``RecoveryConfig`` fields: iterations, lr, gamma, ...; ``log_every_n_frames`` is accepted and
    ignored). Prints one line per frame."""
    fields = set(RecoveryConfig.__dataclass_fields__)
    unknown = sorted(k for k in options if k not in fields and k not in CLI_IGNORED_OPTIONS)
    if unknown:
        raise RecoveryConfigError(f"unknown stage-2 model settings {unknown}; valid: {sorted(fields)}")
    explicit_bg = options.get("background") is not None
    config = RecoveryConfig(**{k: (tuple(v) if k == "background" else v) for k, v in options.items()
                               if k in fields and not (k == "background" and v is None)})
    ds = _read_dataset(dataset_dir)
    trajectory = ds.trajectory(traj)
    smgs, h = load_stage1(stage1_checkpoint, device)
    config = with_stage1_background(config, smgs, explicit_bg)

    def report(job: TrajectoryJob, t: int, m: dict[str, float]) -> None:
        extra = f" rmse {m['rmse']:.5f}" if "rmse" in m else ""
        print(f"[recover] {traj} frame {t}/{job.stop - 1}: photo {m['photo_loss']:.5f} edge {m['edge_loss']:.2e} "
              f"iters {int(m['iterations'])}{extra}", flush=True)

    cache = recover_trajectory(traj, trajectory, smgs, Path(cache_dir) / f"{traj}.npz", h, config, holdout_views,
                               frames, overwrite, device, report)
    plot_rmse(cache, traj, Path(cache_dir).parent / PLOTS_DIRNAME / f"{traj}_rmse.png",
              flag_size(np.asarray(trajectory.mesh_pos)))
    return cache


# ----- Lightning ----------------------------------------------------------------------------------------------
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

    def __init__(self, dataset_dir: str, splits: list[str] = list(DEFAULT_SPLITS), holdout_views: list[int] = [],
                 trajectories: list[str] | None = None, frames: str | None = None, batch_size: int = 1) -> None:
        super().__init__()
        if batch_size < 1:
            raise RecoveryConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.dataset_dir, self.splits = str(dataset_dir), list(splits)
        self.holdout_views, self.trajectories = [int(v) for v in holdout_views], trajectories
        self.frames, self.batch_size = frames, batch_size
        self.items: list[RecoveryItem] = []

    def read_dataset(self) -> Any:
        return _read_dataset(self.dataset_dir)

    def setup(self, stage: str | None = None) -> None:
        ds = self.read_dataset()
        names = names_in_splits(ds, self.splits)
        if self.trajectories is not None:
            unknown = [n for n in self.trajectories if n not in names]
            if unknown:
                raise RecoveryConfigError(f"data.trajectories {unknown} are not in splits {self.splits} of "
                                          f"{self.dataset_dir}")
            names = [n for n in names if n in set(self.trajectories)]
        self.items = [RecoveryItem(n, self.dataset_dir, tuple(self.holdout_views), self.frames) for n in names]

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.items, batch_size=self.batch_size, shuffle=False, collate_fn=_collate_items)


class RecoveryModule(L.LightningModule):
    """Stage 2 as a predict-only LightningModule; ``trainer.predict(module, datamodule)`` fills ``cache_dir``.

    Args:
        stage1_checkpoint: stage-1 SMGS checkpoint (its sha256 is stored in every cache).
        cache_dir: folder of ``<traj>.npz`` caches (``runs/<name>/stage2/meshes``); plots go to ``../plots``.
        iterations, lr, gamma, alpha_weight, extrapolate, plateau_patience, plateau_tol, min_iterations,
        background, backend: see ``RecoveryConfig``; ``background`` None (default): the one stage 1 fitted over.
        overwrite: rebuild every existing cache.
        log_every_n_frames: log per-frame metrics every n frames (1 = every frame).
        recompute_stale: recover again (instead of refusing) a cache made with another stage-1 checkpoint or other
            settings; the orchestrator sets it for ``clods-pl pipeline``, which repairs stale stages.
    """

    RUN_MODE = RUN_MODE

    def __init__(self, stage1_checkpoint: str, cache_dir: str, iterations: int = 150, lr: float = 2e-3,
                 gamma: float = 1.0, alpha_weight: float = 1.0, extrapolate: bool = True,
                 plateau_patience: int = 20, plateau_tol: float = 1e-4, min_iterations: int = 10,
                 background: tuple[float, float, float] | None = None, backend: str = "torch",
                 overwrite: bool = False, log_every_n_frames: int = 1, recompute_stale: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = RecoveryConfig(iterations, lr, gamma, alpha_weight, extrapolate, plateau_patience,
                                     plateau_tol, min_iterations,
                                     (1.0, 1.0, 1.0) if background is None else tuple(background), backend)
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
            self._datasets[dataset_dir] = _read_dataset(dataset_dir)
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

    def predict_step(self, batch: list[RecoveryItem], batch_idx: int = 0) -> list[dict[str, Any]]:
        # Lightning predicts under torch.inference_mode(); the frame loop needs autograd.
        with torch.inference_mode(False), torch.enable_grad():
            renderer = self._ensure_renderer()
            jobs = []
            for item in batch:
                traj = self.dataset(item.dataset_dir).trajectory(item.name)
                jobs.append(open_job(item.name, traj, self.cache_dir / f"{item.name}.npz", self.stage1_hash,
                                     item.holdout_views, item.frames, self.overwrite, config=self.config,
                                     recompute_stale=self.recompute_stale))
            recover_batch(jobs, renderer, self.config, self.device, self._on_frame)
        out = []
        for job in jobs:
            size = flag_size(np.asarray(job.traj.mesh_pos))
            plot_rmse(job.cache, job.name, self.cache_dir.parent / PLOTS_DIRNAME / f"{job.name}_rmse.png", size)
            summary: dict[str, Any] = {"name": job.name, "frames_done": job.cache.frames_done,
                                       "cache": str(job.cache.path)}
            rmse = job.cache.gt_metrics.get("rmse")
            if rmse is not None:
                summary["rmse_mean"] = float(np.nanmean(rmse[: job.cache.frames_done]))
                summary["rmse_rel_mean"] = summary["rmse_mean"] / size
            out.append(summary)
        return out
