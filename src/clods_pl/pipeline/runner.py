"""Run one stage inside a run directory: check its inputs in the manifest, build the Lightning objects, run, record.

Stage hand-off (docs/pipeline.md):
  stage1 (fit)     -> ``<run>/stage1/smgs.ckpt``
  stage2 (predict) <- stage1 checkpoint; -> ``<run>/stage2/meshes/<traj>.npz``
  stage3 (fit)     <- stage2 mesh caches (sources ``recovered``/``mixed:N``); -> ``<run>/stage3/<source>.ckpt``
  eval             <- stage3 checkpoints (and for the novel-view table the stage-1 checkpoint and mesh caches);
                   -> ``<run>/eval/metrics.json``, ``novel_views.json`` (+ tables, plots, videos)

Each stage declares itself and does its work in its own module (``clods_pl.stages.*_stage``, a
:class:`~clods_pl.stages.stage.Stage` each); this module decides what runs and records it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from clods_pl.data.format import read_dataset
from clods_pl.errors import ClodsError, ManifestError
from clods_pl.pipeline.checks import check_backends, check_trainer_limits, dataset_of
from clods_pl.pipeline.experiment import default_stages, result_config, stage_processes
from clods_pl.pipeline.manifest import Manifest
from clods_pl.pipeline.progress import EpochLine
from clods_pl.pipeline.resume import SettingsStamp, discard_checkpoints, preemption_checkpoints, resume_checkpoint
from clods_pl.pipeline.run_lock import RunLock
from clods_pl.stages.run_dir import CHECKPOINTS_DIR, CONFIG_FILE, LOGS_DIR, RunDir
from clods_pl.stages.stage import Stage, StageJob
from clods_pl.utils.files import atomic_write_text, folder_fingerprint, sha256_json
from clods_pl.utils.loggers import build_loggers, finish_wandb_runs, log_manifest_artifact
from clods_pl.utils.settings import section


def run_dir_of(cfg: Namespace) -> Path:
    """The run directory: ``--run_dir``, or ``runs/<first config's stem>``."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    configs = cfg.get("config") or []
    stem = Path(str(configs[0])).stem if configs else "default"
    return Path("runs") / stem


