"""Stage 2's trajectory jobs: what to recover for one trajectory (its frames, views, cache, pinned vertices and
ground truth for evaluation) and where each frame starts (``TrajectoryJob.initial_guess``: the previous frame,
constant velocity, or a stage-3 model's prediction through ``DynamicsPrior``). ``open_job`` checks the settings
against an existing cache and resumes it. The loop over frames is ``recovery_loop``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clods_pl.data.splits import training_views
from clods_pl.geometry import NodeType, unique_edges
from clods_pl.geometry.mesh import handle_track
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError, recovery_settings
from clods_pl.stages.recovery_losses import rest_edge_lengths
from clods_pl.stages.recovery_metrics import per_frame_gt_metrics


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
        node_type = torch.as_tensor(np.asarray(self.traj.node_type)).reshape(-1)
        self.pinned = node_type == int(NodeType.HANDLE)
        self.verts0 = verts0
        _, self.handle_pos = handle_track(node_type, getattr(self.traj, "handle_pos", None), self.name)

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
    return TrajectoryJob(
        name, traj, cache, training_views(len(traj.cameras), holdout_views, "stage2.data.holdout_views"), stop, gt
    )
