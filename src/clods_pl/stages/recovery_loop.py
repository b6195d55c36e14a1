"""Stage 2's frame loop: one Adam run per frame for a batch of trajectories (``recover_frame``), the trajectories'
jobs and caches (``open_job``), and the loop over frames (``recover_batch``, ``recover_trajectory``)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clods_pl.errors import ClodsError
from clods_pl.geometry import NodeType, unique_edges
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError, Renderer, recovery_settings
from clods_pl.stages.recovery_losses import compose_verts, frame_loss, rest_edge_lengths
from clods_pl.stages.recovery_metrics import per_frame_gt_metrics


# ----- one frame step for a batch of trajectories --------------------------------------------------------------
@dataclass
class FrameResult:
    """Output of ``recover_frame`` for B trajectories: verts (B, V, 3), photo/edge losses (B,), iterations (B,)."""

    verts: Tensor
    photo: Tensor
    edge: Tensor
    iterations: Tensor


class DynamicsPrior:
    """A stage-3 MeshGraphNet as stage 2's predictor: ``predict(job, t)`` is its one-step prediction of frame t from
    the recovered frames t-2 and t-1 (HANDLE rows prescribed), ``scale`` (3,) its output normaliser's acceleration
    standard deviation (the prior's unit). Evaluation mode, no gradients."""

    def __init__(self, checkpoint: str, device: torch.device | str = "cpu") -> None:
        from clods_pl.dynamics import graph_from_faces  # noqa: PLC0415  (only the dynamics options need stage 3)
        from clods_pl.stages.dynamics import load_dynamics_model  # noqa: PLC0415  (see above)

        self.model = load_dynamics_model(checkpoint, map_location=device).eval().requires_grad_(False)
        self.scale = self.model.output_normalizer.std().detach().to(device).reshape(3)
        self.device, self._graph_from_faces = torch.device(device), graph_from_faces
        self._meshes: dict[int, tuple[Any, Tensor, Tensor]] = {}  # per job: graph, mesh_pos, node_type

    @torch.no_grad()
    def predict(self, job: TrajectoryJob, t: int) -> Tensor:
        if id(job) not in self._meshes:  # a job's topology is built once, not per frame
            faces = torch.as_tensor(np.asarray(job.traj.faces), dtype=torch.int64)
            self._meshes[id(job)] = (
                self._graph_from_faces(faces, job.verts0.shape[0]).to(self.device),
                torch.as_tensor(np.asarray(job.traj.mesh_pos), dtype=torch.float32, device=self.device),
                torch.as_tensor(np.asarray(job.traj.node_type), device=self.device).long().reshape(-1),
            )
        graph, mesh_pos, node_type = self._meshes[id(job)]
        prev = torch.from_numpy(job.cache.verts[t - 2].copy()).to(self.device)
        cur = torch.from_numpy(job.cache.verts[t - 1].copy()).to(self.device)
        return self.model.step(prev, cur, mesh_pos, node_type, graph, job.pinned_positions(t).to(self.device))


def recover_frame(
    renderer: Renderer,
    x_init: Tensor,
    pinned: Tensor,
    pinned_pos: Tensor,
    targets: Sequence[Tensor],
    cameras: Sequence[Any],
    edges: Tensor,
    rest: Tensor,
    config: RecoveryConfig,
    x_pred: Tensor | None = None,
    prior_scale: Tensor | None = None,
) -> FrameResult:
    """Optimise displacements so the renders of ``x_init + dx`` match ``targets``, for B trajectories at once.

    Args:
        renderer: frozen SMGS (``render(verts (V, 3), cameras, background, backend)``).
        x_init: (B, V, 3) world initial guess. pinned: (B, V) bool. pinned_pos: (B, V, 3) prescribed positions
            (only the pinned rows are used). targets: B tensors (C_b, H, W, 4) in [0, 1]. cameras: B camera sets.
        edges: (E, 2) int64. rest: (B, E) rest lengths.
        x_pred: (B, V, 3) a dynamics model's predictions for the prior ``config.prior_weight``, in units of
            ``prior_scale`` (3,); None: no prior.
    Returns:
        ``FrameResult`` with each trajectory's best iterate (lowest total loss) and its loss parts.
    """
    B = x_init.shape[0]
    device = x_init.device
    bg = torch.as_tensor(config.background, dtype=x_init.dtype, device=device)
    dx = torch.zeros_like(x_init, requires_grad=True)
    opt = torch.optim.Adam([dx], lr=config.lr)

    use_prior = x_pred is not None and config.prior_weight > 0

    def losses(b: int) -> tuple[Tensor, Tensor, Tensor]:
        verts = compose_verts(x_init[b], dx[b], pinned[b], pinned_pos[b])
        total, photo, edge = frame_loss(renderer, verts, cameras[b], targets[b], bg, edges, rest[b], config)
        if use_prior:
            free = ~pinned[b]
            total = total + config.prior_weight * (((verts - x_pred[b]) / prior_scale)[free] ** 2).mean()
        return total, photo, edge

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
            since_best[b] = (
                0 if value < best[b] * (1.0 - config.plateau_tol) or best[b] == math.inf else since_best[b] + 1
            )
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
    return FrameResult(
        verts.detach(),
        torch.tensor(best_photo, dtype=torch.float64),
        torch.tensor(best_edge, dtype=torch.float64),
        torch.tensor(used, dtype=torch.int64),
    )


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
            f"frames={frames!r} must look like 'A:B' (e.g. '1:8'; either end may be empty)"
        ) from None
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
            raise ClodsError(
                f"trajectory {self.name}: handle_pos has {self.handle_pos.shape[1]} points but "
                f"node_type marks {int(self.pinned.sum())} HANDLE nodes; regenerate the dataset"
            )

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

    def initial_guess(self, t: int, init: str, prior: DynamicsPrior | None = None) -> Tensor:
        """(V, 3) initial ``x_t`` from the finished frames ``t-1`` and ``t-2`` (``RecoveryConfig.init``)."""
        prev = torch.from_numpy(self.cache.verts[t - 1].copy())
        if init == "dynamics" and prior is not None and t >= 2:
            return prior.predict(self, t).cpu()
        if init in ("velocity", "dynamics") and t >= 2:
            prev = prev + (prev - torch.from_numpy(self.cache.verts[t - 2].copy()))
        return prev

    def target(self, t: int) -> Tensor:
        """(C, H, W, 4) float32 target frame ``t`` restricted to the recovery views."""
        img = torch.as_tensor(self.traj.image_tensor(t), dtype=torch.float32)
        return img[self.views]


