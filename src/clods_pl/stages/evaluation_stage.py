"""The eval stage as the orchestrator runs it: rollout RMSE of every stage-3 checkpoint against ground truth
(``evaluation.run_evaluation``) and, with ``eval.novel_views.enabled``, the novel-view table of stage 1's SMGS and
its ablations (``novel_views``), into ``<run>/eval/``."""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only

from clods_pl.data.format import read_dataset
from clods_pl.errors import ClodsError, ManifestError
from clods_pl.smgs.io import load_smgs
from clods_pl.stages.appearance import AppearanceModule
from clods_pl.stages.appearance_data import AppearanceDataModule
from clods_pl.stages.evaluation import SPLITS, run_evaluation
from clods_pl.stages.lpips import local_lpips
from clods_pl.stages.novel_views import (
    RECOVERED_RENDERS,
    NovelViewSettings,
    fit_appearance_variant,
    run_novel_view_evaluation,
    upper_bound_jobs,
    upper_bound_metrics,
)
from clods_pl.stages.render_sheet import recovered_render_sheet
from clods_pl.stages.run_dir import CONFIG_FILE, EVAL_METRICS, MESH_CACHE_DIR
from clods_pl.stages.stage import Stage, StageContext, StageJob
from clods_pl.utils.workers import call, run_jobs, stage_workers

NAME = "eval"
NOVEL_VIEWS_KEY = "novel_views"  # eval.novel_views: NovelViewSettings
EVAL_INPUTS = ("dataset_dir", "checkpoints", "out_dir", "dataset", "training")  # filled by the orchestrator


def add_arguments(parser: Any, name: str) -> None:
    """``<name>.novel_views.*``: the novel-view table's settings."""
    parser.add_class_arguments(NovelViewSettings, f"{name}.{NOVEL_VIEWS_KEY}")


def rollout_settings(ctx: StageContext) -> dict[str, Any]:
    """The settings of the rollout evaluation (``eval.*`` without the novel-view table's)."""
    return {k: v for k, v in ctx.section(NAME).items() if k != NOVEL_VIEWS_KEY}


def novel_views_enabled(ctx: StageContext) -> bool:
    """Whether eval makes the novel-view table (``eval.novel_views.enabled``)."""
    return bool((ctx.section(NAME).get(NOVEL_VIEWS_KEY) or {}).get("enabled", False))


def consumed_stages(ctx: StageContext) -> tuple[str, ...]:
    """The stages eval reads: the stage-3 checkpoints, and with the novel-view table stage 1's SMGS (its checkpoint
    and settings) and stage 2's meshes (the render sheet), so a change to either makes eval stale."""
    return ("stage3", "stage1", "stage2") if novel_views_enabled(ctx) else ("stage3",)


