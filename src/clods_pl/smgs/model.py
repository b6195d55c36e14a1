"""Spatial Mapping Gaussian Splatting (SMGS): Gaussians anchored to the triangles of a mesh.

Gaussian k of face f sits at ``sum_i beta_fki X_fi`` (fixed barycentric weights), is rotated into the face's
orthonormal frame (optionally turned in-plane by a learned angle), scaled from the face's edge lengths (learned
log multipliers; ``normal_eps`` along the normal), coloured by learned SH coefficients, and gets its opacity from
:class:`~clods_pl.smgs.opacity.OpacityField`. Appearance is learned once on the first frame (stage 1); stage 2
moves the vertices and keeps the appearance frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clods_pl.geometry import Cameras
from clods_pl.render import BATCHED_BACKENDS, rasterize
from clods_pl.render.types import RenderOutput
from clods_pl.smgs.anchoring import anchor_gaussians, barycentric_weights
from clods_pl.smgs.color import eval_sh, num_sh_coeffs, rgb_to_sh0
from clods_pl.smgs.opacity import OpacityField

COLOUR_ALPHA_FLOOR = 0.01  # coverage_scale rendering: the colour pass's alpha is divided out above this floor


@dataclass
class Gaussians:
    """N Gaussians. means (N, 3) world; quats (N, 4) wxyz; scales (N, 3); opacities (N,) in (0, 1);
    colors (N, 3) or (C, N, 3) RGB; sh (N, M, 3) the SH coefficients the colours came from."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    sh: Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    def select(self, b: int) -> Gaussians:
        """Member ``b`` of a batch (every field with a leading batch dim; ``sh`` is shared)."""
        return Gaussians(self.means[b], self.quats[b], self.scales[b], self.opacities[b], self.colors[b], self.sh)


