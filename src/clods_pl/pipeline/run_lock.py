"""Exclusive use of a run directory: two clods-pl processes never interleave the stages of one run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from clods_pl.errors import ClodsError

RUN_LOCK, RUN_LOCK_PID = "run.lock", "run.lock.pid"


class RunLock:
    """``<run>/run.lock`` (a file lock) and ``<run>/run.lock.pid`` (who holds it). Re-entrant within one process;
    a second process stops at once with one line naming the first's PID."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = FileLock(str(self.run_dir / RUN_LOCK))

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock while the block runs (creating the run directory if needed)."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ClodsError(
                f"run_dir {self.run_dir} is not a directory (a file is in the way); choose another --run_dir"
            )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClodsError(
                f"run_dir {self.run_dir} cannot be created ({exc.strerror}); choose another --run_dir"
            ) from None
        pid_file = self.run_dir / RUN_LOCK_PID
        try:
            self._lock.acquire(timeout=0)
        except FileLockTimeout:
            pid = pid_file.read_text().strip() if pid_file.is_file() else "?"
            raise ClodsError(
                f"run dir {self.run_dir} is in use by PID {pid} (another clods-pl holds "
                f"{self._lock.lock_file}); wait for it to finish or use another --run_dir"
            ) from None
        try:
            if self._lock.lock_counter == 1:
                pid_file.write_text(f"{os.getpid()}\n")
            yield
        finally:
            self._lock.release()
