"""A toy differentiable renderer and a synthetic cloth sequence for the stage-2 tests (and their own checks).

``VertexSplatRenderer`` draws every vertex as an isotropic Gaussian coloured by its material coordinates,
front-to-back alpha compositing; ``ToyTrajectory`` renders a known waving-flag sequence with it, so inverse
rendering must recover that sequence. Other stage-2 tests import this module (pytest puts tests/ on sys.path;
subprocesses get it through PYTHONPATH).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from clods_pl.geometry import Cameras, NodeType, grid_mesh, ring_cameras

FLAG_W, FLAG_H = 1.0, 0.8


@dataclass
class ToyRender:
    rgb: Tensor
    alpha: Tensor


class VertexSplatRenderer(nn.Module):
    """Vertices as isotropic screen-space Gaussians (world radius ``sigma``), colour from ``mesh_pos``.

    ``render(verts (V, 3), cameras, background (3,), backend) -> rgb (C, H, W, 3) over background, alpha (C,H,W,1)``.
    """

    def __init__(self, mesh_pos: Tensor, sigma: float = 0.07, opacity: float = 0.9) -> None:
        super().__init__()
        mp = mesh_pos.float()
        span = (mp.max(0).values - mp.min(0).values).clamp_min(1e-6)
        u = (mp - mp.min(0).values) / span
        colors = torch.stack([u[:, 0], u[:, 1], 0.5 + 0.5 * torch.sin(6.0 * u[:, 0] + 4.0 * u[:, 1])], -1)
        self.register_buffer("colors", colors)
        self.sigma, self.opacity = sigma, opacity

    def render(
        self, verts: Tensor, cameras: Cameras, background: Tensor | None = None, backend: str = "torch"
    ) -> ToyRender:
        uv, z = cameras.project(verts)  # (C, V, 2), (C, V)
        f = cameras.K[:, 0, 0][:, None]
        s = self.sigma * f / z.clamp_min(1e-3)  # (C, V) pixel radius
        H, W = cameras.height, cameras.width
        ys, xs = torch.meshgrid(
            torch.arange(H, dtype=verts.dtype) + 0.5, torch.arange(W, dtype=verts.dtype) + 0.5, indexing="ij"
        )
        pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).to(verts.device)  # (P, 2)
        order = torch.argsort(z.detach(), dim=1)  # front to back
        uv = torch.gather(uv, 1, order[..., None].expand(-1, -1, 2))
        s = torch.gather(s, 1, order)
        col = self.colors[order]  # (C, V, 3)
        d2 = ((pix[None, :, None, :] - uv[:, None, :, :]) ** 2).sum(-1)  # (C, P, V)
        a = (self.opacity * torch.exp(-0.5 * d2 / s[:, None, :] ** 2)).clamp(max=0.99)
        trans = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1.0 - a[..., :-1]], -1), -1)
        w = a * trans
        rgb = torch.einsum("cpv,cvk->cpk", w, col)
        alpha = w.sum(-1, keepdim=True)
        if background is not None:
            rgb = rgb + (1.0 - alpha) * background
        C = len(cameras)
        return ToyRender(rgb.reshape(C, H, W, 3), alpha.reshape(C, H, W, 1))


def flag_sequence(num_frames: int, nx: int = 6, ny: int = 5, amplitude: float = 0.06) -> tuple[Tensor, ...]:
    """A waving flag: mesh_pos (V, 2), faces (F, 3), node_type (V,), verts (T, V, 3) world (pole column pinned).

    The flag lies in the x-z plane (pole along z at x = 0) and a travelling wave moves it along y.
    """
    mesh_pos, faces = grid_mesh(nx, ny, FLAG_W, FLAG_H)
    u, v = mesh_pos[:, 0], mesh_pos[:, 1]
    node_type = torch.where(u == 0, int(NodeType.HANDLE), int(NodeType.NORMAL)).long()
    frames = []
    for t in range(num_frames):
        phase = 0.5 * t
        y = amplitude * u * torch.sin(4.0 * u - phase) + 0.02 * t * u * v
        x = u - 0.5 * amplitude * u * (1 - torch.cos(4.0 * u - phase)) * 0.3
        frames.append(torch.stack([x, y, v - FLAG_H / 2], -1))
    return mesh_pos, faces, node_type, torch.stack(frames).float()


class ToyTrajectory:
    """Duck-typed dataset trajectory (contract of ``clods_pl.data.format.Trajectory``) rendered with the toy."""

    def __init__(
        self, num_frames: int = 6, views: int = 4, size: int = 32, with_handle_pos: bool = False, gt_offset: float = 0.0
    ) -> None:
        self.mesh_pos, self.faces, self.node_type, self._gt = flag_sequence(num_frames)
        self.num_frames = num_frames
        self.cameras = ring_cameras(
            views,
            2.6,
            target=(FLAG_W / 2, 0.0, 0.0),
            elevations_deg=(20.0, -15.0),
            fov_deg=45.0,
            width=size,
            height=size,
            azimuth_offset_deg=45.0,
        )
        self.verts0 = self._gt[0].clone()
        pinned = self.node_type == int(NodeType.HANDLE)
        self.handle_pos = self._gt[:, pinned].clone() if with_handle_pos else None
        self.renderer = VertexSplatRenderer(self.mesh_pos)
        self.has_gt = True
        self.gt_offset = gt_offset
        self._images: dict[int, Tensor] = {}

    def image_tensor(self, t: int) -> Tensor:
        """(C, H, W, 4) float32 straight (non-premultiplied) RGBA in [0, 1]."""
        if t not in self._images:
            with torch.no_grad():
                out = self.renderer.render(self._gt[t], self.cameras, None)
                a = out.alpha.clamp(1e-6, 1.0)
                self._images[t] = torch.cat([(out.rgb / a).clamp(0, 1), out.alpha], -1)
        return self._images[t]

    def load_gt_verts(self) -> np.ndarray:
        return (self._gt + self.gt_offset).numpy()


# ----- the toy's own checks ---------------------------------------------------------------------------------
def test_toy_renderer_differentiable_and_composites_background() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    traj = ToyTrajectory(num_frames=2, views=2, size=12)
    bg = torch.tensor([0.2, 0.4, 0.6])
    verts = traj.verts0.clone().double().requires_grad_(True)
    cams = traj.cameras.to(dtype=torch.float64)
    r = VertexSplatRenderer(traj.mesh_pos).double()
    out = r.render(verts, cams, bg.double())
    assert out.rgb.shape == (2, 12, 12, 3) and out.alpha.shape == (2, 12, 12, 1)
    assert 0.0 < float(out.alpha.detach().max()) <= 1.0
    corner = out.rgb[0, 0, 0]  # empty corner shows the background
    assert torch.allclose(corner, bg.double(), atol=1e-3)
    w = torch.randn_like(out.rgb)
    torch.autograd.gradcheck(lambda x: (r.render(x, cams, bg.double()).rgb * w).sum(), (verts,), eps=1e-6, atol=1e-5)
    # straight RGBA target composited over bg reproduces the render
    img = traj.image_tensor(0)
    comp = img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:])
    assert torch.allclose(comp, traj.renderer.render(traj.verts0, traj.cameras, bg).rgb, atol=1e-4)
    assert math.isfinite(float(comp.sum()))
    torch.set_num_threads(threads)