class SMGS(nn.Module):
    """Mesh-anchored Gaussians with learned appearance.

    Args:
        faces: (F, 3) int64. mesh_pos: (V, 2) rest-state material coordinates. verts0: (V, 3) first-frame world
            positions (sets the normalisation of the opacity field's world encoding).
        gaussians_per_face: K. sampling: ``uniform`` | ``random`` barycentric weights. opacity_mode: static |
        world | mesh | dual. sh_degree: 0..3. pe_frequencies, mlp_hidden, mlp_layers: opacity MLP.
        normal_eps: Gaussian scale along the face normal (world units). learn_inplane_rotation: learn an angle per
        Gaussian. init_color: starting RGB. init_opacity: starting opacity. seed: for ``random`` sampling.
        antialiased: render with the rasterizer's antialiased mode (opacity compensation for the 0.3 px dilation,
        :func:`clods_pl.render.rasterize`); part of the appearance, so stage 2 renders as stage 1 fitted.
        init_log_scale: starting value of the learned in-plane log multipliers (0: the GaMeS base scale).
        coverage_scale: None renders as 3DGS does (one pass). A number s > 0 renders in two passes: the colour is
        the alpha-normalised composite ``sum c_i a_i T_i / (1 - T)`` of the Gaussians as they are, the coverage
        (alpha) that of the same Gaussians with in-plane scales times s. Small Gaussians then give sharp colour
        that does not depend on the depth order of overlapping neighbours (which differs per view on a tilted
        surface), and the wider coverage pass keeps the cloth opaque. docs/results.md has the measurements.
        lambert_light: colours are albedo x ``(1 - d) + d |n . l|`` with the Gaussian's face normal n and one learned
        light direction l and diffuse share d (stage 1 learns them on frame 0). A colour then follows its face as
        stage 2 turns it, where a fixed colour cannot (docs/results.md: shading is ~40% of stage 2's error).
        supersample: render every pixel as the mean of s x s samples (the image at s times the resolution, averaged
        in s x s blocks), as a camera pixel integrates the light over its area; 1: one sample at the pixel centre.
        Part of the appearance, like ``antialiased``: stage 2 and eval render as stage 1 fitted.
    """

    def __init__(
        self,
        faces: Tensor,
        mesh_pos: Tensor,
        verts0: Tensor,
        gaussians_per_face: int = 2,
        sampling: str = "uniform",
        opacity_mode: str = "dual",
        sh_degree: int = 0,
        pe_frequencies: int = 4,
        mlp_hidden: int = 64,
        mlp_layers: int = 2,
        normal_eps: float = 1e-4,
        learn_inplane_rotation: bool = False,
        two_sided: bool = True,
        init_color: tuple[float, float, float] = (0.5, 0.5, 0.5),
        init_opacity: float = 0.5,
        seed: int = 0,
        antialiased: bool = True,
        init_log_scale: float = 0.0,
        coverage_scale: float | None = None,
        lambert_light: bool = False,
        supersample: int = 1,
    ) -> None:
        super().__init__()
        faces = torch.as_tensor(faces, dtype=torch.int64)
        mesh_pos = torch.as_tensor(mesh_pos, dtype=torch.float32)
        verts0 = torch.as_tensor(verts0, dtype=torch.float32)
        F, K = faces.shape[0], gaussians_per_face
        self.options: dict[str, Any] = dict(
            gaussians_per_face=K,
            sampling=sampling,
            opacity_mode=opacity_mode,
            sh_degree=sh_degree,
            pe_frequencies=pe_frequencies,
            mlp_hidden=mlp_hidden,
            mlp_layers=mlp_layers,
            normal_eps=normal_eps,
            learn_inplane_rotation=learn_inplane_rotation,
            two_sided=two_sided,
            init_color=tuple(init_color),
            init_opacity=init_opacity,
            seed=seed,
            antialiased=antialiased,
            init_log_scale=init_log_scale,
            coverage_scale=coverage_scale,
            lambert_light=lambert_light,
            supersample=supersample,
        )
        if coverage_scale is not None and not coverage_scale > 0:
            raise ValueError(f"coverage_scale must be > 0 (or None), got {coverage_scale}")
        if int(supersample) != supersample or supersample < 1:
            raise ValueError(f"supersample must be a whole number >= 1, got {supersample}")
        self.supersample = int(supersample)
        self.antialiased = bool(antialiased)
        self.coverage_scale = None if coverage_scale is None else float(coverage_scale)
        self.normal_eps, self.sh_degree = float(normal_eps), int(sh_degree)
        self.fitted_with: Any = None  # smgs.io.RenderSettings of the stage-1 fit, once loaded from a checkpoint
        self.register_buffer("faces", faces)
        self.register_buffer("mesh_pos", mesh_pos)
        self.register_buffer("verts0", verts0)
        beta = barycentric_weights(F, K, sampling, seed)
        self.register_buffer("beta", beta)
        self.register_buffer("mu_mesh", torch.einsum("fkj,fjc->fkc", beta, mesh_pos[faces]).reshape(F * K, 2))
        n = F * K
        sh = torch.zeros(n, num_sh_coeffs(sh_degree), 3)
        sh[:, 0] = rgb_to_sh0(torch.tensor(init_color, dtype=torch.float32))
        self.sh = nn.Parameter(sh)
        self.sh_back = nn.Parameter(sh.clone()) if two_sided else None
        self.log_scale = nn.Parameter(torch.full((F, K, 2), float(init_log_scale)))
        self.theta = nn.Parameter(torch.zeros(F, K)) if learn_inplane_rotation else None
        # light direction (normalised when used; oblique to every axis, so |n . l| has a gradient for any face) and
        # the logit of the diffuse share (0: half ambient, half Lambert)
        self.light = nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 0.0])) if lambert_light else None
        lo, hi = verts0.min(0).values, verts0.max(0).values
        mlo, mhi = mesh_pos.min(0).values, mesh_pos.max(0).values
        half = ((hi - lo) / 2).max().clamp_min(1e-6).expand(3)  # isotropic: keeps the world encoding undistorted
        self.opacity = OpacityField(
            opacity_mode,
            n,
            pe_frequencies,
            mlp_hidden,
            mlp_layers,
            (lo + hi) / 2,
            half * 1.5,
            (mlo + mhi) / 2,
            (mhi - mlo) / 2,
            init_opacity,
        )

    @property
    def num_gaussians(self) -> int:
        return self.beta.shape[0] * self.beta.shape[1]

    def gaussians(self, verts: Tensor, cameras: Cameras | Sequence[Cameras] | None = None) -> Gaussians:
        """The Gaussians of the mesh ``verts`` (V, 3); colours (C, N, 3) per camera when ``cameras`` are given and
        the colour is view dependent (two-sided or SH degree > 0), else the front colours (N, 3).

        A batch of B meshes ``verts`` (B, V, 3) with B camera sets of C cameras each gives every field a leading
        B: means (B, N, 3), colours (B, C, N, 3) or (B, N, 3), ... (one set of torch ops for the whole batch)."""
        batched = verts.ndim == 3
        if verts.shape[-2:] != self.verts0.shape or verts.ndim not in (2, 3):
            raise ValueError(f"verts must be {tuple(self.verts0.shape)} or (B, *that), got {tuple(verts.shape)}")
        log_scale = self.log_scale.to(verts.dtype)
        theta = None if self.theta is None else self.theta.to(verts.dtype)
        means, quats, scales, rot = anchor_gaussians(verts, self.faces, self.beta, log_scale, self.normal_eps, theta)
        opacities = self.opacity(means, self.mu_mesh.to(verts.dtype))
        sh = self.sh.to(verts.dtype)
        normals = rot[..., 2]  # (..., N, 3)
        shade = None if self.light is None else self.lambert(normals)[..., None]  # (..., N, 1)
        if self.sh_degree == 0 and (self.sh_back is None or cameras is None):
            front = eval_sh(sh, None).expand_as(means)  # (..., N, 3)
            return Gaussians(means, quats, scales, opacities, front if shade is None else front * shade, sh)
        if cameras is None:
            raise ValueError("sh_degree > 0 needs cameras for view directions")
        if batched:
            if isinstance(cameras, Cameras) or len(cameras) != verts.shape[0]:
                raise ValueError(f"a batch of {verts.shape[0]} meshes needs as many camera sets")
            centers = torch.stack([c.centers for c in cameras]).to(means)  # (B, C, 3)
        else:
            centers = cameras.centers.to(means)  # (C, 3)
        dirs = means.unsqueeze(-3) - centers.unsqueeze(-2)  # (..., C, N, 3) camera -> Gaussian
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        colors = eval_sh(sh, dirs if self.sh_degree > 0 else None).expand(dirs.shape)
        if self.sh_back is not None:
            back = eval_sh(self.sh_back.to(verts.dtype), dirs if self.sh_degree > 0 else None)
            sees_back = ((dirs * normals.unsqueeze(-3)).sum(-1, keepdim=True) > 0).detach()  # looking along the normal
            colors = torch.where(sees_back, back.expand_as(colors), colors)
        return Gaussians(means, quats, scales, opacities, colors if shade is None else colors * shade.unsqueeze(-3), sh)

    def lambert(self, normals: Tensor) -> Tensor:
        """(N,) shading factor ``(1 - d) + d |n . l|`` of unit ``normals`` (N, 3) (two-sided, as cloth is lit
        from either side); requires ``lambert_light``."""
        assert self.light is not None
        light = self.light.to(normals.dtype)
        direction = light[:3] / light[:3].norm().clamp_min(1e-12)
        d = torch.sigmoid(light[3])
        return (1.0 - d) + d * (normals @ direction).abs()

    def render(
        self, verts: Tensor, cameras: Cameras, background: Tensor | None = None, backend: str = "torch"
    ) -> RenderOutput:
        """Render the mesh ``verts`` (V, 3) into every camera -> RenderOutput(rgb (C,H,W,3), alpha (C,H,W,1)),
        antialiased and in two passes as the SMGS was built (:func:`render_gaussians`)."""
        return render_gaussians(
            self.gaussians(verts, cameras),
            cameras,
            background,
            backend,
            self.antialiased,
            self.coverage_scale,
            self.supersample,
        )

    def render_batch(
        self, verts: Tensor, cameras: Sequence[Cameras], background: Tensor | None = None, backend: str = "torch"
    ) -> RenderOutput:
        """Render B meshes ``verts`` (B, V, 3), mesh b into ``cameras[b]`` (every set C cameras of one size):
        RenderOutput(rgb (B, C, H, W, 3), alpha (B, C, H, W, 1)), what B calls of :meth:`render` give stacked. The
        Gaussians of all B are built by one set of torch ops; a backend that renders batches (``gsplat``) renders
        all B, both passes of the coverage render, in one call."""
        if verts.ndim != 3 or len(cameras) != verts.shape[0]:
            raise ValueError(
                f"a batch of meshes (B, V, 3) needs as many camera sets, got {tuple(verts.shape)} and {len(cameras)}"
            )
        if len({(len(c), c.width, c.height) for c in cameras}) > 1:
            raise ValueError("render_batch needs camera sets of one count and image size; render each mesh instead")
        g = self.gaussians(verts, cameras)
        options = (background, backend, self.antialiased, self.coverage_scale, self.supersample)
        if backend in BATCHED_BACKENDS:
            return render_gaussians_batch(g, cameras, *options)
        outs = [render_gaussians(g.select(b), cameras[b], *options) for b in range(verts.shape[0])]
        return RenderOutput(rgb=torch.stack([o.rgb for o in outs]), alpha=torch.stack([o.alpha for o in outs]))

    def param_groups(
        self,
        lr_color: float = 0.0025,
        lr_opacity: float = 0.05,
        lr_scale: float = 0.005,
        lr_mlp: float = 1e-3,
        lr_rotation: float = 0.001,
        lr_light: float = 0.01,
    ) -> list[dict[str, Any]]:
        """Adam parameter groups with per-group learning rates (GaMeS: colour 0.0025, opacity 0.05, scale 0.005)."""
        colour = [self.sh] + ([self.sh_back] if self.sh_back is not None else [])
        groups = [
            {"params": colour, "lr": lr_color, "name": "color"},
            {"params": [self.log_scale], "lr": lr_scale, "name": "scale"},
        ]
        if self.opacity.mlp is None:
            groups.append({"params": [self.opacity.logits], "lr": lr_opacity, "name": "opacity"})
        else:
            groups.append({"params": list(self.opacity.mlp.parameters()), "lr": lr_mlp, "name": "opacity_mlp"})
        if self.theta is not None:
            groups.append({"params": [self.theta], "lr": lr_rotation, "name": "rotation"})
        if self.light is not None:
            groups.append({"params": [self.light], "lr": lr_light, "name": "light"})
        return groups


