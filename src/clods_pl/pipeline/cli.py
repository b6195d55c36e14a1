"""``clods-pl``: the command line of every stage (docs/pipeline.md).

    clods-pl data generate --preset tiny --out data/tiny       synthetic multi-view cloth dataset
    clods-pl data preview --dataset data/tiny --out sheet.png  contact sheet (views x frames)
    clods-pl data import-mgn --tfrecord F --meta M --out D     DeepMind MeshGraphNets flag -> this format
    clods-pl stage1|stage2|stage3 --config X.yaml [--config Y.yaml] [--run_dir R] [--model.k v ...]
    clods-pl pipeline --config X.yaml [--run_dir R]            every stage that is out of date, eval, report
    clods-pl eval --config X.yaml [--run_dir R]                rollout RMSE vs GT -> R/eval/metrics.json
    clods-pl refine --config X.yaml [--run_dir R]              rounds of stage 2 from the stage-3 model, stage 3
    clods-pl report --run_dir R                                R/report.md, R/report.html
    clods-pl recover --config X.yaml --traj NAME --frames A:B  stage 2 by hand for one trajectory

Stage commands are jsonargparse/LightningCLI-style: ``--print_config`` prints the resolved config, every typed
``__init__`` argument of the stage classes is a config key (``stage1.model.*``, ``stage1.data.*``,
``stage1.trainer.*``), and inside a stage command ``--model.x`` is short for ``--stageN.model.x``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clods_pl.errors import ClodsError, Interrupted

EXPERIMENT_COMMANDS = ("stage1", "stage2", "stage3", "pipeline", "eval", "refine")
COMMANDS = ("data", *EXPERIMENT_COMMANDS, "report", "recover")


def _usage() -> str:
    return (__doc__ or "").strip()


def _data_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="clods-pl data", description="dataset tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="generate the synthetic multi-view cloth benchmark")
    gen.add_argument("--preset", default=None, help="tiny | small | paper (experiments/data/<preset>.yaml)")
    gen.add_argument("--config", default=None, help="a generator YAML instead of a preset")
    gen.add_argument("--out", required=True, help="output dataset folder")
    gen.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    gen.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the trajectories (default: CLODS_PL_WORKERS, else the cores not busy now); "
        "the output is the same with any number",
    )
    prev = sub.add_parser("preview", help="write a contact sheet PNG (views x frames)")
    prev.add_argument("--dataset", required=True)
    prev.add_argument("--out", required=True)
    prev.add_argument("--traj", default=None)
    prev.add_argument("--max_frames", type=int, default=8)
    imp = sub.add_parser("import-mgn", help="import DeepMind MeshGraphNets flag TFRecords (no TensorFlow)")
    imp.add_argument("--tfrecord", required=True)
    imp.add_argument("--meta", required=True)
    imp.add_argument("--out", required=True)
    imp.add_argument("--num_trajectories", type=int, default=None)
    imp.add_argument("--max_frames", type=int, default=None)
    imp.add_argument("--frame_stride", type=int, default=1)
    args = parser.parse_args(list(argv))
    if args.cmd == "generate":
        from clods_pl.data.generate import generate_dataset  # noqa: PLC0415  (commands load only what they use)

        if (args.preset is None) == (args.config is None):
            parser.error("give exactly one of --preset or --config")
        generate_dataset(args.preset or args.config, args.out, seed=args.seed, workers=args.workers)
        print(f"[clods-pl] dataset written to {args.out}")
    elif args.cmd == "preview":
        from clods_pl.data.preview import write_contact_sheet  # noqa: PLC0415  (commands load only what they use)

        out = write_contact_sheet(args.dataset, args.out, traj=args.traj, max_frames=args.max_frames)
        print(f"[clods-pl] preview written to {out}")
    else:
        from clods_pl.data.mgn_import import import_mgn_flag  # noqa: PLC0415  (commands load only what they use)

        import_mgn_flag(
            args.tfrecord,
            args.meta,
            args.out,
            num_trajectories=args.num_trajectories,
            frame_stride=args.frame_stride,
            max_frames=args.max_frames,
        )
        print(f"[clods-pl] imported into {args.out}")
    return 0


def _report_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="clods-pl report", description="write <run_dir>/report.md")
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--config", action="append", default=[], help="accepted and ignored (Makefile symmetry)")
    args = parser.parse_args(list(argv))
    from lightning.pytorch.utilities import rank_zero_only  # noqa: PLC0415  (commands load only what they use)

    from clods_pl.report import build_report  # noqa: PLC0415  (commands load only what they use)

    if not Path(args.run_dir).is_dir():
        raise ClodsError(f"run directory {args.run_dir} does not exist; run `clods-pl pipeline` first")
    if rank_zero_only.rank != 0:  # a multi-task job (pipeline.sbatch): rank 0 writes it, after its eval
        return 0
    print(f"[clods-pl] report written to {build_report(args.run_dir)}")
    return 0


def _experiment_command(command: str, argv: Sequence[str], stages: Sequence[Any] | None = None) -> int:
    if stages is None and ("-h" in argv or "--help" in argv):  # the cached text: no Lightning import (~0.1 s)
        from clods_pl.pipeline.help_cache import cached_help  # noqa: PLC0415  (commands load only what they use)

        print(cached_help(command, lambda: help_text(command, None)), end="")
        return 0
    from clods_pl.pipeline.experiment import (  # noqa: PLC0415  (commands load only what they use)
        add_force_argument,
        build_parser,
        default_stages,
        rewrite_stage_overrides,
        rewrite_trainer_overrides,
    )
    from clods_pl.pipeline.runner import StageRunner  # noqa: PLC0415  (commands load only what they use)
    from clods_pl.utils.workers import check_workers  # noqa: PLC0415  (commands load only what they use)

    stages = default_stages() if stages is None else tuple(stages)
    if "-h" in argv or "--help" in argv:
        print(help_text(command, stages), end="")
        return 0
    parser = build_parser(prog=f"clods-pl {command}", stages=stages)
    add_force_argument(parser)
    if command.startswith("stage"):
        argv = rewrite_stage_overrides(command, argv)
    else:
        argv = rewrite_trainer_overrides(argv, stages)
    cfg = parser.parse_args(list(argv))
    set_threads(cfg.get("threads"))
    check_workers(cfg.get("workers"))
    runner = StageRunner(parser, cfg, stages)
    force = bool(cfg.get("force"))
    if force and (os.environ.get("SLURM_RESTART_COUNT") or "0") not in ("", "0"):  # a requeued job: same argv
        print("[clods-pl] --force ignored: this is a requeued SLURM job; it continues what the forced run started")
        force = False
    runner.force = force
    if command == "pipeline":
        runner.pipeline(force=force)
        _report_command(["--run_dir", str(runner.run_dir)])
        return 0
    if command == "refine":
        from clods_pl.pipeline.refine import RefineSettings, run_refine  # noqa: PLC0415  (commands load only what they use)

        with runner.exclusive():
            run_refine(runner, RefineSettings(**runner.section("refine")))
        _report_command(["--run_dir", str(runner.run_dir)])
        return 0
    stage = runner.stage(command)
    if not force and not stage.sharded(runner) and runner.staleness(stage) is None:
        print(
            f"[clods-pl] {command} is up to date in {runner.run_dir} (same settings, inputs and outputs); "
            f"nothing to do. `clods-pl {command} ... --force true` runs it again"
        )
        return 0
    runner.run(stage)
    return 0


def help_text(command: str, stages: Sequence[Any] | None) -> str:
    """``clods-pl <command> --help``: this stage's own options (all stages' for pipeline/eval/refine), the Trainer in
    one line: short, and without the ~60 typed Trainer arguments per stage."""
    from clods_pl.pipeline.experiment import add_force_argument, build_parser, default_stages  # noqa: PLC0415  (commands load only what they use)

    stages = default_stages() if stages is None else tuple(stages)
    shown = [s for s in stages if s.name == command] or stages
    parser = build_parser(prog=f"clods-pl {command}", stages=shown, trainer_arguments=False)
    add_force_argument(parser)
    return parser.format_help()


SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended


def _is_sigterm(exc: SystemExit) -> bool:
    """Whether ``exc`` is Lightning's ``SIGTERMException`` (Lightning is loaded whenever it can be)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: PLC0415  (keeps --help light)

    return isinstance(exc, SIGTERMException)


