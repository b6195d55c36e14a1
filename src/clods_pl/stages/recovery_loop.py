"""Stage 2's frame loop: one Adam run per frame for a batch of trajectories (``recover_frame``) and the loop over
frames (``recover_batch``, ``recover_trajectory``); the trajectories' jobs and caches are ``recovery_jobs``."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clods_pl.errors import Interrupted
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError, Renderer
from clods_pl.stages.recovery_jobs import DynamicsPrior, TrajectoryJob, open_job
from clods_pl.stages.recovery_losses import compose_verts, frame_losses, smoothing_operator
from clods_pl.stages.recovery_metrics import per_frame_gt_metrics


# ----- one frame step for a batch of trajectories --------------------------------------------------------------
@dataclass
class FrameResult:
    """Output of ``recover_frame`` for B trajectories: verts (B, V, 3), photo/edge losses (B,), iterations (B,),
    the total loss (B,) they minimised (photo + gamma edge + prior), and the iteration (B,) of the kept iterate
    (0: no step improved on the initial guess)."""

    verts: Tensor
    photo: Tensor
    edge: Tensor
    iterations: Tensor
    loss: Tensor
    best_iteration: Tensor


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
    smooth: Tensor | None = None,
) -> FrameResult:
    """Optimise displacements so the renders of ``x_init + dx`` match ``targets``, for B trajectories at once.

    Args:
        renderer: frozen SMGS (``render(verts (V, 3), cameras, background, backend)``).
        x_init: (B, V, 3) world initial guess. pinned: (B, V) bool. pinned_pos: (B, V, 3) prescribed positions
            (only the pinned rows are used). targets: B tensors (C_b, H, W, 4) in [0, 1]. cameras: B camera sets.
        edges: (E, 2) int64. rest: (B, E) rest lengths.
        x_pred: (B, V, 3) a dynamics model's predictions for the prior ``config.prior_weight``, in units of
            ``prior_scale`` (3,); None: no prior.
        smooth: (V, V) ``smoothing_operator`` of this mesh for ``config.smoothing`` (made here when None).
    Returns:
        ``FrameResult`` with each trajectory's best iterate (lowest total loss) and its loss parts.
    """
    B = x_init.shape[0]
    device = x_init.device
    bg = torch.as_tensor(config.background, dtype=x_init.dtype, device=device)
    step = torch.zeros_like(x_init, requires_grad=True)  # Adam's variable: the displacement, or u with smoothing
    opt = torch.optim.Adam([step], lr=config.lr)
    if smooth is None and config.smoothing > 0:
        smooth = smoothing_operator(edges, x_init.shape[1], config.smoothing, x_init.dtype)
    smooth = None if smooth is None else smooth.to(device, x_init.dtype)

    def displacement(u: Tensor) -> Tensor:
        return u if smooth is None else torch.matmul(smooth, u)

    use_prior = x_pred is not None and config.prior_weight > 0

    if len({tuple(t.shape) for t in targets}) == 1:
        targets = torch.stack(list(targets))  # once per frame, not once per iteration

    def losses(idx: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Total, photometric and edge loss (each (len(idx),)) of the trajectories ``idx``, rendered together."""
        if len(idx) == B:  # every trajectory still optimising: no gathers
            ix: Tensor | slice = slice(None)
            cams, tgts = list(cameras), targets
        else:
            ix = torch.tensor(idx, device=device)
            cams = [cameras[b] for b in idx]
            tgts = targets[ix] if isinstance(targets, Tensor) else [targets[b] for b in idx]
        verts = compose_verts(x_init[ix], displacement(step[ix]), pinned[ix], pinned_pos[ix])
        total, photo, edge = frame_losses(renderer, verts, cams, tgts, bg, edges, rest[ix], config)
        if use_prior:
            free = (~pinned[ix]).unsqueeze(-1).to(verts.dtype)  # mean over the free vertices' coordinates
            sq = ((verts - x_pred[ix]) / prior_scale) ** 2 * free
            total = total + config.prior_weight * sq.sum((-2, -1)) / (3.0 * free.sum((-2, -1)))
        return total, photo, edge

    best = [math.inf] * B
    best_step = torch.zeros_like(x_init)
    best_photo, best_edge = [0.0] * B, [0.0] * B
    since_best, used, best_it = [0] * B, [0] * B, [0] * B
    active = list(range(B))
    for it in range(config.iterations + 1):  # +1: the last pass only evaluates the final iterate
        if not active:
            break
        opt.zero_grad(set_to_none=False)
        total_b, photo_b, edge_b = losses(active)
        total = total_b.sum()
        # one host sync per iteration for every trajectory's loss parts (not one per trajectory and part)
        values = torch.stack([total_b.detach(), photo_b, edge_b], -1).double().tolist()
        still: list[int] = []
        for b, (value, photo, edge) in zip(active, values):
            since_best[b] = (
                0 if value < best[b] * (1.0 - config.plateau_tol) or best[b] == math.inf else since_best[b] + 1
            )
            if value < best[b]:
                best[b], best_photo[b], best_edge[b], best_it[b] = value, photo, edge, it
                best_step[b] = step.detach()[b]
            used[b] = it
            if it < config.iterations and (it < config.min_iterations or since_best[b] < config.plateau_patience):
                still.append(b)
        if it == config.iterations:
            break
        total.backward()
        opt.step()
        if config.lr_final != 1.0:  # exponential decay to lr * lr_final at the last iteration
            opt.param_groups[0]["lr"] = config.lr * config.lr_final ** ((it + 1) / max(1, config.iterations))
        active = still
    verts = compose_verts(x_init, displacement(best_step), pinned, pinned_pos)
    return FrameResult(
        verts.detach(),
        torch.tensor(best_photo, dtype=torch.float64),
        torch.tensor(best_edge, dtype=torch.float64),
        torch.tensor(used, dtype=torch.int64),
        torch.tensor(best, dtype=torch.float64),
        torch.tensor(best_it, dtype=torch.int64),
    )


