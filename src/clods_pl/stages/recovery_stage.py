"""Stage 2 as the orchestrator runs it: one mesh cache per trajectory in ``<run>/stage2/meshes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clods_pl.stages.mesh_cache import MeshCache
from clods_pl.stages.recovery import RecoveryDataModule, RecoveryModule
from clods_pl.stages.recovery_metrics import recovery_summary
from clods_pl.stages.run_dir import MESH_CACHE_DIR, SUMMARY_FILE, RunDir
from clods_pl.stages.stage import Stage, StageContext, StageJob
from clods_pl.utils.files import atomic_write_json


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
    dynamics init); writes ``stage_dir/summary.json`` when ``summary``; returns the trajectories recovered."""
    cache_dir = stage_dir / MESH_CACHE_DIR
    model = ctx.instantiate(
        stage,
        "model",
        {
            "stage1_checkpoint": str(ctx.outputs.stage1_checkpoint()),
            "cache_dir": str(cache_dir),
            "recompute_stale": ctx.repair,
            **model_overrides,
        },
    )
    data = ctx.instantiate(stage, "data", {"dataset_dir": dataset})
    trainer = ctx.trainer(stage.name, stage_dir, name, fit=False)
    trainer.predict(model, datamodule=data, return_predictions=False)
    names = [item.name for item in data.items]
    if summary and trainer.is_global_zero:
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
)
