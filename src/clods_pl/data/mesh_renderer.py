"""Ground-truth mesh renderer for the synthetic benchmark, independent of Gaussian splatting.

Textured (:mod:`clods_pl.data.texture`, distinct front/back), Lambert-shaded with two-sided normals and an ambient
term, anti-aliased by supersampling, with an alpha (coverage) channel. Two rasterizers behind one interface:
``torch`` (our own z-buffer, perspective-correct barycentrics) and ``pytorch3d`` (its ``rasterize_meshes``, used
when pytorch3d is importable); both feed the same shader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from clods_pl.data.texture import cloth_texture
from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import Cameras

RENDERERS = ("auto", "torch", "pytorch3d")
LIGHT_DIR = (0.3, -0.5, 0.8)  # world direction towards the light
DIFFUSE = 0.65  # share of the light that follows the surface's angle to the light; the rest is ambient
FAR = 1e10


@dataclass
class Fragments:
    """Per (camera, supersampled pixel): winning face (-1 = empty) and perspective-correct barycentrics."""

    face: Tensor  # (C, Hs, Ws) int64
    bary: Tensor  # (C, Hs, Ws, 3)


class MeshRenderer(Protocol):
    def render(self, verts: Tensor, faces: Tensor, uv: Tensor, cameras: Cameras) -> Tensor:
        """verts (V, 3) world, faces (F, 3), uv (V, 2) in [0, 1] -> (C, H, W, 4) float32 RGBA in [0, 1]."""


def _edge_function(p0: Tensor, p1: Tensor, q: Tensor) -> Tensor:
    """Twice the signed area of the triangle (p0, p1, q) in the image plane: (..., 2) points -> (...)."""
    return (p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0])


def shade(
    frags: Fragments,
    verts: Tensor,
    faces: Tensor,
    uv: Tensor,
    cameras: Cameras,
    supersample: int,
    diffuse: float = DIFFUSE,
) -> Tensor:
    """Texture + two-sided Lambert shading of the fragments (``1 - diffuse`` ambient plus ``diffuse`` x |n . l|;
    0: flat, the texture alone), box-filtered down -> (C, H, W, 4) straight alpha."""
    C, Hs, Ws = frags.face.shape
    covered = frags.face >= 0
    f = frags.face.clamp_min(0)
    tri_uv = uv[faces][f]  # (C, Hs, Ws, 3, 2)
    pix_uv = (frags.bary.unsqueeze(-1) * tri_uv).sum(-2)
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = torch.nn.functional.normalize(torch.linalg.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)  # (F, 3)
    centroid = (v0 + v1 + v2) / 3
    to_cam = cameras.centers.to(verts)[:, None, :] - centroid[None]  # (C, F, 3)
    front_face = (to_cam * n[None]).sum(-1) > 0  # (C, F)
    front = torch.gather(front_face, 1, f.reshape(C, -1)).reshape(C, Hs, Ws)
    albedo = cloth_texture(pix_uv, front)
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR, dtype=verts.dtype, device=verts.device), dim=0)
    lambert = (n @ light).abs()[f]  # two-sided
    rgb = albedo * ((1.0 - diffuse) + diffuse * lambert).unsqueeze(-1)
    cov = covered.to(rgb.dtype).unsqueeze(-1)
    s = supersample
    H, W = Hs // s, Ws // s
    pre = torch.cat([rgb * cov, cov], -1).reshape(C, H, s, W, s, 4).mean(dim=(2, 4))
    alpha = pre[..., 3:4]
    color = pre[..., :3] / alpha.clamp_min(1e-8)
    return torch.cat([color.clamp(0, 1), alpha], -1)


def _screen(verts: Tensor, cameras: Cameras, supersample: int) -> tuple[Tensor, Tensor]:
    uv, z = cameras.project(verts)
    return uv * supersample, z  # (C, V, 2) supersampled pixels, (C, V)


class TorchMeshRenderer:
    """Our own vectorised z-buffer: per face, every supersampled pixel of its bounding box (padded to the largest
    box) gets an inside test and a depth; a scatter-min keeps the nearest face per pixel."""

    def __init__(self, supersample: int = 3, diffuse: float = DIFFUSE) -> None:
        self.supersample, self.diffuse = supersample, diffuse

    def fragments(self, verts: Tensor, faces: Tensor, cameras: Cameras) -> Fragments:
        s = self.supersample
        Hs, Ws = cameras.height * s, cameras.width * s
        pix, z = _screen(verts, cameras, s)
        C = pix.shape[0]
        face_out = torch.full((C, Hs * Ws), -1, dtype=torch.long, device=verts.device)
        bary_out = torch.zeros(C, Hs * Ws, 3, dtype=verts.dtype, device=verts.device)
        for c in range(C):
            tri = pix[c][faces]  # (F, 3, 2)
            tz = z[c][faces]  # (F, 3)
            ok = (tz > 1e-3).all(-1)
            lo = torch.floor(tri.min(1).values - 0.5).clamp(min=0).long()
            hi = torch.ceil(tri.max(1).values - 0.5).long()
            hi[:, 0].clamp_(max=Ws - 1)
            hi[:, 1].clamp_(max=Hs - 1)
            size = (hi - lo + 1).clamp_min(0)
            ok &= (size > 0).all(-1)
            if not ok.any():
                continue
            fid = torch.nonzero(ok).squeeze(-1)
            bw, bh = int(size[fid, 0].max()), int(size[fid, 1].max())
            oy, ox = torch.meshgrid(
                torch.arange(bh, device=verts.device), torch.arange(bw, device=verts.device), indexing="ij"
            )
            px = lo[fid, 0, None, None] + ox  # (F', bh, bw)
            py = lo[fid, 1, None, None] + oy
            inside_box = (px <= hi[fid, 0, None, None]) & (py <= hi[fid, 1, None, None])
            p = torch.stack([px, py], -1).to(verts.dtype) + 0.5
            a, b, cc = tri[fid, 0, None, None], tri[fid, 1, None, None], tri[fid, 2, None, None]
            area = _edge_function(a, b, cc)
            w0, w1, w2 = _edge_function(b, cc, p), _edge_function(cc, a, p), _edge_function(a, b, p)
            area_safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
            l0, l1, l2 = w0 / area_safe, w1 / area_safe, w2 / area_safe
            inside = inside_box & (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (area.abs() > 1e-12)
            zf = tz[fid][:, None, None, :]
            inv = l0 / zf[..., 0] + l1 / zf[..., 1] + l2 / zf[..., 2]
            depth = 1.0 / inv.clamp_min(1e-12)
            pid = (py * Ws + px)[inside]
            d = depth[inside]
            fsel = fid[:, None, None].expand_as(px)[inside]
            zbuf = torch.full((Hs * Ws,), FAR, dtype=verts.dtype, device=verts.device)
            zbuf.scatter_reduce_(0, pid, d, reduce="amin")
            win = d <= zbuf[pid]
            best = torch.full((Hs * Ws,), -1, dtype=torch.long, device=verts.device)
            best.scatter_reduce_(0, pid[win], fsel[win], reduce="amax")
            face_out[c] = best
            # perspective-correct barycentrics of the winner at each pixel
            sel = win & (fsel == best[pid])
            pc = torch.stack(
                [
                    l0[inside][sel] / zf[..., 0].expand_as(l0)[inside][sel],
                    l1[inside][sel] / zf[..., 1].expand_as(l1)[inside][sel],
                    l2[inside][sel] / zf[..., 2].expand_as(l2)[inside][sel],
                ],
                -1,
            )
            bary_out[c, pid[sel]] = pc / pc.sum(-1, keepdim=True)
        return Fragments(face_out.reshape(C, Hs, Ws), bary_out.reshape(C, Hs, Ws, 3))

    def render(self, verts: Tensor, faces: Tensor, uv: Tensor, cameras: Cameras) -> Tensor:
        verts = verts.float()
        cams = cameras.to(verts.device)
        return shade(
            self.fragments(verts, faces, cams), verts, faces, uv.to(verts), cams, self.supersample, self.diffuse
        )


class Pytorch3dMeshRenderer:
    """pytorch3d's ``rasterize_meshes`` on vertices we project ourselves (screen -> pytorch3d NDC), same shader."""

    def __init__(self, supersample: int = 3, diffuse: float = DIFFUSE) -> None:
        try:
            from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes  # noqa: PLC0415  (optional dependency)
            from pytorch3d.structures import Meshes  # noqa: PLC0415  (optional dependency)
        except ImportError as exc:
            raise BackendUnavailableError(
                "renderer=pytorch3d needs pytorch3d (no PyPI wheel for Linux: `conda install -c pytorch3d "
                f"pytorch3d`, see environment.yml); use renderer=torch ({exc})"
            ) from exc
        self._rasterize, self._meshes, self.supersample = rasterize_meshes, Meshes, supersample
        self.diffuse = diffuse

    def fragments(self, verts: Tensor, faces: Tensor, cameras: Cameras) -> Fragments:
        s = self.supersample
        Hs, Ws = cameras.height * s, cameras.width * s
        pix, z = _screen(verts, cameras, s)
        # pytorch3d NDC: +x left, +y up, the shorter image side spans [-1, 1] (pixel centres at +0.5)
        short = float(min(Hs, Ws))
        ndc = torch.stack([(Ws - 2 * pix[..., 0]) / short, (Hs - 2 * pix[..., 1]) / short, z], -1)
        meshes = self._meshes(verts=list(ndc), faces=[faces] * ndc.shape[0])
        p2f, _zbuf, bary, _ = self._rasterize(
            meshes, image_size=(Hs, Ws), blur_radius=0.0, faces_per_pixel=1, perspective_correct=False
        )
        F = faces.shape[0]
        face = p2f[..., 0]
        face = torch.where(face >= 0, face % F, face)
        b = bary[..., 0, :]
        zf = z.gather(1, faces.reshape(1, -1).expand(z.shape[0], -1)).reshape(z.shape[0], F, 3)
        zpix = torch.gather(zf, 1, face.clamp_min(0).reshape(z.shape[0], -1, 1).expand(-1, -1, 3))
        pc = b / zpix.reshape(b.shape).clamp_min(1e-12)
        return Fragments(face, pc / pc.sum(-1, keepdim=True).clamp_min(1e-12))

    def render(self, verts: Tensor, faces: Tensor, uv: Tensor, cameras: Cameras) -> Tensor:
        verts = verts.float()
        cams = cameras.to(verts.device)
        return shade(
            self.fragments(verts, faces, cams), verts, faces, uv.to(verts), cams, self.supersample, self.diffuse
        )


def pytorch3d_available() -> bool:
    try:
        import pytorch3d  # noqa: F401, PLC0415

        return True
    except ImportError:
        return False


def make_mesh_renderer(name: str = "auto", supersample: int = 3, diffuse: float = DIFFUSE) -> MeshRenderer:
    """``auto``: pytorch3d when importable, else torch; ``diffuse``: see :func:`shade`."""
    if name not in RENDERERS:
        raise BackendUnavailableError(f"unknown mesh renderer '{name}'; choose one of {', '.join(RENDERERS)}")
    if name == "pytorch3d" or (name == "auto" and pytorch3d_available()):
        return Pytorch3dMeshRenderer(supersample, diffuse)
    return TorchMeshRenderer(supersample, diffuse)
