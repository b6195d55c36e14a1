"""Run one stage inside a run directory: check its inputs in the manifest, build the Lightning objects, run, record.

Stage hand-off (docs/pipeline.md):
  stage1 (fit)     -> ``<run>/stage1/smgs.ckpt``
  stage2 (predict) <- stage1 checkpoint; -> ``<run>/stage2/meshes/<traj>.npz``
  stage3 (fit)     <- stage2 mesh caches (sources ``recovered``/``mixed:N``); -> ``<run>/stage3/<source>.ckpt``
  eval             <- stage3 checkpoints (and the stage-1 checkpoint for the novel-view table);
                   -> ``<run>/eval/metrics.json``, ``novel_views.json`` (+ tables, plots, videos)

The per-stage work is in :mod:`clods_pl.pipeline.stage_runs`; this module decides what runs and records it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from filelock import Timeout as FileLockTimeout
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from clods_pl.errors import ClodsError, ManifestError
from clods_pl.pipeline.checks import (
    check_backends,
    check_dataset_needs,
    check_trainer_limits,
    dataset_of,
)
from clods_pl.pipeline.experiment import (
    EVAL_NAME,
    STAGE_NAMES,
    StageSpec,
    default_evaluate,
    default_stages,
    result_config,
    section,
)
from clods_pl.pipeline.manifest import Manifest
from clods_pl.pipeline.resume import SettingsStamp, resume_checkpoint
from clods_pl.pipeline.stage_runs import NOVEL_VIEWS_KEY, StageRuns
from clods_pl.stages.run_dir import (  # noqa: F401  (MESH_CACHE_DIR, STAGE1_CKPT: also for the CLI)
    CHECKPOINTS_DIR,
    LOGS_DIR,
    MESH_CACHE_DIR,
    STAGE1_CKPT,
    RunDir,
)
from clods_pl.utils.files import atomic_write_text, folder_fingerprint, sha256_json
from clods_pl.utils.loggers import build_loggers

RECOVERED_SOURCES = ("recovered", "mixed")
RUN_LOCK, RUN_LOCK_PID = "run.lock", "run.lock.pid"
UPSTREAM = {"stage1": (), "stage2": ("stage1",), "stage3": ("stage2",), EVAL_NAME: ("stage3",)}


def run_dir_of(cfg: Namespace) -> Path:
    """The run directory: ``--run_dir``, or ``runs/<first config's stem>``."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    configs = cfg.get("config") or []
    stem = Path(str(configs[0])).stem if configs else "default"
    return Path("runs") / stem


