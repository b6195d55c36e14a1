"""``clods-pl refine``: close the loop between recovery and dynamics, without any 3D labels.

Round 1 is the pipeline's own stage 2 (plain recovery) and stage 3. Round k >= 2 recovers the training meshes again
with stage 2 started from round k-1's stage-3 model (``init: dynamics``, optionally a prior of weight
``prior_weight`` towards its prediction), trains stage 3 on those meshes (once per ``stage3.seeds``, as round 1
does, so that rounds compare seed means), and evaluates the new models; the first seed's model starts the next
round. Each round's
outputs live under ``<run>/refine/round<k>/{stage2,stage3,eval}`` and are recorded in the manifest as stages
``refine<k>.stage2`` and ``refine<k>.stage3`` with their settings and hashes, so a rerun skips rounds that are up to
date and resumes the others (mesh caches by frame, stage 3 from its settings-stamped checkpoints). Ground truth is
read only to evaluate (``tests/test_refine.py`` proves the refined meshes do not depend on it).
``<run>/refine/summary.json`` and ``refine_table.md``: per round, recovery error, optimiser iterations per frame and
the rollout RMSE table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np

from clods_pl.errors import ClodsError
from clods_pl.pipeline.manifest import STATUS_RUNNING
from clods_pl.report.tables import by_source
from clods_pl.stages import dynamics_stage, evaluation_stage, recovery_stage
from clods_pl.stages.recovery_config import INITS
from clods_pl.stages.run_dir import (
    EVAL_METRICS,
    MESH_CACHE_DIR,
    ROUND1_EVAL_KEY,
    SUMMARY_FILE,
    RunDir,
    seeded_key,
)
from clods_pl.utils.files import atomic_write_json, atomic_write_text, checkpoint_digest

if TYPE_CHECKING:
    from clods_pl.pipeline.runner import StageRunner

REFINE_DIR = "refine"
RECOVERED = "recovered"


@dataclass
class RefineSettings:
    """The top-level ``refine`` section.

    Attributes:
        rounds: rounds in all, the pipeline's own stages 2-3 being round 1 (1: nothing to do).
        init: how a refined round starts each frame (``dynamics``: the previous round's model; ``velocity`` for a
            control with the same compute). prior_weight: stage 2's dynamics prior (0: off).
    """

    rounds: int = 2
    init: str = "dynamics"
    prior_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ClodsError(f"refine.rounds={self.rounds}; it must be >= 1 (1: the pipeline's stages alone)")
        if self.init not in INITS:
            raise ClodsError(f"refine.init={self.init!r}; choose one of {', '.join(INITS)}")
        if not self.prior_weight >= 0:
            raise ClodsError(f"refine.prior_weight={self.prior_weight}; it must be >= 0")


def _mean_iterations(cache_dir: Path, names: list[str]) -> float:
    from clods_pl.stages.mesh_cache import MeshCache  # noqa: PLC0415  (stage code on demand)

    its = [MeshCache.load(cache_dir / f"{n}.npz").iterations[1:] for n in names]
    return float(np.mean(np.concatenate(its))) if its else float("nan")


def _round_row(k: int, stage2_dir: Path, eval_dir: Path, names: list[str]) -> dict[str, Any]:
    summary = json.loads((stage2_dir / SUMMARY_FILE).read_text())
    metrics = json.loads((eval_dir / EVAL_METRICS).read_text())
    return {
        "round": k,
        "recovery_mean_rel_rmse": summary.get("mean_rel_rmse"),
        "recovery_max_drift": summary.get("max_drift_last_over_first"),
        "iterations_per_frame": _mean_iterations(stage2_dir / MESH_CACHE_DIR, names),
        "rollout": {
            split: {regime: cell["mean"] for regime, cell in regimes.items()}  # seeds: their mean
            for split, regimes in by_source(metrics).get(RECOVERED, {}).get("splits", {}).items()
        },
    }


def _round_checkpoints(stage3_dir: Path, seeds: list[int] | None) -> dict[str, Path]:
    """A round's stage-3 checkpoints by key: ``recovered`` once, or ``recovered@seed<s>`` per ``stage3.seeds``."""
    if seeds is None:
        return {RECOVERED: stage3_dir / f"{RECOVERED}.ckpt"}
    return {seeded_key(RECOVERED, s): stage3_dir / f"seed{s}" / f"{RECOVERED}.ckpt" for s in seeds}