def default_threads(cores: int, load: float, env: str | None) -> tuple[int, str]:
    """(threads, why): ``OMP_NUM_THREADS`` when set, else the cores the 1-minute load average leaves free, >= 1.
    Two torch threads on a busy 2-core machine run 10-20x slower than one (BENCHMARKS.md), hence the load."""
    if env:
        try:
            return max(1, int(env)), f"OMP_NUM_THREADS={env}"
        except ValueError:
            pass
    free = max(1, int(cores - load + 0.5))
    return free, f"{cores} cores, load {load:.1f}"


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``--threads`` or :func:`default_threads`) and say so in one line."""
    import os  # noqa: PLC0415  (commands load only what they use)

    import torch  # noqa: PLC0415  (commands load only what they use)

    if threads is not None:
        if threads < 1:
            raise ClodsError(f"--threads={threads}; it must be >= 1")
        n, why = threads, "--threads"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n, why = default_threads(cores, os.getloadavg()[0], os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(n)
    print(f"[clods-pl] {n} CPU thread{'s' if n > 1 else ''} ({why}; --threads N to change)")
    return n


def _recover_command(argv: Sequence[str]) -> int:
    from clods_pl.pipeline.checks import check_backends, dataset_of, stage_device  # noqa: PLC0415  (see above)
    from clods_pl.pipeline.experiment import build_parser  # noqa: PLC0415  (commands load only what they use)
    from clods_pl.pipeline.runner import StageRunner  # noqa: PLC0415  (commands load only what they use)
    from clods_pl.stages.recovery_cli import recover_cli  # noqa: PLC0415  (commands load only what they use)
    from clods_pl.stages.recovery_stage import STAGE  # noqa: PLC0415  (commands load only what they use)
    from clods_pl.stages.run_dir import MESH_CACHE_DIR  # noqa: PLC0415  (commands load only what they use)

    parser = build_parser(prog="clods-pl recover")  # every stage: the experiment YAML has them all
    parser.add_argument("--traj", type=str, required=True, help="trajectory name")
    parser.add_argument("--frames", type=str | None, default=None, help="A:B frame range (default: all)")
    cfg = parser.parse_args(list(argv))
    set_threads(cfg.get("threads"))
    runner = StageRunner(parser, cfg)
    check_backends(cfg, STAGE.name, STAGE.backend_keys)
    runner.consumed(STAGE)  # stage 1 done and current, else one line naming what to run
    options = runner.section(f"{STAGE.name}.model")
    for key in STAGE.model_inputs:  # the orchestrator's inputs, not settings
        options.pop(key, None)
    options["holdout_views"] = runner.section(f"{STAGE.name}.data").get("holdout_views", [])
    recover_cli(
        dataset_of(cfg),
        str(runner.outputs.stage1_checkpoint()),
        str(runner.run_dir / STAGE.name / MESH_CACHE_DIR),
        cfg.traj,
        cfg.frames,
        device=stage_device(cfg, STAGE.name),
        **options,
    )
    return 0


def main(argv: Sequence[str] | None = None, stages: Sequence[Any] | None = None) -> int:
    """Entry point of ``clods-pl``; user-fixable errors print one line and exit with status 2. ``stages`` replace
    the pipeline's stages (tests run the orchestrator on stand-ins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        from clods_pl import __version__  # noqa: PLC0415  (keeps `clods-pl --version` instant)

        print(f"clods-pl {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    asks_help = "-h" in rest or "--help" in rest
    if (command in EXPERIMENT_COMMANDS or command == "recover") and not asks_help:
        from clods_pl.pipeline.console import quiet_console  # noqa: PLC0415  (imports lightning: not for --help)

        quiet_console()
    if command not in COMMANDS:
        print(f"clods-pl: error: unknown command '{command}'; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        if command == "data":
            return _data_command(rest)
        if command == "report":
            return _report_command(rest)
        if command == "recover":
            return _recover_command(rest)
        return _experiment_command(command, rest, stages)
    except Interrupted as exc:  # SIGTERM in stage 2: stopped after a saved frame step
        print(f"clods-pl {command}: {exc}", file=sys.stderr)
        return SIGTERM_EXIT
    except SystemExit as exc:  # SIGTERM in a Lightning fit loop (stages 1, 3): Lightning's SIGTERMException
        if not _is_sigterm(exc):
            raise
        print(
            f"clods-pl {command}: stopped by SIGTERM; finished stages and saved checkpoints are kept, rerun the same "
            "command to resume",
            file=sys.stderr,
        )
        return SIGTERM_EXIT
    except ClodsError as exc:
        print(f"clods-pl {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or missing paths: one line naming the file, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(
            f"clods-pl {command}: error:{where}: {exc.strerror or exc}; finished stages are kept, rerun the "
            "command once this is fixed",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # jsonargparse parse errors
        if type(exc).__name__ in ("ArgumentError", "ParserError"):
            print(f"clods-pl {command}: error: {exc}".splitlines()[0], file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
