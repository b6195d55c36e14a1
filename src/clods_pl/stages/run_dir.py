"""The outputs a run directory's manifest records, typed: the one place that knows how they are keyed.

``manifest.json`` stores, per stage, ``outputs: {key: {"path": relative path, "sha256": ..., ...}}``. The keys are
a contract between the stage that writes them and every reader (stage 2 needs stage 1's checkpoint, stage 3 the
mesh caches, eval the stage-3 checkpoints, the report all of them): stage 1 writes ``checkpoint``, stage 2
``mesh:<trajectory>``, stage 3 ``checkpoint:<source>``, eval ``metrics`` (and ``novel_views``). Writers build their
keys with :meth:`RunDir.stage2_outputs` etc. and readers ask :class:`RunDir` for typed paths; nothing else splits
or formats these strings.

The reader checks nothing: the pipeline's manifest (``clods_pl.pipeline.manifest``) verifies hashes and staleness
before a stage consumes what this returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
# the run directory's layout (docs/pipeline.md, "Run directory and manifest")
STAGE1_CKPT = "smgs.ckpt"  # <run>/stage1/
MESH_CACHE_DIR = "meshes"  # <run>/stage2/<dir>/<traj>.npz
CHECKPOINTS_DIR = "checkpoints"  # <run>/<stage>/<dir>/ (Lightning's ModelCheckpoint)
LOGS_DIR = "logs"  # <run>/<stage>/<dir>/
CONFIG_FILE = "config.yaml"  # <run>/<stage>/: the full config the stage last ran with
EVAL_METRICS = "metrics.json"  # <run>/eval/
SUMMARY_FILE = "summary.json"  # <run>/stage1/ and <run>/stage2/
ROUND1_EVAL_KEY = "round1_eval"  # <run>/refine/summary.json: the eval outputs (manifest digests) of its round 1
CHECKPOINT = "checkpoint"
MESH_PREFIX = "mesh:"
SOURCE_PREFIX = "checkpoint:"
SEED_MARK = "@seed"  # stage-3 keys with stage3.seeds: "<source>@seed<k>"


def seeded_key(source: str, seed: int) -> str:
    """The key of ``source`` trained with ``seed`` (``recovered@seed1``)."""
    return f"{source}{SEED_MARK}{seed}"


def source_of(key: str) -> str:
    """The source of a stage-3 key (``recovered@seed1`` -> ``recovered``; a key without a seed is its source)."""
    return key.split(SEED_MARK, 1)[0]


@dataclass(frozen=True)
class RunDir:
    """A run directory ``root`` (the ``--run_dir`` of the CLI)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ----- reading ---------------------------------------------------------------------------------------
    def record(self, stage: str) -> dict[str, Any]:
        """The manifest record of ``stage`` ({} when the manifest or the stage is missing)."""
        try:
            stages = json.loads((self.root / MANIFEST_FILE).read_text()).get("stages", {})
        except (OSError, ValueError):
            return {}
        return stages.get(stage) or {}

    def path(self, rel: str | Path) -> Path:
        """A path recorded in the manifest (relative to the run directory), made absolute."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def outputs(self, stage: str) -> dict[str, dict[str, Any]]:
        """``{key: entry}`` of ``stage`` as recorded."""
        return dict(self.record(stage).get("outputs", {}))

    def stage1_checkpoint(self) -> Path | None:
        """Stage 1's SMGS checkpoint, or None when stage 1 has not recorded one."""
        entry = self.outputs("stage1").get(CHECKPOINT)
        return None if entry is None else self.path(entry["path"])

    def stage1_checkpoint_digest(self) -> str | None:
        """The content digest stage 1 recorded for its checkpoint (what mesh caches must have been made from)."""
        entry = self.outputs("stage1").get(CHECKPOINT) or {}
        return entry.get("content", entry.get("sha256"))

    def mesh_caches(self) -> dict[str, Path]:
        """``{trajectory: mesh cache}`` recorded by stage 2."""
        return {
            k[len(MESH_PREFIX) :]: self.path(e["path"])
            for k, e in self.outputs("stage2").items()
            if k.startswith(MESH_PREFIX)
        }

    def stage3_checkpoints(self) -> dict[str, Path]:
        """``{key: checkpoint}`` recorded by stage 3: keys are sources (``recovered``, ``gt``, ``gt:N``,
        ``mixed:N``), or ``<source>@seed<k>`` with ``stage3.seeds`` (:func:`source_of` gives the source)."""
        return {
            k[len(SOURCE_PREFIX) :]: self.path(e["path"])
            for k, e in self.outputs("stage3").items()
            if k.startswith(SOURCE_PREFIX)
        }

    def dataset(self) -> Path | None:
        """The dataset folder the first recorded stage ran on (as given on the command line)."""
        for stage in ("stage1", "stage2", "stage3", "eval"):
            ds = (self.record(stage).get("config") or {}).get("dataset")
            if ds:
                return Path(ds)
        return None

    # ----- writing: the keys each stage records ----------------------------------------------------------
    @staticmethod
    def stage1_outputs(checkpoint: Path) -> dict[str, Path]:
        return {CHECKPOINT: checkpoint}

    @staticmethod
    def stage2_outputs(caches: dict[str, Path]) -> dict[str, Path]:
        return {f"{MESH_PREFIX}{name}": path for name, path in caches.items()}

    @staticmethod
    def stage3_outputs(checkpoints: dict[str, Path]) -> dict[str, Path]:
        return {f"{SOURCE_PREFIX}{source}": path for source, path in checkpoints.items()}
