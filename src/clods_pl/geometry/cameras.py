"""Pinhole cameras: OpenCV intrinsics and world-to-camera matrices inside, nerfstudio ``transforms.json`` outside.

Conventions (DESIGN.md):
  * internal camera axes are OpenCV's: x right, y down, z forward (points in front have z > 0);
  * ``K`` maps camera coordinates to pixels, ``u = fx * x / z + cx``; pixel ``(row i, col j)`` has its
    centre at ``(j + 0.5, i + 0.5)``, so a centred camera has ``cx = W / 2``;
  * on disk, Blender/nerfstudio ``transforms.json``: camera-to-world with OpenGL axes (x right, y up, z back)
    and ``fl_x fl_y cx cy w h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# OpenCV <-> OpenGL camera axes: flip y and z.
_CV_TO_GL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """C pinhole cameras sharing one image size.

    Attributes:
        K: (C, 3, 3) float32 OpenCV intrinsics.
        w2c: (C, 4, 4) float32 world-to-camera, OpenCV axes.
        width, height: image size in pixels.
        names: C view names (e.g. ``"view_00"``).
    """

    K: Tensor
    w2c: Tensor
    width: int
    height: int
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"Cameras.K must be (C, 3, 3), got {tuple(self.K.shape)}")
        if self.w2c.ndim != 3 or self.w2c.shape[1:] != (4, 4) or self.w2c.shape[0] != self.K.shape[0]:
            raise ValueError(f"Cameras.w2c must be (C, 4, 4) with C={self.K.shape[0]}, got {tuple(self.w2c.shape)}")
        if not self.names:
            self.names = [f"view_{i:02d}" for i in range(self.K.shape[0])]
        if len(self.names) != self.K.shape[0]:
            raise ValueError(f"Cameras has {self.K.shape[0]} cameras but {len(self.names)} names")

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx: int | slice | Sequence[int] | Tensor) -> Cameras:
        """A subset of views (always keeps the leading camera dimension)."""
        if isinstance(idx, int):
            idx = [idx]
        if isinstance(idx, slice):
            idx = list(range(len(self)))[idx]
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return Cameras(self.K[idx_t], self.w2c[idx_t], self.width, self.height, [self.names[int(i)] for i in idx_t])

    def scaled(self, s: int) -> Cameras:
        """The same cameras at ``s`` times the resolution: pixel (i, j) of these covers pixels (s i .. s i + s - 1,
        s j .. s j + s - 1) of the result (pixel centres at +0.5: the first two rows of K times s)."""
        K = self.K.clone()
        K[:, :2, :] = K[:, :2, :] * s
        return Cameras(K, self.w2c, self.width * s, self.height * s, list(self.names))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Cameras:
        """Move/cast the matrices."""
        return Cameras(
            self.K.to(device=device, dtype=dtype),
            self.w2c.to(device=device, dtype=dtype),
            self.width,
            self.height,
            list(self.names),
        )

    @property
    def c2w(self) -> Tensor:
        """(C, 4, 4) camera-to-world, OpenCV axes."""
        return torch.linalg.inv(self.w2c)

    @property
    def centers(self) -> Tensor:
        """(C, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    def c2w_opengl(self) -> Tensor:
        """(C, 4, 4) camera-to-world with OpenGL axes (the ``transforms.json`` convention)."""
        return self.c2w @ _CV_TO_GL.to(self.w2c)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points (N, 3) into every camera.

        Returns:
            uv: (C, N, 2) pixel coordinates (pixel centres at +0.5); depth: (C, N) camera z.
        """
        ph = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)  # (N, 4)
        cam = torch.einsum("cij,nj->cni", self.w2c, ph)[..., :3]
        z = cam[..., 2]
        pix = torch.einsum("cij,cnj->cni", self.K, cam)
        uv = pix[..., :2] / pix[..., 2:3].clamp_min(1e-12)
        return uv, z

    # ----- transforms.json boundary ------------------------------------------------------------------
    def to_transforms(self, file_paths: Sequence[str] | None = None) -> dict[str, Any]:
        """nerfstudio-style dict: per-frame intrinsics and OpenGL camera-to-world ``transform_matrix``."""
        c2w = self.c2w_opengl().double()
        frames = []
        for i in range(len(self)):
            k = self.K[i].double()
            frame = {
                "camera_name": self.names[i],
                "fl_x": float(k[0, 0]),
                "fl_y": float(k[1, 1]),
                "cx": float(k[0, 2]),
                "cy": float(k[1, 2]),
                "w": int(self.width),
                "h": int(self.height),
                "transform_matrix": c2w[i].tolist(),
            }
            if file_paths is not None:
                frame["file_path"] = file_paths[i]
            frames.append(frame)
        return {"camera_model": "OPENCV", "w": int(self.width), "h": int(self.height), "frames": frames}

    @classmethod
    def from_transforms(cls, data: dict[str, Any], source: str = "transforms.json") -> Cameras:
        """Parse a nerfstudio/Blender ``transforms.json`` dict. Intrinsics may be per frame or global.

        Raises:
            ValueError: naming ``source`` when intrinsics, size or matrices are missing or malformed.
        """
        frames = data.get("frames")
        if not frames:
            raise ValueError(f"{source}: no 'frames' list")
        if not isinstance(frames, list) or not all(isinstance(fr, dict) for fr in frames):
            raise ValueError(f"{source}: 'frames' must be a list of per-view objects (transform_matrix, fl_x, ...)")
        Ks, w2cs, names, sizes = [], [], [], set()
        for i, fr in enumerate(frames):
            model = str(fr.get("camera_model", data.get("camera_model", "OPENCV")))
            if any(kind in model.upper() for kind in ("FISHEYE", "EQUIRECT")):  # not pinhole with zero coefficients
                raise ValueError(
                    f"{source}: frame {i} has camera_model {model}; clods-pl renders pinhole cameras: undistort the "
                    "images to a pinhole model first"
                )
            distortion = {k: fr.get(k, data.get(k, 0.0)) for k in DISTORTION_KEYS}
            bent = {k: v for k, v in distortion.items() if isinstance(v, (int, float)) and v != 0}
            if bent:
                k, v = next(iter(bent.items()))
                raise ValueError(
                    f"{source}: frame {i} has lens distortion {k}={v}, which clods-pl does not model; "
                    "undistort the images first and drop the coefficients"
                )
            w, h = _field(fr, data, "w", i, source, int), _field(fr, data, "h", i, source, int)
            sizes.add((w, h))
            fx, fy, cx, cy = (_field(fr, data, k, i, source) for k in ("fl_x", "fl_y", "cx", "cy"))
            if not all(math.isfinite(v) for v in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
                raise ValueError(f"{source}: frame {i} has invalid intrinsics fl_x={fx} fl_y={fy} cx={cx} cy={cy}")
            matrix = _field(fr, data, "transform_matrix", i, source, None)
            try:
                m = torch.tensor(matrix, dtype=torch.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: frame {i} transform_matrix must be a finite 4x4 matrix") from None
            if m.shape != (4, 4) or not torch.isfinite(m).all():
                raise ValueError(f"{source}: frame {i} transform_matrix must be a finite 4x4 matrix")
            if abs(float(torch.linalg.det(m[:3, :3]))) < 1e-9:
                raise ValueError(
                    f"{source}: frame {i} transform_matrix is singular (its rotation part has determinant "
                    "0); it must be an invertible camera-to-world matrix"
                )
            Ks.append(torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64))
            c2w_cv = m @ _CV_TO_GL.double()
            w2cs.append(torch.linalg.inv(c2w_cv))
            names.append(str(fr.get("camera_name", f"view_{i:02d}")))
        if len(sizes) != 1:
            raise ValueError(f"{source}: all views must share one image size, got {sorted(sizes)}")
        ((w, h),) = sizes
        return cls(torch.stack(Ks).float(), torch.stack(w2cs).float(), w, h, names)


DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # nerfstudio's distortion coefficients


def _field(frame: dict[str, Any], top: dict[str, Any], key: str, i: int, source: str, kind: Any = float) -> Any:
    """``frame[key]`` (or the file-level ``top[key]``), converted with ``kind`` (None: as is); errors name the file,
    the view and the key."""
    value = frame.get(key, top.get(key))
    if value is None:
        raise ValueError(f"{source}: frame {i} has no '{key}' (cameras need fl_x, fl_y, cx, cy, w, h)")
    if kind is None:
        return value
    try:
        if isinstance(value, bool):  # JSON true/false are not numbers, though Python would take them as 1/0
            raise TypeError
        number = float(value)
        if kind is int and number != int(number):  # an image size of 64.9 pixels is a typo, not 64
            raise ValueError
        return kind(number) if kind is int else kind(value)
    except (TypeError, ValueError, OverflowError):
        words = "a whole number" if kind is int else "a number"
        raise ValueError(f"{source}: frame {i} '{key}' must be {words}, got {value!r}") from None


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """World-to-camera (4, 4) float32 (OpenCV axes) for a camera at ``eye`` looking at ``target``.

    Args:
        eye, target, up: (3,) world coordinates / direction.
    """
    eye, target, up = (torch.as_tensor(x, dtype=torch.float64) for x in (eye, target, up))
    z = torch.nn.functional.normalize(target - eye, dim=0)  # forward
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9:  # up parallel to the view direction
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = torch.nn.functional.normalize(x, dim=0)
    y = torch.linalg.cross(z, x)  # down
    r = torch.stack([x, y, z], dim=0)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = r
    w2c[:3, 3] = -r @ eye
    return w2c.float()


def ring_cameras(
    num_views: int,
    radius: float,
    target: Sequence[float] = (0.0, 0.0, 0.0),
    elevations_deg: Sequence[float] = (15.0, -10.0),
    fov_deg: float = 40.0,
    width: int = 64,
    height: int = 64,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    azimuth_offset_deg: float = 0.0,
) -> Cameras:
    """``num_views`` cameras on a ring around ``target``, elevations cycling through ``elevations_deg``.

    World up is +z by default. Principal point at the image centre (``cx = W / 2``).
    """
    tgt = torch.tensor(target, dtype=torch.float64)
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    K = torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    w2cs = []
    for i in range(num_views):
        az = math.radians(azimuth_offset_deg + 360.0 * i / num_views)
        el = math.radians(elevations_deg[i % len(elevations_deg)])
        eye = tgt + radius * torch.tensor(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64
        )
        w2cs.append(look_at(eye, tgt, torch.tensor(up, dtype=torch.float64)))
    return Cameras(K.expand(num_views, 3, 3).clone(), torch.stack(w2cs), width, height)
