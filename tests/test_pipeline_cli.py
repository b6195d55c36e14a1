"""The clods-pl orchestrator end to end on stand-in stages: hand-off, skipping, staleness, errors, overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from clods_pl.pipeline import checks, runner
from clods_pl.pipeline.cli import main
from clods_pl.pipeline.experiment import default_stages
from clods_pl.stages.run_dir import RunDir


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    import dummy_stages as d

    stage1, stage2, stage3, evaluate = default_stages()  # the real stages' contracts with stand-in classes
    stages = (
        replace(stage1, module=d.FitModule, datamodule=d.FitData),
        replace(stage2, module=d.PredictModule, datamodule=d.PredictData),
        replace(stage3, module=d.FitModule, datamodule=d.FitData),
        replace(evaluate, function=d.run_evaluation, add_arguments=None),
    )
    monkeypatch.setattr(runner.StageRunner, "preflight", lambda self, stages: None)  # the stand-in dataset is empty
    (tmp_path / "ds").mkdir()
    cfg = tmp_path / "exp.yaml"
    trainer = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    cfg.write_text(
        yaml.safe_dump(
            {
                "dataset": str(tmp_path / "ds"),
                "run_dir": str(tmp_path / "run"),
                "stage1": {"model": {"lr": 0.1}, "trainer": trainer},
                "stage2": {"model": {"scale": 2.0}, "trainer": {"accelerator": "cpu", "devices": 1}},
                "stage3": {
                    "model": {"lr": 0.05},
                    "data": {"source": "recovered"},
                    "trainer": trainer,
                    "sources": ["recovered", "gt:1"],
                },
                "eval": {"splits": ["test"]},
            }
        )
    )
    return {"cfg": str(cfg), "run": tmp_path / "run", "stages": stages}


def clods(dummy: dict, argv: list[str]) -> int:
    """``clods-pl`` on the stand-in stages of the ``dummy`` fixture."""
    return main(argv, stages=dummy["stages"])


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def _mark_running(run: Path, stage: str) -> None:
    """Make the manifest say ``stage`` is still running, as after a kill: a rerun resumes it."""
    m = _manifest(run)
    m["stages"][stage]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(m))


def test_stage_by_stage_hand_off(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["stage2", "--config", cfg]) == 2
    assert "stage1 never ran" in capsys.readouterr().err
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    assert (run / "stage1" / "smgs.ckpt").is_file() and (run / "stage1" / "config.yaml").is_file()
    assert clods(dummy, ["stage2", "--config", cfg]) == 0
    m = _manifest(run)
    assert set(m["stages"]["stage2"]["outputs"]) == {"mesh:traj_a", "mesh:traj_b"}
    assert "stage1:checkpoint" in m["stages"]["stage2"]["consumed"]
    assert clods(dummy, ["stage3", "--config", cfg]) == 0
    assert (run / "stage3" / "recovered.ckpt").is_file() and (run / "stage3" / "gt-1.ckpt").is_file()
    assert clods(dummy, ["eval", "--config", cfg]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["methods"] == {"recovered": {"checkpoint_exists": True}, "gt:1": {"checkpoint_exists": True}}
    outputs = RunDir(run)  # the typed reader sees what the stages recorded, as absolute paths
    assert outputs.stage1_checkpoint() == run / "stage1" / "smgs.ckpt"
    assert outputs.mesh_caches() == {n: run / "stage2" / "meshes" / f"{n}.npz" for n in ("traj_a", "traj_b")}
    assert outputs.stage3_checkpoints() == {
        "recovered": run / "stage3" / "recovered.ckpt",
        "gt:1": run / "stage3" / "gt-1.ckpt",
    }
    assert RunDir(run.parent / "no_such_run").stage1_checkpoint() is None


def test_pipeline_skips_up_to_date_and_names_changed_setting(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    first = _manifest(run)
    assert all(first["stages"][s]["status"] == "done" for s in ("stage1", "stage2", "stage3", "eval"))
    assert (run / "report.md").is_file()
    capsys.readouterr()
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert all(f"{s} is up to date" in out for s in ("stage1", "stage2", "stage3", "eval"))
    assert _manifest(run)["stages"]["stage1"]["finished"] == first["stages"]["stage1"]["finished"]
    # change a stage-1 setting: stage 3 alone is refused, naming the setting; the pipeline reruns everything
    assert clods(dummy, ["stage3", "--config", cfg, "--stage1.model.lr", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "stage1.model.lr changed from 0.1 to 0.2" in err and "clods-pl pipeline" in err
    assert clods(dummy, ["pipeline", "--config", cfg, "--stage1.model.lr", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "running stage1: stage1.model.lr changed from 0.1 to 0.2" in out and "running stage3" in out


def test_overrides_short_form_and_print_config(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        clods(dummy, ["stage2", "--config", dummy["cfg"], "--model.scale", "3.5", "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "scale: 3.5" in out and "stage1_checkpoint" not in out


@pytest.mark.parametrize("form", ["equals", "separate"])
def test_pipeline_trainer_flags_set_every_trained_stage(dummy: dict, capsys: pytest.CaptureFixture, form: str) -> None:
    """What the SLURM scripts pass to ``clods-pl pipeline`` / ``eval`` for the allocation."""
    flags = {"accelerator": "cpu", "devices": "3", "num_nodes": "2", "strategy": "ddp"}
    argv = []
    for key, value in flags.items():
        argv += [f"--trainer.{key}={value}"] if form == "equals" else [f"--trainer.{key}", value]
    with pytest.raises(SystemExit) as exc:
        clods(dummy, ["pipeline", "--config", dummy["cfg"], *argv, "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    for stage in ("stage1", "stage2", "stage3"):
        trainer = cfg[stage]["trainer"]
        assert (str(trainer["devices"]), trainer["num_nodes"], trainer["strategy"]) == ("3", 2, "ddp"), stage
    assert cfg["stage1"]["trainer"]["max_epochs"] == 1  # the config's other trainer settings stay
    for tail in (["--trainer.devices"], ["--trainer.devices", "--force", "true"]):
        assert clods(dummy, ["pipeline", "--config", dummy["cfg"], *tail]) == 2
        out = capsys.readouterr()
        assert "--trainer.devices needs a value" in out.out + out.err and "Traceback" not in out.out + out.err


def test_clear_errors(dummy: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert clods(dummy, ["stage1", "--config", dummy["cfg"], "--dataset", str(tmp_path / "missing")]) == 2
    assert "does not exist; generate it" in capsys.readouterr().err
    assert clods(dummy, ["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert clods(dummy, ["stage1", "--config", dummy["cfg"], "--model.no_such_key", "1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_sigterm_ends_a_stage_with_one_line_and_exit_143(
    dummy: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A SIGTERM (``kill``, ``scancel``) ends the command with the shell's code for it and one line saying how to
    resume: from stage 2's frame loop (``Interrupted``) and from a Lightning fit loop (its ``SIGTERMException``)."""
    import dummy_stages as d
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from clods_pl.errors import Interrupted

    cfg = dummy["cfg"]

    def stopped_fit(self, batch, batch_idx):
        raise SIGTERMException

    training_step = d.FitModule.training_step
    monkeypatch.setattr(d.FitModule, "training_step", stopped_fit)
    assert clods(dummy, ["stage1", "--config", cfg]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "rerun the same command to resume" in err and "Traceback" not in err
    monkeypatch.setattr(d.FitModule, "training_step", training_step)  # (undo() would drop the fixture's patches)
    assert clods(dummy, ["stage1", "--config", cfg]) == 0

    def stopped_frames(self, batch, batch_idx):
        raise Interrupted("stage 2 stopped by SIGTERM after 4 of 60 trajectory-frames; rerun the same command")

    monkeypatch.setattr(d.PredictModule, "predict_step", stopped_frames)
    assert clods(dummy, ["stage2", "--config", cfg]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "clods-pl stage2: stage 2 stopped by SIGTERM after 4 of 60 trajectory-frames; rerun the same command"
    )


def test_gpu_settings_without_a_gpu_or_with_a_cpu_accelerator_are_clear(
    dummy: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`trainer.accelerator gpu` with no CUDA, and a CUDA rasterizer with `accelerator cpu`, stop in one line
    before any work (they used to fail inside Lightning or the rasterizer, minutes in)."""
    import sys
    import types

    import torch

    cfg = dummy["cfg"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert clods(dummy, ["stage1", "--config", cfg, "--stage1.trainer.accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "stage1.trainer.accelerator=gpu but no CUDA GPU is visible" in err and "Traceback" not in err
    assert not (dummy["run"] / "stage1" / "smgs.ckpt").exists()
    # gsplat "installed" and a GPU "visible", but the stage runs on the CPU
    from jsonargparse import Namespace

    from clods_pl.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "gsplat", types.ModuleType("gsplat"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    stage = Namespace(model=Namespace(backend="gsplat"), trainer=Namespace(accelerator="cpu"))
    with pytest.raises(
        BackendUnavailableError,
        match="stage2.model.backend=gsplat renders on CUDA but stage2.trainer.accelerator=cpu; "
        "set stage2.trainer.accelerator=gpu",
    ):
        checks.check_backends(Namespace(stage2=stage), "stage2", ("model.backend",))
    stage.trainer.accelerator = "gpu"
    checks.check_backends(Namespace(stage2=stage), "stage2", ("model.backend",))


def test_stage_device_follows_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from jsonargparse import Namespace

    cfg = Namespace(stage2=Namespace(trainer=Namespace(accelerator="auto")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert checks.stage_device(cfg, "stage2") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert checks.stage_device(cfg, "stage2") == "cuda"
    cfg.stage2.trainer.accelerator = "cpu"
    assert checks.stage_device(cfg, "stage2") == "cpu"
    cfg.stage2.trainer.accelerator = "gpu"
    assert checks.stage_device(cfg, "stage2") == "cuda"


def test_stage1_never_resumes_a_checkpoint_of_other_settings(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.2: run A (lr 0.1) leaves last.ckpt; run B (lr 0.2) is killed before its first checkpoint, so the
    manifest says 'running with B's settings' next to A's checkpoint. Rerunning B must start over, not resume A."""
    import shutil

    cfg, run = dummy["cfg"], dummy["run"]
    ckpts = run / "stage1" / "checkpoints"
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    saved = run.parent / "ckpts_A"
    shutil.copytree(ckpts, saved)
    assert clods(dummy, ["stage1", "--config", cfg, "--stage1.model.lr", "0.2"]) == 0
    # B "killed before its first checkpoint": A's checkpoints in the folder, B running in the manifest
    shutil.rmtree(ckpts)
    shutil.copytree(saved, ckpts)
    m = _manifest(run)
    m["stages"]["stage1"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert clods(dummy, ["stage1", "--config", cfg, "--stage1.model.lr", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "made with other settings); starting over" in out and "resuming" not in out
    # B killed after a checkpoint of its own: the rerun resumes it and says so
    m = _manifest(run)
    m["stages"]["stage1"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(m))
    assert clods(dummy, ["stage1", "--config", cfg, "--stage1.model.lr", "0.2"]) == 0
    assert "stage1: resuming from" in capsys.readouterr().out
    assert not any("-v" in p.stem for p in ckpts.glob("*.ckpt"))  # no last-v1.ckpt pile-up


def test_stage3_resumes_each_source_with_its_own_checkpoint(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11 (faults): stage 3 killed after a checkpoint used to restart from step 0 without a word."""
    cfg = dummy["cfg"]
    for stage in ("stage1", "stage2", "stage3"):
        assert clods(dummy, [stage, "--config", cfg]) == 0
    capsys.readouterr()
    assert clods(dummy, ["stage3", "--config", cfg]) == 0
    assert "stage3 is up to date" in capsys.readouterr().out  # a finished stage is not run again
    _mark_running(dummy["run"], "stage3")  # killed after its checkpoints: the rerun resumes each source from its own
    assert clods(dummy, ["stage3", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert out.count("stage3: resuming from") == 2  # one per source (recovered, gt:1)
    assert clods(dummy, ["stage3", "--config", cfg, "--force", "true"]) == 0  # --force recomputes: no resuming
    out = capsys.readouterr().out
    assert out.count("--force: not resuming") == 2 and "stage3: resuming" not in out
    # a requeued SLURM job reruns its command line: --force must not start it over at every restart (review)
    _mark_running(dummy["run"], "stage3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_RESTART_COUNT", "1")
        assert clods(dummy, ["stage3", "--config", cfg, "--force", "true"]) == 0
    out = capsys.readouterr().out
    assert "--force ignored: this is a requeued SLURM job" in out and out.count("stage3: resuming from") == 2
    assert clods(dummy, ["stage3", "--config", cfg, "--stage3.model.lr", "0.07"]) == 0
    out = capsys.readouterr().out
    assert out.count("starting over") == 2 and "resuming" not in out


def test_adding_a_source_to_stage3_trains_only_the_new_model(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Audit (session 13): each model's resume stamp held the whole list of sources and seeds, so adding a seed
    for a paper table retrained every finished model from scratch."""
    cfg = dummy["cfg"]
    for stage in ("stage1", "stage2", "stage3"):
        assert clods(dummy, [stage, "--config", cfg]) == 0
    capsys.readouterr()
    assert clods(dummy, ["stage3", "--config", cfg, "--stage3.sources", "[recovered, gt:1, gt]"]) == 0
    out = capsys.readouterr().out
    assert out.count("stage3: resuming from") == 2 and "starting over" not in out  # recovered and gt:1: 0 steps
    assert (dummy["run"] / "stage3" / "gt.ckpt").is_file()


def test_dataset_edited_after_a_run_makes_the_stages_stale(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.5: shifting one trajectory's data after a run left `pipeline` reporting every stage up to date."""
    cfg = dummy["cfg"]
    ds = Path(yaml.safe_load(Path(cfg).read_text())["dataset"])
    (ds / "dataset.json").write_text(json.dumps({"splits": {"train": ["traj_a", "traj_b"]}}))
    for name in ("traj_a", "traj_b"):
        (ds / name).mkdir()
        np.savez(ds / name / "mesh.npz", verts0=np.zeros((4, 3)))
    (ds / "preview.png").write_bytes(b"not part of the data")
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    capsys.readouterr()
    (ds / "preview.png").write_bytes(b"a new preview")  # not data: nothing is stale
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    assert "stage1 is up to date" in capsys.readouterr().out
    np.savez(ds / "traj_b" / "mesh.npz", verts0=np.full((4, 3), 0.1))  # verts0 shifted by 0.1 m
    assert clods(dummy, ["stage2", "--config", cfg]) == 2
    assert "its input stage1 is out of date (dataset_files.traj_b changed" in capsys.readouterr().err
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "running stage1: dataset_files.traj_b changed" in out and "running eval" in out


def test_second_process_on_a_run_dir_stops_naming_the_first(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.6: two `clods-pl pipeline` on one run dir interleaved stages (caches from one stage-1 checkpoint,
    manifest recording another). The second now stops at once naming the first's PID."""
    import os

    from clods_pl.pipeline.experiment import build_parser

    cfg, run = dummy["cfg"], dummy["run"]
    parser = build_parser(stages=dummy["stages"])
    first = runner.StageRunner(parser, parser.parse_args(["--config", cfg]), dummy["stages"])
    with first.exclusive():
        assert clods(dummy, ["pipeline", "--config", cfg]) == 2
        err = capsys.readouterr().err
        assert f"run dir {run} is in use by PID {os.getpid()}" in err and "another --run_dir" in err
        assert not (run / "manifest.json").exists()  # nothing ran
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0  # released: the run goes ahead


def test_caches_from_another_stage1_checkpoint_make_stage2_stale(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11.6: the up-to-date check verifies the chain: every recorded mesh cache was recovered from the
    recorded stage-1 checkpoint (an interleaved second run could leave caches of another one)."""
    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    cache = run / "stage2" / "meshes" / "traj_a.npz"
    z = dict(np.load(cache))
    z["stage1_hash"] = np.asarray("f" * 64)
    np.savez(cache, **z)
    m = _manifest(run)  # the manifest's checksum matches the file, as after a concurrent writer
    from clods_pl.utils.files import sha256_file

    m["stages"]["stage2"]["outputs"]["mesh:traj_a"]["sha256"] = sha256_file(cache)
    (run / "manifest.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "stage1 is up to date" in out and "running stage2: mesh cache" in out and "recovered from stage-1" in out


def test_truncated_last_checkpoint_falls_back(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 11 (faults): a last.ckpt cut short while writing gave `OSError: [Errno 22]` and a traceback."""
    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    ckpts = run / "stage1" / "checkpoints"
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    capsys.readouterr()
    _mark_running(run, "stage1")  # killed while writing last.ckpt
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert f"{last} is truncated or corrupt" in out
    assert "resuming from" in out and "epoch=" in out  # the previous checkpoint
    for p in ckpts.glob("*.ckpt"):
        p.write_bytes(b"junk")
    _mark_running(run, "stage1")
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "resuming" not in out and "starting over" in out


def test_rerunning_stage1_with_the_same_weights_keeps_stage2_current(
    dummy: dict, capsys: pytest.CaptureFixture
) -> None:
    """Issue 11: `make stage1 stage2 stage3` on a finished run re-saved smgs.ckpt with new bytes (it embeds paths)
    and stage 2 then refused its caches. Checkpoints now count by weights and settings."""
    cfg = dummy["cfg"]
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    assert clods(dummy, ["stage1", "--config", cfg, "--force", "true"]) == 0  # resumes the finished run, saves again
    capsys.readouterr()
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert all(f"{s} is up to date" in out for s in ("stage2", "stage3", "eval")), out


def test_disk_full_is_one_line_and_keeps_finished_stages(
    dummy: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Issue 11 (faults): ENOSPC mid-pipeline printed a raw traceback."""
    import errno

    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    real = runner.Manifest.finish_stage

    def full(self, name, outputs, status="done"):
        if name == "stage2":
            raise OSError(errno.ENOSPC, "No space left on device", str(run / "stage2" / "meshes" / "traj_a.npz"))
        return real(self, name, outputs, status)

    monkeypatch.setattr(runner.Manifest, "finish_stage", full)
    capsys.readouterr()
    assert clods(dummy, ["pipeline", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{run / 'stage2' / 'meshes' / 'traj_a.npz'}: No space left on device" in err
    m = _manifest(run)
    assert m["stages"]["stage1"]["status"] == "done" and m["stages"]["stage2"]["status"] == "failed"
    monkeypatch.setattr(runner.Manifest, "finish_stage", real)
    assert clods(dummy, ["pipeline", "--config", cfg]) == 0  # space freed: the pipeline repairs the failed stage
    assert _manifest(run)["stages"]["stage2"]["status"] == "done"


def test_version(capsys: pytest.CaptureFixture) -> None:
    from clods_pl import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"clods-pl {__version__}"


def test_stage_help_is_short_and_lists_the_stage_options(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["stage1", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--stage1.model.gaussians_per_face" in out and "--stage1.trainer" in out
    assert "--stage2.model" not in out and "--stage1.trainer.max_epochs MAX_EPOCHS" not in out
    assert "--force" in out  # accepted by every command, so listed too
    assert len(out.splitlines()) < 250  # was 1,324 lines: three stages x every lightning.Trainer argument


def test_cached_help_matches_the_built_text_and_skips_lightning(tmp_path: Path) -> None:
    """Issue 12: `clods-pl stage1 --help` took 5-11 s (Lightning's import). The text is cached, keyed by what it is
    made from; a second call prints the same text without importing Lightning."""
    import os
    import subprocess
    import sys

    from clods_pl.pipeline.help_cache import help_key

    code = (
        "import sys; from clods_pl.pipeline.cli import main; main(['stage2', '--help']); "
        "print('LIGHTNING', 'lightning' in sys.modules)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "60"}
    first, second = (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    )
    assert first.stdout.endswith("LIGHTNING True\n") and second.stdout.endswith("LIGHTNING False\n")
    assert first.stdout.replace("True", "False") == second.stdout and "--stage2.model.gamma" in second.stdout
    assert len(list((tmp_path / "clods-pl" / "help").glob("stage2-*.txt"))) == 1
    assert help_key("stage2") != help_key("stage1")


def test_threads_setting_default_and_notice(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 13: the CLI picks torch's thread count itself (a loaded 2-core box is 10-20x slower with 2 threads)."""
    import torch

    from clods_pl.pipeline.cli import default_threads

    assert default_threads(2, 1.3, None) == (1, "2 cores, load 1.3")
    assert default_threads(2, 0.1, None)[0] == 2 and default_threads(16, 20.0, None)[0] == 1
    assert default_threads(8, 0.0, "3") == (3, "OMP_NUM_THREADS=3")
    before = torch.get_num_threads()
    try:
        assert clods(dummy, ["stage1", "--config", dummy["cfg"], "--threads", "1"]) == 0
        assert "[clods-pl] 1 CPU thread (--threads; --threads N to change)" in capsys.readouterr().out
        assert torch.get_num_threads() == 1
        assert clods(dummy, ["stage1", "--config", dummy["cfg"], "--threads", "0"]) == 2
        assert "--threads=0; it must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_progress_lines_for_epochs_and_recovered_frames(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Issue 12: with Lightning's progress bar off (as the YAMLs set it) a stage still says how far it is."""
    import torch

    from clods_pl.stages.recovery_loop import progress_line

    assert clods(dummy, ["stage1", "--config", dummy["cfg"]]) == 0
    out = capsys.readouterr().out
    assert "[clods-pl] stage1: epoch 1, step 2, train/loss " in out and "ETA 0 s" in out  # max_epochs 1: done

    class Job:
        def __init__(self, name: str) -> None:
            self.name, self.stop = name, 16

    line = progress_line([Job("traj_0000"), Job("traj_0003")], [5, 5], torch.tensor([100, 140]), 10, 30, 20.0)
    assert line == (
        "[clods-pl] stage 2: traj_0000 .. traj_0003 (2 together), frame 5/15, 120 iterations; "
        "10/30 trajectory-frames in 20 s, ETA 40 s"
    )


def test_every_stage_sends_the_manifest_to_its_wandb_runs(
    dummy: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 12: log_manifest_artifact existed but nothing called it; each stage that logs to W&B now uploads the
    manifest (configs and checksums) to its runs."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    calls: list[tuple[int, dict]] = []
    real = runner.log_manifest_artifact

    def spy(loggers, path):
        calls.append((sum(isinstance(lg, WandbLogger) for lg in loggers), json.loads(Path(path).read_text())))
        return real(loggers, path)

    monkeypatch.setattr(runner, "log_manifest_artifact", spy)
    try:
        assert clods(dummy, ["pipeline", "--config", dummy["cfg"], "--logger", "both"]) == 0
    finally:
        wandb.finish()
    # stage1, stage2, stage3 (its last source's run), eval (no trainer: no W&B run)
    assert [n for n, _ in calls] == [1, 1, 1, 0]
    assert calls[0][1]["stages"]["stage1"]["status"] == "done"
    names = sorted(p.name.split("-")[-1] for p in Path(tmp_path).rglob("offline-run-*"))
    assert len(names) == 4, names  # one W&B run per trainer: stage1, stage2, stage3 x 2 sources


def _real_runner(*args: str) -> runner.StageRunner:
    """The real stages' runner for ``experiments/flag_tiny.yaml`` plus ``args`` (parsed only; nothing runs)."""
    from clods_pl.pipeline.experiment import build_parser

    parser = build_parser()
    return runner.StageRunner(parser, parser.parse_args(["--config", "experiments/flag_tiny.yaml", *args]))


def test_eval_is_stale_after_stage1_changes_when_it_makes_the_novel_view_table() -> None:
    """Audit (session 13): with stage 3 on ground truth only, eval listed stage 3 alone as its input, so a new stage
    1 (another opacity field) left `pipeline` saying eval was up to date while the novel-view table and render sheet
    still showed the old SMGS."""
    gt_only = ("--config", "experiments/ablations/supervision_gt.yaml")
    base = _real_runner(*gt_only)
    evaluate = base.stage("eval")
    assert [s.name for s in base.upstream(evaluate)] == ["stage3", "stage1", "stage2"]
    changed = _real_runner(*gt_only, "--stage1.model.opacity_mode", "static")
    assert base.stage_config(evaluate) != changed.stage_config(evaluate)
    assert base.stage_config(base.stage("stage3")) == changed.stage_config(changed.stage("stage3"))
    off = _real_runner(*gt_only, "--eval.novel_views.enabled", "false")
    assert [s.name for s in off.upstream(off.stage("eval"))] == ["stage3"]
    off_changed = _real_runner(*gt_only, "--eval.novel_views.enabled", "false", "--stage1.model.opacity_mode", "static")
    assert off.stage_config(off.stage("eval")) == off_changed.stage_config(off_changed.stage("eval"))


def test_eval_videos_count_is_a_result_setting() -> None:
    """Audit (session 13): `eval.videos` was marked result-neutral, so asking for videos after a run without them
    said 'up to date' and made none."""
    evaluate = _real_runner().stage("eval")
    assert _real_runner().stage_config(evaluate) != _real_runner("--eval.videos", "0").stage_config(evaluate)
    assert _real_runner().stage_config(evaluate) == _real_runner("--eval.device", "cpu").stage_config(evaluate)


def test_eval_empties_its_folder_but_keeps_the_config(tmp_path: Path) -> None:
    """A table of other settings (e.g. a novel-view table since switched off) must not outlive the eval that
    replaces it: the report reads every file in eval/."""
    from clods_pl.stages.evaluation_stage import clear_outputs

    (tmp_path / "novel_views" / "static").mkdir(parents=True)
    (tmp_path / "novel_views.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("a: 1\n")
    clear_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    clear_outputs(tmp_path / "missing")  # a first eval: nothing to clear


@pytest.mark.parametrize("force", [False, True])
def test_force_rebuilds_the_mesh_caches(force: bool) -> None:
    """`--force true` recomputes: stage 2 recovers every cache from frame 0 (overwrite) instead of resuming it."""
    from types import SimpleNamespace

    from clods_pl.stages.recovery_stage import STAGE, RecoveryPart, recover_part

    seen: dict = {}

    class Stop(Exception):
        pass

    def instantiate(stage, role, injected):
        seen.update(injected)
        raise Stop

    ctx = SimpleNamespace(
        instantiate=instantiate, repair=False, force=force, outputs=SimpleNamespace(stage1_checkpoint=lambda: "s1")
    )
    with pytest.raises(Stop):
        recover_part(RecoveryPart(STAGE, ctx, "ds", Path("c"), Path("s"), "n", {}, None))
    assert seen.get("overwrite", False) is force


def test_the_process_count_is_recorded_and_never_resumed_across(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Audit (session 13): under DDP each process fits on its share of the data, so a fit killed as a 1-device job
    could resume as a 4-device one: the count is in the resume stamp. A finished stage is kept, with a note (the
    allocation is no result setting: a SLURM job passes it to its own stage only, and treating it as one broke the
    SLURM chain and would refit every stage of a cluster run on a workstation)."""
    from clods_pl.pipeline.experiment import build_parser, trainer_world_size

    cfg, run = dummy["cfg"], dummy["run"]
    for stage in ("stage1", "stage2"):
        assert clods(dummy, [stage, "--config", cfg]) == 0
    parser = build_parser(stages=dummy["stages"])

    def runner_with(*args: str) -> runner.StageRunner:
        return runner.StageRunner(parser, parser.parse_args(["--config", cfg, *args]), dummy["stages"])

    one, two = runner_with(), runner_with("--stage1.trainer.devices", "2")
    stage1, stage2 = one.stage("stage1"), one.stage("stage2")
    assert one.staleness(stage1) is None and one.stage_config(stage1) == two.stage_config(stage1)
    capsys.readouterr()
    assert two.staleness(stage1) is None
    assert "note: stage1 ran as 1 process(es) and would now run as 2; its outputs are kept" in capsys.readouterr().out
    assert one.settings_digest(stage1) != two.settings_digest(stage1)  # a resume never crosses world sizes
    assert one.settings_digest(stage1) == runner_with("--stage1.trainer.accelerator", "cpu").settings_digest(stage1)
    m = _manifest(run)  # stage 1 recorded as a 2-process job; stage 2's job knows nothing of that allocation
    m["stages"]["stage1"]["processes"] = 2
    (run / "manifest.json").write_text(json.dumps(m))
    one.consumed(stage2)  # no error: the upstream is current
    assert one.staleness(stage2) is None
    assert trainer_world_size({"devices": [0, 1], "num_nodes": 2}) == 4
    assert trainer_world_size({"devices": "0,1,", "num_nodes": 1}) == 2
    assert trainer_world_size({"devices": "auto", "accelerator": "cpu"}) == 1


def test_the_dataset_path_counts_by_where_it_points_not_how_it_is_spelt() -> None:
    evaluate = _real_runner().stage("stage1")
    plain = _real_runner("--dataset", "data/tiny").stage_config(evaluate)
    assert _real_runner("--dataset", "./data/tiny/").stage_config(evaluate) == plain
    assert _real_runner("--dataset", "data/small").stage_config(evaluate) != plain


def test_eval_without_stage1_says_how_to_score_the_rollouts_alone(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """With the novel-view table on (the default), eval needs stages 1-2; a run that trained stage 3 on ground truth
    alone is told how to do without them."""
    from dataclasses import replace as with_

    stages = (*dummy["stages"][:3], with_(dummy["stages"][3], uses_upstream=lambda ctx: ("stage3", "stage1", "stage2")))
    cfg = dummy["cfg"]
    assert main(["stage3", "--config", cfg, "--stage3.sources", "[gt:1]"], stages=stages) == 0
    assert main(["eval", "--config", cfg, "--stage3.sources", "[gt:1]"], stages=stages) == 2
    err = capsys.readouterr().err
    assert "its input stage1 is out of date (stage1 never ran" in err and "--eval.novel_views.enabled false" in err


def test_a_preemption_checkpoint_never_reaches_stage2(dummy: dict, capsys: pytest.CaptureFixture) -> None:
    """Review (session 13): a stage-2 task preempted under SLURM left Lightning's `hpc_ckpt_<n>.ckpt` in stage2/,
    which the requeued predict loaded into the module by itself and failed on; stage 2 resumes from its caches."""
    cfg, run = dummy["cfg"], dummy["run"]
    assert clods(dummy, ["stage1", "--config", cfg]) == 0
    (run / "stage2").mkdir()
    hpc = run / "stage2" / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"a preemption checkpoint")
    capsys.readouterr()
    assert clods(dummy, ["stage2", "--config", cfg]) == 0
    assert not hpc.exists() and "removing the preemption checkpoint" in capsys.readouterr().out


def test_ranks_other_than_0_leave_eval_and_the_report_to_rank_0(
    dummy: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review (session 13): in a multi-task job (pipeline.sbatch) every rank ran eval, each emptying eval/ and
    writing the same files, then built the report while rank 0 was still evaluating."""
    from types import SimpleNamespace

    from lightning.pytorch.utilities import rank_zero_only

    from clods_pl.stages.evaluation_stage import STAGE, run_eval
    from clods_pl.stages.stage import StageJob

    assert clods(dummy, ["pipeline", "--config", dummy["cfg"]]) == 0
    report = dummy["run"] / "report.md"
    before = report.stat().st_mtime_ns
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert run_eval(STAGE, SimpleNamespace(), StageJob("ds", tmp_path / "eval")) == {}
    assert (tmp_path / "eval" / "metrics.json").exists()
    assert main(["report", "--run_dir", str(dummy["run"])]) == 0 and report.stat().st_mtime_ns == before
