"""EWA projection of 3D Gaussians into pixel space (the 3DGS / gsplat forward model), differentiable in torch.

For camera c and Gaussian n: camera-space centre ``t = R_c mu + T_c``; 3D covariance ``Sigma = M M^T`` with
``M = R(q) diag(s)``; 2D covariance ``J W Sigma W^T J^T + 0.3 I`` with the perspective Jacobian ``J`` evaluated
at ``t`` whose x/z and y/z are clamped to 1.3x the field of view (as gsplat and 3DGS do); 3-sigma radius
``ceil(3 sqrt(lambda_max))``; Gaussians with ``z <= near`` or a non-positive determinant are culled.

The dilation gives every Gaussian a footprint of at least ~0.55 px (sigma) at its full opacity, which fattens
silhouettes and thin or edge-on Gaussians at low resolution. ``compensation = sqrt(det(cov2) / det(cov2 + 0.3 I))``
is Mip-Splatting's (and gsplat's ``rasterize_mode="antialiased"``) opacity factor that keeps each Gaussian's
integrated opacity unchanged by the dilation; rasterizers multiply it in when asked to antialias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NEAR_PLANE = 0.01
EPS_2D = 0.3  # low-pass dilation of the 2D covariance, in pixels^2
FOV_CLAMP = 1.3  # Jacobian evaluated inside 1.3x the field of view


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(..., 4) wxyz (any norm) -> (..., 3, 3)."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


@dataclass
class Projected:
    """Per camera and Gaussian (C, N, ...): pixel centre, conic (inverse 2D covariance a, b, c), depth, radius,
    and whether the Gaussian is visible at all."""

    mean2d: Tensor  # (C, N, 2) pixels, centres at +0.5
    conic: Tensor  # (C, N, 3)
    depth: Tensor  # (C, N) camera z
    radius: Tensor  # (C, N) int64 pixels
    valid: Tensor  # (C, N) bool: in front, non-degenerate and its 3-sigma box on screen
    front: Tensor  # (C, N) bool: in front of the near plane with a positive-definite 2D covariance
    compensation: Tensor | None = None  # (C, N) antialiasing opacity factor in (0, 1]; only when asked for

    def opacities(self, opacities: Tensor) -> Tensor:
        """(C, N) per-camera opacities to composite: ``opacities`` (N,) times the compensation when computed."""
        C = self.depth.shape[0]
        return (
            opacities[None, :] * self.compensation
            if self.compensation is not None
            else opacities[None, :].expand(C, -1)
        )


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near: float = NEAR_PLANE,
    eps2d: float = EPS_2D,
    antialiased: bool = False,
) -> Projected:
    """Project N Gaussians into C cameras (see the module docstring); ``antialiased`` also computes the
    compensation (classic rendering skips that work)."""
    R, T = viewmats[:, :3, :3], viewmats[:, :3, 3]
    t = torch.einsum("cij,nj->cni", R, means) + T[:, None, :]  # (C, N, 3)
    x, y, z = t.unbind(-1)
    M = quat_to_rotmat(quats) * scales[:, None, :]
    cov3 = M @ M.transpose(-1, -2)  # (N, 3, 3)
    cov_cam = torch.einsum("cij,njk,clk->cnil", R, cov3, R)  # (C, N, 3, 3)
    fx, fy, cx, cy = Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    zs = torch.where(z > near, z, torch.ones_like(z))  # keep culled entries finite
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lim_xp, lim_xn = (width - cx) / fx + (FOV_CLAMP - 1) * tan_x, cx / fx + (FOV_CLAMP - 1) * tan_x
    lim_yp, lim_yn = (height - cy) / fy + (FOV_CLAMP - 1) * tan_y, cy / fy + (FOV_CLAMP - 1) * tan_y
    tx = zs * torch.minimum(lim_xp, torch.maximum(-lim_xn, x / zs))
    ty = zs * torch.minimum(lim_yp, torch.maximum(-lim_yn, y / zs))
    zero = torch.zeros_like(zs)
    J = torch.stack(
        [
            torch.stack([fx / zs, zero, -fx * tx / (zs * zs)], -1),
            torch.stack([zero, fy / zs, -fy * ty / (zs * zs)], -1),
        ],
        -2,
    )  # (C, N, 2, 3)
    cov2 = J @ cov_cam @ J.transpose(-1, -2)
    a = cov2[..., 0, 0] + eps2d
    b = cov2[..., 0, 1]
    c = cov2[..., 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conic = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radius = torch.ceil(3.0 * torch.sqrt(lam)).detach().long()
    mean2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    mx, my = mean2d[..., 0].detach(), mean2d[..., 1].detach()
    on_screen = (mx + radius > 0) & (mx - radius < width) & (my + radius > 0) & (my - radius < height)
    front = (z > near) & (det > 0)
    valid = front & (radius > 0) & on_screen
    compensation = None
    if antialiased:
        det_raw = cov2[..., 0, 0] * cov2[..., 1, 1] - b * b
        compensation = torch.sqrt(torch.clamp(det_raw / det_safe, min=1e-12))  # > 0: finite gradient
    return Projected(mean2d, conic, z, radius, valid, front, compensation)


def tile_bounds(
    p: Projected, tile: int, tiles_x: int, tiles_y: int, integer_pixel: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Tile rectangle [x0, x1) x [y0, y1) each Gaussian's 3-sigma box overlaps (empty when not valid).

    ``integer_pixel``: as 3DGS's ``getRect`` does it, from the mean in pixel-index coordinates (ours - 0.5) with
    truncating division, ``[int((m - r) / tile), int((m + r + tile - 1) / tile))``."""
    mx, my = p.mean2d[..., 0].detach(), p.mean2d[..., 1].detach()
    r = p.radius.to(mx.dtype)
    if integer_pixel:
        mx, my = mx - 0.5, my - 0.5
        x0 = torch.clamp(torch.trunc((mx - r) / tile), 0, tiles_x).long()
        x1 = torch.clamp(torch.trunc((mx + r + tile - 1) / tile), 0, tiles_x).long()
        y0 = torch.clamp(torch.trunc((my - r) / tile), 0, tiles_y).long()
        y1 = torch.clamp(torch.trunc((my + r + tile - 1) / tile), 0, tiles_y).long()
    else:
        x0 = torch.clamp(torch.floor((mx - r) / tile), 0, tiles_x).long()
        x1 = torch.clamp(torch.ceil((mx + r) / tile), 0, tiles_x).long()
        y0 = torch.clamp(torch.floor((my - r) / tile), 0, tiles_y).long()
        y1 = torch.clamp(torch.ceil((my + r) / tile), 0, tiles_y).long()
    x1 = torch.where(p.valid, x1, x0)
    y1 = torch.where(p.valid, y1, y0)
    return x0, x1, y0, y1


def num_tiles(width: int, height: int, tile: int) -> tuple[int, int]:
    return math.ceil(width / tile), math.ceil(height / tile)
