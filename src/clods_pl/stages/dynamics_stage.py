"""Stage 3 as the orchestrator runs it: one MeshGraphNets model per source (and per seed) in the run directory.

``stage3.sources`` lists the sources trained in turn (``recovered`` = CloDS, ``gt`` = MGN, ``gt:N`` = MGN*,
``mixed:N``); ``stage3.seeds`` trains each once per seed (eval reports mean +- std). Checkpoints are recorded under
:meth:`RunDir.stage3_outputs` keys (``<source>`` or ``<source>@seed<k>``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from clods_pl.errors import ClodsError
from clods_pl.stages.dynamics import DynamicsModule
from clods_pl.stages.dynamics_data import DynamicsDataModule, parse_source
from clods_pl.stages.run_dir import CHECKPOINTS_DIR, MESH_CACHE_DIR, RunDir, seeded_key
from clods_pl.stages.stage import Stage, StageContext, StageJob
from clods_pl.utils.workers import run_jobs, stage_workers

RECOVERED_KINDS = ("recovered", "mixed")  # sources that train on stage 2's meshes


def safe_name(source: str) -> str:
    """A file-name-safe form of a stage-3 source (``gt:5`` -> ``gt-5``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", source)


def stage3_sources(ctx: StageContext) -> list[str]:
    """Sources stage 3 trains, in order: ``stage3.sources``, else ``[stage3.data.source]``."""
    sources = ctx.setting("stage3.sources")
    return list(sources) if sources else [str(ctx.section("stage3.data").get("source", "recovered"))]


def stage3_seeds(ctx: StageContext) -> list[int] | None:
    """``stage3.seeds``: train every source once per seed (None: once, with ``seed_everything``)."""
    seeds = ctx.setting("stage3.seeds")
    return [int(s) for s in seeds] if seeds else None


def add_arguments(parser: Any, name: str) -> None:
    """``<name>.sources`` and ``<name>.seeds``: the settings of stage 3 outside its two classes."""
    parser.add_argument(
        f"--{name}.sources",
        type=list[str] | None,
        default=None,
        help="stage-3 sources trained in turn (recovered, gt, gt:N, mixed:N); default: [data.source]",
    )
    parser.add_argument(
        f"--{name}.seeds",
        type=list[int] | None,
        default=None,
        help="train every source once per seed; eval reports mean +- std over them "
        "(default: once, with seed_everything)",
    )


def uses_recovered_meshes(ctx: StageContext) -> bool:
    """Stage 3 needs stage 2 only when a source trains on recovered meshes."""
    return any(parse_source(s)[0] in RECOVERED_KINDS for s in stage3_sources(ctx))


def consumed_stages(ctx: StageContext) -> tuple[str, ...]:
    """The upstream stages stage 3 reads with the current settings: stage 2 when a source uses recovered meshes."""
    return ("stage2",) if uses_recovered_meshes(ctx) else ()


MODEL_LIST_KEYS = ("stage3.sources", "stage3.seeds")  # the stage's list of models (resolved_settings)


def resolved_settings(ctx: StageContext) -> dict[str, Any]:
    """The sources and seeds with their defaults filled in (what staleness compares)."""
    return dict(zip(MODEL_LIST_KEYS, (stage3_sources(ctx), stage3_seeds(ctx))))


def check_settings(ctx: StageContext) -> None:
    """Every source parses, and windows are long enough for the model's rollout."""
    for source in stage3_sources(ctx):
        parse_source(source)
    model_rl = ctx.section("stage3.model").get("rollout_length")
    data_rl = ctx.section("stage3.data").get("rollout_length")
    if model_rl is not None and data_rl is not None and data_rl < model_rl:
        raise ClodsError(
            f"stage3.model.rollout_length={model_rl} needs windows of {model_rl + 2} frames but "
            f"stage3.data.rollout_length={data_rl} makes them {data_rl + 2}; set "
            f"stage3.data.rollout_length >= {model_rl} or leave it unset (it follows the model)"
        )


def check_dataset(ctx: StageContext, ds: Any) -> None:
    """Training trajectories long enough for a window, and ground truth for those of the ``gt``/``gt:N``/``mixed:N``
    sources; a trajectory shorter than a window is named (it is not trained on)."""
    train = str(ctx.section("stage3.data").get("train_split", "train"))
    steps = ctx.section("stage3.data").get("rollout_length") or ctx.section("stage3.model").get("rollout_length") or 1
    window = int(steps) + 2
    frames = {name: ds.trajectory(name).num_frames for name in ds.names(train)}
    if frames and max(frames.values()) < window:
        raise ClodsError(
            f"stage3 trains on windows of {window} frames (rollout_length {steps} + 2) but the longest '{train}' "
            f"trajectory has {max(frames.values())}; set stage3.model.rollout_length <= {max(frames.values()) - 2}"
        )
    short = sorted(name for name, n in frames.items() if n < window)
    if short:
        print(f"[clods-pl] stage 3: {', '.join(short)}: fewer than the {window} frames of a window; not trained on")
    for source in stage3_sources(ctx):
        kind, n = parse_source(source)
        if kind == "recovered":
            continue
        names = ds.names(train) if kind == "gt" and n is None else ds.names(train)[: n or 0]
        for name in names:
            if not ds.trajectory(name).has_gt:
                raise ClodsError(
                    f"{ds.trajectory(name).root / 'gt.npz'} is missing: stage3 source "
                    f"'{source}' trains on ground-truth meshes of split '{train}'; add it or "
                    "drop the source from stage3.sources"
                )


def train_dynamics(
    stage: Stage,
    ctx: StageContext,
    dataset: str,
    sub: Path,
    cache_dir: Path,
    source: str,
    stamp: dict[str, Any],
    name: str,
    ckpt: Path,
) -> Path:
    """Stage 3 of one ``source`` on the meshes in ``cache_dir``, resuming from ``sub``'s checkpoints stamped with
    the settings plus ``stamp``; saves ``ckpt``."""
    resume = ctx.resume_ckpt(sub / CHECKPOINTS_DIR, stage.name, stamp)
    model = ctx.instantiate(stage, "model", {})
    data = ctx.instantiate(stage, "data", {"dataset_dir": dataset, "mesh_cache_dir": str(cache_dir), "source": source})
    trainer = ctx.trainer(
        stage.name, sub, name, fit=True, validate=bool(getattr(data, "val_split", None)), stamp_extra=stamp
    )
    trainer.fit(model, datamodule=data, ckpt_path=resume)
    trainer.save_checkpoint(ckpt, weights_only=False)  # explicit: unset, Lightning logs a notice
    return ckpt


@dataclass(frozen=True)
class ModelJob:
    """One stage-3 model: its source, seed (None: ``seed_everything``), folder, run name and checkpoint."""

    stage: Stage
    ctx: Any  # the StageContext (a worker process gets a copy)
    dataset: str
    cache_dir: Path
    source: str
    seed: int | None
    sub: Path
    name: str
    ckpt: Path


def train_model_job(job: ModelJob) -> Path:
    """Seed, then :func:`train_dynamics`: every model starts from its own seed, so its result is the same whichever
    models train before it or beside it (``--workers``)."""
    seed = int(job.ctx.setting("seed_everything", 0)) if job.seed is None else job.seed
    L.seed_everything(seed, workers=True, verbose=False)
    stamp = {
        "stage3.source": job.source,
        **({} if job.seed is None else {"stage3.seed": job.seed}),
        # which other models the stage trains does not change this one: adding a seed or a source to a finished
        # stage resumes the finished models (0 steps) and trains only the new ones
        **dict.fromkeys(MODEL_LIST_KEYS),
    }
    return train_dynamics(
        job.stage, job.ctx, job.dataset, job.sub, job.cache_dir, job.source, stamp, job.name, job.ckpt
    )


def run_dynamics(stage: Stage, ctx: StageContext, job: StageJob) -> dict[str, Path]:
    """Stage 3 in ``job.stage_dir``: every source (x every seed), each in its own folder, one checkpoint each; the
    models train side by side in worker processes when cores are free (:mod:`clods_pl.utils.workers`)."""
    cache_dir = ctx.run_dir / "stage2" / MESH_CACHE_DIR
    seeds = stage3_seeds(ctx)
    keys, jobs = [], []
    for source in stage3_sources(ctx):
        for seed in seeds or [None]:
            key = source if seed is None else seeded_key(source, seed)
            sub = job.stage_dir / safe_name(source) / ("" if seed is None else f"seed{seed}")
            name, ckpt = f"stage3-{safe_name(key)}", job.stage_dir / f"{safe_name(key)}.ckpt"
            keys.append(key)
            jobs.append(ModelJob(stage, ctx, job.dataset, cache_dir, source, seed, sub, name, ckpt))
    plan = stage_workers(ctx, stage.name, len(jobs))
    if len(jobs) > 1:
        print(plan.describe("stage 3", f"{len(jobs)} models"))
    return RunDir.stage3_outputs(dict(zip(keys, run_jobs(train_model_job, jobs, plan))))


STAGE = Stage(
    "stage3",
    ("stage2",),
    run_dynamics,
    DynamicsModule,
    DynamicsDataModule,
    data_inputs={"dataset_dir": "", "mesh_cache_dir": ""},
    non_result_keys=frozenset({"model.compile_mode", "data.num_workers"}),
    add_arguments=add_arguments,
    uses_upstream=consumed_stages,
    extra_config=resolved_settings,
    check=check_settings,
    check_dataset=check_dataset,
)
