"""Resuming a fit stage never mixes two configurations: every checkpoint carries the digest of the settings that
made it (``SettingsStamp``), and a restart resumes only from one with the current digest (``resume_checkpoint``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

STAMP_KEY = "clods_pl_settings_digest"  # in every stage checkpoint: the digest of the settings it was made with


class SettingsStamp(Callback):
    """Writes the stage's settings digest into every checkpoint it saves (key ``STAMP_KEY``), so a resume can tell
    a checkpoint of these settings from one of other settings left in the same folder."""

    def __init__(self, digest: str) -> None:
        self.digest = digest

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[STAMP_KEY] = self.digest


def checkpoint_stamp(ckpt: Path) -> str:
    """The settings digest stamped in a checkpoint ("" when it has none); None when the file does not read back
    (truncated while writing, or not a checkpoint)."""
    try:
        data = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception:  # truncated zip, EOF, unpickling errors: all mean "cannot resume from this file"
        return None
    return str(data.get(STAMP_KEY, "")) if isinstance(data, dict) else ""


def discard_checkpoints(ckpt_dir: Path, stage: str, why: str) -> None:
    """Remove ``ckpt_dir`` (rank 0, with a notice naming ``why``) so that training starts over."""
    if ckpt_dir.is_dir() and rank_zero_only.rank == 0:
        print(f"[clods-pl] {stage}: {why}: not resuming from the checkpoints in {ckpt_dir}; starting over")
        shutil.rmtree(ckpt_dir)


def resume_checkpoint(ckpt_dir: Path, stage: str, digest: str) -> str | None:
    """The newest checkpoint in ``ckpt_dir`` (``last.ckpt`` first) stamped with ``digest``; a truncated one is
    skipped with a notice. With none, the folder's checkpoints (other settings, unreadable, or too old to say) are
    removed with a notice and None is returned: training starts over."""
    last = ckpt_dir / "last.ckpt"
    found = [last] if last.is_file() else []
    found += (
        sorted((p for p in ckpt_dir.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
        if ckpt_dir.is_dir()
        else []
    )
    other = 0
    for ckpt in found:
        stamp = checkpoint_stamp(ckpt)
        if stamp == digest:
            print(f"[clods-pl] {stage}: resuming from {ckpt}")
            return str(ckpt)
        if stamp is None:
            print(f"[clods-pl] {stage}: {ckpt} is truncated or corrupt (killed while writing?); skipping it")
        else:
            other += 1
    if found and rank_zero_only.rank == 0:
        why = "they were made with other settings" if other else "none of them reads back"
        print(f"[clods-pl] {stage}: cannot resume from the checkpoints in {ckpt_dir} ({why}); starting over")
        shutil.rmtree(ckpt_dir)
    return None
