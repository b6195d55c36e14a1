"""Stage-2 mesh cache: one resumable ``.npz`` per trajectory (``runs/<name>/stage2/meshes/<traj>.npz``).

Arrays in the file (docs/architecture.md, "Mesh cache"):

* ``verts (T, V, 3) float32``, world; frames ``0..frames_done-1`` are final, frame 0 is the dataset's ``verts0``,
  frames not done yet hold NaN;
* ``faces (F, 3) int64``; ``frames_done`` int; ``stage1_hash`` str (digest of the stage-1 checkpoint's weights
  and settings, ``checkpoint_digest``);
  ``settings_json`` str: the stage-2 settings the frames were recovered with (JSON; a resume must match them);
* ``losses (T,) float32`` photometric loss of each recovered frame, ``edge_losses (T,) float32``,
  ``iterations (T,) int64`` optimiser steps used;
* optional per-frame ground-truth metrics ``gt_<name> (T,) float32`` (evaluation only, never optimised on).

The file is rewritten atomically after every frame, so a killed run resumes from ``frames_done``.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clods_pl.errors import ManifestError
from clods_pl.utils.files import atomic_savez
from clods_pl.utils.settings import config_changes

GT_PREFIX = "gt_"
REQUIRED_KEYS = ("verts", "faces", "frames_done", "losses", "edge_losses", "stage1_hash")
OVERWRITE_HINT = (
    "`clods-pl pipeline` recovers it again, or `clods-pl stage2 --stage2.model.overwrite true` "
    "(recovers every trajectory again)"
)


class MeshCacheError(ManifestError):
    """A stage-2 mesh cache is corrupt, truncated or belongs to another stage-1 checkpoint or mesh."""


@dataclass
class MeshCache:
    """In-memory view of one trajectory's cache file; ``set_frame`` updates and saves it.

    Attributes:
        path: the ``.npz`` file.
        verts: (T, V, 3) float32 world; NaN for frames not done yet.
        faces: (F, 3) int64.
        frames_done: frames ``0..frames_done-1`` are final (>= 1: frame 0 is ``verts0``).
        losses, edge_losses: (T,) float32 photometric / edge loss at the end of each frame's optimisation.
        iterations: (T,) int64 optimiser steps used per frame.
        stage1_hash: digest (weights and settings) of the stage-1 checkpoint the meshes were recovered with.
        gt_metrics: name -> (T,) float32 per-frame ground-truth metrics (NaN where not evaluated).
        settings: the stage-2 settings (flat, JSON-able) the frames were recovered with.
    """

    path: Path
    verts: np.ndarray
    faces: np.ndarray
    frames_done: int
    losses: np.ndarray
    edge_losses: np.ndarray
    iterations: np.ndarray
    stage1_hash: str
    gt_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)

    # ----- construction ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        verts0: np.ndarray,
        faces: np.ndarray,
        num_frames: int,
        stage1_hash: str,
        save: bool = True,
        settings: dict[str, object] | None = None,
    ) -> MeshCache:
        """A fresh cache with only frame 0 (= ``verts0 (V, 3)``) done."""
        verts0 = np.asarray(verts0, dtype=np.float32)
        if verts0.ndim != 2 or verts0.shape[1] != 3:
            raise ValueError(f"verts0 must be (V, 3), got {verts0.shape}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        verts = np.full((num_frames, verts0.shape[0], 3), np.nan, dtype=np.float32)
        verts[0] = verts0
        cache = cls(
            Path(path),
            verts,
            np.asarray(faces, dtype=np.int64),
            1,
            np.zeros(num_frames, np.float32),
            np.zeros(num_frames, np.float32),
            np.zeros(num_frames, np.int64),
            str(stage1_hash),
            settings=dict(settings or {}),
        )
        if save:
            cache.save()
        return cache

    @classmethod
    def load(cls, path: str | os.PathLike) -> MeshCache:
        """Read a cache file; raises ``MeshCacheError`` (one line, names the file) when corrupt or truncated."""
        path = Path(path)
        hint = OVERWRITE_HINT
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in REQUIRED_KEYS if k not in z.files]
                if missing:
                    raise MeshCacheError(f"mesh cache {path} lacks {missing}; {hint}")
                data = {k: z[k] for k in z.files}
        except MeshCacheError:
            raise
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise MeshCacheError(f"mesh cache {path} is corrupt or truncated ({type(exc).__name__}); {hint}") from exc
        verts, faces = data["verts"], data["faces"]
        T = verts.shape[0] if verts.ndim == 3 else -1
        ok = (
            verts.ndim == 3
            and verts.shape[2] == 3
            and faces.ndim == 2
            and faces.shape[1] == 3
            and data["losses"].shape == (T,)
            and data["edge_losses"].shape == (T,)
        )
        done = int(data["frames_done"]) if data["frames_done"].ndim == 0 else -1
        if not ok or not 1 <= done <= T:
            raise MeshCacheError(
                f"mesh cache {path} has inconsistent arrays (verts {verts.shape}, "
                f"frames_done {data['frames_done']}); {hint}"
            )
        if not np.isfinite(verts[:done]).all():
            raise MeshCacheError(f"mesh cache {path} has non-finite vertices in its finished frames; {hint}")
        iterations = data.get("iterations", np.zeros(T, np.int64))
        gt = {k[len(GT_PREFIX) :]: v.astype(np.float32) for k, v in data.items() if k.startswith(GT_PREFIX)}
        try:
            settings = json.loads(str(data["settings_json"])) if "settings_json" in data else {}
        except json.JSONDecodeError as exc:
            raise MeshCacheError(f"mesh cache {path} has unreadable settings ({exc}); {hint}") from exc
        return cls(
            path,
            verts.astype(np.float32),
            faces.astype(np.int64),
            done,
            data["losses"].astype(np.float32),
            data["edge_losses"].astype(np.float32),
            iterations.astype(np.int64),
            str(data["stage1_hash"]),
            gt,
            settings,
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        verts0: np.ndarray,
        faces: np.ndarray,
        num_frames: int,
        stage1_hash: str,
        overwrite: bool = False,
        settings: dict[str, object] | None = None,
        recompute_stale: bool = False,
    ) -> MeshCache:
        """Resume the cache at ``path`` or create it.

        A cache made with another stage-1 checkpoint or other stage-2 ``settings`` is rebuilt from frame 0 when
        ``recompute_stale`` (``clods-pl pipeline``), else refused with a ``MeshCacheError`` naming what changed.
        One of another mesh or frame count, or a corrupt one, is refused. ``overwrite`` always rebuilds.
        """
        path = Path(path)
        settings = dict(settings or {})
        if overwrite or not path.exists():
            return cls.create(path, verts0, faces, num_frames, stage1_hash, settings=settings)
        cache = cls.load(path)
        stale = None
        if cache.stage1_hash != stage1_hash:
            stale = f"was recovered with stage-1 checkpoint {cache.stage1_hash[:12]}, current is {stage1_hash[:12]}"
        elif json.dumps(cache.settings, sort_keys=True) != json.dumps(settings, sort_keys=True):
            changes = "; ".join(config_changes(cache.settings, settings))
            stale = f"was recovered with other stage-2 settings ({changes})"
        if stale is not None:
            if recompute_stale:
                return cls.create(path, verts0, faces, num_frames, stage1_hash, settings=settings)
            raise MeshCacheError(f"mesh cache {path} {stale}; {OVERWRITE_HINT}")
        faces = np.asarray(faces, dtype=np.int64)
        verts0 = np.asarray(verts0, dtype=np.float32)
        if (
            cache.verts.shape != (num_frames, verts0.shape[0], 3)
            or not np.array_equal(cache.faces, faces)
            or not np.array_equal(cache.verts[0], verts0)
        ):
            raise MeshCacheError(
                f"mesh cache {path} belongs to another mesh or frame count "
                f"(verts {cache.verts.shape}); {OVERWRITE_HINT}"
            )
        return cache

    # ----- state ---------------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.verts.shape[0])

    @property
    def complete(self) -> bool:
        return self.frames_done >= self.num_frames

    def set_frame(
        self,
        t: int,
        verts: np.ndarray,
        loss: float,
        edge_loss: float,
        iterations: int = 0,
        gt_metrics: dict[str, float] | None = None,
        save: bool = True,
    ) -> None:
        """Store the final ``verts (V, 3)`` of frame ``t`` (needs frames ``0..t-1`` done); frames after ``t``
        are dropped (they depend on this one); then save atomically."""
        if not 1 <= t <= self.frames_done or t >= self.num_frames:
            raise ValueError(f"cannot set frame {t}: frames_done={self.frames_done}, T={self.num_frames}")
        self.verts[t] = np.asarray(verts, dtype=np.float32)
        self.verts[t + 1 :] = np.nan
        self.losses[t], self.edge_losses[t], self.iterations[t] = loss, edge_loss, iterations
        self.frames_done = t + 1
        for name, value in (gt_metrics or {}).items():
            arr = self.gt_metrics.setdefault(name, np.full(self.num_frames, np.nan, np.float32))
            arr[t] = value
        if save:
            self.save()

    def set_gt_metric(self, name: str, t: int, value: float) -> None:
        """Record a ground-truth metric of frame ``t`` (not saved until the next ``save``)."""
        self.gt_metrics.setdefault(name, np.full(self.num_frames, np.nan, np.float32))[t] = value

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "verts": self.verts,
            "faces": self.faces,
            "frames_done": np.asarray(self.frames_done, np.int64),
            "losses": self.losses,
            "edge_losses": self.edge_losses,
            "iterations": self.iterations,
            "stage1_hash": np.asarray(self.stage1_hash),
            "settings_json": np.asarray(json.dumps(self.settings, sort_keys=True)),
        }
        out.update({GT_PREFIX + k: v for k, v in self.gt_metrics.items()})
        return out

    def save(self) -> Path:
        """Write the file atomically (temp file + rename)."""
        return atomic_savez(self.path, **self.arrays())
