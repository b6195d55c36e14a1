"""Rollout evaluation of stage-3 models against ground-truth meshes (the paper's dynamics metric).

Every test trajectory is rolled out from its first two GT frames for its whole length (HANDLE nodes follow
their prescribed/GT positions). **RMSE** over a set G of (trajectory, frame) pairs is

    RMSE(G) = sqrt( sum_{(n,t) in G} sum_{v,c} (pred[n,t,v,c] - gt[n,t,v,c])^2 / (|G| * V * 3) )

i.e. the square root of the mean over vertices, xyz and frames (pooled over the trajectories of a split), in
world units. Frames 0 and 1 (the inputs) are excluded. It is reported four ways, as in the paper: initial states
**viewed** (split ``test_viewed``) or **unviewed** (``test_unviewed``) in training, x **interpolation** (frames
t < ``train_horizon``; by default the training sequence length) or **extrapolation** (t >= ``train_horizon``).
A constant-velocity baseline (x_{t+1} = 2 x_t - x_{t-1}) is evaluated the same way. See docs/metrics.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clods_pl.data.format import read_dataset
from clods_pl.dynamics import MeshGraph, MeshGraphNet, constant_velocity_rollout
from clods_pl.errors import DatasetError
from clods_pl.report.plots import plot_rmse_over_steps
from clods_pl.report.tables import by_source, method_label, method_rank, rollout_table_markdown
from clods_pl.report.video import write_comparison_video
from clods_pl.stages.dynamics import load_dynamics_model
from clods_pl.stages.dynamics_data import trajectory_data
from clods_pl.stages.run_dir import source_of
from clods_pl.utils.files import atomic_write_json, atomic_write_text

SPLITS = ("test_viewed", "test_unviewed")
REGIMES = ("interpolation", "extrapolation")
BASELINE = "const_vel"
FIRST_PREDICTED_FRAME = 2
RMSE_DEFINITION = (
    "sqrt(mean over vertices, xyz and frames of squared position error), pooled over a split's "
    "trajectories; frames 0-1 are inputs and excluded; interpolation = frames < train_horizon, "
    "extrapolation = frames >= train_horizon"
)

# predictor(x0, x1, steps, mesh_pos, node_type, graph, prescribed) -> (steps, V, 3)
Predictor = Callable[[Tensor, Tensor, int, Tensor, Tensor, MeshGraph, Tensor], Tensor]


def constant_velocity_predictor(
    x0: Tensor, x1: Tensor, steps: int, mesh_pos: Tensor, node_type: Tensor, graph: MeshGraph, prescribed: Tensor | None
) -> Tensor:
    """The constant-velocity baseline with the :data:`Predictor` signature."""
    return constant_velocity_rollout(x0, x1, steps, node_type, prescribed)


def _as_predictor(model: MeshGraphNet | Predictor | None) -> Predictor:
    if model is None:
        return constant_velocity_predictor
    if isinstance(model, MeshGraphNet):
        return model.rollout
    return model


def frame_squared_errors(pred: Tensor, gt: Tensor) -> np.ndarray:
    """Mean over vertices and xyz of the squared error per frame: pred, gt (T, V, 3) -> (T,) float64."""
    return ((pred.double() - gt.double()) ** 2).mean(dim=(1, 2)).cpu().numpy()


def pooled_rmse(per_frame_mse: Sequence[np.ndarray], lo: int, hi: int | None) -> float | None:
    """RMSE over frames ``lo <= t < hi`` of every trajectory (equal weight per frame); None when no frame."""
    chunks = [m[lo:hi] for m in per_frame_mse]
    n = sum(len(c) for c in chunks)
    return float(np.sqrt(sum(c.sum() for c in chunks) / n)) if n else None


def summarize(per_frame_mse: Sequence[np.ndarray], train_horizon: int) -> dict[str, float | int | None]:
    """``{"interpolation", "extrapolation", "all", "num_trajectories"}`` for per-frame MSE arrays (T_n,)."""
    lo = FIRST_PREDICTED_FRAME
    return {
        "interpolation": pooled_rmse(per_frame_mse, lo, max(lo, train_horizon)),
        "extrapolation": pooled_rmse(per_frame_mse, max(lo, train_horizon), None),
        "all": pooled_rmse(per_frame_mse, lo, None),
        "num_trajectories": len(per_frame_mse),
    }


def per_step_rmse(per_frame_mse: Sequence[np.ndarray]) -> list[float | None]:
    """RMSE per frame index over the trajectories long enough to have it (None for frames 0-1)."""
    longest = max((len(m) for m in per_frame_mse), default=0)
    out: list[float | None] = []
    for t in range(longest):
        vals = [m[t] for m in per_frame_mse if len(m) > t]
        out.append(None if t < FIRST_PREDICTED_FRAME else float(np.sqrt(np.mean(vals))))
    return out


@torch.no_grad()
def evaluate_rollouts(
    model: MeshGraphNet | Predictor | None,
    dataset: Any,
    splits: Sequence[str] = SPLITS,
    train_horizon: int = 0,
    device: str | torch.device = "cpu",
    keep_predictions: Sequence[str] = (),
) -> dict[str, Any]:
    """Roll out ``model`` (``None``: constant-velocity baseline) on every trajectory of ``splits``.

    Args:
        dataset: ``clods_pl.data.format.Dataset`` (or anything with ``names(split)`` / ``trajectory(name)``).
        train_horizon: frames t < train_horizon count as interpolation, the rest as extrapolation.
        keep_predictions: trajectory names whose predicted (T, V, 3) numpy arrays are returned (for videos).
    Returns:
        ``{"splits": {split | "all": summary}, "per_step_rmse": {split | "all": [..]}, "trajectories":
        {name: {"split", "rmse"}}, "predictions": {name: array}}`` (see :func:`summarize`).
    """
    predict = _as_predictor(model)
    if isinstance(model, torch.nn.Module):
        model.eval().to(device)
    per_split: dict[str, list[np.ndarray]] = {}
    trajs: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    for split in splits:
        per_split[split] = []
        for name in dataset.names(split):
            traj = dataset.trajectory(name)
            t = trajectory_data(traj, name, traj.load_gt_verts(), "gt")
            gt = t.verts.to(device)
            steps = gt.shape[0] - FIRST_PREDICTED_FRAME
            if steps < 1:
                raise DatasetError(f"trajectory {name} has {gt.shape[0]} frames; evaluation needs at least 3")
            roll = predict(
                gt[0],
                gt[1],
                steps,
                t.mesh_pos.to(device),
                t.node_type.to(device),
                t.graph.to(device),
                gt[FIRST_PREDICTED_FRAME:],
            )
            pred = torch.cat([gt[:FIRST_PREDICTED_FRAME], roll.to(gt.dtype)])
            mse = frame_squared_errors(pred, gt)
            per_split[split].append(mse)
            trajs[name] = {"split": split, "rmse": summarize([mse], train_horizon)}
            if name in keep_predictions:
                preds[name] = pred.cpu().numpy()
    per_split["all"] = [m for s in splits for m in per_split[s]]
    return {
        "splits": {s: summarize(v, train_horizon) for s, v in per_split.items()},
        "per_step_rmse": {s: per_step_rmse(v) for s, v in per_split.items()},
        "trajectories": trajs,
        "predictions": preds,
    }


def split_of(dataset: Any, name: str) -> str:
    """The split that holds trajectory ``name``."""
    return next((s for s in SPLITS if name in dataset.names(s)), "?")


def default_train_horizon(dataset: Any, split: str = "train") -> int:
    """Training sequence length: the most frames of any trajectory in ``split``."""
    lengths = [int(dataset.trajectory(n).num_frames) for n in dataset.names(split)]
    if not lengths:
        raise DatasetError(f"dataset has no {split!r} trajectories to infer train_horizon; pass train_horizon")
    return max(lengths)


def run_evaluation(
    dataset_dir: str | os.PathLike,
    checkpoints: dict[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    train_horizon: int | None = None,
    device: str = "cpu",
    baseline: bool = True,
    videos: int = 2,
    video_format: str = "gif",
    dataset: Any = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate stage-3 checkpoints and write the dynamics results into ``out_dir`` (a run's ``eval/``).

    Args:
        checkpoints: method key -> stage-3 checkpoint; keys are sources (``gt`` = MGN, ``gt:N`` = MGN*,
            ``recovered`` = CloDS, ``mixed:N``) or any label.
        train_horizon: interpolation/extrapolation boundary; default: the training split's sequence length.
        videos: number of test trajectories (first of each split, in turn) to render, every learned method side by
            side with GT.
        dataset: an already opened dataset (tests); otherwise ``read_dataset(dataset_dir)``.
        training: how the stage-3 models were trained (``evaluation_stage.stage3_recipe``), kept in the metrics as
            ``stage3_training`` for the report; None: not recorded.
    Writes:
        ``metrics.json``, ``rollout_table.md``, ``rmse_over_steps_<all|split>.png`` and
        ``videos/compare_<traj>.<format>`` (GT | each learned method, side by side).
    Returns:
        The metrics dict written to ``metrics.json``.
    """
    if dataset is None:
        dataset = read_dataset(dataset_dir)
    out = Path(out_dir)
    horizon = int(train_horizon) if train_horizon is not None else default_train_horizon(dataset)
    names = [n for s in splits for n in dataset.names(s)]
    if not names:
        raise DatasetError(f"{dataset_dir}: splits {list(splits)} hold no trajectories to evaluate")
    by_split = [dataset.names(s) for s in splits]
    video_names = [n for group in zip(*[g for g in by_split if g]) for n in group][:videos] if videos else []
    methods: dict[str, Any] = {}
    runs: list[tuple[str, Any, str | None]] = [(BASELINE, None, None)] if baseline else []
    runs += [(k, load_dynamics_model(p, map_location=device), str(p)) for k, p in checkpoints.items()]
    video_files = []
    kept: dict[str, dict[str, np.ndarray]] = {}  # trajectory -> method key -> predicted (T, V, 3)
    first_of_source = {source_of(k): k for k, _, _ in reversed(runs)}  # videos: each source's first seed only
    for key, model, ckpt in runs:
        res = evaluate_rollouts(
            model,
            dataset,
            splits,
            horizon,
            device,
            keep_predictions=video_names if ckpt is not None and first_of_source[source_of(key)] == key else (),
        )
        methods[key] = {
            "label": method_label(key),
            "checkpoint": ckpt,
            "splits": res["splits"],
            "per_step_rmse": res["per_step_rmse"],
            "trajectories": res["trajectories"],
        }
        for name, pred in res["predictions"].items():
            kept.setdefault(name, {})[key] = np.asarray(pred)
    for name, preds in kept.items():
        traj = dataset.trajectory(name)
        ordered = {method_label(source_of(k)): preds[k] for k in sorted(preds, key=method_rank)}
        path = out / "videos" / f"compare_{name}.{video_format}"
        write_comparison_video(
            np.asarray(traj.load_gt_verts()),
            ordered,
            np.asarray(traj.faces),
            path,
            title=f"{name} ({split_of(dataset, name)})",
        )
        video_files.append(path.relative_to(out).as_posix())
    train_frames = default_train_horizon(dataset) if dataset.names("train") else None
    test_frames = max(int(dataset.trajectory(n).num_frames) for n in names)
    metrics = {
        "definition": RMSE_DEFINITION,
        "train_horizon": horizon,
        "train_sequence_frames": train_frames,
        "test_sequence_frames": test_frames,
        "num_train_trajectories": len(dataset.names("train")),
        **({"stage3_training": training} if training else {}),
        "splits": list(splits),
        "methods": methods,
        "videos": video_files,
    }
    metrics["by_source"] = by_source(metrics)  # seeds of one source: mean and std per cell
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "rollout_table.md", rollout_table_markdown(metrics))
    for split in ("all", *splits):
        plot_rmse_over_steps(metrics, out / f"rmse_over_steps_{split}.png", split=split)
    return metrics
