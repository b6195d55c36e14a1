"""How each stage runs inside a run directory once :class:`~clods_pl.pipeline.runner.StageRunner` has checked it
may: build its LightningModule, DataModule and Trainer from the config, run, and return the outputs to record
(keyed by :class:`~clods_pl.stages.run_dir.RunDir`). A mixin of ``StageRunner``: the orchestration (staleness,
locks, the manifest) lives there, the per-stage work here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L

from clods_pl.errors import ManifestError
from clods_pl.pipeline.experiment import EVAL_NAME, section
from clods_pl.stages.run_dir import (
    CHECKPOINTS_DIR,
    EVAL_METRICS,
    MESH_CACHE_DIR,
    STAGE1_CKPT,
    SUMMARY_FILE,
    RunDir,
    seeded_key,
)
from clods_pl.utils.files import atomic_write_json

NOVEL_VIEWS_KEY = "novel_views"  # eval.novel_views: stages.novel_views.NovelViewSettings


def safe_name(source: str) -> str:
    """A file-name-safe form of a stage-3 source (``gt:5`` -> ``gt-5``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", source)


class StageRuns:
    """``_run_<stage>(dataset, stage_dir, resume_from) -> outputs`` for every stage (used by ``StageRunner._run``)."""

    cfg: Any
    stages: Any
    outputs: RunDir
    run_dir: Path
    repair: bool
    evaluate: Any

    def _run_stage1(self, dataset: str, stage_dir: Path, resume_from: str | None) -> dict[str, Path]:
        model = self.instantiate("stage1", "model", {})
        data = self.instantiate("stage1", "data", {"dataset_dir": dataset})
        trainer = self.trainer("stage1", stage_dir, "stage1", fit=True)
        trainer.fit(model, datamodule=data, ckpt_path=resume_from)
        ckpt = stage_dir / STAGE1_CKPT
        trainer.save_checkpoint(ckpt, weights_only=False)  # explicit: unset, Lightning logs a notice
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            atomic_write_json(stage_dir / SUMMARY_FILE, {"held_out_views": metrics})
        return RunDir.stage1_outputs(ckpt)

    def recover_meshes(self, dataset: str, stage_dir: Path, name: str, model_overrides: dict[str, Any],
                       summary: bool = True) -> list[str]:
        """Stage 2 into ``stage_dir/meshes`` with the config's settings plus ``model_overrides`` (``refine``: the
        dynamics init); writes ``stage_dir/summary.json`` when ``summary``; returns the trajectories recovered."""
        cache_dir = stage_dir / MESH_CACHE_DIR
        model = self.instantiate("stage2", "model", {"stage1_checkpoint": str(self.outputs.stage1_checkpoint()),
                                                      "cache_dir": str(cache_dir), "recompute_stale": self.repair,
                                                      **model_overrides})
        data = self.instantiate("stage2", "data", {"dataset_dir": dataset})
        trainer = self.trainer("stage2", stage_dir, name, fit=False)
        trainer.predict(model, datamodule=data, return_predictions=False)
        names = [item.name for item in data.items]
        if summary and trainer.is_global_zero:
            from clods_pl.stages.recovery_metrics import recovery_summary  # noqa: PLC0415  (stage code on demand)

            atomic_write_json(stage_dir / SUMMARY_FILE, recovery_summary(dataset, cache_dir, names))
        return names

    def train_dynamics(self, dataset: str, sub: Path, cache_dir: Path, source: str, stamp: dict[str, Any],
                       name: str, ckpt: Path) -> Path:
        """Stage 3 of one ``source`` on the meshes in ``cache_dir``, resuming from ``sub``'s checkpoints stamped
        with the settings plus ``stamp``; saves ``ckpt``."""
        resume = self.resume_ckpt(sub / CHECKPOINTS_DIR, "stage3", stamp)
        model = self.instantiate("stage3", "model", {})
        data = self.instantiate("stage3", "data", {"dataset_dir": dataset, "mesh_cache_dir": str(cache_dir),
                                                     "source": source})
        trainer = self.trainer("stage3", sub, name, fit=True, validate=bool(getattr(data, "val_split", None)),
                               stamp_extra=stamp)
        trainer.fit(model, datamodule=data, ckpt_path=resume)
        trainer.save_checkpoint(ckpt, weights_only=False)  # explicit: unset, Lightning logs a notice
        return ckpt

    def _run_stage2(self, dataset: str, stage_dir: Path, resume_from: str | None) -> dict[str, Path] | None:
        shard = section(self.cfg, "stage2.data").get("trajectories") is not None
        names = self.recover_meshes(dataset, stage_dir, "stage2", {}, summary=not shard)
        if shard:
            print("[clods-pl] stage2: recovered a shard (data.trajectories); run stage2 without it to finish")
            return None
        return RunDir.stage2_outputs({n: stage_dir / MESH_CACHE_DIR / f"{n}.npz" for n in names})

    def _run_stage3(self, dataset: str, stage_dir: Path, resume_from: str | None) -> dict[str, Path]:
        outputs: dict[str, Path] = {}
        cache_dir = self.run_dir / "stage2" / MESH_CACHE_DIR
        seeds = self.stage3_seeds()
        for source in self.stage3_sources():
            for seed in seeds or [None]:
                key = source if seed is None else seeded_key(source, seed)
                sub = stage_dir / safe_name(source) / ("" if seed is None else f"seed{seed}")
                stamp = {"stage3.source": source, **({} if seed is None else {"stage3.seed": seed})}
                if seed is not None:  # each seed its own initialisation, window draws and noise
                    L.seed_everything(seed, workers=True, verbose=False)
                outputs[key] = self.train_dynamics(dataset, sub, cache_dir, source, stamp, f"stage3-{safe_name(key)}",
                                                   stage_dir / f"{safe_name(key)}.ckpt")
        return RunDir.stage3_outputs(outputs)

    def _run_eval(self, dataset: str, stage_dir: Path, resume_from: str | None) -> dict[str, Path]:
        checkpoints = {source: str(path) for source, path in self.outputs.stage3_checkpoints().items()}
        if not checkpoints:
            raise ManifestError(f"stage3 recorded no checkpoints in {self.manifest.path}; rerun `clods-pl stage3`")
        settings = section(self.cfg, EVAL_NAME)
        views = settings.pop(NOVEL_VIEWS_KEY, None) or {}
        self.evaluate(dataset_dir=dataset, checkpoints=checkpoints, out_dir=str(stage_dir), **settings)
        outputs = {"metrics": stage_dir / EVAL_METRICS}
        if views.get("enabled", False):
            table = self._run_novel_views(dataset, stage_dir, views)
            if table is not None:
                outputs["novel_views"] = table
        return outputs

    def _run_novel_views(self, dataset: str, stage_dir: Path, views: dict[str, Any]) -> Path | None:
        """The novel-view table (``stages/novel_views.py``): the run's stage-1 SMGS plus the ablation fits."""
        from clods_pl.data.format import read_dataset  # noqa: PLC0415  (stage code on demand)
        from clods_pl.smgs.io import load_smgs  # noqa: PLC0415  (stage code on demand)
        from clods_pl.stages.appearance import local_lpips  # noqa: PLC0415  (stage code on demand)
        from clods_pl.stages.novel_views import (  # noqa: PLC0415  (stage code on demand)
            RECOVERED_RENDERS,
            NovelViewSettings,
            fit_appearance_variant,
            recovered_render_sheet,
            run_novel_view_evaluation,
        )

        ckpt = self.outputs.stage1_checkpoint()
        if ckpt is None:
            print("[clods-pl] novel-view table skipped: this run has no stage-1 checkpoint")
            return None
        settings = NovelViewSettings(**views)
        smgs, rendered = load_smgs(ckpt)
        models = {"dual": smgs}
        spec, seed = self.stages["stage1"], int(self.cfg.get("seed_everything", 0))
        for mode in settings.ablations:
            print(f"[clods-pl] novel views: fitting the {mode}-opacity ablation of stage 1")
            models[mode] = fit_appearance_variant(
                spec.module, spec.datamodule, {**section(self.cfg, "stage1.model"), "opacity_mode": mode},
                {**section(self.cfg, "stage1.data"), "dataset_dir": dataset}, section(self.cfg, "stage1.trainer"),
                seed, stage_dir / "novel_views" / mode)
        backend = rendered.backend if rendered.backend in ("torch", "cpu") else "torch"  # eval renders on the CPU
        holdout = section(self.cfg, "stage1.data").get("holdout_views", [0])
        lpips, _notice = local_lpips()  # stage 1 already said why when it is missing
        out = run_novel_view_evaluation(dataset, models, holdout, rendered.background, stage_dir, settings, backend,
                                        lpips)
        ds = read_dataset(dataset)
        names = [ds.names(s)[0] for s in ("train", *settings.splits) if ds.names(s)]
        train_view = next(v for v in range(len(ds.trajectory(names[0]).cameras)) if v not in holdout)
        recovered_render_sheet(smgs, ds, self.run_dir / "stage2" / MESH_CACHE_DIR, names, [train_view, holdout[0]],
                               rendered.background, stage_dir / RECOVERED_RENDERS, backend)
        return out
