"""Worker processes for a stage's independent jobs (``clods_pl.utils.workers``): how many, jobs in order, errors
raised as one line, and the pipeline's results identical with one process and with two (stage-2 batches, stage-3
models, the novel-view fits)."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from clods_pl.data.generate import GenerateConfig, generate_dataset
from clods_pl.errors import ClodsError
from clods_pl.pipeline.cli import main
from clods_pl.stages.recovery_stage import split_batches
from clods_pl.utils.workers import WorkerPlan, call, plan_workers, run_jobs

ROOT = Path(__file__).resolve().parents[1]


def test_plan_workers_follows_setting_env_then_free_cores():
    free = (2, "2 cores, load 0.1")
    assert plan_workers(None, jobs=5, threads=1, free=free) == WorkerPlan(2, 1, "2 cores, load 0.1")
    assert plan_workers(None, jobs=1, threads=2, free=free).workers == 1  # never more workers than jobs
    assert plan_workers(None, jobs=4, threads=4, free=(4, "")).threads == 1  # the threads are shared out
    assert plan_workers(None, jobs=4, threads=1, env="3", free=free).workers == 3  # CLODS_PL_WORKERS ...
    assert plan_workers(2, jobs=4, threads=1, env="3", free=free).workers == 2  # ... under --workers
    assert plan_workers(1, jobs=4, threads=2, free=free) == WorkerPlan(1, 2, "--workers")  # in-process: all threads
    with pytest.raises(ClodsError, match=r"--workers=0; it must be >= 1"):
        plan_workers(0, jobs=4, threads=1)
    with pytest.raises(ClodsError, match=r"CLODS_PL_WORKERS='two' is not a whole number"):
        plan_workers(None, jobs=4, threads=1, env="two")


def test_wandb_logging_keeps_jobs_in_process_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each stage's W&B runs get the manifest when the stage ends, which only runs of this process can."""
    from types import SimpleNamespace

    monkeypatch.delenv("CLODS_PL_WORKERS", raising=False)
    from clods_pl.utils.workers import stage_workers

    def ctx(logger: str, workers: int | None) -> SimpleNamespace:
        settings = {"logger": logger, "workers": workers}
        return SimpleNamespace(
            section=lambda key: {"accelerator": "cpu", "devices": 1},
            setting=lambda key, default=None: settings.get(key, default),
        )

    assert stage_workers(ctx("wandb", None), "stage3", 4).workers == 1
    assert "W&B" in stage_workers(ctx("both", None), "stage3", 4).why
    assert stage_workers(ctx("wandb", 2), "stage3", 4).workers == 2
    assert stage_workers(ctx("csv", 2), "stage3", 4).workers == 2


def test_busy_cores_sees_a_spinning_process():
    """The default counts the cores busy now (not the load average, which a pipeline's own last stage inflates)."""
    import subprocess
    import sys

    from clods_pl.utils.workers import busy_cores

    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        busy = busy_cores(0.5)
    finally:
        spin.kill()
    assert busy is not None and busy >= 0.7


@pytest.mark.parametrize("n,batch,parts", [(7, 2, 2), (4, 4, 2), (5, 1, 3), (9, 3, 4), (1, 2, 2)])
def test_split_batches_gives_each_process_whole_batches(n, batch, parts):
    """Every part, cut again into batches of ``batch``, holds exactly some of the original batches: the meshes
    each batch recovers do not depend on how many processes run them."""
    names = [f"t{i}" for i in range(n)]
    original = [names[i : i + batch] for i in range(0, n, batch)]
    groups = split_batches(names, batch, parts)
    assert len(groups) == min(parts, len(original))
    rebatched = [g[i : i + batch] for g in groups for i in range(0, len(g), batch)]
    assert sorted(rebatched) == sorted(original)


def test_run_jobs_keeps_order_and_raises_a_jobs_error():
    plan = WorkerPlan(2, 1, "test")
    assert run_jobs(abs, [-3, 2, -1, 0], plan) == [3, 2, 1, 0]
    with pytest.raises(ClodsError, match="--workers=0"):  # a job's ClodsError comes back as itself
        run_jobs(call, [partial(abs, -1), partial(plan_workers, 0, 1, 1)], plan)


def test_generated_dataset_is_the_same_bytes_from_two_processes(tmp_path: Path) -> None:
    small = GenerateConfig(**{**MINI.to_dict(), "splits": {"train": 2, "test_unviewed": 1}, "num_frames": 3})
    one = generate_dataset(small, tmp_path / "one", progress=False, workers=1)
    two = generate_dataset(small, tmp_path / "two", progress=False, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) > 10 and files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


MINI = GenerateConfig(
    name="mini",
    splits={"train": 3, "test_viewed": 1, "test_unviewed": 1},
    num_frames=5,
    num_views=4,
    resolution=24,
    grid=(6, 5),
    substeps=3,
    iterations=10,
    supersample=2,
)
SHORT = {
    "stage1": {"model": {"gaussians_per_face": 2}, "trainer": {"max_epochs": 1}, "data": {"steps_per_epoch": 3}},
    "stage2": {"model": {"iterations": 5, "min_iterations": 5}, "data": {"batch_size": 2}},
    "stage3": {
        "sources": ["recovered", "gt"],
        "model": {"latent": 8, "blocks": 1, "normalizer_steps": 1, "rollout_length": 2, "one_step_warmup": 2},
        "data": {"rollout_length": 2},
        "trainer": {"max_steps": 4},
    },
    "eval": {
        "videos": 0,
        "train_horizon": 3,
        "novel_views": {"ablations": ["static"], "upper_bound_steps": 3, "upper_bound_frame_stride": 4},
    },
}


@pytest.mark.slow
def test_pipeline_in_two_worker_processes_matches_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The same run with --workers 1 and --workers 2: bit-identical mesh caches (3 training trajectories in
    batches of 2: two processes), stage-3 checkpoints (two sources) and eval tables (one ablation fit, upper-bound
    fits)."""
    data = generate_dataset(MINI, tmp_path / "ds", progress=False)
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({**SHORT, "dataset": str(data)}))
    runs = {}
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        config = ["--config", str(ROOT / "experiments" / "flag_tiny.yaml"), "--config", str(tmp_path / "short.yaml")]
        assert main(["pipeline", *config, "--run_dir", str(run), "--workers", str(workers)]) == 0
        runs[workers] = run
        out = capsys.readouterr().out
        spread = "in 2 worker processes" in out
        assert spread == (workers == 2), out
    one, two = runs[1], runs[2]
    assert (two / "stage2" / "logs" / "stage2-part1").is_dir()  # the second batch ran in its own process
    for cache in sorted((one / "stage2" / "meshes").glob("*.npz")):
        a, b = np.load(cache), np.load(two / "stage2" / "meshes" / cache.name)
        assert np.array_equal(a["verts"], b["verts"], equal_nan=True), cache.name
    for source in ("recovered", "gt"):
        a, b = (torch.load(r / "stage3" / f"{source}.ckpt", weights_only=False)["state_dict"] for r in (one, two))
        assert all(torch.equal(a[k], b[k]) for k in a), source
    for name in ("novel_views.json", "metrics.json"):
        a, b = (json.loads((r / "eval" / name).read_text()) for r in (one, two))
        if name == "metrics.json":  # every number; the checkpoints' paths name their run folders
            a, b = ({k: {**m, "checkpoint": None} for k, m in d["methods"].items()} for d in (a, b))
        assert a == b, name
    rows = json.loads((two / "eval" / "novel_views.json").read_text())["rows"]
    assert set(rows) == {"dual", "static", "upper_bound"} and rows["upper_bound"]["frames"] == 4
