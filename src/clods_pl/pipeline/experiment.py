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
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from clods_pl.errors import ClodsError
from clods_pl.pipeline.refine import RefineSettings
from clods_pl.stages import appearance_stage, dynamics_stage, evaluation_stage, recovery_stage
from clods_pl.stages.stage import Stage
from clods_pl.utils.settings import flatten, section

LOGGER_KINDS = ("csv", "wandb", "both")
# Trainer arguments the orchestrator owns.
TRAINER_SKIP = {"logger", "callbacks", "default_root_dir"}
# Trainer settings that do not change any stage's result (each stage declares its own: Stage.non_result_keys).
# Devices and nodes are here as spelt, but the number of processes they make counts for the stage itself
# (``stage_processes``, recorded in the manifest and the resume stamp): under DDP each process sees its share of the
# data, so a fit takes other steps.
TRAINER_NON_RESULT_KEYS = frozenset(
    {
        "trainer.enable_progress_bar",
        "trainer.log_every_n_steps",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.accelerator",
        "trainer.strategy",
        "trainer.enable_model_summary",
    }
)


def default_stages() -> tuple[Stage, ...]:
    """The stages of CloDS in pipeline order: SMGS appearance, mesh recovery, dynamics, evaluation."""
    return (appearance_stage.STAGE, recovery_stage.STAGE, dynamics_stage.STAGE, evaluation_stage.STAGE)


def stage_names(stages: Sequence[Stage]) -> tuple[str, ...]:
    """The names of ``stages`` (their config sections), in order."""
    return tuple(s.name for s in stages)


def _add_class(parser: ArgumentParser, cls: type, key: str, skip: set[str]) -> None:
    params = inspect.signature(cls.__init__).parameters
    parser.add_class_arguments(cls, key, skip={s for s in skip if s in params}, sub_configs=True)


def add_stage_arguments(parser: ArgumentParser, stage: Stage, trainer_arguments: bool = True) -> None:
    """``<stage>.model|data|trainer`` from its classes (or ``<stage>.*`` from its function), then its own extras.

    ``trainer_arguments=False`` (for ``--help``) lists ``<stage>.trainer`` as one line instead of the ~60 typed
    ``lightning.Trainer`` arguments."""
    name = stage.name
    if stage.module is not None and stage.datamodule is not None:
        _add_class(parser, stage.module, f"{name}.model", set(stage.model_inputs))
        _add_class(parser, stage.datamodule, f"{name}.data", set(stage.data_inputs))
        if trainer_arguments:
            _add_class(parser, L.Trainer, f"{name}.trainer", TRAINER_SKIP)
        else:
            parser.add_argument(
                f"--{name}.trainer",
                type=dict,
                default={},
                help=f"any lightning.Trainer argument, e.g. --{name}.trainer.max_epochs 4 (see "
                "Lightning's Trainer docs; --print_config shows every one)",
            )
    if stage.function is not None:
        parser.add_function_arguments(stage.function, name, skip=set(stage.function_inputs))
    if stage.add_arguments is not None:
        stage.add_arguments(parser, name)


def add_force_argument(parser: ArgumentParser) -> None:
    """``--force``: run a stage even when its outputs are up to date, from scratch (no resuming)."""
    parser.add_argument(
        "--force",
        type=bool,
        default=False,
        help="run from scratch even when the outputs are up to date (pipeline: every stage)",
    )


