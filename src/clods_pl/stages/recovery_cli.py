"""``clods-pl recover`` (stage 2 by hand for one trajectory), loading the stage-1 SMGS, and the per-trajectory error
plot."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clods_pl.smgs.io import load_smgs
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery_config import RecoveryConfig, RecoveryConfigError
from clods_pl.stages.recovery_jobs import TrajectoryJob
from clods_pl.stages.recovery_loop import recover_trajectory
from clods_pl.stages.recovery_metrics import flag_size
from clods_pl.utils.files import checkpoint_digest

PLOTS_DIRNAME = "plots"


def recovery_plot_path(cache_dir: str | Path, traj: str) -> Path:
    """Where stage 2 draws ``traj``'s recovery error per frame: ``<cache_dir>/../plots/<traj>_rmse.png``."""
    return Path(cache_dir).parent / PLOTS_DIRNAME / f"{traj}_rmse.png"


CLI_IGNORED_OPTIONS = ("log_every_n_frames",)


def plot_rmse(cache: MeshCache, name: str, out_path: str | os.PathLike, size: float | None = None) -> Path | None:
    """Plot the per-frame recovery RMSE (relative to ``size`` when given) to ``out_path``; None without GT."""
    rmse = cache.gt_metrics.get("rmse")
    if rmse is None:
        return None
    import matplotlib  # noqa: PLC0415  (plots only: keeps matplotlib out of the stage's import time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after matplotlib.use("Agg"))

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


def read_dataset(dataset_dir: str) -> Any:
    """The dataset at ``dataset_dir`` (validated)."""
    from clods_pl.data.format import read_dataset as read  # noqa: PLC0415  (the data package loads lazily)

    return read(dataset_dir)


def recover_cli(
    dataset_dir: str,
    stage1_checkpoint: str,
    cache_dir: str,
    traj: str,
    frames: str | None = None,
    holdout_views: Sequence[int] = (),
    overwrite: bool = False,
    device: str = "cpu",
    **options: Any,
) -> MeshCache:
    """``clods-pl recover --traj NAME --frames A:B``: recover one trajectory; ``options`` are the stage-2 model
    settings (``RecoveryConfig`` fields: iterations, lr, gamma, ...; ``log_every_n_frames`` is accepted and
    ignored). Prints one line per frame."""
    fields = set(RecoveryConfig.__dataclass_fields__)
    unknown = sorted(k for k in options if k not in fields and k not in CLI_IGNORED_OPTIONS)
    if unknown:
        raise RecoveryConfigError(f"unknown stage-2 model settings {unknown}; valid: {sorted(fields)}")
    explicit_bg = options.get("background") is not None
    config = RecoveryConfig(
        **{
            k: (tuple(v) if k == "background" else v)
            for k, v in options.items()
            if k in fields and not (k == "background" and v is None)
        }
    )
    ds = read_dataset(dataset_dir)
    trajectory = ds.trajectory(traj)
    smgs, h = load_stage1(stage1_checkpoint, device)
    config = with_stage1_background(config, smgs, explicit_bg)

    def report(job: TrajectoryJob, t: int, m: dict[str, float]) -> None:
        extra = f" rmse {m['rmse']:.5f}" if "rmse" in m else ""
        print(
            f"[recover] {traj} frame {t}/{job.stop - 1}: photo {m['photo_loss']:.5f} edge {m['edge_loss']:.2e} "
            f"iters {int(m['iterations'])}{extra}",
            flush=True,
        )

    cache = recover_trajectory(
        traj,
        trajectory,
        smgs,
        Path(cache_dir) / f"{traj}.npz",
        h,
        config,
        holdout_views,
        frames,
        overwrite,
        device,
        report,
    )
    plot_rmse(
        cache,
        traj,
        recovery_plot_path(cache_dir, traj),
        flag_size(np.asarray(trajectory.mesh_pos)),
    )
    return cache
