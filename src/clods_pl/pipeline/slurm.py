"""SLURM helpers: environment detection, the requeue/resume decision of a stage, stage-2 array sharding.

Nothing here talks to a SLURM controller; everything reads environment variables and files, so it is testable
with a monkeypatched environment. The sbatch templates in ``experiments/slurm/`` call the command line at the end
(``python -m clods_pl.pipeline.slurm shard ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from clods_pl.data.splits import STANDARD_SPLITS, names_in_splits
from clods_pl.errors import ClodsError

ARRAY_TASK_ID = "SLURM_ARRAY_TASK_ID"
ARRAY_TASK_COUNT = "SLURM_ARRAY_TASK_COUNT"
ARRAY_TASK_MIN = "SLURM_ARRAY_TASK_MIN"
SHARDS = "CLODS_STAGE2_ARRAY_SIZE"  # the stage-2 array's size as submitted (from RUN/slurm/stage2_shards)


class SlurmConfigError(ClodsError):
    """A SLURM setting (array index, task count, sbatch option) is inconsistent; the message names it."""


def _int_or_none(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise SlurmConfigError(
            f"environment variable {key}={value!r} is not an integer; unset it or fix the job"
        ) from exc


def shard_trajectories(names: Sequence[str], task_id: int, task_count: int) -> list[str]:
    """Trajectories of array task ``task_id`` out of ``task_count``: contiguous, balanced, covering ``names`` once.

    The first ``len(names) % task_count`` shards get one extra trajectory; shards are empty when there are more
    tasks than trajectories. Order follows ``names`` (sort them first for reproducible shards).
    """
    if task_count < 1:
        raise SlurmConfigError(f"array task count {task_count} must be >= 1; submit with --array=0-(N-1)")
    if not 0 <= task_id < task_count:
        raise SlurmConfigError(
            f"array task id {task_id} is outside 0..{task_count - 1}; submit with --array=0-{task_count - 1}"
        )
    base, extra = divmod(len(names), task_count)
    start = task_id * base + min(task_id, extra)
    stop = start + base + (1 if task_id < extra else 0)
    return list(names[start:stop])


def array_shard(names: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """This array task's shard of ``names`` (all names outside an array job).

    With ``CLODS_STAGE2_ARRAY_SIZE=N`` (``stage2.sbatch`` sets it from ``RUN/slurm/stage2_shards``, which
    ``submit_pipeline.sh`` writes with its ``--array=0-(N-1)``) task ``i`` is shard ``i`` of ``N`` whatever else the
    array holds, so resubmitting one task (``sbatch --array=5 ...``) redoes exactly its shard. Without it,
    ``SLURM_ARRAY_TASK_ID/COUNT``, relative to ``SLURM_ARRAY_TASK_MIN`` so ``--array=1-4`` works like ``--array=0-3``.
    """
    env = os.environ if env is None else env
    task_id = _int_or_none(env, ARRAY_TASK_ID)
    if task_id is None:
        return list(names)
    shards = _int_or_none(env, SHARDS)
    if shards is not None:
        if shards < 1 or not 0 <= task_id < shards:
            raise SlurmConfigError(
                f"array task {task_id} with {SHARDS}={shards}: the array must run tasks 0..{SHARDS}-1 "
                f"(sbatch --array=0-{max(shards, 1) - 1}, or one of them to redo its shard)"
            )
        return shard_trajectories(names, task_id, shards)
    count = _int_or_none(env, ARRAY_TASK_COUNT)
    if count is None:
        raise SlurmConfigError(f"{ARRAY_TASK_ID} is set but {ARRAY_TASK_COUNT} is not; submit with sbatch --array")
    low = _int_or_none(env, ARRAY_TASK_MIN) or 0
    return shard_trajectories(names, task_id - low, count)


def dataset_trajectories(dataset_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[str]:
    """Sorted, unique trajectory names of ``splits`` (default: stage 2's, the standard ones) of a dataset."""
    from clods_pl.data.format import read_dataset  # noqa: PLC0415  (data package loads lazily)

    return sorted(names_in_splits(read_dataset(dataset_dir), splits or STANDARD_SPLITS))


def stage2_shard_source(config_path: str | os.PathLike) -> tuple[str, list[str] | None]:
    """(dataset dir, stage-2 splits or None) of an experiment YAML: ``stage2.data.dataset_dir`` else ``dataset``."""

    path = Path(config_path)
    if not path.is_file():
        raise SlurmConfigError(f"experiment config {path} does not exist; pass the YAML given to clods-pl --config")
    cfg = yaml.safe_load(path.read_text()) or {}
    data = ((cfg.get("stage2") or {}).get("data") or {}) if isinstance(cfg, dict) else {}
    dataset = data.get("dataset_dir") or (cfg.get("dataset") if isinstance(cfg, dict) else None)
    if isinstance(dataset, dict):  # tolerate `dataset: {dir: ...}` / `{path: ...}` layouts
        dataset = dataset.get("dir") or dataset.get("path") or dataset.get("root")
    if not dataset:
        raise SlurmConfigError(f"{path} names no dataset (top-level `dataset:` or stage2.data.dataset_dir); add one")
    return str(dataset), data.get("splits")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clods_pl.pipeline.slurm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    shard = sub.add_parser("shard", help="print this array task's trajectories as a JSON list")
    src = shard.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset root; trajectories are listed from it")
    src.add_argument("--config", help="experiment YAML; its dataset and stage-2 splits are used")
    src.add_argument("--names", nargs="+", help="explicit trajectory names")
    shard.add_argument("--splits", nargs="*", default=None, help="only these splits (with --dataset)")
    shard.add_argument("--task-id", type=int, default=None, help=f"default: ${ARRAY_TASK_ID}")
    shard.add_argument("--task-count", type=int, default=None, help=f"default: ${ARRAY_TASK_COUNT}")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "shard":
            if args.names:
                names = sorted(args.names)
            else:
                dataset, splits = (args.dataset, None) if args.dataset else stage2_shard_source(args.config)
                names = dataset_trajectories(dataset, args.splits or splits)
            if args.task_id is not None or args.task_count is not None:
                if args.task_id is None or args.task_count is None:
                    raise SlurmConfigError("give both --task-id and --task-count, or neither (then SLURM's are used)")
                print(json.dumps(shard_trajectories(names, args.task_id, args.task_count)))
            else:
                print(json.dumps(array_shard(names)))
    except ClodsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
