"""The experiment configuration: one jsonargparse parser for every stage's typed ``__init__`` arguments.

An experiment YAML (``experiments/flag_tiny.yaml``) holds top-level keys (``run_dir``, ``dataset``,
``seed_everything``, ``logger``, ``wandb``) and one section per stage (``stage1``, ``stage2``, ``stage3`` with
``model``/``data``/``trainer`` keys as LightningCLI expects, and ``eval``). Several ``--config`` files merge, later
ones override; dotted command-line overrides come last (``--stage1.model.lr_color 0.01``; inside a stage
subcommand also ``--model.lr_color 0.01``). Arguments that the orchestrator fills from the run directory
(dataset paths, checkpoints, caches) are not config keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from clods_pl.utils.settings import flatten

STAGE_NAMES = ("stage1", "stage2", "stage3")
EVAL_NAME = "eval"
LOGGER_KINDS = ("csv", "wandb", "both")
# Trainer arguments the orchestrator owns.
TRAINER_SKIP = {"logger", "callbacks", "default_root_dir"}
# Settings that do not change a stage's result: changing them does not make the stage stale.
NON_RESULT_KEYS = {"trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.devices",
                   "trainer.num_nodes", "trainer.accelerator", "trainer.strategy", "trainer.enable_model_summary",
                   "model.log_every_n_frames", "model.overwrite", "model.compile_mode", "data.num_workers",
                   "data.trajectories",
                   "videos", "device"}


@dataclass(frozen=True)
class StageSpec:
    """How the orchestrator runs one stage.

    Attributes:
        name: ``stage1`` | ``stage2`` | ``stage3`` (its config section).
        module, datamodule: the stage's LightningModule and LightningDataModule classes.
        run_mode: ``fit`` or ``predict``.
        model_inputs, data_inputs: ``__init__`` arguments the orchestrator fills (not config keys).
    """

    name: str
    module: type[L.LightningModule]
    datamodule: type[L.LightningDataModule]
    run_mode: str
    model_inputs: tuple[str, ...] = ()
    data_inputs: tuple[str, ...] = ()


def default_stages() -> dict[str, StageSpec]:
    """The three stages of CloDS, by name, in pipeline order."""
    # imported here, not at the top: the stage code (Lightning, torchmetrics) loads when a command needs it, and
    # the stages' own imports of pipeline helpers then cannot form a cycle with this module
    from clods_pl.stages.appearance import AppearanceDataModule, AppearanceModule  # noqa: PLC0415  (see above)
    from clods_pl.stages.dynamics import DynamicsModule  # noqa: PLC0415  (see above)
    from clods_pl.stages.dynamics_data import DynamicsDataModule  # noqa: PLC0415  (see above)
    from clods_pl.stages.recovery import RecoveryDataModule, RecoveryModule  # noqa: PLC0415  (see above)

    return {
        "stage1": StageSpec("stage1", AppearanceModule, AppearanceDataModule, "fit", (), ("dataset_dir",)),
        "stage2": StageSpec("stage2", RecoveryModule, RecoveryDataModule, "predict",
                            ("stage1_checkpoint", "cache_dir", "recompute_stale"), ("dataset_dir",)),
        "stage3": StageSpec("stage3", DynamicsModule, DynamicsDataModule, "fit", (),
                            ("dataset_dir", "mesh_cache_dir")),
    }


def default_evaluate() -> Callable[..., Any]:
    """The evaluation function (rollout RMSE against GT): ``clods_pl.stages.evaluation.run_evaluation``."""
    from clods_pl.stages.evaluation import run_evaluation  # noqa: PLC0415  (see default_stages)

    return run_evaluation


EVAL_INPUTS = {"dataset_dir", "checkpoints", "out_dir", "dataset"}


def _add_class(parser: ArgumentParser, cls: type, key: str, skip: set[str]) -> None:
    params = inspect.signature(cls.__init__).parameters
    parser.add_class_arguments(cls, key, skip={s for s in skip if s in params}, sub_configs=True)


def build_parser(prog: str = "clods-pl", stage_names: Sequence[str] = STAGE_NAMES,
                 description: str | None = None, trainer_arguments: bool = True,
                 stages: dict[str, StageSpec] | None = None,
                 evaluate: Callable[..., Any] | None = None) -> ArgumentParser:
    """The experiment parser: top-level keys, then ``<stage>.model|data|trainer`` from the classes in ``stages``
    (default: :func:`default_stages`) for ``stage_names``, then ``eval`` from ``evaluate``'s signature.

    ``trainer_arguments=False`` (for ``--help``) lists ``<stage>.trainer`` as one line instead of the ~60 typed
    ``lightning.Trainer`` arguments per stage.
    """
    stages = default_stages() if stages is None else stages
    evaluate = default_evaluate() if evaluate is None else evaluate
    # allow_abbrev=False: argparse would otherwise take a misspelt `--stage1.model.opacity_mod` for `opacity_mode`
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="experiment YAML (repeatable; later ones win)")
    parser.add_argument("--run_dir", type=str | None, default=None,
                        help="run directory (default: runs/<config name>)")
    parser.add_argument("--dataset", type=str | None, default=None, help="dataset folder (docs/dataset.md)")
    parser.add_argument("--seed_everything", type=int, default=0, help="seed for every stage")
    parser.add_argument("--threads", type=int | None, default=None,
                        help="CPU threads for torch (and the cpu rasterizer); default: OMP_NUM_THREADS when set, "
                             "else the cores the current load leaves free (at least 1)")
    parser.add_argument("--logger", type=str, default="csv", choices=LOGGER_KINDS, help="csv, wandb or both")
    parser.add_argument("--wandb.project", type=str, default="clods-pl")
    parser.add_argument("--wandb.entity", type=str | None, default=None)
    parser.add_argument("--wandb.offline", type=bool | None, default=None,
                        help="None: offline when WANDB_MODE=offline or no API key")
    parser.add_argument("--wandb.tags", type=list[str], default=[])
    for name in stage_names:
        spec = stages[name]
        _add_class(parser, spec.module, f"{name}.model", set(spec.model_inputs))
        _add_class(parser, spec.datamodule, f"{name}.data", set(spec.data_inputs))
        if trainer_arguments:
            _add_class(parser, L.Trainer, f"{name}.trainer", TRAINER_SKIP)
        else:
            parser.add_argument(f"--{name}.trainer", type=dict, default={},
                                help=f"any lightning.Trainer argument, e.g. --{name}.trainer.max_epochs 4 (see "
                                     "Lightning's Trainer docs; --print_config shows every one)")
    if "stage3" in stage_names:
        parser.add_argument("--stage3.sources", type=list[str] | None, default=None,
                            help="stage-3 sources trained in turn (recovered, gt, gt:N, mixed:N); "
                                 "default: [data.source]")
        parser.add_argument("--stage3.seeds", type=list[int] | None, default=None,
                            help="train every source once per seed; eval reports mean +- std over them "
                                 "(default: once, with seed_everything)")
    parser.add_function_arguments(evaluate, EVAL_NAME, skip=EVAL_INPUTS)
    if evaluate is default_evaluate():
        from clods_pl.stages.novel_views import NovelViewSettings  # noqa: PLC0415  (see default_stages)

        parser.add_class_arguments(NovelViewSettings, f"{EVAL_NAME}.novel_views")
    if "stage3" in stage_names:
        from clods_pl.pipeline.refine import RefineSettings  # noqa: PLC0415  (see default_stages)

        parser.add_class_arguments(RefineSettings, "refine")
    return parser


def rewrite_stage_overrides(stage: str, argv: Sequence[str]) -> list[str]:
    """Inside ``clods-pl stageN``, ``--model.x`` / ``--data.x`` / ``--trainer.x`` mean ``--stageN.model.x``."""
    out = []
    for arg in argv:
        for group in ("model", "data", "trainer"):
            if arg.startswith(f"--{group}."):
                arg = f"--{stage}.{arg[2:]}"
                break
        out.append(arg)
    return out


def section(cfg: Namespace, key: str) -> dict[str, Any]:
    """A config section as a plain dict (empty when absent)."""
    value = cfg.get(key) if hasattr(cfg, "get") else None
    if value is None:
        return {}
    return value.as_dict() if isinstance(value, Namespace) else dict(value)


def result_config(cfg: Namespace, stage: str) -> dict[str, Any]:
    """The flat settings that determine a stage's result (for staleness), e.g. ``stage1.model.lr``."""

    flat = {k: v for k, v in flatten(section(cfg, stage)).items() if k not in NON_RESULT_KEYS}
    out = {f"{stage}.{k}": v for k, v in flat.items()}
    out["dataset"] = cfg.get("dataset")
    out["seed_everything"] = cfg.get("seed_everything")
    return out
