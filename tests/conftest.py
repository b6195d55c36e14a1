"""Shared pytest set-up: CPU threads, one process per stage, offline W&B, and the `gpu` marker that skips cleanly
without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DGLBACKEND", "pytorch")
# stages run their jobs in this process, as a busy machine would; tests/test_workers.py asks for worker processes
os.environ.setdefault("CLODS_PL_WORKERS", "1")

# lightning is imported here, once: its log handler binds to the session's stderr instead of to one test's capsys
# stream, which is closed later and then prints "--- Logging error ---" tracebacks into other tests' output
import lightning  # noqa: E402,F401
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # see Makefile: oversubscription


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); run benchmarks/gpu.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