FrameCallback = Callable[[TrajectoryJob, int, dict[str, float]], None]


def open_job(
    name: str,
    traj: Any,
    cache_path: str | os.PathLike,
    stage1_hash: str,
    holdout_views: Sequence[int] = (),
    frames: str | None = None,
    overwrite: bool = False,
    evaluate_gt: bool = True,
    config: RecoveryConfig | None = None,
    recompute_stale: bool = False,
) -> TrajectoryJob:
    """Open (resume) or create the cache of one trajectory and check the requested frame window.

    A cache recovered with another stage-1 checkpoint or other settings (``config``, ``holdout_views``) is
    recovered again from frame 0 when ``recompute_stale``, else refused (``MeshCacheError`` naming the change)."""
    T = int(traj.num_frames)
    start, stop = parse_frames(frames, T)
    settings = recovery_settings(config or RecoveryConfig(), holdout_views)
    cache = MeshCache.open(
        cache_path,
        np.asarray(traj.verts0, np.float32),
        np.asarray(traj.faces, np.int64),
        T,
        stage1_hash,
        overwrite=overwrite,
        settings=settings,
        recompute_stale=recompute_stale,
    )
    if start is not None and start > cache.frames_done:
        raise RecoveryConfigError(
            f"frames={frames!r} for {name} needs frames 0..{start - 1} recovered first, but "
            f"{cache_path} has {cache.frames_done}; use frames '{cache.frames_done}:{stop}'"
        )
    gt = None
    if evaluate_gt and bool(getattr(traj, "has_gt", False)):
        gt = torch.as_tensor(np.asarray(traj.load_gt_verts()), dtype=torch.float32)
        if cache.frames_done == 1 and "rmse" not in cache.gt_metrics:
            for k, v in per_frame_gt_metrics(torch.from_numpy(cache.verts[0].copy()), gt[0]).items():
                cache.set_gt_metric(k, 0, v)
    return TrajectoryJob(name, traj, cache, train_views(len(traj.cameras), holdout_views), stop, gt)


