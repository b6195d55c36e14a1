"""Stage 1 as the orchestrator runs it: fit the SMGS appearance, save ``<run>/stage1/smgs.ckpt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clods_pl.data.splits import training_views
from clods_pl.stages.appearance import AppearanceModule
from clods_pl.stages.appearance_data import AppearanceDataModule
from clods_pl.stages.run_dir import STAGE1_CKPT, SUMMARY_FILE, RunDir
from clods_pl.stages.stage import Stage, StageContext, StageJob
from clods_pl.utils.files import atomic_write_json


def check_dataset(ctx: StageContext, ds: Any) -> None:
    """Every trajectory's frame-0 alpha is a cloth mask (decoded once per command, before anything runs: not in
    every ``read_dataset``), and the held-out views exist (and leave some to fit)."""
    for name in ds.names():
        ds.trajectory(name).check_masks()
    data = ctx.section("stage1.data")
    names = ds.names(str(data.get("split", "train")))
    if names:
        views = len(ds.trajectory(names[0]).cameras)
        training_views(views, data.get("holdout_views") or [], "stage1.data.holdout_views")


def run_appearance(stage: Stage, ctx: StageContext, job: StageJob) -> dict[str, Path]:
    """Stage 1 in ``job.stage_dir``: fit, save ``smgs.ckpt`` and the held-out-view metrics (``summary.json``)."""
    model = ctx.instantiate(stage, "model", {})
    data = ctx.instantiate(stage, "data", {"dataset_dir": job.dataset})
    trainer = ctx.trainer(stage.name, job.stage_dir, stage.name, fit=True)
    trainer.fit(model, datamodule=data, ckpt_path=job.resume_from)
    ckpt = job.stage_dir / STAGE1_CKPT
    trainer.save_checkpoint(ckpt, weights_only=False)  # explicit: unset, Lightning logs a notice
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        atomic_write_json(job.stage_dir / SUMMARY_FILE, {"held_out_views": metrics})
    return RunDir.stage1_outputs(ckpt)


STAGE = Stage(
    "stage1",
    (),
    run_appearance,
    AppearanceModule,
    AppearanceDataModule,
    data_inputs={"dataset_dir": ""},
    non_result_keys=frozenset({"data.num_workers"}),
    backend_keys=("model.backend",),
    resumable=True,
    check_dataset=check_dataset,
)
