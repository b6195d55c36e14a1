"""Checks that run before any stage does: devices and backends, trainer limits, and what the stages need of the
dataset. Each failure is one line naming the setting or file and the fix (``tests/test_bad_inputs.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from clods_pl.data.format import read_dataset
from clods_pl.errors import BackendUnavailableError, ClodsError
from clods_pl.pipeline.experiment import EVAL_NAME, section
from clods_pl.render import CUDA_BACKENDS
from clods_pl.utils.settings import flatten


def dataset_of(cfg: Namespace) -> str:
    """The dataset folder named by the config, checked to exist."""
    ds = cfg.get("dataset")
    if not ds:
        raise ClodsError("no dataset: set `dataset: <folder>` in the experiment YAML or pass --dataset")
    if not Path(ds).is_dir():
        raise ClodsError(f"dataset folder {ds} does not exist; generate it with "
                         f"`clods-pl data generate --preset tiny --out {ds}` (or `make data`)")
    return str(ds)


GPU_ACCELERATORS = ("gpu", "cuda")


def stage_device(cfg: Namespace, stage: str) -> str:
    """``cuda`` or ``cpu``: where ``<stage>.trainer.accelerator`` puts the stage (``auto``: CUDA when visible)."""
    accelerator = str(section(cfg, f"{stage}.trainer").get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS or accelerator == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def check_backends(cfg: Namespace, stage: str) -> None:
    """Fail fast when a stage's config names a CUDA rasterizer that is not installed or has no GPU, asks for a GPU
    that is not there, or pairs a CUDA rasterizer with ``trainer.accelerator: cpu``."""

    accelerator = str(section(cfg, f"{stage}.trainer").get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise BackendUnavailableError(f"{stage}.trainer.accelerator={accelerator} but no CUDA GPU is visible; "
                                      f"use {stage}.trainer.accelerator=cpu (and backend torch)")
    for key, value in flatten(section(cfg, stage)).items():
        if not key.endswith("backend") or value not in CUDA_BACKENDS:
            continue
        module, fix = CUDA_BACKENDS[value]
        try:
            __import__(module)
        except ImportError:
            raise BackendUnavailableError(f"{stage}.{key}={value} is not installed ({fix}); "
                                          f"use {stage}.{key}=torch on the CPU") from None
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{stage}.{key}={value} needs a CUDA GPU and none is visible; "
                                          f"use {stage}.{key}=torch on the CPU")
        if stage_device(cfg, stage) == "cpu":
            raise BackendUnavailableError(
                f"{stage}.{key}={value} renders on CUDA but {stage}.trainer.accelerator={accelerator}; "
                f"set {stage}.trainer.accelerator=gpu (or {stage}.{key}=torch)")


def check_trainer_limits(stage: str, trainer: dict[str, Any]) -> None:
    """``max_epochs`` / ``max_steps`` that would train forever, or not at all, are refused naming the setting."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if epochs is not None and (epochs == 0 or epochs < -1):
        raise ClodsError(f"{stage}.trainer.max_epochs={epochs}; it must be >= 1")
    if steps is not None and (steps == 0 or steps < -1):
        raise ClodsError(f"{stage}.trainer.max_steps={steps}; it must be >= 1 (or -1: no step limit)")
    if epochs == -1 and steps in (None, -1):
        raise ClodsError(f"{stage}.trainer.max_epochs=-1 with no max_steps would train forever; set "
                         f"{stage}.trainer.max_epochs >= 1 or {stage}.trainer.max_steps >= 1")


def check_dataset_needs(cfg: Namespace, stages: tuple[str, ...], stage3_sources: list[str]) -> None:
    """Check, before any of ``stages`` runs, what they will need of the dataset: every file valid (the reader
    checks images, meshes and ground truth), ground truth and >= 3 frames for every trajectory ``eval``
    scores, and ground truth for the training trajectories of stage 3's ``gt``/``mixed`` sources. A bad
    dataset then fails in seconds instead of after stages 1-2."""
    from clods_pl.stages.dynamics_data import parse_source  # noqa: PLC0415  (stage code loads on demand)
    from clods_pl.stages.evaluation import SPLITS  # noqa: PLC0415  (stage code loads on demand)

    root = dataset_of(cfg)
    ds = read_dataset(root)
    if EVAL_NAME in stages:
        for split in section(cfg, EVAL_NAME).get("splits") or SPLITS:
            if split not in ds.info.splits:
                raise ClodsError(f"{root}/dataset.json has no split '{split}' that eval.splits names; "
                                 f"set eval.splits to some of {sorted(ds.info.splits)}")
            for name in ds.names(split):
                traj = ds.trajectory(name)
                if not traj.has_gt:
                    raise ClodsError(f"{traj.root / 'gt.npz'} is missing: eval scores split '{split}' against "
                                     "ground-truth meshes; add it, or drop the split from eval.splits")
                if traj.num_frames < 3:
                    raise ClodsError(f"{traj.root}: {traj.num_frames} frame(s); a trajectory eval scores "
                                     "needs >= 3 (two start the rollout, the rest are predicted)")
    if "stage3" in stages:
        train = str(section(cfg, "stage3.data").get("train_split", "train"))
        for source in stage3_sources:
            kind, n = parse_source(source)
            if kind == "recovered":
                continue
            names = ds.names(train) if kind == "gt" and n is None else ds.names(train)[: n or 0]
            for name in names:
                if not ds.trajectory(name).has_gt:
                    raise ClodsError(f"{ds.trajectory(name).root / 'gt.npz'} is missing: stage3 source "
                                     f"'{source}' trains on ground-truth meshes of split '{train}'; add it or "
                                     "drop the source from stage3.sources")