def recover_batch(
    jobs: Sequence[TrajectoryJob],
    renderer: Renderer,
    config: RecoveryConfig,
    device: torch.device | str = "cpu",
    on_frame: FrameCallback | None = None,
) -> None:
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
    prior = DynamicsPrior(config.dynamics_checkpoint, device) if config.dynamics_checkpoint else None
    while True:
        todo = [j for j in jobs if j.pending]
        if not todo:
            return
        ts = [j.next_frame for j in todo]
        x_init = torch.stack([j.initial_guess(t, config.init, prior) for j, t in zip(todo, ts)]).to(device)
        x_pred = None
        if prior is not None and config.prior_weight > 0:  # frame 1 (one frame known): the velocity guess
            x_pred = (
                x_init
                if config.init == "dynamics"
                else torch.stack(  # the start is the prediction already
                    [prior.predict(j, t) if t >= 2 else j.initial_guess(t, "velocity") for j, t in zip(todo, ts)]
                ).to(device)
            )
        pin_pos = torch.stack([j.pinned_positions(t) for j, t in zip(todo, ts)]).to(device)
        pinned = torch.stack([j.pinned for j in todo]).to(device)
        rest = torch.stack([j.rest for j in todo]).to(device)
        targets = [j.target(t).to(device) for j, t in zip(todo, ts)]
        with torch.enable_grad():
            res = recover_frame(
                renderer,
                x_init,
                pinned,
                pin_pos,
                targets,
                [cams[id(j)] for j in todo],
                todo[0].edges.to(device),
                rest,
                config,
                x_pred,
                None if prior is None else prior.scale,
            )
        verts = res.verts.cpu()
        for b, (job, t) in enumerate(zip(todo, ts)):
            metrics = {
                "photo_loss": float(res.photo[b]),
                "edge_loss": float(res.edge[b]),
                "iterations": float(res.iterations[b]),
            }
            gt_metrics = per_frame_gt_metrics(verts[b], job.gt_verts[t]) if job.gt_verts is not None else {}
            job.cache.set_frame(
                t, verts[b].numpy(), metrics["photo_loss"], metrics["edge_loss"], int(res.iterations[b]), gt_metrics
            )
            metrics.update(gt_metrics)
            if on_frame is not None:
                on_frame(job, t, metrics)


def recover_trajectory(
    name: str,
    traj: Any,
    renderer: Renderer,
    cache_path: str | os.PathLike,
    stage1_hash: str,
    config: RecoveryConfig | None = None,
    holdout_views: Sequence[int] = (),
    frames: str | None = None,
    overwrite: bool = False,
    device: torch.device | str = "cpu",
    on_frame: FrameCallback | None = None,
    evaluate_gt: bool = True,
) -> MeshCache:
    """Recover (or resume) one trajectory into ``cache_path``; returns the updated cache."""
    config = config or RecoveryConfig()
    job = open_job(name, traj, cache_path, stage1_hash, holdout_views, frames, overwrite, evaluate_gt, config)
    recover_batch([job], renderer, config, device, on_frame)
    return job.cache