def build_parser(
    prog: str = "clods-pl",
    stages: Sequence[Stage] | None = None,
    description: str | None = None,
    trainer_arguments: bool = True,
) -> ArgumentParser:
    """The experiment parser: top-level keys, then every stage's settings (:func:`add_stage_arguments`, default
    stages: :func:`default_stages`), then ``refine.*`` when the pipeline has a stage 3 to refine."""
    stages = default_stages() if stages is None else tuple(stages)
    # allow_abbrev=False: argparse would otherwise take a misspelt `--stage1.model.opacity_mod` for `opacity_mode`
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile, help="experiment YAML (repeatable; later ones win)")
    parser.add_argument("--run_dir", type=str | None, default=None, help="run directory (default: runs/<config name>)")
    parser.add_argument("--dataset", type=str | None, default=None, help="dataset folder (docs/dataset.md)")
    parser.add_argument("--seed_everything", type=int, default=0, help="seed for every stage")
    parser.add_argument(
        "--threads",
        type=int | None,
        default=None,
        help="CPU threads for torch (and the cpu rasterizer); default: OMP_NUM_THREADS when set, "
        "else the cores the current load leaves free (at least 1)",
    )
    parser.add_argument(
        "--workers",
        type=int | None,
        default=None,
        help="processes for a stage's independent jobs on the CPU (stage-3 models, stage-2 batches, novel-view "
        "fits), each with its share of --threads; default: CLODS_PL_WORKERS when set, else the cores not busy "
        "right now. Results do not depend on it",
    )
    parser.add_argument("--logger", type=str, default="csv", choices=LOGGER_KINDS, help="csv, wandb or both")
    parser.add_argument("--wandb.project", type=str, default="clods-pl")
    parser.add_argument("--wandb.entity", type=str | None, default=None)
    parser.add_argument(
        "--wandb.offline", type=bool | None, default=None, help="None: offline when WANDB_MODE=offline or no API key"
    )
    parser.add_argument("--wandb.tags", type=list[str], default=[])
    for stage in stages:
        add_stage_arguments(parser, stage, trainer_arguments)
    if dynamics_stage.STAGE.name in stage_names(stages):
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


def rewrite_trainer_overrides(argv: Sequence[str], stages: Sequence[Stage]) -> list[str]:
    """In a command that runs several stages (pipeline, eval, refine), ``--trainer.x v`` (or ``--trainer.x=v``) sets
    ``x`` of every stage that has a Lightning trainer: ``--stage1.trainer.x v --stage2.trainer.x v ...`` (what the
    SLURM scripts pass for the allocation: accelerator, devices, nodes, strategy)."""
    names = [s.name for s in stages if s.module is not None and s.datamodule is not None]
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--trainer."):
            out.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i >= len(args) or args[i].startswith("--"):
                raise ClodsError(f"{arg} needs a value, e.g. {arg}=VALUE")
            value, i = args[i], i + 1
        out += [f"--{name}.{key}={value}" for name in names]
    return out


def trainer_world_size(trainer: dict[str, Any]) -> int | str:
    """How many processes a Trainer of these settings runs: devices per node (an int, a list or ``"0,1"`` of
    indices, ``"auto"``/``-1``: every visible GPU for a GPU accelerator, else 1) times ``num_nodes``; a spelling
    Lightning will refuse is returned as written."""
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes") or 1
    text = str(devices).strip()
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif text in ("auto", "-1"):
        gpu = str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if gpu else 1
    elif "," in text:
        per_node = len([d for d in text.split(",") if d.strip()])
    elif text.isdigit():
        per_node = int(text)
    else:
        return f"{devices}x{nodes}"
    return max(1, per_node) * int(nodes) if str(nodes).isdigit() else f"{per_node}x{nodes}"


def stage_processes(cfg: Namespace, stage: Stage) -> int | str:
    """How many processes ``stage``'s Trainer runs with these settings (1 for a stage without a Trainer)."""
    trainer = section(cfg, f"{stage.name}.trainer")
    return trainer_world_size(trainer) if trainer else 1


def result_config(cfg: Namespace, stage: Stage) -> dict[str, Any]:
    """The flat settings that determine a stage's result (for staleness), e.g. ``stage1.model.lr``. The number of
    processes is not among them: a SLURM job passes its allocation to its own stage only, so a downstream job could
    not rebuild it (``stage_processes``, checked by the stage itself)."""
    skip = TRAINER_NON_RESULT_KEYS | stage.non_result_keys
    flat = {k: v for k, v in flatten(section(cfg, stage.name)).items() if k not in skip}
    out = {f"{stage.name}.{k}": v for k, v in flat.items()}
    dataset = cfg.get("dataset")
    out["dataset"] = os.path.normpath(str(dataset)) if dataset else dataset  # ./data/tiny/ is data/tiny
    out["seed_everything"] = cfg.get("seed_everything")
    return out
