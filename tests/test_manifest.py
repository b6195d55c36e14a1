"""Run-directory manifest: hashes, staleness with the changed setting named, corruption, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from clods_pl.errors import ManifestError
from clods_pl.pipeline.manifest import Manifest, config_changes, flatten


def _done(m: Manifest, stage: str, cfg: dict, out: Path, consumed: dict | None = None) -> None:
    m.start_stage(stage, cfg, consumed or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("weights")
    m.finish_stage(stage, {"checkpoint": out})


def test_round_trip_and_verified_hashes(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    _done(m, "stage1", {"stage1.model.k": 2}, tmp_path / "stage1" / "smgs.ckpt")
    rec = m.stage("stage1")
    assert rec["status"] == "done" and rec["outputs"]["checkpoint"]["path"] == "stage1/smgs.ckpt"
    hashes = m.verified_outputs("stage1")
    assert list(hashes) == ["stage1:checkpoint"] and len(hashes["stage1:checkpoint"]) == 64
    assert m.staleness("stage1", {"stage1.model.k": 2}, {}) is None


def test_staleness_names_the_changed_setting(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    _done(m, "stage1", {"stage1.model.opacity_mode": "dual"}, tmp_path / "a.ckpt")
    reason = m.staleness("stage1", {"stage1.model.opacity_mode": "static"}, {})
    assert reason == "stage1.model.opacity_mode changed from 'dual' to 'static' since stage1 ran"
    assert "input stage1:checkpoint changed" in m.staleness(
        "stage1", {"stage1.model.opacity_mode": "dual"}, {"stage1:checkpoint": "x"}
    )


def test_corrupt_output_and_manifest_are_refused(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    ckpt = tmp_path / "stage1" / "smgs.ckpt"
    _done(m, "stage1", {}, ckpt)
    ckpt.write_text("tampered")
    with pytest.raises(ManifestError, match="does not match its checksum"):
        m.verified_outputs("stage1")
    ckpt.unlink()
    with pytest.raises(ManifestError, match="is missing"):
        m.verified_outputs("stage1")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="is corrupt"):
        m.read()


def test_unfinished_stage_is_refused(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    with pytest.raises(ManifestError, match="stage2 never ran"):
        m.verified_outputs("stage2")
    m.start_stage("stage2", {}, {})
    with pytest.raises(ManifestError, match="is 'running'"):
        m.verified_outputs("stage2")


def test_flatten_and_changes() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None})
    assert flat == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    assert config_changes({"x": 1, "y": 2}, {"x": 1, "z": 3}) == ["y was removed (was 2)", "z was added (3)"]


def _writer(run_dir: str, worker: int, n: int) -> None:
    m = Manifest(run_dir)
    for i in range(n):

        def _fn(rec: dict, i: int = i) -> None:
            rec[f"w{worker}_{i}"] = i

        m.update_stage("stress", _fn)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = json.loads((tmp_path / "manifest.json").read_text())
    rec = data["stages"]["stress"]
    assert len(rec) == 75 and all(rec[f"w{w}_{i}"] == i for w in range(3) for i in range(25))


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    """Reports and manifests written atomically are readable like any other file (not the temp file's 0600)."""
    import os

    from clods_pl.utils.files import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = atomic_write_text(tmp_path / "report.md", "x")
    assert os.stat(atomic).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def _stamped(path: Path, digest: str, mtime: float) -> Path:
    import os

    import torch

    from clods_pl.pipeline.resume import STAMP_KEY

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({STAMP_KEY: digest, "global_step": 1}, path)
    os.utime(path, (mtime, mtime))
    return path


def test_resume_weighs_slurm_preemption_checkpoints_and_removes_those_of_other_settings(tmp_path: Path) -> None:
    """Audit (session 13): under SLURM, Lightning saves `hpc_ckpt_<n>.ckpt` in the Trainer's default_root_dir on
    preemption and a fit with ckpt_path=None restores it by itself; the resume check only looked in checkpoints/,
    so a rerun with new settings trained on from the old settings' state."""
    from clods_pl.pipeline.resume import resume_checkpoint

    ckpts = tmp_path / "stage1" / "checkpoints"
    last = _stamped(ckpts / "last.ckpt", "A", 1000.0)
    hpc = _stamped(tmp_path / "stage1" / "hpc_ckpt_1.ckpt", "B", 2000.0)
    assert resume_checkpoint(ckpts, "stage1", "A") == str(last)
    assert not hpc.exists()  # of other settings: Lightning must not find it
    newer = _stamped(tmp_path / "stage1" / "hpc_ckpt_2.ckpt", "A", 3000.0)
    assert resume_checkpoint(ckpts, "stage1", "A") == str(newer)  # the preemption state is the newest of these
    assert resume_checkpoint(ckpts, "stage1", "C") is None
    assert not ckpts.exists() and not newer.exists()


def test_dataset_fingerprint_follows_symlinked_folders(tmp_path: Path) -> None:
    """Audit (session 13): a trajectory whose image folder is a symlink (data kept elsewhere) fingerprinted as
    'missing' and stayed the same when its images changed."""
    from clods_pl.utils.files import folder_fingerprint

    store = tmp_path / "store" / "view_00"
    store.mkdir(parents=True)
    (store / "mesh.npz").write_bytes(b"a")
    traj = tmp_path / "ds" / "traj_0000"
    traj.mkdir(parents=True)
    (traj / "view_00").symlink_to(store, target_is_directory=True)
    before = folder_fingerprint(tmp_path / "ds", ["traj_0000"])["traj_0000"]
    assert before != "missing"
    (store / "mesh.npz").write_bytes(b"b")
    assert folder_fingerprint(tmp_path / "ds", ["traj_0000"])["traj_0000"] != before