class StageRunner(StageRuns):
    """Runs stages of one experiment config in one run directory."""

    def __init__(self, parser: ArgumentParser, cfg: Namespace, stages: dict[str, StageSpec] | None = None,
                 evaluate: Callable[..., Any] | None = None) -> None:
        """``stages`` (default :func:`~clods_pl.pipeline.experiment.default_stages`) and ``evaluate`` (default
        ``run_evaluation``) are what the runner runs; tests pass stand-ins."""
        self.parser, self.cfg = parser, cfg
        self.stages = default_stages() if stages is None else stages
        self.evaluate = default_evaluate() if evaluate is None else evaluate
        self._stage_runs: dict[str, Callable[[str, Path, str | None], dict[str, Path] | None]] = {
            "stage1": self._run_stage1, "stage2": self._run_stage2, "stage3": self._run_stage3,
            EVAL_NAME: self._run_eval}
        self.run_dir = run_dir_of(cfg)
        self.manifest = Manifest(self.run_dir)
        self.outputs = RunDir(self.run_dir)  # typed reader of what the manifest records
        self.repair = False  # `pipeline` repairs stale outputs (e.g. recovers stale mesh caches again)
        self._dataset_files: dict[str, str] | None = None
        self._run_lock = FileLock(str(self.run_dir / RUN_LOCK))

    # ----- inputs ------------------------------------------------------------------------------------
    def stage3_sources(self) -> list[str]:
        """Sources stage 3 trains, in order."""
        sources = self.cfg.get("stage3.sources")
        return list(sources) if sources else [str(section(self.cfg, "stage3.data").get("source", "recovered"))]

    def stage3_seeds(self) -> list[int] | None:
        """``stage3.seeds``: train every source once per seed (None: once, with ``seed_everything``)."""
        seeds = self.cfg.get("stage3.seeds")
        return [int(s) for s in seeds] if seeds else None

    def upstream(self, stage: str) -> tuple[str, ...]:
        """Stages whose outputs ``stage`` consumes (stage 3 needs stage 2 only for recovered/mixed sources)."""
        if stage == "stage3" and not any(s.split(":")[0] in RECOVERED_SOURCES for s in self.stage3_sources()):
            return ()
        return UPSTREAM[stage]

    def dataset_files(self) -> dict[str, str]:
        """``{"dataset_files.<entry>": digest}`` for ``dataset.json`` and every trajectory folder it lists (once per
        process): a dataset edited after a run makes every stage that read it stale, naming the trajectory."""
        if self._dataset_files is None:

            root = Path(str(self.cfg.get("dataset") or ""))
            entries = ["dataset.json"]
            try:
                splits = json.loads((root / "dataset.json").read_text()).get("splits", {})
                entries += sorted({str(n) for names in splits.values() for n in names})
            except (OSError, ValueError, AttributeError, TypeError):  # no/odd dataset.json: the reader says why
                pass
            self._dataset_files = {f"dataset_files.{k}": v for k, v in folder_fingerprint(root, entries).items()}
        return self._dataset_files

    def stage_config(self, stage: str) -> dict[str, Any]:
        """Flat settings of ``stage`` plus those of every stage upstream (a change anywhere makes it stale), plus the
        dataset's fingerprint."""
        flat = result_config(self.cfg, stage)
        flat.update(self.dataset_files())
        if stage == "stage3":
            flat["stage3.sources"] = self.stage3_sources()
            flat["stage3.seeds"] = self.stage3_seeds()
        for up in self.upstream(stage):
            flat.update(self.stage_config(up))
        return flat

    def consumed(self, stage: str) -> dict[str, str]:
        """Verified output hashes of the upstream stages, refusing missing, stale or corrupt inputs."""
        out: dict[str, str] = {}
        for up in self.upstream(stage):
            reason = self.manifest.staleness(up, self.stage_config(up), self.consumed_quiet(up))
            if reason is not None:
                raise ManifestError(f"{stage} cannot run in {self.run_dir}: its input {up} is out of date ({reason}); "
                                    f"run `clods-pl pipeline` or rerun {up} first")
            out.update(self.manifest.verified_outputs(up))
        return out

    def consumed_quiet(self, stage: str) -> dict[str, str]:
        """Like :meth:`consumed` but returns what is there without raising (for staleness reports)."""
        out: dict[str, str] = {}
        for up in self.upstream(stage):
            try:
                out.update(self.manifest.verified_outputs(up))
            except ManifestError:
                out[f"{up}:missing"] = ""
        return out

    def staleness(self, stage: str) -> str | None:
        """Why ``stage`` must run (None when up to date): settings, inputs or outputs changed, or (stage 2) a mesh
        cache was recovered from another stage-1 checkpoint than the one recorded (two runs interleaved)."""
        reason = self.manifest.staleness(stage, self.stage_config(stage), self.consumed_quiet(stage))
        if reason is None and stage == "stage2":
            reason = self._mesh_chain_reason()
        return reason

    def _mesh_chain_reason(self) -> str | None:

        ckpt = self.outputs.stage1_checkpoint_digest()
        for path in self.outputs.mesh_caches().values():
            with np.load(path, allow_pickle=False) as z:
                made_from = str(z["stage1_hash"]) if "stage1_hash" in z.files else ""
            if made_from != ckpt:
                return (f"mesh cache {path} was recovered from stage-1 checkpoint {made_from[:12]}, not the recorded "
                        f"{str(ckpt)[:12]}")
        return None

    # ----- Lightning objects -------------------------------------------------------------------------
    def instantiate(self, stage: str, role: str, injected: dict[str, Any]) -> Any:
        spec = self.stages[stage]
        cls = spec.module if role == "model" else spec.datamodule
        kwargs = section(self.cfg, f"{stage}.{role}")
        kwargs.update(injected)
        return cls(**kwargs)

    def trainer(self, stage: str, stage_dir: Path, name: str, fit: bool, validate: bool = True,
                 stamp_extra: dict[str, Any] | None = None) -> L.Trainer:

        kwargs = section(self.cfg, f"{stage}.trainer")
        wandb = section(self.cfg, "wandb")
        loggers = build_loggers(self.cfg.get("logger", "csv"), save_dir=stage_dir / LOGS_DIR, name=name,
                                project=wandb.get("project", "clods-pl"), entity=wandb.get("entity"),
                                offline=wandb.get("offline"), tags=wandb.get("tags") or None)
        callbacks = [ModelCheckpoint(dirpath=stage_dir / CHECKPOINTS_DIR, save_last=True),
                     SettingsStamp(self.settings_digest(stage, stamp_extra))] if fit else []
        if not fit:
            kwargs["enable_checkpointing"] = False
        if not validate:  # no validation data: skip the loop instead of handing Lightning an empty one
            kwargs["limit_val_batches"] = 0
        return L.Trainer(**kwargs, logger=loggers, callbacks=callbacks, default_root_dir=str(stage_dir))

    def _save_config(self, stage: str) -> None:
        if rank_zero_only.rank == 0:
            text = self.parser.dump(self.cfg, skip_check=True)
            atomic_write_text(self.run_dir / stage / "config.yaml", text)

    def settings_digest(self, stage: str, extra: dict[str, Any] | None = None) -> str:
        """sha256 of what determines ``stage``'s result (its settings, upstream settings, dataset fingerprint)."""

        return sha256_json({**self.stage_config(stage), **(extra or {})})

    def resume_ckpt(self, ckpt_dir: Path, stage: str, extra: dict[str, Any] | None = None) -> str | None:
        """See :func:`clods_pl.pipeline.resume.resume_checkpoint` (the current settings' digest)."""
        return resume_checkpoint(ckpt_dir, stage, self.settings_digest(stage, extra))

    # ----- dataset requirements ----------------------------------------------------------------------
    def preflight(self, stages: tuple[str, ...]) -> None:
        """See :func:`clods_pl.pipeline.checks.check_dataset_needs`."""
        check_dataset_needs(self.cfg, stages, self.stage3_sources())

    # ----- settings ------------------------------------------------------------------------------------
    def check_settings(self, stage: str) -> None:
        """Build ``stage``'s model and data module (with placeholder inputs) and check its trainer limits before
        anything runs, so a bad setting stops the command at once, naming the setting, instead of after an upstream
        check or minutes into training."""
        if stage == EVAL_NAME:
            device = str(section(self.cfg, EVAL_NAME).get("device", "cpu"))
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise ClodsError(f"eval.device={device} but no CUDA GPU is visible; use eval.device=cpu")
            views = section(self.cfg, EVAL_NAME).get(NOVEL_VIEWS_KEY)
            if views:
                from clods_pl.stages.novel_views import NovelViewSettings  # noqa: PLC0415  (stage code on demand)

                NovelViewSettings(**views)  # checks its values, naming the setting
            return
        check_trainer_limits(stage, section(self.cfg, f"{stage}.trainer"))
        model_inputs = {"stage1_checkpoint": "", "cache_dir": str(self.run_dir / stage), "recompute_stale": False}
        data_inputs = {"dataset_dir": str(self.cfg.get("dataset") or ""), "mesh_cache_dir": ""}
        if stage == "stage3":
            data_inputs["source"] = self.stage3_sources()[0]
            model_rl = section(self.cfg, "stage3.model").get("rollout_length")
            data_rl = section(self.cfg, "stage3.data").get("rollout_length")
            if model_rl is not None and data_rl is not None and data_rl < model_rl:
                raise ClodsError(f"stage3.model.rollout_length={model_rl} needs windows of {model_rl + 2} frames but "
                                 f"stage3.data.rollout_length={data_rl} makes them {data_rl + 2}; set "
                                 f"stage3.data.rollout_length >= {model_rl} (usually equal)")
        spec = self.stages[stage]
        injected = {"model": set(spec.model_inputs), "data": set(spec.data_inputs) | {"source"} & set(data_inputs)}
        for role, inputs in (("model", model_inputs), ("data", data_inputs)):
            try:
                self.instantiate(stage, role, {k: v for k, v in inputs.items() if k in injected[role]})
            except ClodsError:
                raise
            except (ValueError, TypeError) as exc:
                raise ClodsError(f"{stage}.{role}: {str(exc).splitlines()[0]}") from None
        if stage == "stage3":
            from clods_pl.stages.dynamics_data import parse_source  # noqa: PLC0415  (stage code on demand)

            for source in self.stage3_sources():
                parse_source(source)

    # ----- exclusive use of the run directory ---------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold ``<run>/run.lock`` while stages run, so two clods-pl processes never interleave stages of one run
        (the second stops at once naming the first's PID). Not taken by DDP ranks other than 0 or by stage-2
        shards (``data.trajectories``), which run side by side on purpose; re-entrant within one process."""
        shard = section(self.cfg, "stage2.data").get("trajectories") is not None
        if rank_zero_only.rank != 0 or shard:
            yield
            return
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ClodsError(f"run_dir {self.run_dir} is not a directory (a file is in the way); "
                             "choose another --run_dir")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClodsError(f"run_dir {self.run_dir} cannot be created ({exc.strerror}); "
                             "choose another --run_dir") from None
        pid_file = self.run_dir / RUN_LOCK_PID
        try:
            self._run_lock.acquire(timeout=0)
        except FileLockTimeout:
            pid = pid_file.read_text().strip() if pid_file.is_file() else "?"
            raise ClodsError(f"run dir {self.run_dir} is in use by PID {pid} (another clods-pl holds "
                             f"{self._run_lock.lock_file}); wait for it to finish or use another --run_dir") from None
        try:
            if self._run_lock.lock_counter == 1:
                pid_file.write_text(f"{os.getpid()}\n")
            yield
        finally:
            self._run_lock.release()

    # ----- stages ------------------------------------------------------------------------------------
    def run(self, stage: str) -> None:
        """Run ``stage`` (stage1/stage2/stage3/eval) and record it in the manifest."""
        with self.exclusive():
            self._run(stage)

    def _run(self, stage: str) -> None:
        dataset = dataset_of(self.cfg)
        if not self.repair:  # `pipeline` checked every stage up front
            self.check_settings(stage)
        if not self.repair and stage in ("stage3", EVAL_NAME):
            self.preflight((stage,))
        if stage != EVAL_NAME:
            check_backends(self.cfg, stage)
        consumed = self.consumed(stage)
        config = self.stage_config(stage)
        resume_from = None
        stage_dir = self.run_dir / stage
        if stage == "stage1":
            resume_from = self.resume_ckpt(stage_dir / CHECKPOINTS_DIR, stage)
        is_rank0 = rank_zero_only.rank == 0
        if is_rank0:
            self.manifest.start_stage(stage, config, consumed)
        self._save_config(stage)
        L.seed_everything(int(self.cfg.get("seed_everything", 0)), workers=True, verbose=False)
        try:
            outputs = self._stage_runs[stage](dataset, stage_dir, resume_from)
            if outputs is None:  # a shard of stage 2: the finalize run records the stage
                return
            if is_rank0:
                self.manifest.finish_stage(stage, outputs)
        except BaseException as exc:
            if is_rank0:
                try:
                    self.manifest.fail_stage(stage, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
                except OSError:  # the disk that failed the stage may refuse this record too; the error still shows
                    pass
            raise
        if is_rank0:
            print(f"[clods-pl] {stage} done -> {stage_dir}")

    def pipeline(self, force: bool = False) -> list[str]:
        """Run every stage that is out of date, in order; returns the stages that ran."""
        ran = []
        self.repair = True
        dataset_of(self.cfg)
        for stage in (*STAGE_NAMES, EVAL_NAME):
            self.check_settings(stage)
        with self.exclusive():
            self.preflight((*STAGE_NAMES, EVAL_NAME))
            for stage in (*STAGE_NAMES, EVAL_NAME):
                reason = "forced" if force else self.staleness(stage)
                if reason is None:
                    print(f"[clods-pl] {stage} is up to date")
                    continue
                print(f"[clods-pl] running {stage}: {reason}")
                self.run(stage)
                ran.append(stage)
        return ran