class _BlockMean(torch.autograd.Function):
    """Forward: s^2 strided views added; backward: the gradient divided by s^2, spread over each block with one
    copy (autograd of the strided views would zero-fill and copy a full-size gradient per view)."""

    @staticmethod
    def forward(ctx, images: Tensor, s: int) -> Tensor:
        C, H, W, D = images.shape
        blocks = images.reshape(C, H // s, s, W // s, s, D)
        total = blocks[:, :, 0, :, 0].clone()
        for i in range(s):
            for j in range(s):
                if i or j:
                    total += blocks[:, :, i, :, j]
        ctx.s = s
        return total / (s * s)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        s = ctx.s
        C, h, w, D = grad.shape
        spread = (grad / (s * s))[:, :, None, :, None, :].expand(C, h, s, w, s, D)
        return spread.reshape(C, h * s, w * s, D), None


def block_mean(images: Tensor, s: int) -> Tensor:
    """(C, s H, s W, D) -> (C, H, W, D): the mean of every s x s block of pixels; about a third of the time of
    ``mean`` over two strided dimensions on the CPU, forward and backward."""
    return _BlockMean.apply(images, s)


def render_gaussians(
    g: Gaussians,
    cameras: Cameras,
    background: Tensor | None = None,
    backend: str = "torch",
    antialiased: bool = False,
    coverage_scale: float | None = None,
    supersample: int = 1,
) -> RenderOutput:
    """Rasterize ``g`` into ``cameras`` as an SMGS renders: one pass (3DGS), or with ``coverage_scale`` two passes
    (colour from ``g`` normalised by its alpha, alpha from ``g`` with in-plane scales times ``coverage_scale``; see
    :class:`SMGS`); with ``supersample`` s > 1 at s times the resolution, averaged over s x s blocks (rgb and alpha;
    no depth). rgb (C, H, W, 3) over ``background`` (3,) (black when None), alpha (C, H, W, 1)."""
    if supersample > 1:
        fine = render_gaussians(
            g, cameras.scaled(supersample), background, backend, antialiased, coverage_scale, supersample=1
        )
        return RenderOutput(rgb=block_mean(fine.rgb, supersample), alpha=block_mean(fine.alpha, supersample))
    cams = cameras.to(g.means.device, g.means.dtype)
    bg = None if background is None else torch.as_tensor(background, device=g.means.device, dtype=g.means.dtype)
    W, H = cameras.width, cameras.height
    if coverage_scale is None:
        return rasterize(
            g.means,
            g.quats,
            g.scales,
            g.opacities,
            g.colors,
            cams.w2c,
            cams.K,
            W,
            H,
            background=bg,
            backend=backend,
            antialiased=antialiased,
        )
    colour = rasterize(
        g.means,
        g.quats,
        g.scales,
        g.opacities,
        g.colors,
        cams.w2c,
        cams.K,
        W,
        H,
        backend=backend,
        antialiased=antialiased,
    )
    wide = g.scales * torch.tensor([coverage_scale, coverage_scale, 1.0], dtype=g.scales.dtype, device=g.scales.device)
    cover = rasterize(
        g.means,
        g.quats,
        wide,
        g.opacities,
        torch.zeros_like(g.means),
        cams.w2c,
        cams.K,
        W,
        H,
        background=bg,
        backend=backend,
        antialiased=antialiased,
    )
    # colour / max(alpha, floor) * cover alpha + (1 - cover alpha) * bg; the black Gaussians' render over the
    # background is that last term, and the ratio has one channel: one full-size op instead of four
    ratio = cover.alpha / colour.alpha.clamp_min(COLOUR_ALPHA_FLOOR)
    return RenderOutput(rgb=torch.addcmul(cover.rgb, colour.rgb, ratio), alpha=cover.alpha, depth=None)


def render_gaussians_batch(
    g: Gaussians,
    cameras: Sequence[Cameras],
    background: Tensor | None = None,
    backend: str = "torch",
    antialiased: bool = False,
    coverage_scale: float | None = None,
    supersample: int = 1,
) -> RenderOutput:
    """:func:`render_gaussians` of a batch in one :func:`rasterize` call: member b of ``g`` (every field with a
    leading B) into ``cameras[b]`` (B sets of C cameras of one size), and with ``coverage_scale`` both passes in
    the same call. ``background``: (3,) or one per member (B, 3). rgb (B, C, H, W, 3), alpha (B, C, H, W, 1), equal
    to B calls of :func:`render_gaussians`."""
    B = g.means.shape[0]
    s = supersample
    cams = [(c.scaled(s) if s > 1 else c).to(g.means.device, g.means.dtype) for c in cameras]
    W, H = cams[0].width, cams[0].height
    w2c = torch.stack([c.w2c for c in cams])  # (B, C, 4, 4)
    K = torch.stack([c.K for c in cams])  # (B, C, 3, 3)
    bg = None if background is None else torch.as_tensor(background, device=g.means.device, dtype=g.means.dtype)
    if coverage_scale is None:
        out = rasterize(
            g.means, g.quats, g.scales, g.opacities, g.colors, w2c, K, W, H, bg, backend, antialiased=antialiased
        )
        rgb, alpha = out.rgb, out.alpha
    else:  # pass 0 the colour (over black), pass 1 the coverage (black Gaussians with wide in-plane scales over bg)

        def both(t: Tensor) -> Tensor:
            return t.unsqueeze(1).expand(B, 2, *t.shape[1:])

        widen = torch.tensor([coverage_scale, coverage_scale, 1.0], dtype=g.scales.dtype, device=g.scales.device)
        bgs = None if bg is None else torch.stack([torch.zeros_like(bg), bg], -2).expand(B, 2, 3)  # bg (3,) or (B, 3)
        out = rasterize(
            both(g.means),
            both(g.quats),
            torch.stack([g.scales, g.scales * widen], 1),
            both(g.opacities),
            torch.stack([g.colors, torch.zeros_like(g.colors)], 1),
            both(w2c),
            both(K),
            W,
            H,
            bgs,
            backend,
            antialiased=antialiased,
        )
        colour_rgb, colour_alpha = out.rgb[:, 0], out.alpha[:, 0]
        cover_rgb, alpha = out.rgb[:, 1], out.alpha[:, 1]
        rgb = torch.addcmul(cover_rgb, colour_rgb, alpha / colour_alpha.clamp_min(COLOUR_ALPHA_FLOOR))
    if s > 1:
        C = w2c.shape[1]
        rgb = block_mean(rgb.reshape(B * C, H, W, 3), s).reshape(B, C, H // s, W // s, 3)
        alpha = block_mean(alpha.reshape(B * C, H, W, 1), s).reshape(B, C, H // s, W // s, 1)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=None)