class StageRunner:
    """Runs the stages of one experiment config in one run directory; the :class:`~clods_pl.stages.stage
    .StageContext` each stage runs with."""

    def __init__(self, parser: ArgumentParser | None, cfg: Namespace, stages: Sequence[Stage] | None = None) -> None:
        """``stages``: what the runner runs, in pipeline order (default
        :func:`~clods_pl.pipeline.experiment.default_stages`; tests pass stand-ins)."""
        self.parser, self.cfg = parser, cfg
        self.stages: tuple[Stage, ...] = default_stages() if stages is None else tuple(stages)
        self.run_dir = run_dir_of(cfg)
        self.manifest = Manifest(self.run_dir)
        self.outputs = RunDir(self.run_dir)  # typed reader of what the manifest records
        self.repair = False  # `pipeline` repairs stale outputs (e.g. recovers stale mesh caches again)
        self.force = False  # `--force true`: recompute from scratch (no resuming, mesh caches rebuilt)
        self._dataset_files: dict[str, str] | None = None
        self._run_lock = RunLock(self.run_dir)
        self._loggers: list[Any] = []  # the loggers of the stage's current trainer (W&B gets the manifest)

    def __reduce__(self) -> tuple[Any, ...]:
        """A worker process's copy (``clods_pl.utils.workers``): the config and stages, no parser (workers run
        jobs inside a stage; the parent records the stage and writes its config)."""
        return (_worker_runner, (self.cfg, self.stages, self.repair, self.force))

    # ----- the config, as the stages read it -------------------------------------------------------------
    def setting(self, key: str, default: Any = None) -> Any:
        value = self.cfg.get(key)
        return default if value is None else value

    def section(self, key: str) -> dict[str, Any]:
        return section(self.cfg, key)

    def stage(self, name: str) -> Stage:
        """The stage whose config section is ``name`` (a command-line stage name)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ClodsError(f"no stage '{name}' in this pipeline; choose one of {', '.join(s.name for s in self.stages)}")

    # ----- inputs ------------------------------------------------------------------------------------
    def upstream(self, stage: Stage) -> tuple[Stage, ...]:
        """Stages whose outputs ``stage`` consumes with the current settings."""
        return tuple(self.stage(name) for name in stage.needs(self))

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

    def stage_config(self, stage: Stage) -> dict[str, Any]:
        """Flat settings of ``stage`` plus those of every stage upstream (a change anywhere makes it stale), plus the
        dataset's fingerprint."""
        flat = result_config(self.cfg, stage)
        flat.update(self.dataset_files())
        if stage.extra_config is not None:
            flat.update(stage.extra_config(self))
        for up in self.upstream(stage):
            flat.update(self.stage_config(up))
        return flat

    def consumed(self, stage: Stage) -> dict[str, str]:
        """Verified output hashes of the upstream stages, refusing missing, stale or corrupt inputs."""
        out: dict[str, str] = {}
        for up in self.upstream(stage):
            reason = self.manifest.staleness(up.name, self.stage_config(up), self.consumed_quiet(up))
            if reason is not None:
                raise ManifestError(
                    f"{stage.name} cannot run in {self.run_dir}: its input {up.name} is out of date "
                    f"({reason}); run `clods-pl pipeline` or rerun {up.name} first{stage.upstream_note}"
                )
            out.update(self.manifest.verified_outputs(up.name))
        return out

    def consumed_quiet(self, stage: Stage) -> dict[str, str]:
        """Like :meth:`consumed` but returns what is there without raising (for staleness reports)."""
        out: dict[str, str] = {}
        for up in self.upstream(stage):
            try:
                out.update(self.manifest.verified_outputs(up.name))
            except ManifestError:
                out[f"{up.name}:missing"] = ""
        return out

    def staleness(self, stage: Stage) -> str | None:
        """Why ``stage`` must run (None when up to date): settings, inputs or outputs changed, or what the stage
        itself finds stale (stage 2: a mesh cache recovered from another stage-1 checkpoint than the recorded)."""
        reason = self.manifest.staleness(stage.name, self.stage_config(stage), self.consumed_quiet(stage))
        if reason is None and stage.resumable:
            ran, now = self.manifest.processes(stage.name), stage_processes(self.cfg, stage)
            if ran != now and rank_zero_only.rank == 0:  # said, not redone: the allocation is no result setting
                print(
                    f"[clods-pl] note: {stage.name} ran as {ran} process(es) and would now run as {now}; its outputs "
                    f"are kept (under DDP each process fits on its share of the data: `--force true` refits)"
                )
        if reason is None and stage.extra_staleness is not None:
            reason = stage.extra_staleness(self)
        return reason

    # ----- Lightning objects -------------------------------------------------------------------------
    def instantiate(self, stage: Stage, role: str, injected: Mapping[str, Any]) -> Any:
        """``stage.module`` (``role="model"``) or ``stage.datamodule`` from ``<stage>.<role>`` plus ``injected``."""
        cls = stage.module if role == "model" else stage.datamodule
        if cls is None:
            raise ClodsError(f"{stage.name} has no {role} class")
        kwargs = section(self.cfg, f"{stage.name}.{role}")
        kwargs.update(injected)
        return cls(**kwargs)

    def trainer(
        self,
        stage: str,
        stage_dir: Path,
        name: str,
        fit: bool,
        validate: bool = True,
        stamp_extra: dict[str, Any] | None = None,
    ) -> L.Trainer:
        """A Trainer from ``<stage>.trainer`` with the run's loggers, and checkpoints stamped with the settings."""
        kwargs = section(self.cfg, f"{stage}.trainer")
        wandb = section(self.cfg, "wandb")
        loggers = build_loggers(
            self.cfg.get("logger", "csv"),
            save_dir=stage_dir / LOGS_DIR,
            name=name,
            project=wandb.get("project", "clods-pl"),
            entity=wandb.get("entity"),
            offline=wandb.get("offline"),
            tags=wandb.get("tags") or None,
        )
        finish_wandb_runs(self._loggers)  # the stage's previous trainer (stage 3: the previous source)
        self._loggers = list(loggers)
        callbacks = (
            [
                ModelCheckpoint(dirpath=stage_dir / CHECKPOINTS_DIR, save_last=True),
                SettingsStamp(self.settings_digest(self.stage(stage), stamp_extra)),
            ]
            if fit
            else []
        )
        if fit and not kwargs.get("enable_progress_bar", True):  # no bar: one line per epoch with an ETA
            callbacks.append(EpochLine(name))
        if not fit:
            kwargs["enable_checkpointing"] = False
        if not validate:  # no validation data: skip the loop instead of handing Lightning an empty one
            kwargs["limit_val_batches"] = 0
        return L.Trainer(**kwargs, logger=loggers, callbacks=callbacks, default_root_dir=str(stage_dir))

    def _save_config(self, stage: Stage) -> None:
        if rank_zero_only.rank == 0 and self.parser is not None:
            text = self.parser.dump(self.cfg, skip_check=True)
            atomic_write_text(self.run_dir / stage.name / CONFIG_FILE, text)

    def settings_digest(self, stage: Stage, extra: dict[str, Any] | None = None) -> str:
        """sha256 of what determines ``stage``'s result (its settings, upstream settings, dataset fingerprint, and
        its number of processes when above 1): a resume never continues a fit made with other settings."""
        processes = stage_processes(self.cfg, stage)
        world = {} if processes == 1 else {f"{stage.name}.trainer.world_size": processes}
        return sha256_json({**self.stage_config(stage), **world, **(extra or {})})

    def resume_ckpt(self, ckpt_dir: Path, stage: str, extra: dict[str, Any] | None = None) -> str | None:
        """See :func:`clods_pl.pipeline.resume.resume_checkpoint` (the current settings' digest); with ``force``,
        the folder's checkpoints are removed and training starts over."""
        if self.force:
            discard_checkpoints(ckpt_dir, stage, "--force")
            return None
        return resume_checkpoint(ckpt_dir, stage, self.settings_digest(self.stage(stage), extra))

    # ----- checks before anything runs -------------------------------------------------------------------
    def preflight(self, stages: Sequence[Stage]) -> None:
        """Check, before any of ``stages`` runs, what they will need of the dataset (the reader checks every file;
        each stage its own needs, e.g. ground truth for what eval scores). A bad dataset then fails in seconds
        instead of after stages 1-2."""
        checks = [s for s in stages if s.check_dataset is not None]
        if not checks:
            return
        ds = read_dataset(dataset_of(self.cfg))
        for stage in checks:
            assert stage.check_dataset is not None
            stage.check_dataset(self, ds)

    def check_settings(self, stage: Stage) -> None:
        """Build ``stage``'s model and data module (with placeholder inputs) and check its trainer limits before
        anything runs, so a bad setting stops the command at once, naming the setting, instead of after an upstream
        check or minutes into training."""
        if stage.module is not None and stage.datamodule is not None:
            check_trainer_limits(stage.name, section(self.cfg, f"{stage.name}.trainer"))
            data_inputs = dict(stage.data_inputs)
            if "dataset_dir" in data_inputs:  # the real folder: the DataModule may check it exists
                data_inputs["dataset_dir"] = str(self.cfg.get("dataset") or "")
            for role, inputs in (("model", stage.model_inputs), ("data", data_inputs)):
                try:
                    self.instantiate(stage, role, inputs)
                except ClodsError:
                    raise
                except (ValueError, TypeError) as exc:
                    raise ClodsError(f"{stage.name}.{role}: {str(exc).splitlines()[0]}") from None
        if stage.check is not None:
            stage.check(self)

    # ----- exclusive use of the run directory ---------------------------------------------------------
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """See :class:`~clods_pl.pipeline.run_lock.RunLock`; not taken by DDP ranks other than 0 or by stage-2
        shards (``data.trajectories``), which run side by side on purpose."""
        if rank_zero_only.rank != 0 or any(stage.sharded(self) for stage in self.stages):
            yield
            return
        with self._run_lock.held():
            yield

    # ----- stages ------------------------------------------------------------------------------------
    def run(self, stage: Stage) -> None:
        """Run ``stage`` and record it in the manifest."""
        with self.exclusive():
            self._run(stage)

    def _run(self, stage: Stage) -> None:
        dataset = dataset_of(self.cfg)
        if not self.repair:  # `pipeline` checked every stage up front
            self.check_settings(stage)
            self.preflight((stage,))
        check_backends(self.cfg, stage.name, stage.backend_keys)
        consumed = self.consumed(stage)
        config = self.stage_config(stage)
        stage_dir = self.run_dir / stage.name
        resume_from = self.resume_ckpt(stage_dir / CHECKPOINTS_DIR, stage.name) if stage.resumable else None
        if not stage.resumable and rank_zero_only.rank == 0:  # it resumes from its own outputs (stage 2: the caches)
            for path in preemption_checkpoints(stage_dir):  # Lightning would load one into the module by itself
                print(
                    f"[clods-pl] {stage.name}: removing the preemption checkpoint {path} (it resumes from its outputs)"
                )
                path.unlink(missing_ok=True)
        is_rank0 = rank_zero_only.rank == 0
        self._loggers = []
        if is_rank0:
            self.manifest.start_stage(stage.name, config, consumed, stage_processes(self.cfg, stage))
        self._save_config(stage)
        L.seed_everything(int(self.cfg.get("seed_everything", 0)), workers=True, verbose=False)
        try:
            outputs = stage.run(stage, self, StageJob(dataset, stage_dir, resume_from))
            if outputs is None:  # a shard (stage 2 with data.trajectories): the finishing run records the stage
                return
            if is_rank0:
                self.manifest.finish_stage(stage.name, outputs)
                log_manifest_artifact(self._loggers, self.manifest.path)  # W&B runs record configs and checksums
            finish_wandb_runs(self._loggers)
        except BaseException as exc:
            if is_rank0:
                try:
                    self.manifest.fail_stage(stage.name, f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
                except OSError:  # the disk that failed the stage may refuse this record too; the error still shows
                    pass
            raise
        if is_rank0:
            print(f"[clods-pl] {stage.name} done -> {stage_dir}")

    def pipeline(self, force: bool = False) -> list[str]:
        """Run every stage that is out of date, in order; returns the names of the stages that ran."""
        ran = []
        self.repair = True
        dataset_of(self.cfg)
        for stage in self.stages:
            self.check_settings(stage)
        with self.exclusive():
            self.preflight(self.stages)
            for stage in self.stages:
                reason = "forced" if force else self.staleness(stage)
                if reason is None:
                    print(f"[clods-pl] {stage.name} is up to date")
                    continue
                print(f"[clods-pl] running {stage.name}: {reason}")
                self.run(stage)
                ran.append(stage.name)
        return ran


def _worker_runner(cfg: Namespace, stages: tuple[Stage, ...], repair: bool, force: bool) -> StageRunner:
    """Rebuilds a :class:`StageRunner` in a worker process (see :meth:`StageRunner.__reduce__`)."""
    runner = StageRunner(None, cfg, stages)
    runner.repair, runner.force = repair, force
    return runner
