"""The sbatch templates and submit_pipeline.sh, run against a fake `sbatch` that records its arguments."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "experiments" / "slurm"
FAKE_SBATCH = """#!/bin/bash
n=$(( $(cat "$FAKE_DIR/count" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_DIR/count"
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" >> "$FAKE_DIR/calls.jsonl"
echo "$n;cluster"
"""


def submit(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    fake = tmp_path / "sbatch"
    fake.write_text(FAKE_SBATCH)
    fake.chmod(0o755)
    config = tmp_path / "exp.yaml"
    config.write_text("dataset: data/tiny\n")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CLODS_", "SLURM_"))}
    full_env.update(SBATCH=str(fake), FAKE_DIR=str(tmp_path), **env)
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "submit_pipeline.sh"), str(config), str(tmp_path / "run")],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls_file = tmp_path / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return proc, calls


def opts(call: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in call if a.startswith("--") and "=" in a)


def test_chain_of_dependent_jobs(tmp_path: Path) -> None:
    proc, calls = submit(
        tmp_path,
        CLODS_PARTITION="gpu",
        CLODS_ACCOUNT="proj",
        CLODS_GPUS_PER_NODE="4",
        CLODS_NODES="2",
        CLODS_STAGE2_SHARDS="3",
    )
    assert proc.returncode == 0, proc.stderr
    scripts = [Path(c[-1]).name for c in calls]
    assert scripts == ["stage1.sbatch", "stage2.sbatch", "stage2_finalize.sbatch", "stage3.sbatch", "eval.sbatch"]
    o = [opts(c) for c in calls]
    assert "dependency" not in o[0]
    assert [x["dependency"] for x in o[1:]] == ["afterok:101", "afterok:102", "afterok:103", "afterok:104"]
    assert o[0]["nodes"] == "2" and o[0]["ntasks-per-node"] == "4" and o[0]["gpus-per-node"] == "4"
    assert o[1]["array"] == "0-2" and "%A_%a" in o[1]["output"]
    assert all(x["partition"] == "gpu" and x["account"] == "proj" for x in o)
    assert all(not re.match(r"^(-n|--ntasks=)", a) for c in calls for a in c)  # Lightning rejects --ntasks
    jobs = (tmp_path / "run" / "slurm" / "jobs.txt").read_text().split()
    assert jobs == ["stage1", "101", "stage2", "102", "stage2_finalize", "103", "stage3", "104", "eval", "105"]


def test_cpu_partial_chain_and_errors(tmp_path: Path) -> None:
    proc, calls = submit(
        tmp_path, CLODS_GPUS_PER_NODE="0", CLODS_CPU_TASKS_PER_NODE="2", CLODS_STAGES="stage3 eval", CLODS_AFTER="77"
    )
    assert proc.returncode == 0, proc.stderr
    o = [opts(c) for c in calls]
    assert [Path(c[-1]).name for c in calls] == ["stage3.sbatch", "eval.sbatch"]
    assert o[0]["dependency"] == "afterok:77" and o[0]["ntasks-per-node"] == "2"
    assert not any("gpus-per-node" in x for x in o)
    (tmp_path / "bad").mkdir()
    proc, _ = submit(tmp_path / "bad", CLODS_STAGES="stage9")
    assert proc.returncode == 2 and "unknown step 'stage9'" in proc.stderr
    missing = subprocess.run(
        ["bash", str(SLURM_DIR / "submit_pipeline.sh"), str(tmp_path / "nope.yaml"), "runs/x"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_dry_run_keeps_the_job_record_and_a_bad_shard_count_is_refused(tmp_path: Path) -> None:
    """Review (session 13): CLODS_DRY_RUN=1 emptied RUN/slurm/jobs.txt, and CLODS_STAGE2_SHARDS=0 built --array=0--1."""
    proc, _ = submit(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "slurm" / "stage2_shards").read_text().strip() == "4"  # stage2.sbatch reads it
    jobs = tmp_path / "run" / "slurm" / "jobs.txt"
    record = jobs.read_text()
    proc, calls = submit(tmp_path, CLODS_DRY_RUN="1")
    assert proc.returncode == 0 and "--array=0-3" in proc.stdout and jobs.read_text() == record
    (tmp_path / "zero").mkdir()
    proc, calls = submit(tmp_path / "zero", CLODS_STAGE2_SHARDS="0")
    assert proc.returncode == 2 and "CLODS_STAGE2_SHARDS=0" in proc.stderr and calls == []


@pytest.mark.parametrize("script", sorted(p.name for p in SLURM_DIR.glob("*.sbatch")))
def test_sbatch_templates(script: str) -> None:
    text = (SLURM_DIR / script).read_text()
    assert text.startswith("#!/bin/bash")
    directives = re.findall(r"^#SBATCH\s+(\S+)", text, flags=re.M)
    assert any(d.startswith("--ntasks-per-node") for d in directives)
    assert not any(d == "-n" or d.startswith("--ntasks=") for d in directives)
    if script != "eval.sbatch":
        assert "--signal=SIGUSR1@90" in directives and "--requeue" in directives
    assert "experiments/slurm/common.sh" in text
    subprocess.run(["bash", "-n", str(SLURM_DIR / script)], check=True)


@pytest.mark.parametrize(
    "env,expected",
    [
        (
            {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "4", "CLODS_GPUS_PER_NODE": "4"},
            "--trainer.accelerator=gpu --trainer.devices=4 --trainer.num_nodes=2 --trainer.strategy=ddp",
        ),
        (
            {"SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "2", "CLODS_GPUS_PER_NODE": "0"},
            "--trainer.accelerator=cpu --trainer.devices=2 --trainer.num_nodes=1 --trainer.strategy=ddp",
        ),
        (
            {"SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "1", "CLODS_GPUS_PER_NODE": "1"},
            "--trainer.accelerator=gpu --trainer.devices=1 --trainer.num_nodes=1 --trainer.strategy=auto",
        ),
    ],
)
def test_trainer_flags_match_the_allocation(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("CLODS_", "SLURM_"))}
    full.update(env, CLODS_ROOT=str(REPO), CLODS_CONFIG="c.yaml", CLODS_RUN=str(tmp_path))
    out = subprocess.run(
        ["bash", "-c", f"source {SLURM_DIR / 'common.sh'}; clods_trainer_args"],
        env=full,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == expected
