"""The run directory's ``manifest.json``: what each stage made, from which settings and inputs.

Layout (``runs/<name>/manifest.json``)::

    {"version": 1, "code_version": {...},
     "stages": {"stage1": {"status": "done", "config": {flat settings}, "config_hash": "...",
                           "consumed": {"stage0-output-key": "sha256", ...},
                           "outputs": {"checkpoint": {"path": "stage1/smgs.ckpt", "sha256": "..."}},
                           "started": "...", "finished": "..."}}}

Writers take a file lock (``manifest.json.lock``), read, modify and atomically rename, so concurrent processes never
corrupt it or lose each other's updates. Paths in ``outputs`` are relative to the run directory.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from clods_pl import __version__
from clods_pl.errors import ManifestError
from clods_pl.utils.files import atomic_write_json, checkpoint_digest, sha256_file, sha256_json
from clods_pl.utils.settings import config_changes, flatten  # noqa: F401  (re-exported: manifest's vocabulary)

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
STATUS_RUNNING, STATUS_DONE, STATUS_FAILED = "running", "done", "failed"
LOCK_TIMEOUT_S = 120.0


def code_version() -> dict[str, str]:
    """Package version and, when available, the git commit of the source tree."""
    out = {"package": __version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0:
            out["git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class Manifest:
    """Locked, atomic access to one run directory's manifest."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / MANIFEST_FILE
        self._lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    # ----- reading -----------------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """The manifest as a dict (an empty one when the run is new). Raises ManifestError when corrupt."""
        if not self.path.exists():
            return {"version": MANIFEST_VERSION, "stages": {}}
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{self.path} is corrupt ({exc}); delete it to start the run over") from exc
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise ManifestError(f"{self.path} has no 'stages' table; delete it to start the run over")
        bad = [name for name, rec in data["stages"].items() if not isinstance(rec, dict)]
        if bad:
            raise ManifestError(
                f"{self.path}: the record of stage '{bad[0]}' is not an object (edited by hand?); "
                "delete the manifest to start the run over"
            )
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{self.path} has version {data.get('version')}, this clods-pl writes "
                f"{MANIFEST_VERSION}; use a new run directory"
            )
        return data

    def stage(self, name: str) -> dict[str, Any] | None:
        """The record of stage ``name`` or None."""
        return self.read()["stages"].get(name)

    # ----- writing -----------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """Lock, read, yield the dict for modification, then write it atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self.read()
            yield data
            data["version"] = MANIFEST_VERSION
            atomic_write_json(self.path, data)

    def update_stage(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``fn`` to stage ``name``'s record under the lock."""
        with self.locked() as data:
            rec = data["stages"].setdefault(name, {})
            fn(rec)

    def start_stage(
        self, name: str, config: dict[str, Any], consumed: dict[str, str], processes: int | str = 1
    ) -> None:
        """Mark a stage running with the flat config, the upstream output hashes it consumes, and the number of
        processes it runs as (recorded when above 1)."""

        def _fn(rec: dict[str, Any]) -> None:
            rec.clear()
            rec.update(
                status=STATUS_RUNNING,
                config=config,
                config_hash=sha256_json(config),
                consumed=consumed,
                outputs={},
                started=_now(),
                code_version=code_version(),
            )
            if processes != 1:
                rec["processes"] = processes

        self.update_stage(name, _fn)

    def finish_stage(self, name: str, outputs: dict[str, str | Path], status: str = STATUS_DONE) -> None:
        """Record outputs (paths, hashed now) and the final status."""
        hashed = {key: {"path": self._rel(p), "sha256": sha256_file(p)} for key, p in outputs.items()}
        for key, p in outputs.items():  # checkpoints: also what they mean (weights, settings), for downstream
            if str(p).endswith(".ckpt"):
                try:
                    hashed[key]["content"] = checkpoint_digest(p)
                except Exception:  # not a torch checkpoint (stand-ins in tests): its bytes stand for it
                    pass

        def _fn(rec: dict[str, Any]) -> None:
            rec.setdefault("outputs", {}).update(hashed)
            rec["status"] = status
            rec["finished"] = _now()

        self.update_stage(name, _fn)

    def fail_stage(self, name: str, reason: str) -> None:
        """Record a failed stage with a one-line reason."""

        def _fn(rec: dict[str, Any]) -> None:
            rec["status"] = STATUS_FAILED
            rec["error"] = reason
            rec["finished"] = _now()

        self.update_stage(name, _fn)

    def _rel(self, p: str | Path) -> str:
        p = Path(p).resolve()
        try:
            return str(p.relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(p)

    def abspath(self, rel: str) -> Path:
        """An output path from the manifest, made absolute."""
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def processes(self, name: str) -> int | str:
        """How many processes stage ``name`` last ran as (1 when not recorded)."""
        rec = self.stage(name)
        return 1 if rec is None else rec.get("processes", 1)

    # ----- checks ------------------------------------------------------------------------------------
    def verified_outputs(self, name: str) -> dict[str, str]:
        """``{output key: sha256}`` of a finished stage after checking every file's checksum.

        Raises:
            ManifestError: the stage has not finished, or an output is missing or altered.
        """
        rec = self.stage(name)
        if rec is None or rec.get("status") != STATUS_DONE:
            state = "never ran" if rec is None else f"is '{rec.get('status')}'"
            raise ManifestError(
                f"{name} {state} in {self.run_dir}; run `clods-pl {name}` (or `clods-pl pipeline`) first"
            )
        out = {}
        for key, entry in rec.get("outputs", {}).items():
            path = self.abspath(entry["path"])
            if not path.is_file():
                raise ManifestError(f"{name} output {path} is missing; rerun `clods-pl {name}`")
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ManifestError(
                    f"{name} output {path} does not match its checksum in {self.path} (corrupt or "
                    f"changed by hand); rerun `clods-pl {name}`"
                )
            out[f"{name}:{key}"] = entry.get("content", digest)  # a checkpoint counts by its weights and settings
        return out

    def staleness(self, name: str, config: dict[str, Any], consumed: dict[str, str]) -> str | None:
        """Why stage ``name`` is out of date (one line), or None when its recorded outputs are current."""
        rec = self.stage(name)
        if rec is None:
            return f"{name} never ran"
        if rec.get("status") != STATUS_DONE:
            return f"{name} is '{rec.get('status')}'"
        changes = config_changes(rec.get("config", {}), config)
        if changes:
            return f"{'; '.join(changes)} since {name} ran"
        old = rec.get("consumed", {})
        for key in sorted(set(old) | set(consumed)):
            if old.get(key) != consumed.get(key):
                return f"its input {key} changed since {name} ran"
        try:
            self.verified_outputs(name)
        except ManifestError as exc:
            return str(exc)
        return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