FrameCallback = Callable[[TrajectoryJob, int, dict[str, float]], None]


# ----- trajectories -------------------------------------------------------------------------------------------
def recover_batch(
    jobs: Sequence[TrajectoryJob],
    renderer: Renderer,
    config: RecoveryConfig,
    device: torch.device | str = "cpu",
    on_frame: FrameCallback | None = None,
    say: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Run the frame loop for several trajectories together until each reaches its ``stop`` frame.

    Trajectories may be at different frames (e.g. after a resume); each step advances every pending one by one
    frame and saves its cache. ``on_frame(job, t, metrics)`` is called after each saved frame; ``say`` (e.g.
    ``print``) gets one progress line per step: frames done, iterations, seconds per step and the ETA.
    ``should_stop()`` (e.g. "a SIGTERM arrived") is asked after each saved step; True raises ``Interrupted``.
    """
    device = torch.device(device)
    jobs = list(jobs)
    total = sum(max(0, j.stop - j.next_frame) for j in jobs if j.pending)
    done, start, warned = 0, time.perf_counter(), False
    sizes = {j.verts0.shape[0] for j in jobs}
    if len(sizes) > 1:
        raise RecoveryConfigError(f"data.batch_size > 1 needs trajectories with one vertex count, got {sorted(sizes)}")
    edges_set = {tuple(j.edges.shape) for j in jobs}
    if len(edges_set) > 1 or any(not torch.equal(j.edges, jobs[0].edges) for j in jobs):
        raise RecoveryConfigError("data.batch_size > 1 needs trajectories with one mesh topology; use batch_size 1")
    cams = {id(j): j.traj.cameras[j.views].to(device) for j in jobs}
    prior = DynamicsPrior(config.dynamics_checkpoint, device) if config.dynamics_checkpoint else None
    smooth = (  # one inverse for every frame of the batch (one topology)
        smoothing_operator(jobs[0].edges, jobs[0].verts0.shape[0], config.smoothing).to(device)
        if config.smoothing > 0 and jobs
        else None
    )
    while True:
        todo = [j for j in jobs if j.pending]
        if not todo:
            return
        ts = [j.next_frame for j in todo]
        starts = (config.init, *config.extra_starts)
        S = len(starts)  # every start of every trajectory in one batch, start-major: member s * B + b
        x_init = torch.stack([j.initial_guess(t, s, prior) for s in starts for j, t in zip(todo, ts)]).to(device)
        x_pred = None
        if prior is not None and config.prior_weight > 0:  # frame 1 (one frame known): the velocity guess
            x_pred = (
                x_init[: len(todo)]
                if config.init == "dynamics"
                else torch.stack(  # the first start is the prediction already
                    [prior.predict(j, t) if t >= 2 else j.initial_guess(t, "velocity") for j, t in zip(todo, ts)]
                ).to(device)
            ).repeat(S, 1, 1)
        pin_pos = torch.stack([j.pinned_positions(t) for j, t in zip(todo, ts)]).to(device).repeat(S, 1, 1)
        pinned = torch.stack([j.pinned for j in todo]).to(device).repeat(S, 1)
        rest = torch.stack([j.rest for j in todo]).to(device).repeat(S, 1)
        targets = [j.target(t).to(device) for j, t in zip(todo, ts)] * S
        with torch.enable_grad():
            res = recover_frame(
                renderer,
                x_init,
                pinned,
                pin_pos,
                targets,
                [cams[id(j)] for j in todo] * S,
                todo[0].edges.to(device),
                rest,
                config,
                x_pred,
                None if prior is None else prior.scale,
                smooth,
            )
        if S > 1:  # per trajectory, the start that reached the lowest loss
            B = len(todo)
            won = res.loss.reshape(S, B).argmin(0)
            pick = won * B + torch.arange(B)
            res = FrameResult(*(getattr(res, f.name)[pick] for f in dataclasses.fields(res)))
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
        stuck = [
            (job.name, t) for b, (job, t) in enumerate(zip(todo, ts)) if config.iterations and not res.best_iteration[b]
        ]
        if stuck and not warned:
            warned = True
            name, t = stuck[0]
            notice = (
                f"[clods-pl] stage 2: {name} frame {t}: no optimiser step improved on the initial guess, the frame "
                f"keeps it; if many frames do, stage2.model.lr ({config.lr:g} m) is too large for this mesh, or set "
                "stage2.model.smoothing (e.g. 5) for a fine mesh (docs/results.md)"
            )
            say(notice) if say is not None else print(notice, file=sys.stderr, flush=True)
        done += len(todo)
        if say is not None:
            say(progress_line(todo, ts, res.iterations, done, total, time.perf_counter() - start))
        if should_stop is not None and should_stop() and any(j.pending for j in jobs):
            raise Interrupted(
                f"stage 2 stopped by SIGTERM after {done} of {total} trajectory-frames; every finished frame is "
                "saved, rerun the same command to resume"
            )


def progress_line(
    todo: Sequence[TrajectoryJob], ts: Sequence[int], iterations: Tensor, done: int, total: int, elapsed: float
) -> str:
    """One line per batched frame step: which frames, optimiser iterations, time per frame and the ETA."""
    names = todo[0].name if len(todo) == 1 else f"{todo[0].name} .. {todo[-1].name} ({len(todo)} together)"
    frames = f"frame {ts[0]}/{todo[0].stop - 1}" if len(set(ts)) == 1 else f"frames {min(ts)}-{max(ts)}"
    eta = elapsed / done * (total - done)
    return (
        f"[clods-pl] stage 2: {names}, {frames}, {int(iterations.float().mean())} iterations; "
        f"{done}/{total} trajectory-frames in {elapsed:.0f} s, ETA {eta:.0f} s"
    )


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
    say: Callable[[str], None] | None = None,
) -> MeshCache:
    """Recover (or resume) one trajectory into ``cache_path``; returns the updated cache (``say``: progress lines,
    see :func:`recover_batch`)."""
    config = config or RecoveryConfig()
    job = open_job(name, traj, cache_path, stage1_hash, holdout_views, frames, overwrite, evaluate_gt, config)
    recover_batch([job], renderer, config, device, on_frame, say)
    return job.cache
