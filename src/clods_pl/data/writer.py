"""Write datasets in the clods-pl multi-view format (``data/format.py`` holds the layout and the reader)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from clods_pl.data.format import (
    DATASET_FILE,
    FRAME_PATTERN,
    GT_FILE,
    IMAGES_DIR,
    MESH_FILE,
    PHYSICS_FILE,
    TRANSFORMS_FILE,
    DatasetInfo,
)
from clods_pl.geometry import Cameras
from clods_pl.utils.files import atomic_savez, atomic_write, atomic_write_json


def write_dataset_info(root: str | Path, info: DatasetInfo) -> Path:
    """Write ``root/dataset.json`` atomically."""
    return atomic_write_json(Path(root) / DATASET_FILE, asdict(info))


def _as_np(x: Tensor | np.ndarray | None, dtype: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def _write_png(path: Path, rgba: np.ndarray) -> None:
    def _w(tmp: str) -> None:
        Image.fromarray(rgba, mode="RGBA").save(tmp, format="PNG")

    atomic_write(path, _w)


def write_trajectory(
    root: str | Path,
    name: str,
    cameras: Cameras,
    frames: np.ndarray,
    faces: Tensor | np.ndarray,
    mesh_pos: Tensor | np.ndarray,
    node_type: Tensor | np.ndarray,
    verts0: Tensor | np.ndarray,
    gt_verts: Tensor | np.ndarray | None = None,
    handle_pos: Tensor | np.ndarray | None = None,
    physics: dict[str, Any] | None = None,
) -> Path:
    """Write one trajectory folder ``root/name``.

    Args:
        frames: (T, C, H, W, 4) uint8 RGBA, C = len(cameras), H = W = cameras' size.
        faces: (F, 3) int; mesh_pos: (V, 2); node_type: (V,) int (MeshGraphNets codes); verts0: (V, 3) world.
        gt_verts: (T, V, 3) world, optional. handle_pos: (T, P, 3) positions of the P HANDLE nodes, optional.
        physics: simulator parameters for analysis (``physics.json``), optional.
    Returns:
        the trajectory folder.
    """
    traj = Path(root) / name
    frames = np.asarray(frames)
    if frames.ndim != 5 or frames.shape[-1] != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, C, H, W, 4) uint8, got {frames.shape} {frames.dtype}")
    T, C, H, W, _ = frames.shape
    if C != len(cameras) or (H, W) != (cameras.height, cameras.width):
        raise ValueError(
            f"frames {frames.shape} do not match {len(cameras)} cameras of {cameras.width}x{cameras.height}"
        )
    view_names = list(cameras.names)
    file_paths = [f"{IMAGES_DIR}/{v}" for v in view_names]
    tf = cameras.to_transforms(file_paths)
    tf["num_frames"] = int(T)
    tf["frame_pattern"] = FRAME_PATTERN
    atomic_write_json(traj / TRANSFORMS_FILE, tf)
    for c, view in enumerate(view_names):
        for t in range(T):
            _write_png(traj / IMAGES_DIR / view / FRAME_PATTERN.format(t=t), frames[t, c])
    mesh = {
        "faces": _as_np(faces, np.int64),
        "mesh_pos": _as_np(mesh_pos, np.float32),
        "node_type": _as_np(node_type, np.int64).reshape(-1),
        "verts0": _as_np(verts0, np.float32),
    }
    if handle_pos is not None:
        mesh["handle_pos"] = _as_np(handle_pos, np.float32)
    atomic_savez(traj / MESH_FILE, **mesh)
    if gt_verts is not None:
        atomic_savez(traj / GT_FILE, verts=_as_np(gt_verts, np.float32))
    if physics is not None:
        atomic_write_json(traj / PHYSICS_FILE, physics)
    return traj
