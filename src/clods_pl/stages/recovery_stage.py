"""Stage 2 as the orchestrator runs it: one mesh cache per trajectory in ``<run>/stage2/meshes``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

from clods_pl.data.splits import training_views
from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery import RecoveryDataModule, RecoveryModule
from clods_pl.stages.recovery_metrics import recovery_summary
from clods_pl.stages.run_dir import MESH_CACHE_DIR, SUMMARY_FILE, RunDir
from clods_pl.stages.stage import Stage, StageContext, StageJob
from clods_pl.utils.files import atomic_write_json
from clods_pl.utils.workers import run_jobs, stage_workers


@dataclass(frozen=True)
class RecoveryPart:
    """Stage 2 on some of the trajectories (whole batches of ``data.batch_size``) in one process."""

    stage: Stage
    ctx: Any  # the StageContext (a worker process gets a copy)
    dataset: str
    cache_dir: Path
    stage_dir: Path
    name: str
    model_overrides: dict[str, Any]
    trajectories: list[str] | None  # None: every trajectory the data settings select


def recover_part(part: RecoveryPart) -> None:
    """Run :class:`RecoveryModule` over ``part.trajectories`` with Lightning's predict loop."""
    model = part.ctx.instantiate(
        part.stage,
        "model",
        {
            "stage1_checkpoint": str(part.ctx.outputs.stage1_checkpoint()),
            "cache_dir": str(part.cache_dir),
            "recompute_stale": part.ctx.repair,
            **({"overwrite": True} if part.ctx.force else {}),  # --force: every cache recovered from frame 0
            **part.model_overrides,
        },
    )
    injected: dict[str, Any] = {"dataset_dir": part.dataset}
    if part.trajectories is not None:
        injected["trajectories"] = part.trajectories
    data = part.ctx.instantiate(part.stage, "data", injected)
    trainer = part.ctx.trainer(part.stage.name, part.stage_dir, part.name, fit=False)
    trainer.predict(model, datamodule=data, return_predictions=False)


def split_batches(names: list[str], batch_size: int, parts: int) -> list[list[str]]:
    """``names`` cut into batches of ``batch_size`` (the last may be short), the batches dealt round-robin into at
    most ``parts`` lists: each list, batched again in order, gives back exactly its batches (only the last batch
    overall is short, and it is last in its list), so the recovered meshes do not depend on ``parts``."""
    batches = [names[i : i + batch_size] for i in range(0, len(names), batch_size)]
    groups = [[n for b in batches[k :: max(1, parts)] for n in b] for k in range(min(parts, len(batches)))]
    return [g for g in groups if g]


def recover_meshes(
    stage: Stage,
    ctx: StageContext,
    dataset: str,
    stage_dir: Path,
    name: str,
    model_overrides: dict[str, Any],
    summary: bool = True,
) -> list[str]:
    """Stage 2 into ``stage_dir/meshes`` with the config's settings plus ``model_overrides`` (``refine``: the
    dynamics init); writes ``stage_dir/summary.json`` when ``summary``; returns the trajectories recovered. The
    batches of trajectories run side by side in worker processes when cores are free
    (:mod:`clods_pl.utils.workers`); each batch is the same whichever process runs it."""
    cache_dir = stage_dir / MESH_CACHE_DIR
    data = ctx.instantiate(stage, "data", {"dataset_dir": dataset})
    data.setup("predict")
    names = [item.name for item in data.items]
    batches = -(-len(names) // data.batch_size)
    plan = stage_workers(ctx, stage.name, batches)
    if batches > 1:
        print(plan.describe("stage 2", f"{batches} batches of up to {data.batch_size} trajectories"))
    if plan.workers > 1:
        groups = split_batches(names, data.batch_size, plan.workers)
        parts = [
            RecoveryPart(stage, ctx, dataset, cache_dir, stage_dir, f"{name}-part{k}", model_overrides, g)
            for k, g in enumerate(groups)
        ]
        run_jobs(recover_part, parts, plan)
    else:
        recover_part(RecoveryPart(stage, ctx, dataset, cache_dir, stage_dir, name, model_overrides, None))
    if summary and rank_zero_only.rank == 0:
        atomic_write_json(stage_dir / SUMMARY_FILE, recovery_summary(dataset, cache_dir, names))
    return names


def _is_shard(ctx: StageContext) -> bool:
    return ctx.section("stage2.data").get("trajectories") is not None


def run_recovery(stage: Stage, ctx: StageContext, job: StageJob) -> dict[str, Path] | None:
    """Stage 2 in ``job.stage_dir``: one mesh cache per trajectory (None for a shard: the finishing run records)."""
    shard = _is_shard(ctx)
    names = recover_meshes(stage, ctx, job.dataset, job.stage_dir, stage.name, {}, summary=not shard)
    if shard:
        print("[clods-pl] stage2: recovered a shard (data.trajectories); run stage2 without it to finish")
        return None
    return RunDir.stage2_outputs({n: job.stage_dir / MESH_CACHE_DIR / f"{n}.npz" for n in names})


def mesh_chain_staleness(ctx: StageContext) -> str | None:
    """Why the recorded mesh caches are stale although the manifest agrees: one was recovered from another stage-1
    checkpoint than the one recorded (two runs interleaved). None when every cache matches."""
    ckpt = ctx.outputs.stage1_checkpoint_digest()
    for path in ctx.outputs.mesh_caches().values():
        made_from = MeshCache.load(path).stage1_hash
        if made_from != ckpt:
            return (
                f"mesh cache {path} was recovered from stage-1 checkpoint {made_from[:12]}, not the recorded "
                f"{str(ckpt)[:12]}"
            )
    return None


def check_dataset(ctx: StageContext, ds: Any) -> None:
    """The held-out views exist in every trajectory stage 2 recovers (and leave some to fit), before stage 1
    trains."""
    data = ctx.section("stage2.data")
    for split in data.get("splits") or []:
        for name in ds.names(split) if split in ds.info.splits else []:
            cameras = len(ds.trajectory(name).cameras)
            training_views(cameras, data.get("holdout_views") or [], "stage2.data.holdout_views")


STAGE = Stage(
    "stage2",
    ("stage1",),
    run_recovery,
    RecoveryModule,
    RecoveryDataModule,
    model_inputs={"stage1_checkpoint": "", "cache_dir": "", "recompute_stale": False},
    data_inputs={"dataset_dir": ""},
    non_result_keys=frozenset({"model.log_every_n_frames", "model.overwrite", "data.num_workers", "data.trajectories"}),
    backend_keys=("model.backend",),
    extra_staleness=mesh_chain_staleness,
    is_shard=_is_shard,
    check_dataset=check_dataset,
)
