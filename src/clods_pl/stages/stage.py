"""The contract between a stage and the orchestrator: what a stage declares (:class:`Stage`) and what the
orchestrator lends it while it runs (:class:`StageContext`).

Each stage module exports one :class:`Stage` (``appearance.STAGE``, ``recovery.STAGE``, ``dynamics_stage.STAGE``,
``evaluation.STAGE``). The orchestrator (``clods_pl.pipeline.runner.StageRunner``) only loops over a list of them:
it builds the config parser from their classes, checks their settings, decides from the manifest what is stale,
and records what ``run`` returns. Everything stage-specific (its inputs from the run directory, the settings that
do not change its result, extra checks) is declared here by the stage, not by name in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clods_pl.stages.run_dir import RunDir


@dataclass(frozen=True)
class StageJob:
    """One run of a stage: the dataset folder, its own folder in the run directory, and the Lightning checkpoint
    to resume from (None: start afresh; only for stages with ``resumable=True``)."""

    dataset: str
    stage_dir: Path
    resume_from: str | None = None


class StageContext(Protocol):
    """What the orchestrator lends a running stage: the config, the run directory, and Lightning objects built from
    the config (so a stage never parses settings itself)."""

    run_dir: Path
    outputs: RunDir  # the manifest's outputs of the stages that ran, typed
    repair: bool  # `pipeline`: recompute stale outputs instead of refusing them
    force: bool  # `--force true`: recompute from scratch (no resuming from checkpoints or mesh caches)

    def setting(self, key: str, default: Any = None) -> Any:
        """A config value by dotted key (``seed_everything``, ``stage3.seeds``)."""

    def section(self, key: str) -> dict[str, Any]:
        """A config section as a plain dict (``stage1.model``; empty when absent)."""

    def instantiate(self, stage: Stage, role: str, injected: Mapping[str, Any]) -> Any:
        """``stage.module`` (``role="model"``) or ``stage.datamodule`` (``"data"``) built from its config section
        plus the ``injected`` inputs (paths from the run directory)."""

    def trainer(
        self,
        stage: str,
        stage_dir: Path,
        name: str,
        fit: bool,
        validate: bool = True,
        stamp_extra: dict[str, Any] | None = None,
    ) -> Any:
        """A ``lightning.Trainer`` from ``<stage>.trainer`` with the run's loggers (and checkpoints when ``fit``)."""

    def resume_ckpt(self, ckpt_dir: Path, stage: str, extra: dict[str, Any] | None = None) -> str | None:
        """The checkpoint in ``ckpt_dir`` written with the current settings (plus ``extra``), or None."""


StageRun = Callable[["Stage", StageContext, StageJob], "dict[str, Path] | None"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline as the orchestrator sees it.

    Attributes:
        name: its config section and folder in the run directory (``stage1`` ... ``eval``).
        upstream: stages whose recorded outputs it consumes.
        run: ``run(stage, ctx, job) -> {output key: path}`` (keys from :class:`RunDir`); None for a shard that
            another run finishes (stage 2 with ``data.trajectories``).
        module, datamodule: its LightningModule and LightningDataModule classes (their typed ``__init__`` arguments
            are the ``<name>.model`` / ``<name>.data`` settings), or None for a stage run by a function.
        function: for a stage without Lightning classes (eval): its keyword arguments are the ``<name>`` settings.
        model_inputs, data_inputs, function_inputs: arguments the orchestrator fills from the run directory (not
            settings), with the placeholder values used to check the settings before anything runs.
        non_result_keys: settings (relative to the section, e.g. ``model.overwrite``) that do not change the result,
            so changing them does not make the stage stale.
        backend_keys: settings that name a rasterizer backend (checked for CUDA before the stage runs).
        resumable: it resumes from the last Lightning checkpoint written with the same settings.
        add_arguments: adds the stage's settings outside its classes to the parser (``stage3.sources``).
        upstream_note: appended to the error when an upstream stage is missing or stale (how to do without it).
        uses_upstream: which of ``upstream`` this run consumes with the current settings (default: all of them;
            stage 3 needs stage 2 only for recovered meshes, eval needs stages 1-2 only for the novel-view table).
        extra_config: result-relevant settings resolved from the config (defaults filled in) for staleness.
        check: further setting checks before anything runs (each raises a one-line ``ClodsError``).
        check_dataset: what the stage needs of the dataset, checked before any stage runs.
        extra_staleness: a reason the outputs are stale beyond settings and hashes (None: none).
        is_shard: the settings make this run one shard of the stage (its lock and record are the finisher's).
    """

    name: str
    upstream: tuple[str, ...]
    run: StageRun
    module: type | None = None
    datamodule: type | None = None
    function: Callable[..., Any] | None = None
    model_inputs: Mapping[str, Any] = field(default_factory=dict)
    data_inputs: Mapping[str, Any] = field(default_factory=dict)
    function_inputs: tuple[str, ...] = ()
    non_result_keys: frozenset[str] = frozenset()
    backend_keys: tuple[str, ...] = ()
    resumable: bool = False
    add_arguments: Callable[[Any, str], None] | None = None
    uses_upstream: Callable[[StageContext], tuple[str, ...]] | None = None
    upstream_note: str = ""
    extra_config: Callable[[StageContext], dict[str, Any]] | None = None
    check: Callable[[StageContext], None] | None = None
    check_dataset: Callable[[StageContext, Any], None] | None = None
    extra_staleness: Callable[[StageContext], str | None] | None = None
    is_shard: Callable[[StageContext], bool] | None = None

    def needs(self, ctx: StageContext) -> tuple[str, ...]:
        """The upstream stages this run consumes with the current settings."""
        if self.uses_upstream is None:
            return self.upstream
        used = set(self.uses_upstream(ctx))
        return tuple(name for name in self.upstream if name in used)

    def sharded(self, ctx: StageContext) -> bool:
        """Whether this run is one shard of the stage."""
        return self.is_shard is not None and self.is_shard(ctx)
