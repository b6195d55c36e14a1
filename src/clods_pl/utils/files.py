"""Atomic writes and content hashing for run artefacts."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Write ``path`` atomically: ``writer(tmp_path)`` fills a temp file in the same folder, then rename.

    A reader never sees a half-written file and a killed process leaves the old file intact. The file gets the
    permissions a plain ``open(path, "w")`` would (0666 less the umask), not the temp file's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _w)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Atomically write an uncompressed ``.npz`` archive."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, _w)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a JSON-serialisable object in canonical form (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


FINGERPRINT_CONTENT_LIMIT = 64 << 20  # bytes: larger non-image files are fingerprinted by size and mtime


def _files_below(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted, following symlinked folders (a dataset often links its image folders
    from elsewhere; ``Path.rglob`` does not enter them before Python 3.13)."""
    return sorted(
        Path(d) / f for d, _, names in os.walk(folder, followlinks=True) for f in names if (Path(d) / f).is_file()
    )


def folder_fingerprint(root: str | os.PathLike, entries: list[str]) -> dict[str, str]:
    """``{entry: 16-hex digest}`` for each file or folder ``entries`` of ``root`` (missing: ``"missing"``).

    A folder's digest covers every file below it: its relative path and size, plus its content hash, or its mtime
    for PNG images and files over ``FINGERPRINT_CONTENT_LIMIT`` (hashing every frame of a dataset would cost more
    than the stage it guards; re-encoding a PNG changes its size or mtime)."""
    root = Path(root)
    out: dict[str, str] = {}
    for entry in entries:
        path = root / entry
        files = [path] if path.is_file() else _files_below(path) if path.is_dir() else []
        if not files:
            out[entry] = "missing"
            continue
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            cheap = f.suffix.lower() == ".png" or st.st_size > FINGERPRINT_CONTENT_LIMIT
            h.update(f"{f.relative_to(root).as_posix()}|{st.st_size}|".encode())
            h.update((str(st.st_mtime_ns) if cheap else sha256_file(f)).encode())
        out[entry] = h.hexdigest()[:16]
    return out


def checkpoint_digest(path: str | os.PathLike) -> str:
    """sha256 of what a Lightning checkpoint *means*: its weights (``state_dict``) and ``hyper_parameters``, not
    the file's bytes (those also hold callback paths and loop counters, so re-saving identical weights after a
    resume gives another file hash but the same digest)."""
    import torch  # noqa: PLC0415  (utils stays importable without torch for the file helpers)

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    h = hashlib.sha256()
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    for key in sorted(state):
        t = state[key]
        h.update(key.encode())
        if isinstance(t, torch.Tensor):
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            flat = t.detach().cpu().reshape(-1).contiguous()  # 0-d tensors cannot be viewed as bytes
            h.update(flat.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    h.update(json.dumps(hp, sort_keys=True, default=str).encode())
    return h.hexdigest()