def check_settings(ctx: StageContext) -> None:
    """A CUDA device that is there, and novel-view settings in range."""
    settings = ctx.section(NAME)
    device = str(settings.get("device", "cpu"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClodsError(f"eval.device={device} but no CUDA GPU is visible; use eval.device=cpu")
    views = settings.get(NOVEL_VIEWS_KEY)
    if views:
        NovelViewSettings(**views)  # checks its values, naming the setting


def check_dataset(ctx: StageContext, ds: Any) -> None:
    """Every split eval scores exists, and its trajectories have ground truth and >= 3 frames."""
    root = ctx.setting("dataset")
    for split in ctx.section(NAME).get("splits") or SPLITS:
        if split not in ds.info.splits:
            raise ClodsError(
                f"{root}/dataset.json has no split '{split}' that eval.splits names; "
                f"set eval.splits to some of {sorted(ds.info.splits)}"
            )
        for name in ds.names(split):
            traj = ds.trajectory(name)
            if not traj.has_gt:
                raise ClodsError(
                    f"{traj.root / 'gt.npz'} is missing: eval scores split '{split}' against "
                    "ground-truth meshes; add it, or drop the split from eval.splits"
                )
            if traj.num_frames < 3:
                raise ClodsError(
                    f"{traj.root}: {traj.num_frames} frame(s); a trajectory eval scores "
                    "needs >= 3 (two start the rollout, the rest are predicted)"
                )
    if novel_views_enabled(ctx):  # stage 1's Gaussians sit on the training mesh: the test cloth must be that mesh
        train = ds.names(str(ctx.section("stage1.data").get("split", "train")))
        faces = ds.trajectory(train[0]).faces if train else None
        settings = NovelViewSettings(**ctx.section(NAME)[NOVEL_VIEWS_KEY])
        for split in settings.splits:
            for name in ds.names(split) if split in ds.info.splits else []:
                traj = ds.trajectory(name)
                if faces is not None and not torch.equal(traj.faces, faces):
                    raise ClodsError(
                        f"{traj.root / 'mesh.npz'}: faces differ from the training mesh's ({train[0]}); the "
                        "novel-view table renders stage 1's Gaussians on it, so it needs the same mesh; set "
                        "eval.novel_views.enabled false"
                    )


def novel_view_table(ctx: StageContext, dataset: str, stage_dir: Path, views: dict[str, Any]) -> Path:
    """The novel-view table: the run's stage-1 SMGS plus the ablation fits (same settings, another opacity)."""
    ckpt = ctx.outputs.stage1_checkpoint()
    if ckpt is None:  # eval consumes stage 1 when the table is on, so the orchestrator checked it is recorded
        raise ManifestError(f"stage1 recorded no checkpoint in {ctx.run_dir}; rerun `clods-pl stage1`")
    settings = NovelViewSettings(**views)
    smgs, rendered = load_smgs(ckpt)
    seed = int(ctx.setting("seed_everything", 0))
    backend = rendered.backend if rendered.backend in ("torch", "cpu") else "torch"  # eval renders on the CPU
    holdout = ctx.section("stage1.data").get("holdout_views", [0])
    lpips, _notice = local_lpips()  # stage 1 already said why when it is missing
    fits = [  # the ablation rows: stage 1 again with another opacity field (each seeded: same in any process)
        partial(
            fit_appearance_variant,
            AppearanceModule,
            AppearanceDataModule,
            {**ctx.section("stage1.model"), "opacity_mode": mode},
            {**ctx.section("stage1.data"), "dataset_dir": dataset},
            ctx.section("stage1.trainer"),
            seed,
            stage_dir / "novel_views" / mode,
        )
        for mode in settings.ablations
    ]
    ds = read_dataset(dataset)
    bounds = upper_bound_jobs(ds, smgs, holdout, rendered.background, settings, backend, lpips)
    jobs = [*fits, *(partial(upper_bound_metrics, job) for job in bounds)]
    plan = stage_workers(ctx, "stage1", len(jobs))
    if len(jobs) > 1:
        print(
            plan.describe(
                "novel views",
                f"{len(fits)} ablation fit(s) of stage 1 ({', '.join(settings.ablations) or 'none'}) and "
                f"{len(bounds)} per-frame upper-bound fit(s)",
            )
        )
    results = run_jobs(call, jobs, plan)
    models = {"dual": smgs, **dict(zip(settings.ablations, results[: len(fits)]))}
    out = run_novel_view_evaluation(
        dataset, models, holdout, rendered.background, stage_dir, settings, backend, lpips, results[len(fits) :]
    )
    names = [ds.names(s)[0] for s in ("train", *settings.splits) if ds.names(s)]
    train_view = next(v for v in range(len(ds.trajectory(names[0]).cameras)) if v not in holdout)
    recovered_render_sheet(
        smgs,
        ds,
        ctx.run_dir / "stage2" / MESH_CACHE_DIR,
        names,
        [train_view, holdout[0]],
        rendered.background,
        stage_dir / RECOVERED_RENDERS,
        backend,
    )
    return out


def stage3_recipe(ctx: StageContext) -> dict[str, Any]:
    """How the evaluated stage-3 models were trained, for the report: optimiser steps, windows per step, the
    one-step warm-up, the rollout length, yaw augmentation and the seeds (None: one model per source)."""
    model, data = ctx.section("stage3.model"), ctx.section("stage3.data")
    return {
        "optimizer_steps": ctx.section("stage3.trainer").get("max_steps"),
        "windows_per_step": data.get("batch_size"),
        "one_step_warmup": model.get("one_step_warmup") or 0,
        "rollout_length": model.get("rollout_length"),
        "yaw_augment": bool(data.get("yaw_augment")),
        "seeds": ctx.setting("stage3.seeds"),
    }


def clear_outputs(stage_dir: Path) -> None:
    """Remove what an earlier eval left in ``stage_dir`` (all but the run's ``config.yaml``), so no table, plot or
    video of other settings (e.g. a novel-view table since switched off) stays next to the new ones for the
    report to show."""
    if not stage_dir.is_dir():
        return
    for path in stage_dir.iterdir():
        if path.name == CONFIG_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_eval(stage: Stage, ctx: StageContext, job: StageJob) -> dict[str, Path]:
    """Eval in ``job.stage_dir`` (emptied first): ``metrics.json`` (+ tables, plots, videos) and the novel-view
    table."""
    if rank_zero_only.rank != 0:  # one process's work: the other ranks of a multi-task job leave it to rank 0
        return {}
    checkpoints = {key: str(path) for key, path in ctx.outputs.stage3_checkpoints().items()}
    if not checkpoints:
        raise ManifestError(f"stage3 recorded no checkpoints in {ctx.run_dir}; rerun `clods-pl stage3`")
    clear_outputs(job.stage_dir)
    assert stage.function is not None
    stage.function(
        dataset_dir=job.dataset,
        checkpoints=checkpoints,
        out_dir=str(job.stage_dir),
        training=stage3_recipe(ctx),
        **rollout_settings(ctx),
    )
    outputs = {"metrics": job.stage_dir / EVAL_METRICS}
    if novel_views_enabled(ctx):
        outputs[NOVEL_VIEWS_KEY] = novel_view_table(ctx, job.dataset, job.stage_dir, ctx.section(NAME)[NOVEL_VIEWS_KEY])
    return outputs


STAGE = Stage(
    NAME,
    ("stage3", "stage1", "stage2"),
    run_eval,
    function=run_evaluation,
    function_inputs=EVAL_INPUTS,
    non_result_keys=frozenset({"device"}),
    add_arguments=add_arguments,
    uses_upstream=consumed_stages,
    upstream_note=" (stages 1-2 feed the novel-view table; `--eval.novel_views.enabled false` scores rollouts alone)",
    check=check_settings,
    check_dataset=check_dataset,
)
