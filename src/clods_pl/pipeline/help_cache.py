"""The ``--help`` text of the experiment commands, cached: building it needs Lightning and every stage class (4-5 s
to import on a 2-core machine), printing a cached copy needs neither (~0.1 s).

The text is laid out for a fixed width (``HELP_COLUMNS``), and the cache key covers everything else it is made
from: the command, the Python version, the versions of Lightning, jsonargparse and torch, and the path, size and
modification time of every module of this package. Any change there builds the text afresh. The cache lives in
``$XDG_CACHE_HOME/clods-pl/help`` (default ``~/.cache``); when it cannot be written (read-only home), the text is
built every time, as before. ``make install`` fills it (``python -m clods_pl.pipeline.help_cache``), so even the
first ``--help`` is fast.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

PACKAGES = ("lightning", "jsonargparse", "torch")
HELP_COLUMNS = "100"  # the width the cached text is laid out for (argparse reads COLUMNS)


def help_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clods-pl/help`` (``~/.cache/clods-pl/help`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "clods-pl" / "help"


def help_key(command: str) -> str:
    """A digest of what the help text of ``command`` is made from."""
    pkg = Path(__file__).resolve().parents[1]  # src/clods_pl
    h = hashlib.sha256(f"{command}\0{HELP_COLUMNS}\0{sys.version}".encode())
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        h.update(f"\0{name}={version}".encode())
    for path in sorted(pkg.rglob("*.py")):
        st = path.stat()
        h.update(f"\0{path.relative_to(pkg)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def cached_help(command: str, build: Callable[[], str]) -> str:
    """The help text of ``command``: the cached copy when its key matches, else ``build()`` (then cached)."""
    path = help_cache_dir() / f"{command}-{help_key(command)}.txt"
    try:
        return path.read_text()
    except OSError:
        pass
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        text = build()
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:  # no writable cache: the text is simply built each time
        pass
    return text


def warm(commands: Sequence[str], build: Callable[[str], str]) -> None:
    """Cache the help text of every command in ``commands`` (one process: Lightning is imported once)."""
    for command in commands:
        cached_help(command, lambda command=command: build(command))


if __name__ == "__main__":  # `make install`: fill the cache
    from clods_pl.pipeline.cli import EXPERIMENT_COMMANDS, help_text

    warm(EXPERIMENT_COMMANDS, lambda command: help_text(command, None))