def refine_table_markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| round | recovery error (% of flag) | max drift | iterations / frame | viewed interp. | viewed extrap. "
        "| unviewed interp. | unviewed extrap. |"
    )
    lines = [head, "|---" * 8 + "|"]
    for r in rows:
        cells = []
        for split in ("test_viewed", "test_unviewed"):
            for regime in ("interpolation", "extrapolation"):
                v = r["rollout"].get(split, {}).get(regime)
                cells.append("-" if v is None else f"{1e3 * v:.1f}")
        err = r["recovery_mean_rel_rmse"]
        lines.append(
            f"| {r['round']} | {'-' if err is None else f'{100 * err:.2f}'} | "
            f"{r['recovery_max_drift']:.2f} | {r['iterations_per_frame']:.1f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n\nRollout RMSE of the CloDS model of each round, x10^-3 m.\n"


def run_refine(runner: StageRunner, settings: RefineSettings) -> Path:
    """Run (or skip, when up to date) rounds 2..``settings.rounds``; returns ``<run>/refine/summary.json``."""
    recover, dynamics, evaluate = (
        runner.stage(s.name) for s in (recovery_stage.STAGE, dynamics_stage.STAGE, evaluation_stage.STAGE)
    )
    eval_name = evaluate.name
    if RECOVERED not in dynamics_stage.stage3_sources(runner):
        raise ClodsError(
            f"refine needs stage3.sources to include '{RECOVERED}' (the model trained on recovered "
            "meshes predicts the next round); add it and run `clods-pl pipeline`"
        )
    runner.consumed(evaluate)  # stages 1-3 done and current, else a one-line error naming what to run
    stale = runner.staleness(evaluate)  # round 1's row is the pipeline's eval: it must score these models
    if stale is not None:
        raise ClodsError(
            f"refine's round 1 is the pipeline's eval, which is out of date ({stale}); run `clods-pl pipeline`"
        )
    dataset = str(runner.cfg.get("dataset"))
    base_stage2 = runner.run_dir / recover.name
    names = sorted(RunDir(runner.run_dir).mesh_caches())
    rows = [_round_row(1, base_stage2, runner.run_dir / eval_name, names)]
    round1_eval = runner.manifest.verified_outputs(eval_name)
    seeds = dynamics_stage.stage3_seeds(runner)
    first = RECOVERED if seeds is None else seeded_key(RECOVERED, seeds[0])
    previous = RunDir(runner.run_dir).stage3_checkpoints()[first]  # the first seed's model starts round 2
    eval_settings = evaluation_stage.rollout_settings(runner)
    eval_config = {k: v for k, v in eval_settings.items() if k not in evaluate.non_result_keys}
    started: list[str] = []

    def start(name: str, config: dict[str, Any], consumed: dict[str, str]) -> None:
        runner.manifest.start_stage(name, config, consumed)
        started.append(name)

    try:
        for k in range(2, settings.rounds + 1):
            root = runner.run_dir / REFINE_DIR / f"round{k}"
            s2, s3, ev = f"refine{k}.stage2", f"refine{k}.stage3", f"refine{k}.eval"
            extra = {"refine.round": k, "refine.init": settings.init, "refine.prior_weight": settings.prior_weight}
            consumed = {"dynamics_checkpoint": checkpoint_digest(previous)}
            config2 = {**runner.stage_config(recover), **extra}
            if runner.manifest.staleness(s2, config2, consumed) is not None:
                print(f"[clods-pl] refine round {k}: stage 2 from the round-{k - 1} model")
                start(s2, config2, consumed)
                L.seed_everything(int(runner.cfg.get("seed_everything", 0)), workers=True, verbose=False)
                recovery_stage.recover_meshes(
                    recover,
                    runner,
                    dataset,
                    root / recover.name,
                    f"refine{k}-stage2",
                    {
                        "recompute_stale": True,
                        "init": settings.init,
                        "dynamics_checkpoint": str(previous),
                        "prior_weight": settings.prior_weight,
                    },
                )
                cache_dir = root / recover.name / MESH_CACHE_DIR
                runner.manifest.finish_stage(s2, RunDir.stage2_outputs({n: cache_dir / f"{n}.npz" for n in names}))
            caches = runner.manifest.verified_outputs(s2)
            config3 = {**runner.stage_config(dynamics), **extra}
            ckpts = _round_checkpoints(root / dynamics.name, seeds)
            if runner.manifest.staleness(s3, config3, caches) is not None:
                print(f"[clods-pl] refine round {k}: stage 3 on the round-{k} meshes")
                start(s3, config3, caches)
                for seed, ckpt in zip(seeds or [None], ckpts.values()):  # every stage-3 seed, as in round 1
                    L.seed_everything(
                        int(runner.cfg.get("seed_everything", 0)) if seed is None else seed, workers=True, verbose=False
                    )
                    stamp = {"stage3.source": RECOVERED, **({} if seed is None else {"stage3.seed": seed}), **extra}
                    dynamics_stage.train_dynamics(
                        dynamics,
                        runner,
                        dataset,
                        ckpt.parent,
                        root / recover.name / MESH_CACHE_DIR,
                        RECOVERED,
                        stamp,
                        f"refine{k}-stage3" + ("" if seed is None else f"-seed{seed}"),
                        ckpt,
                    )
                runner.manifest.finish_stage(s3, RunDir.stage3_outputs(ckpts))
            consumed_eval = runner.manifest.verified_outputs(s3)
            if runner.manifest.staleness(ev, {**eval_config, **extra}, consumed_eval) is not None:
                start(ev, {**eval_config, **extra}, consumed_eval)
                assert evaluate.function is not None
                evaluate.function(
                    dataset_dir=dataset,
                    checkpoints={key: str(ckpt) for key, ckpt in ckpts.items()},
                    out_dir=str(root / eval_name),
                    **eval_settings,
                )
                runner.manifest.finish_stage(ev, {"metrics": root / eval_name / EVAL_METRICS})
            rows.append(_round_row(k, root / recover.name, root / eval_name, names))
            previous = next(iter(ckpts.values()))  # the first seed's model starts the next round
    except BaseException as exc:  # a round cut short is 'failed', not 'running' forever (the report checks)
        for name in started:
            if (runner.manifest.stage(name) or {}).get("status") == STATUS_RUNNING:
                runner.manifest.fail_stage(name, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        raise
    out = runner.run_dir / REFINE_DIR / "summary.json"
    atomic_write_json(
        out,
        {
            "settings": {"rounds": settings.rounds, "init": settings.init, "prior_weight": settings.prior_weight},
            "rounds": rows,
            ROUND1_EVAL_KEY: round1_eval,  # the report shows this table only while the pipeline's eval is this one
        },
    )
    atomic_write_text(out.with_name("refine_table.md"), refine_table_markdown(rows))
    print(f"[clods-pl] refine: {settings.rounds} rounds -> {out.with_name('refine_table.md')}")
    return out
