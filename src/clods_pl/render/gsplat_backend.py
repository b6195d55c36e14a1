"""gsplat 1.5.3 backend (CUDA): ``gsplat.rasterization`` in classic mode.

Same camera model, projection, 0.3 px dilation, near plane (0.01), 1/255 skip, 1e-4 transmittance stop and pixel
centres (+0.5) as the ``torch`` backend, but gsplat's own conventions in two places
(``clods_pl.render.conventions.GSPLAT_1_5``): alpha is clamped at 0.999 (torch: 0.99), and each Gaussian reaches
every pixel where its alpha passes 1/255 (an opacity-aware per-axis box) instead of only the 16x16 tiles its 3-sigma
box overlaps. Images differ from ``torch`` by up to ~0.06 at single pixels of opaque scenes (mean ~1e-5); the GPU
parity tests compare with the torch reference run under ``GSPLAT_1_5``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.projection import EPS_2D, NEAR_PLANE
from clods_pl.render.types import RenderOutput

INSTALL_HINT = "backend 'gsplat' needs `pip install gsplat==1.5.3` and a CUDA GPU; use backend=torch on the CPU"


def import_gsplat() -> Any:
    """``gsplat`` or a clear BackendUnavailableError."""
    try:
        import gsplat  # noqa: PLC0415  (optional dependency, CUDA only)
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from exc
    return gsplat


def rasterize_gsplat(
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
    """See :func:`clods_pl.render.rasterize` (leading batch dims included)."""
    if means.device.type != "cuda":
        raise BackendUnavailableError(
            f"backend 'gsplat' needs CUDA tensors, got {means.device}; use backend=torch on the CPU"
        )
    gsplat = import_gsplat()
    cams = viewmats.shape[:-2]  # (*B, C): gsplat renders a batch of scenes (leading dims) in one call
    # gsplat appends the zero depth channel to the backgrounds itself in RGB+ED mode
    bgs = None if background is None else background.to(means).unsqueeze(-2).expand(*cams, 3).contiguous()
    render, alpha, _meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        near_plane=NEAR_PLANE,
        eps2d=EPS_2D,
        packed=False,
        rasterize_mode="antialiased" if antialiased else "classic",
        render_mode="RGB+ED" if return_depth else "RGB",
        backgrounds=bgs,
        sh_degree=None,
    )
    rgb = render[..., :3]
    depth = render[..., 3:4] if return_depth else None
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
