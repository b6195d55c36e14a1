"""The clods-pl multi-view cloth dataset format: its layout and the validating reader (spec: docs/dataset.md;
the writer is ``data/writer.py``). One job, over 300 lines because every check a user's files can fail
(missing, truncated or mis-sized PNGs, non-finite arrays, inconsistent topology) is spelled out with its message.

Layout of one dataset folder::

    root/dataset.json                       format, version, dt, splits, extra
    root/<traj>/transforms.json             cameras (nerfstudio: camera-to-world, OpenGL axes, fl_x fl_y cx cy w h)
    root/<traj>/images/<view>/<t:05d>.png   RGBA uint8, square, w x h of the cameras
    root/<traj>/mesh.npz                    faces (F,3), mesh_pos (V,2), node_type (V,), verts0 (V,3)
                                            [, handle_pos (T,P,3)]
    root/<traj>/gt.npz                      verts (T,V,3): evaluation / supervised baselines only (optional)
    root/<traj>/physics.json                simulator parameters: analysis only, never read by the pipeline
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from clods_pl.errors import DatasetError
from clods_pl.geometry import Cameras, NodeType

FORMAT_NAME = "clods-multiview"
FORMAT_VERSION = 1
DATASET_FILE = "dataset.json"
TRANSFORMS_FILE = "transforms.json"
MESH_FILE = "mesh.npz"
GT_FILE = "gt.npz"
PHYSICS_FILE = "physics.json"
IMAGES_DIR = "images"
FRAME_PATTERN = "{t:05d}.png"


def _read_json(path: Path) -> dict[str, Any]:
    """The JSON object in an existing file; invalid JSON, another encoding than UTF-8 or a top level that is not
    an object is a one-line DatasetError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 JSON") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must be a JSON object ({{...}}), got a {type(data).__name__}")
    return data


@dataclass
class DatasetInfo:
    """Contents of ``dataset.json``.

    Attributes:
        name: dataset name. dt: time between frames in seconds.
        splits: split name (``train``, ``val``, ``test_viewed``, ``test_unviewed``, ...) -> trajectory names.
    """

    name: str
    dt: float
    splits: dict[str, list[str]]
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def _png_size(path: Path, check_end: bool = False) -> tuple[int, int, str]:
    """(width, height, colour kind) from a PNG header without decoding the image; ``check_end`` also requires the
    closing IEND chunk (a truncated file, e.g. a killed copy, fails here instead of minutes into training)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
            tail = b""
            if check_end and len(head) == 26:
                fh.seek(-12, os.SEEK_END)
                tail = fh.read(12)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise DatasetError(f"{path}: not a PNG file")
    if check_end and tail[4:8] != b"IEND":
        raise DatasetError(f"{path}: truncated or corrupt PNG (no IEND chunk at its end); re-export this frame")
    w, h = struct.unpack(">II", head[16:24])
    colour = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}.get(head[25], "?")
    return w, h, colour


def _load_npz(path: Path, required: Iterable[str]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path}: missing file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/ValueError on corrupt archives
        raise DatasetError(f"{path}: unreadable npz ({type(exc).__name__}: {exc})") from exc
    for key in required:
        if key not in data:
            raise DatasetError(f"{path}: missing array '{key}' (has {sorted(data)})")
    return data


CLOTH_NODE_TYPES = (NodeType.NORMAL, NodeType.HANDLE)  # what stage 2 and stage 3 both know how to treat


def _check_topology(path: Path, faces: np.ndarray, V: int) -> None:
    """Faces of three distinct vertices, none listed twice, and every vertex in some face (a vertex in no face has
    no Gaussian and no edge: nothing would move it, yet it would count in every error)."""
    if not faces.size:
        raise DatasetError(f"{path}: faces is empty; the cloth needs triangles")
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if repeated.any():
        i = int(np.flatnonzero(repeated)[0])
        raise DatasetError(f"{path}: face {i} {faces[i].tolist()} repeats a vertex; remove degenerate faces")
    _, first, counts = np.unique(np.sort(faces, axis=1), axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        i = int(first[np.flatnonzero(counts > 1)[0]])
        raise DatasetError(f"{path}: face {i} {faces[i].tolist()} is listed more than once; remove the duplicates")
    unused = np.setdiff1d(np.arange(V), faces.reshape(-1))
    if unused.size:
        hint = " (1-based indices? subtract 1)" if faces.min() == 1 else ""
        raise DatasetError(
            f"{path}: vertex {int(unused[0])} is in no face ({unused.size} such){hint}; remove unreferenced vertices"
        )


def _check_rest_scale(path: Path, faces: np.ndarray, mesh_pos: np.ndarray, verts0: np.ndarray) -> None:
    """``mesh_pos`` (the rest shape) in the unit of ``verts0``: their median edge lengths within 5x (cloth barely
    stretches), since rest lengths feed the dynamics and the flag size scales every reported error."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    rest = float(np.median(np.linalg.norm(mesh_pos[edges[:, 0]] - mesh_pos[edges[:, 1]], axis=1)))
    world = float(np.median(np.linalg.norm(verts0[edges[:, 0]] - verts0[edges[:, 1]], axis=1)))
    if not rest > 0:
        raise DatasetError(f"{path}: mesh_pos edges have zero length; mesh_pos is the rest shape in metres")
    if not 0.2 <= world / rest <= 5.0:
        raise DatasetError(
            f"{path}: verts0's edges are {world / rest:.3g}x mesh_pos's (median); give both in metres "
            "(mesh_pos is the rest shape of the same cloth)"
        )


