"""SLURM helpers without a controller: env detection, resume decision, array sharding (monkeypatched env)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clods_pl.errors import ClodsError
from clods_pl.pipeline import slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_NAME",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_PROCID",
    "SLURM_NODEID",
    "SLURM_LOCALID",
    "SLURM_NNODES",
    "CLODS_STAGE2_ARRAY_SIZE",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in SLURM_VARS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize("n,count", [(0, 1), (1, 3), (7, 3), (8, 4), (10, 3), (5, 5), (3, 8), (50, 7)])
def test_shards_partition_names(n: int, count: int) -> None:
    names = [f"traj_{i:03d}" for i in range(n)]
    shards = [slurm.shard_trajectories(names, i, count) for i in range(count)]
    assert [x for s in shards for x in s] == names  # each name exactly once, order kept
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("task_id,count", [(3, 3), (-1, 3), (0, 0)])
def test_bad_shard_index_is_a_clear_error(task_id: int, count: int) -> None:
    with pytest.raises(slurm.SlurmConfigError, match="--array"):
        slurm.shard_trajectories(["a", "b"], task_id, count)


def test_array_shard_reads_env(clean_env: pytest.MonkeyPatch) -> None:
    names = list("abcdefg")
    assert slurm.array_shard(names) == names  # not an array job: everything
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "2")
    clean_env.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert slurm.array_shard(names) == ["f", "g"]
    clean_env.setenv("SLURM_ARRAY_TASK_MIN", "1")  # --array=1-3: task 2 is the second shard
    assert slurm.array_shard(names) == ["d", "e"]
    clean_env.delenv("SLURM_ARRAY_TASK_COUNT")
    with pytest.raises(slurm.SlurmConfigError, match="SLURM_ARRAY_TASK_COUNT"):
        slurm.array_shard(names)
    clean_env.setenv("SLURM_ARRAY_TASK_COUNT", "x")
    with pytest.raises(ClodsError, match="SLURM_ARRAY_TASK_COUNT='x'"):
        slurm.array_shard(names)


def test_a_resubmitted_array_task_redoes_its_own_shard(clean_env: pytest.MonkeyPatch) -> None:
    """Review (session 13): resubmitting one task (`sbatch --array=5`) made it shard 0 of 1, i.e. every trajectory,
    and `--array=3,5` failed; with the array's size as submitted (CLODS_STAGE2_ARRAY_SIZE) task i is always shard i."""
    names = [f"t{i}" for i in range(8)]
    clean_env.setenv("CLODS_STAGE2_ARRAY_SIZE", "4")
    full = []
    for task in range(4):  # the array as submitted: --array=0-3
        clean_env.setenv("SLURM_ARRAY_TASK_ID", str(task))
        clean_env.setenv("SLURM_ARRAY_TASK_COUNT", "4")
        full.append(slurm.array_shard(names))
    assert full == [names[0:2], names[2:4], names[4:6], names[6:8]]
    for task, count, low in ((3, 1, 3), (3, 2, 1)):  # --array=3 alone; --array=1,3
        clean_env.setenv("SLURM_ARRAY_TASK_ID", str(task))
        clean_env.setenv("SLURM_ARRAY_TASK_COUNT", str(count))
        clean_env.setenv("SLURM_ARRAY_TASK_MIN", str(low))
        assert slurm.array_shard(names) == full[task]
    clean_env.setenv("SLURM_ARRAY_TASK_ID", "4")
    with pytest.raises(slurm.SlurmConfigError, match="CLODS_STAGE2_ARRAY_SIZE=4"):
        slurm.array_shard(names)


def test_command_line_shard(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
    env.update(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2")
    cmd = [sys.executable, "-m", "clods_pl.pipeline.slurm"]
    out = subprocess.run(cmd + ["shard", "--names", "c", "a", "b"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["c"]  # sorted a, b, c -> shards [a, b], [c]
    out = subprocess.run(
        cmd + ["shard", "--names", "a", "b", "--task-id", "5", "--task-count", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slurm
def test_local_slurm_cluster() -> None:
    """Start a one-node SLURM here and run the tiny pipeline through sbatch (make test-slurm; needs root + apt)."""
    if os.environ.get("RUN_SLURM_TESTS") != "1":
        pytest.skip("set RUN_SLURM_TESTS=1 to start a local slurmctld/slurmd (root, apt-get); or run make test-slurm")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("neither slurmctld nor apt-get is available to install slurm-wlm")
    script = REPO / "experiments" / "slurm" / "test_local_slurm.sh"
    proc = subprocess.run(["bash", str(script)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "LOCAL SLURM TEST PASSED" in proc.stdout


def test_stage2_shard_from_experiment_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    splits = {"train": ["t2", "t0", "t1"], "val": ["v0"], "test_viewed": ["t1"], "test_unviewed": []}
    seen: list[str] = []

    def read_dataset(root: str) -> object:
        seen.append(str(root))
        return types.SimpleNamespace(names=lambda split: splits[split])

    monkeypatch.setattr("clods_pl.data.format.read_dataset", read_dataset)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("dataset: data/tiny\nstage2:\n  data:\n    splits: [train, val]\n")
    assert slurm.stage2_shard_source(cfg) == ("data/tiny", ["train", "val"])
    dataset, sp = slurm.stage2_shard_source(cfg)
    assert slurm.dataset_trajectories(dataset, sp) == ["t0", "t1", "t2", "v0"]
    assert slurm.dataset_trajectories(dataset) == ["t0", "t1", "t2", "v0"]  # stage 2's default splits, unique
    assert seen == ["data/tiny", "data/tiny"]
    cfg.write_text("stage2:\n  data:\n    dataset_dir: /d\n")
    assert slurm.stage2_shard_source(cfg) == ("/d", None)
    cfg.write_text("stage1: {}\n")
    with pytest.raises(slurm.SlurmConfigError, match="names no dataset"):
        slurm.stage2_shard_source(cfg)
    with pytest.raises(slurm.SlurmConfigError, match="does not exist"):
        slurm.stage2_shard_source(tmp_path / "missing.yaml")


def test_shard_skips_standard_splits_the_dataset_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny has no `val` split: the array shards must list its trajectories, not fail (as stage 2 itself skips it)."""
    import types

    from clods_pl.errors import DatasetError

    splits = {"train": ["t0", "t1"], "test_viewed": ["t2"]}

    def names(split: str) -> list[str]:
        if split not in splits:
            raise DatasetError(f"dataset.json: no split '{split}'")
        return splits[split]

    ds = types.SimpleNamespace(info=types.SimpleNamespace(splits=splits), names=names)
    monkeypatch.setattr("clods_pl.data.format.read_dataset", lambda root: ds)
    assert slurm.dataset_trajectories("d") == ["t0", "t1", "t2"]
    with pytest.raises(DatasetError, match="no split 'mine'"):
        slurm.dataset_trajectories("d", ["train", "mine"])  # a split the user named explicitly is still checked
