"""Loggers: CSV default, W&B offline without network; metrics, media and the manifest artifact reach the run file."""

from __future__ import annotations

import glob
import json
import struct
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from clods_pl.errors import ClodsError
from clods_pl.utils.loggers import build_loggers, log_images, log_manifest_artifact, wandb_offline

BLOCK = 32768  # W&B's run file is a leveldb-style log of protobuf records in 32 KiB blocks


def wait_for_exit_record(path: str, limit_s: float = 120.0) -> list:
    """The run's records once W&B's writer has finished the file (its closing ``exit`` record is there).
    ``wandb.finish()`` can return while the separate wandb-core process still writes (seen under load: a
    ``StopIteration`` on a half-written file), so wait for the writer's own end marker, not for a fixed time."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            records = read_wandb_records(path)
        except Exception:  # a chunk cut mid-write: read again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: W&B wrote no exit record within {limit_s} s"
        time.sleep(0.2)


def read_wandb_records(path: str) -> list:
    """All protobuf ``Record``s of an offline ``run-*.wandb`` file (7-byte file header, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    out, pos, buf = [], 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 2):
            buf = chunk
        elif kind in (3, 4):
            buf += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


class TwoSteps(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        loss = self.lin(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_offline_decision(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert wandb_offline(None, {**home, "WANDB_API_KEY": "k", "WANDB_MODE": "offline"})
    assert not wandb_offline(None, {**home, "WANDB_API_KEY": "k"})
    assert wandb_offline(None, home)  # no key anywhere -> offline, never a login prompt
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert not wandb_offline(None, home)
    assert wandb_offline(None, {**home, "WANDB_BASE_URL": "https://wandb.example.org"})  # key is for another host
    assert wandb_offline(True, {**home, "WANDB_API_KEY": "k"}) and not wandb_offline(False, home)


def test_bad_settings_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClodsError, match="logger='tensorboard'"):
        build_loggers("tensorboard", tmp_path, "x")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    with pytest.raises(ClodsError, match="wandb login"):
        build_loggers("wandb", tmp_path, "x", offline=False)
    with pytest.raises(ClodsError, match="does not exist"):
        log_manifest_artifact([], tmp_path / "manifest.json")


def test_csv_default_logs_metrics_and_media(tmp_path: Path) -> None:
    loggers = build_loggers("csv", tmp_path / "logs", "demo-stage1")
    assert [type(lg) for lg in loggers] == [CSVLogger]
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=2,
        logger=loggers,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TwoSteps(), dl)
    rows = (Path(loggers[0].log_dir) / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",").count("train/loss") == 1 and len(rows) == 3
    pngs = log_images(loggers, "val/render", np.random.rand(2, 8, 8, 3), step=2)
    assert len(pngs) == 2 and all(p.stat().st_size > 0 for p in pngs)
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    assert log_manifest_artifact(loggers, manifest) == 0  # no W&B logger: nothing uploaded, no error


def test_wandb_offline_run_has_metrics_media_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = build_loggers("both", tmp_path, "demo-stage2", tags=["tiny"])
    assert [type(lg) for lg in loggers] == [CSVLogger, WandbLogger]
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=2,
        logger=loggers,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TwoSteps(), dl)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"stages": {}}))
    try:
        assert log_manifest_artifact(loggers, manifest) == 1
        log_images(loggers, "val/render", np.random.rand(2, 8, 8, 3), step=2)
    finally:
        wandb.finish()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    records = wait_for_exit_record(runs[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.display_name, run.project, list(run.tags)) == ("demo-stage2", "clods-pl", ["tiny"])
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    csv_rows = (Path(loggers[0].log_dir) / "metrics.csv").read_text().splitlines()[1:]
    col = (Path(loggers[0].log_dir) / "metrics.csv").read_text().splitlines()[0].split(",").index("train/loss")
    assert losses == pytest.approx([float(r.split(",")[col]) for r in csv_rows])  # same values in both loggers
    assert any(h.get("val/render/count") == 2 for h in history)
    arts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in arts] == [(f"manifest-{tmp_path.name}", "manifest")]