def _check_finite(path: Path, key: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DatasetError(f"{path}: '{key}' contains {bad} NaN/inf values")


class Trajectory:
    """One validated trajectory folder; images load lazily.

    Attributes:
        cameras: the C views. num_frames: T. faces: (F, 3) int64. mesh_pos: (V, 2) float32.
        node_type: (V,) int64. verts0: (V, 3) float32 first-frame vertices (world).
        handle_pos: (T, P, 3) float32 prescribed HANDLE positions, or None.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.name = self.root.name
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: trajectory folder is missing")
        tf_path = self.root / TRANSFORMS_FILE
        if not tf_path.is_file():
            raise DatasetError(f"{tf_path}: missing file (cameras)")
        tf = _read_json(tf_path)
        try:
            self.cameras = Cameras.from_transforms(tf, source=str(tf_path))
        except ValueError as exc:
            raise DatasetError(str(exc)) from exc
        if self.cameras.width != self.cameras.height:
            raise DatasetError(
                f"{tf_path}: images must be square, cameras say {self.cameras.width}x{self.cameras.height}"
            )
        self._frame_pattern = str(tf.get("frame_pattern", FRAME_PATTERN))
        try:
            self._frame_pattern.format(t=0)
        except (KeyError, IndexError, ValueError):
            raise DatasetError(
                f"{tf_path}: frame_pattern {self._frame_pattern!r} must name the frame index t, e.g. {FRAME_PATTERN!r}"
            ) from None
        self._view_dirs = [
            self.root / str(fr.get("file_path", f"{IMAGES_DIR}/{n}")) for fr, n in zip(tf["frames"], self.cameras.names)
        ]
        self.num_frames = self._validate_images()
        declared = tf.get("num_frames")
        if declared is not None and declared != self.num_frames:
            raise DatasetError(
                f"{tf_path}: num_frames is {declared!r} but every view holds {self.num_frames} PNG "
                "frames; fix num_frames (or the frames)"
            )

        mesh_path = self.root / MESH_FILE
        mesh = _load_npz(mesh_path, ("faces", "mesh_pos", "node_type", "verts0"))
        self.verts0 = torch.from_numpy(mesh["verts0"].astype(np.float32))
        V = self.verts0.shape[0]
        if self.verts0.shape != (V, 3):
            raise DatasetError(f"{mesh_path}: verts0 must be (V, 3), got {tuple(self.verts0.shape)}")
        _check_finite(mesh_path, "verts0", mesh["verts0"])
        faces = mesh["faces"]
        if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
            raise DatasetError(f"{mesh_path}: faces must be (F, 3) integers, got {faces.shape} {faces.dtype}")
        if faces.size and faces.min() < 0:
            raise DatasetError(
                f"{mesh_path}: faces hold a negative vertex index {int(faces.min())}; indices are 0..V-1"
            )
        if faces.size and faces.max() >= V:
            raise DatasetError(f"{mesh_path}: faces index vertex {int(faces.max())} but there are only V={V} vertices")
        _check_topology(mesh_path, faces.astype(np.int64), V)
        self.faces = torch.from_numpy(faces.astype(np.int64))
        mesh_pos = mesh["mesh_pos"]
        if mesh_pos.shape != (V, 2):
            raise DatasetError(f"{mesh_path}: mesh_pos must be (V, 2) = ({V}, 2), got {mesh_pos.shape}")
        _check_finite(mesh_path, "mesh_pos", mesh_pos)
        _check_rest_scale(mesh_path, faces.astype(np.int64), mesh_pos, mesh["verts0"])
        self.mesh_pos = torch.from_numpy(mesh_pos.astype(np.float32))
        node_type = mesh["node_type"].reshape(-1)
        if node_type.shape != (V,):
            raise DatasetError(f"{mesh_path}: node_type must have V={V} entries, got {node_type.shape}")
        if not np.issubdtype(node_type.dtype, np.integer) and not np.array_equal(node_type, np.round(node_type)):
            raise DatasetError(f"{mesh_path}: node_type must hold integers 0 (NORMAL, free) and 3 (HANDLE, pinned)")
        bad = sorted(set(np.unique(node_type).astype(np.int64).tolist()) - {int(t) for t in CLOTH_NODE_TYPES})
        if bad:
            raise DatasetError(
                f"{mesh_path}: node_type holds {bad[0]}; a cloth mesh uses 0 (NORMAL, free) and 3 "
                "(HANDLE, pinned) only (a 0/1 pin mask: write 3 for 1)"
            )
        if not (node_type == int(NodeType.NORMAL)).any():
            raise DatasetError(
                f"{mesh_path}: node_type has no NORMAL ({int(NodeType.NORMAL)}) node: every vertex is "
                "prescribed, so there is no dynamics to learn or evaluate; mark the free vertices 0"
            )
        self.node_type = torch.from_numpy(node_type.astype(np.int64))
        self._check_views_see_mesh(tf_path, mesh_path)
        self.handle_pos: Tensor | None = None
        if "handle_pos" in mesh:
            hp = mesh["handle_pos"]
            P = int((node_type == int(NodeType.HANDLE)).sum())
            if hp.shape != (self.num_frames, P, 3):
                raise DatasetError(
                    f"{mesh_path}: handle_pos must be (T, P, 3) = ({self.num_frames}, {P}, 3), got {hp.shape}"
                )
            _check_finite(mesh_path, "handle_pos", hp)
            self.handle_pos = torch.from_numpy(hp.astype(np.float32))
        self._gt_path = self.root / GT_FILE

    # ----- validation --------------------------------------------------------------------------------
    def _check_views_see_mesh(self, tf_path: Path, mesh_path: Path) -> None:
        """Every camera has some vertex of ``verts0`` in front of it and inside its image: a view that sees none of
        the cloth means a camera convention or unit that does not match the mesh, which would fit nothing."""
        uv, depth = self.cameras.project(self.verts0)
        W, H = self.cameras.width, self.cameras.height
        inside = (depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= W) & (uv[..., 1] >= 0) & (uv[..., 1] <= H)
        hint = (
            "transform_matrix must be camera-to-world with OpenGL axes (the camera looks down its -z; for "
            "OpenCV axes multiply by diag(1, -1, -1, 1)), in the mesh's unit (metres)"
        )
        for c, name in enumerate(self.cameras.names):
            if not bool((depth[c] > 0).any()):
                raise DatasetError(
                    f"{tf_path}: every vertex of {mesh_path.name} verts0 is behind camera {name}; {hint}"
                )
            if not bool(inside[c].any()) and not self._triangle_in_view(uv[c], depth[c], W, H):
                raise DatasetError(
                    f"{tf_path}: no vertex of {mesh_path.name} verts0 falls inside camera {name}'s "
                    f"{W}x{H} image; {hint}"
                )

    def _triangle_in_view(self, uv: Tensor, depth: Tensor, W: int, H: int) -> bool:
        """Whether some triangle in front of the camera reaches into the image (a close-up sees the inside of a
        triangle without any of its corners): its image bounding box overlaps ``[0, W] x [0, H]``."""
        tri, front = uv[self.faces], (depth[self.faces] > 0).all(1)  # (F, 3, 2), (F,)
        lo, hi = tri.min(1).values, tri.max(1).values
        return bool((front & (lo[:, 0] <= W) & (hi[:, 0] >= 0) & (lo[:, 1] <= H) & (hi[:, 1] >= 0)).any())

    def check_masks(self) -> None:
        """Frame 0's alpha is a cloth mask: not empty in every view, and not opaque over every whole image (an RGB
        image converted to RGBA has no mask; stage 1 would fit the background as cloth). One view may be either: a
        close-up camera can be all cloth."""
        alpha = self.load_frame(0)[..., 3]
        folder = self._frame_path(0, 0).parent.parent
        if not alpha.any():
            raise DatasetError(
                f"{folder}/*/{self._frame_pattern.format(t=0)}: alpha is 0 everywhere in every view: the cloth covers "
                "no pixel; alpha must be the cloth's coverage (0 = background)"
            )
        if (alpha == 255).all():
            raise DatasetError(
                f"{folder}/*/{self._frame_pattern.format(t=0)}: alpha is 255 everywhere in every view, so there is "
                "no background; alpha must be the cloth's coverage (0 = background), not the opaque channel of an RGB "
                "image"
            )

    def _frame_path(self, view: int, t: int) -> Path:
        return self._view_dirs[view] / self._frame_pattern.format(t=t)

    def _validate_images(self) -> int:
        """T, after checking that every view holds exactly the frames 0..T-1 (no gap, no stray file) and that every
        frame's PNG header says RGBA at the cameras' size (headers only: cheap, and bad input fails before
        training)."""
        counts = []
        for view_dir in self._view_dirs:
            if not view_dir.is_dir():
                raise DatasetError(f"{view_dir}: missing view folder (listed in {TRANSFORMS_FILE})")
            counts.append(len(list(view_dir.glob("*.png"))))
        if len(set(counts)) != 1:
            detail = ", ".join(f"{d.name}={n}" for d, n in zip(self._view_dirs, counts))
            raise DatasetError(f"{self.root}: views have different frame counts ({detail})")
        T = counts[0]
        if T == 0:
            raise DatasetError(f"{self._view_dirs[0]}: no PNG frames")
        expected = {self._frame_pattern.format(t=t) for t in range(T)}
        for c, view_dir in enumerate(self._view_dirs):
            found = {p.name for p in view_dir.glob("*.png")}
            if found != expected:
                stray, missing = sorted(found - expected), sorted(expected - found)
                raise DatasetError(
                    f"{view_dir}: frames must be named {self._frame_pattern} for t = 0..{T - 1} with "
                    f"no gap; missing {missing[:3]}, unexpected {stray[:3]} (remove or rename them)"
                )
            for t in range(T):
                self._check_png(self._frame_path(c, t))
        return T

    def _check_png(self, p: Path) -> None:
        w, h, colour = _png_size(p, check_end=True)
        if w != h:
            raise DatasetError(f"{p}: image is {w}x{h}, the format needs square images")
        if (w, h) != (self.cameras.width, self.cameras.height):
            raise DatasetError(f"{p}: image is {w}x{h} but the cameras say {self.cameras.width}x{self.cameras.height}")
        if colour != "RGBA":
            raise DatasetError(f"{p}: image is {colour}, the format needs RGBA (8-bit, with alpha)")

    # ----- images ------------------------------------------------------------------------------------
    def load_frame(self, t: int) -> np.ndarray:
        """(C, H, W, 4) uint8 RGBA images of frame ``t`` from every view."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"{self.name}: frame {t} out of range [0, {self.num_frames})")
        out = []
        for c in range(len(self.cameras)):
            p = self._frame_path(c, t)
            try:
                with Image.open(p) as im:
                    if im.mode != "RGBA":  # never invent an alpha channel (or drop one) silently
                        raise DatasetError(f"{p}: image is {im.mode}, the format needs RGBA (8-bit, with alpha)")
                    arr = np.asarray(im)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"{p}: cannot decode PNG ({exc})") from exc
            if arr.shape != (self.cameras.height, self.cameras.width, 4):
                raise DatasetError(
                    f"{p}: image is {arr.shape[1]}x{arr.shape[0]} but the cameras say "
                    f"{self.cameras.width}x{self.cameras.height}"
                )
            out.append(arr)
        return np.stack(out)

    def load_frames(self, ts: Sequence[int] | None = None) -> np.ndarray:
        """(len(ts), C, H, W, 4) uint8 for frames ``ts`` (all frames when None)."""
        ts = range(self.num_frames) if ts is None else ts
        return np.stack([self.load_frame(int(t)) for t in ts])

    def image_tensor(self, t: int, device: torch.device | str | None = None) -> Tensor:
        """(C, H, W, 4) float32 RGBA in [0, 1] of frame ``t``."""
        return torch.from_numpy(self.load_frame(t)).to(device=device, dtype=torch.float32) / 255.0

    # ----- ground truth ------------------------------------------------------------------------------
    @property
    def has_gt(self) -> bool:
        """True when ``gt.npz`` exists."""
        return self._gt_path.is_file()

    def load_gt_verts(self) -> Tensor:
        """(T, V, 3) float32 ground-truth vertices (evaluation and supervised baselines only)."""
        if not self.has_gt:
            raise DatasetError(f"{self._gt_path}: no ground-truth meshes for trajectory '{self.name}'")
        gt = _load_npz(self._gt_path, ("verts",))["verts"]
        V = self.verts0.shape[0]
        if gt.ndim != 3 or gt.shape[1:] != (V, 3):
            raise DatasetError(f"{self._gt_path}: verts must be (T, V, 3) with V={V}, got {gt.shape}")
        if gt.shape[0] != self.num_frames:
            raise DatasetError(f"{self._gt_path}: has {gt.shape[0]} frames but the images have {self.num_frames}")
        _check_finite(self._gt_path, "verts", gt)
        return torch.from_numpy(gt.astype(np.float32))

    def __repr__(self) -> str:
        return (
            f"Trajectory({self.name!r}, frames={self.num_frames}, views={len(self.cameras)}, "
            f"V={self.verts0.shape[0]}, F={self.faces.shape[0]})"
        )


