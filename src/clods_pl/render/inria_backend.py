"""The original 3DGS rasterizer (graphdeco-inria ``diff_gaussian_rasterization``), when the user installed it.

clods-pl never installs or builds it (non-commercial licence). Conventions: ``viewmatrix = w2c^T``,
``projmatrix = (P w2c)^T`` with the OpenGL-style projection P built from the intrinsics (off-centre principal points
included), ``tanfov = size / (2 f)``. It returns no alpha image, so alpha comes from a second pass with white
colours over a black background. One camera per call. Its conventions differ from the ``torch`` backend's
(``clods_pl.render.conventions.INRIA_3DGS``): points closer than z = 0.2 are culled (torch: 0.01), tile rectangles
are computed in pixel-index coordinates with truncation, and the backward ignores the 0.99 alpha clamp.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.types import RenderOutput

ZNEAR, ZFAR = 0.01, 100.0
INSTALL_HINT = (
    "backend 'inria' needs the original diff_gaussian_rasterization (build graphdeco-inria/"
    "diff-gaussian-rasterization yourself; non-commercial licence) and a CUDA GPU; "
    "use backend=gsplat or torch"
)


def import_inria() -> Any:
    try:
        import diff_gaussian_rasterization as dgr  # noqa: PLC0415  (optional, user-built)
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from exc
    return dgr


def projection_matrix(K: Tensor, width: int, height: int, znear: float = ZNEAR, zfar: float = ZFAR) -> Tensor:
    """(4, 4) OpenGL-style projection (3DGS layout, z in [0, 1]) whose NDC maps to our pixel convention."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = torch.zeros(4, 4, dtype=K.dtype, device=K.device)
    P[0, 0], P[0, 2] = 2 * fx / width, (2 * cx - width) / width
    P[1, 1], P[1, 2] = 2 * fy / height, (2 * cy - height) / height
    P[2, 2], P[2, 3] = zfar / (zfar - znear), -zfar * znear / (zfar - znear)
    P[3, 2] = 1.0
    return P


def _settings(dgr: Any, K: Tensor, w2c: Tensor, width: int, height: int, bg: Tensor, antialiased: bool = False) -> Any:
    P = projection_matrix(K, width, height)
    values = dict(
        image_height=int(height),
        image_width=int(width),
        tanfovx=float(width / (2 * K[0, 0])),
        tanfovy=float(height / (2 * K[1, 1])),
        bg=bg,
        scale_modifier=1.0,
        viewmatrix=w2c.T.contiguous(),
        projmatrix=(P @ w2c).T.contiguous(),
        sh_degree=0,
        campos=torch.linalg.inv(w2c)[:3, 3].contiguous(),
        prefiltered=False,
        debug=False,
        antialiasing=antialiased,
    )
    fields = dgr.GaussianRasterizationSettings._fields
    if antialiased and "antialiasing" not in fields:
        raise BackendUnavailableError(
            "this build of diff_gaussian_rasterization has no antialiasing setting; use "
            "backend=gsplat (or torch/cpu), or set antialiased: false"
        )
    return dgr.GaussianRasterizationSettings(**{k: v for k, v in values.items() if k in fields})


def _render_one(
    dgr: Any, settings: Any, means: Tensor, opac: Tensor, scales: Tensor, quats: Tensor, colors: Tensor
) -> Tensor:
    screen = torch.zeros_like(means, requires_grad=True)
    out = dgr.GaussianRasterizer(raster_settings=settings)(
        means3D=means,
        means2D=screen,
        shs=None,
        colors_precomp=colors,
        opacities=opac,
        scales=scales,
        rotations=quats,
        cov3D_precomp=None,
    )
    return out[0]  # (3, H, W); later versions also return radii and depth


def rasterize_inria(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    return_depth: bool = False,
    antialiased: bool = False,
) -> RenderOutput:
    """See :func:`clods_pl.render.rasterize` (depth is not supported by every version: None)."""
    if means.device.type != "cuda":
        raise BackendUnavailableError(f"backend 'inria' needs CUDA tensors, got {means.device}")
    dgr = import_inria()
    C = viewmats.shape[0]
    bg = torch.zeros(3, device=means.device) if background is None else background.to(means)
    black = torch.zeros(3, device=means.device)
    white = torch.ones_like(means)
    opac = opacities.reshape(-1, 1)
    q = quats / quats.norm(dim=-1, keepdim=True)
    rgbs, alphas = [], []
    for c in range(C):
        col = colors[c] if colors.ndim == 3 else colors
        rgb_settings = _settings(dgr, Ks[c], viewmats[c], width, height, bg, antialiased)
        rgbs.append(_render_one(dgr, rgb_settings, means, opac, scales, q, col).permute(1, 2, 0))
        alpha_settings = _settings(dgr, Ks[c], viewmats[c], width, height, black, antialiased)
        a = _render_one(dgr, alpha_settings, means, opac, scales, q, white)
        alphas.append(a[:1].permute(1, 2, 0))
    return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=None)
