"""The experiment configuration: one jsonargparse parser for every stage's typed ``__init__`` arguments.

An experiment YAML (``experiments/flag_tiny.yaml``) holds top-level keys (``run_dir``, ``dataset``,
``seed_everything``, ``logger``, ``wandb``) and one section per stage (``stage1``, ``stage2``, ``stage3`` with
``model``/``data``/``trainer`` keys as LightningCLI expects, and ``eval``). Several ``--config`` files merge, later
ones override; dotted command-line overrides come last (``--stage1.model.lr_color 0.01``; inside a stage
subcommand also ``--model.lr_color 0.01``). Arguments that the orchestrator fills from the run directory
(dataset paths, checkpoints, caches) are not config keys.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from clods_pl.errors import ClodsError

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
        module, datamodule: ``"package.module:Class"`` import paths.
        run_mode: ``fit`` or ``predict``.
        model_inputs, data_inputs: ``__init__`` arguments the orchestrator fills (not config keys).
    """

    name: str
    module: str
    datamodule: str
    run_mode: str
    model_inputs: tuple[str, ...] = ()
    data_inputs: tuple[str, ...] = ()
    extra_keys: dict[str, Any] = field(default_factory=dict)


STAGES: dict[str, StageSpec] = {
    "stage1": StageSpec("stage1", "clods_pl.stages.appearance:AppearanceModule",
                        "clods_pl.stages.appearance:AppearanceDataModule", "fit", (), ("dataset_dir",)),
    "stage2": StageSpec("stage2", "clods_pl.stages.recovery:RecoveryModule",
                        "clods_pl.stages.recovery:RecoveryDataModule", "predict",
                        ("stage1_checkpoint", "cache_dir", "recompute_stale"), ("dataset_dir",)),
    "stage3": StageSpec("stage3", "clods_pl.stages.dynamics:DynamicsModule",
                        "clods_pl.stages.dynamics:DynamicsDataModule", "fit", (),
                        ("dataset_dir", "mesh_cache_dir")),
}
EVAL_FUNCTION = "clods_pl.stages.evaluation:run_evaluation"
EVAL_INPUTS = {"dataset_dir", "checkpoints", "out_dir", "dataset"}


class StageUnavailableError(ClodsError):
    """A stage's code cannot be imported."""


def import_object(path: str) -> Any:
    """``"pkg.mod:Name"`` -> the object; a clear StageUnavailableError when it cannot be imported."""
    mod_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise StageUnavailableError(f"{path} cannot be imported ({type(exc).__name__}: {exc}); "
                                    "reinstall clods-pl with `make install`") from exc


def _add_class(parser: ArgumentParser, cls: type, key: str, skip: set[str]) -> None:
    params = inspect.signature(cls.__init__).parameters
    parser.add_class_arguments(cls, key, skip={s for s in skip if s in params}, sub_configs=True)


def build_parser(prog: str = "clods-pl", stages: Sequence[str] = STAGE_NAMES,
                 description: str | None = None, trainer_arguments: bool = True
                 ) -> tuple[ArgumentParser, dict[str, str]]:
    """The experiment parser and ``{stage: reason}`` for stages whose code could not be imported.

    An unavailable stage's section is accepted as a free-form dict, so the other stages still run.
    ``trainer_arguments=False`` (for ``--help``) lists ``<stage>.trainer`` as one line instead of the ~60 typed
    ``lightning.Trainer`` arguments per stage.
    """
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
    unavailable: dict[str, str] = {}
    for name in stages:
        spec = STAGES[name]
        try:
            module_cls, data_cls = import_object(spec.module), import_object(spec.datamodule)
        except StageUnavailableError as exc:
            unavailable[name] = str(exc)
            parser.add_argument(f"--{name}", type=dict, default={}, help=f"(unavailable: {exc})")
            continue
        _add_class(parser, module_cls, f"{name}.model", set(spec.model_inputs))
        _add_class(parser, data_cls, f"{name}.data", set(spec.data_inputs))
        if trainer_arguments:
            _add_class(parser, L.Trainer, f"{name}.trainer", TRAINER_SKIP)
        else:
            parser.add_argument(f"--{name}.trainer", type=dict, default={},
                                help=f"any lightning.Trainer argument, e.g. --{name}.trainer.max_epochs 4 (see "
                                     "Lightning's Trainer docs; --print_config shows every one)")
    if "stage3" in stages and "stage3" not in unavailable:
        parser.add_argument("--stage3.sources", type=list[str] | None, default=None,
                            help="stage-3 sources trained in turn (recovered, gt, gt:N, mixed:N); "
                                 "default: [data.source]")
    try:
        run_eval: Callable[..., Any] = import_object(EVAL_FUNCTION)
        parser.add_function_arguments(run_eval, EVAL_NAME, skip=EVAL_INPUTS)
    except StageUnavailableError as exc:
        unavailable[EVAL_NAME] = str(exc)
        parser.add_argument(f"--{EVAL_NAME}", type=dict, default={})
    return parser, unavailable


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
    from clods_pl.pipeline.manifest import flatten  # noqa: PLC0415

    flat = {k: v for k, v in flatten(section(cfg, stage)).items() if k not in NON_RESULT_KEYS}
    out = {f"{stage}.{k}": v for k, v in flat.items()}
    out["dataset"] = cfg.get("dataset")
    out["seed_everything"] = cfg.get("seed_everything")
    return out