class Dataset:
    """A validated dataset folder: ``dataset.json`` plus one folder per trajectory named in its splits."""

    def __init__(self, root: str | Path, info: DatasetInfo) -> None:
        self.root = Path(root)
        self.info = info
        self._cache: dict[str, Trajectory] = {}

    def names(self, split: str | None = None) -> list[str]:
        """Trajectory names of ``split`` (all splits, in order and without repeats, when None)."""
        if split is None:
            seen: dict[str, None] = {}
            for names in self.info.splits.values():
                seen.update(dict.fromkeys(names))
            return list(seen)
        if split not in self.info.splits:
            raise DatasetError(f"{self.root / DATASET_FILE}: no split '{split}' (has {sorted(self.info.splits)})")
        return list(self.info.splits[split])

    def trajectory(self, name: str) -> Trajectory:
        """The validated trajectory ``name`` (cached)."""
        if name not in self._cache:
            if name not in self.names():
                raise DatasetError(f"{self.root / DATASET_FILE}: no trajectory '{name}' in any split")
            self._cache[name] = Trajectory(self.root / name)
        return self._cache[name]

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.info.splits.items()}
        return f"Dataset({str(self.root)!r}, name={self.info.name!r}, splits={sizes})"


def read_dataset_info(root: str | Path) -> DatasetInfo:
    """Read and check ``root/dataset.json``."""
    path = Path(root) / DATASET_FILE
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist (generate one with `clods-pl data generate`)")
    if not path.is_file():
        raise DatasetError(f"{path}: missing file; is {root} a clods-pl dataset?")
    raw = _read_json(path)
    fmt, version = raw.get("format"), raw.get("version")
    if fmt != FORMAT_NAME:
        raise DatasetError(f"{path}: unknown format '{fmt}', expected '{FORMAT_NAME}'")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: unsupported format version {version!r}; this clods-pl reads version {FORMAT_VERSION!r} (a number)"
        )
    dt = raw.get("dt")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise DatasetError(f"{path}: 'dt' must be a positive number, got {dt!r}")
    splits = raw.get("splits")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise DatasetError(f"{path}: 'splits' must map split names to lists of trajectory names")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise DatasetError(f"{path}: 'extra' must be an object (or left out), got {type(extra).__name__}")
    owner: dict[str, str] = {}
    for split, names in splits.items():
        for n in names:
            if isinstance(n, int) and not isinstance(n, bool):  # a folder named 0, 1, ...
                n = str(n)
            if not isinstance(n, str) or not n.strip() or Path(n).name != n or n in (".", ".."):
                raise DatasetError(
                    f"{path}: split '{split}' lists {n!r}; a trajectory is named by its folder in {root} (a plain "
                    "folder name)"
                )
            if owner.get(n) == split:
                raise DatasetError(f"{path}: split '{split}' lists trajectory '{n}' twice; list it once")
            if str(n) in owner:
                raise DatasetError(
                    f"{path}: trajectory '{n}' is in splits '{owner[str(n)]}' and '{split}'; a "
                    "trajectory belongs to one split (a test trajectory seen in training is no test)"
                )
            owner[str(n)] = split
    return DatasetInfo(
        name=str(raw.get("name", Path(root).name)),
        dt=float(dt),
        splits={k: [str(n) for n in v] for k, v in splits.items()},
        format=fmt,
        version=int(version),
        extra=dict(extra),
    )


def read_dataset(root: str | Path, validate: bool = True) -> Dataset:
    """Open a dataset; with ``validate`` every trajectory listed in the splits is checked now (cheap: headers,
    shapes, counts), so bad input fails before any training starts."""
    info = read_dataset_info(root)
    ds = Dataset(root, info)
    if validate:
        for name in ds.names():
            if not (ds.root / name).is_dir():
                raise DatasetError(f"{ds.root / name}: trajectory listed in {DATASET_FILE} splits is missing")
            traj = ds.trajectory(name)
            if traj.has_gt:
                traj.load_gt_verts()  # shape, frame count and finiteness now, not in stage 3 or eval
    return ds
