"""Checks that run before any stage does: the dataset folder, devices and backends, trainer limits (what a stage
needs of the dataset is its own ``Stage.check_dataset``). Each failure is one line naming the setting or file and
the fix (``tests/test_bad_inputs.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from clods_pl.errors import BackendUnavailableError, ClodsError
from clods_pl.render import CUDA_BACKENDS
from clods_pl.utils.settings import flatten, section


def dataset_of(cfg: Namespace) -> str:
    """The dataset folder named by the config, checked to exist."""
    ds = cfg.get("dataset")
    if not ds:
        raise ClodsError("no dataset: set `dataset: <folder>` in the experiment YAML or pass --dataset")
    if not Path(ds).is_dir():
        raise ClodsError(
            f"dataset folder {ds} does not exist; generate it with "
            f"`clods-pl data generate --preset tiny --out {ds}` (or `make data`)"
        )
    return str(ds)


GPU_ACCELERATORS = ("gpu", "cuda")


def stage_device(cfg: Namespace, stage: str) -> str:
    """``cuda`` or ``cpu``: where ``<stage>.trainer.accelerator`` puts the stage (``auto``: CUDA when visible)."""
    accelerator = str(section(cfg, f"{stage}.trainer").get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS or accelerator == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def check_backends(cfg: Namespace, stage: str, backend_keys: Sequence[str]) -> None:
    """Fail fast when ``stage``'s ``backend_keys`` (e.g. ``model.backend``) name a CUDA rasterizer that is not
    installed or has no GPU, when it asks for a GPU that is not there, or pairs a CUDA rasterizer with
    ``trainer.accelerator: cpu``."""

    accelerator = str(section(cfg, f"{stage}.trainer").get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"{stage}.trainer.accelerator={accelerator} but no CUDA GPU is visible; "
            f"use {stage}.trainer.accelerator=cpu (and backend torch)"
        )
    settings = flatten(section(cfg, stage))
    for key in backend_keys:
        value = settings.get(key)
        if value not in CUDA_BACKENDS:
            continue
        module, fix = CUDA_BACKENDS[value]
        try:
            __import__(module)
        except ImportError:
            raise BackendUnavailableError(
                f"{stage}.{key}={value} is not installed ({fix}); use {stage}.{key}=torch on the CPU"
            ) from None
        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"{stage}.{key}={value} needs a CUDA GPU and none is visible; use {stage}.{key}=torch on the CPU"
            )
        if stage_device(cfg, stage) == "cpu":
            raise BackendUnavailableError(
                f"{stage}.{key}={value} renders on CUDA but {stage}.trainer.accelerator={accelerator}; "
                f"set {stage}.trainer.accelerator=gpu (or {stage}.{key}=torch)"
            )


def check_trainer_limits(stage: str, trainer: dict[str, Any]) -> None:
    """``max_epochs`` / ``max_steps`` that would train forever, or not at all, are refused naming the setting."""
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if epochs is not None and (epochs == 0 or epochs < -1):
        raise ClodsError(f"{stage}.trainer.max_epochs={epochs}; it must be >= 1")
    if steps is not None and (steps == 0 or steps < -1):
        raise ClodsError(f"{stage}.trainer.max_steps={steps}; it must be >= 1 (or -1: no step limit)")
    if epochs == -1 and steps in (None, -1):
        raise ClodsError(
            f"{stage}.trainer.max_epochs=-1 with no max_steps would train forever; set "
            f"{stage}.trainer.max_epochs >= 1 or {stage}.trainer.max_steps >= 1"
        )
