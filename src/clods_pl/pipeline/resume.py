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

HPC_PATTERN = "hpc_ckpt_*.ckpt"  # Lightning's SLURM preemption checkpoints, in the Trainer's default_root_dir
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


def preemption_checkpoints(root_dir: Path) -> list[Path]:
    """Lightning's SLURM preemption checkpoints in a Trainer's ``default_root_dir`` (``hpc_ckpt_<n>.ckpt``, saved on
    SIGUSR1). A fit with ``ckpt_path=None`` under SLURM restores the newest of them on its own, whatever settings
    made it, so :func:`resume_checkpoint` stamps and sorts them with the others."""
    return sorted(root_dir.glob(HPC_PATTERN)) if root_dir.is_dir() else []


def discard_checkpoints(ckpt_dir: Path, stage: str, why: str) -> None:
    """Remove ``ckpt_dir`` and the preemption checkpoints next to it (rank 0, with a notice naming ``why``) so that
    training starts over."""
    hpc = preemption_checkpoints(ckpt_dir.parent)
    if (ckpt_dir.is_dir() or hpc) and rank_zero_only.rank == 0:
        print(f"[clods-pl] {stage}: {why}: not resuming from the checkpoints in {ckpt_dir.parent}; starting over")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        for path in hpc:
            path.unlink(missing_ok=True)


def resume_checkpoint(ckpt_dir: Path, stage: str, digest: str) -> str | None:
    """The newest checkpoint stamped with ``digest`` among those in ``ckpt_dir`` (``ModelCheckpoint``'s; ``last.ckpt``
    first among equally new ones) and Lightning's preemption checkpoints in its parent, the Trainer's
    ``default_root_dir``; a truncated one is skipped with a notice. Preemption checkpoints of other settings are
    removed (Lightning would restore one by itself under SLURM). With none to resume, the checkpoints there (other
    settings, unreadable, or too old to say) are removed with a notice and None is returned: training starts over."""
    last = ckpt_dir / "last.ckpt"
    saved = list(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    hpc = preemption_checkpoints(ckpt_dir.parent)
    found = sorted(saved + hpc, key=lambda p: (p.stat().st_mtime, p == last), reverse=True)
    stamps = {ckpt: checkpoint_stamp(ckpt) for ckpt in found}
    other, chosen = 0, None
    for ckpt, stamp in stamps.items():
        if stamp == digest and chosen is None:
            chosen = ckpt
        elif stamp is None:
            print(f"[clods-pl] {stage}: {ckpt} is truncated or corrupt (killed while writing?); skipping it")
        elif stamp != digest:
            other += 1
    if rank_zero_only.rank == 0:
        for ckpt in hpc:  # never leave Lightning one of other settings (or unreadable) to restore on its own
            if stamps[ckpt] != digest:
                ckpt.unlink(missing_ok=True)
    if chosen is not None:
        print(f"[clods-pl] {stage}: resuming from {chosen}")
        return str(chosen)
    if found and rank_zero_only.rank == 0:
        why = "they were made with other settings" if other else "none of them reads back"
        print(f"[clods-pl] {stage}: cannot resume from the checkpoints in {ckpt_dir} ({why}); starting over")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return None
