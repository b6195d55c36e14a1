"""One console line per training epoch (at most one per ``every_s`` seconds) with the loss and an ETA, for stages
run with Lightning's progress bar off (the experiment YAMLs turn it off: its redraws fill log files)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


def fraction_done(trainer: Any) -> float | None:
    """How far training is, from ``max_steps`` when set, else from ``max_epochs``; None when neither bounds it."""
    if trainer.max_steps and trainer.max_steps > 0:
        return min(1.0, trainer.global_step / trainer.max_steps)
    if trainer.max_epochs and trainer.max_epochs > 0:
        return min(1.0, (trainer.current_epoch + 1) / trainer.max_epochs)
    return None


class EpochLine(L.Callback):
    """Prints ``[clods-pl] <name>: epoch e, step s/S, train/loss x; 12 s, ETA 30 s`` after training epochs."""

    def __init__(self, name: str, every_s: float = 10.0) -> None:
        self.name, self.every_s = name, every_s
        self.start = self.last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self.last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        frac = fraction_done(trainer)
        finished = frac is not None and frac >= 1.0
        if not trainer.is_global_zero or (now - self.last < self.every_s and not finished):
            return
        self.last = now
        elapsed = now - self.start
        steps = f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")
        loss = trainer.callback_metrics.get("train/loss")
        loss_text = "" if loss is None else f", train/loss {float(loss):.4g}"
        eta = "" if not frac else f", ETA {elapsed / frac * (1.0 - frac):.0f} s"
        print(f"[clods-pl] {self.name}: epoch {trainer.current_epoch + 1}, {steps}{loss_text}; {elapsed:.0f} s{eta}")
