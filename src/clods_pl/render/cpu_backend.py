"""CPU rasterizer: one autograd function around Numba kernels, ``cpu_projection`` (EWA projection, its backward,
the per-camera depth order) and ``cpu_composite`` (compositing and its backward); no torch graph in between.

Same contract and conventions as ``torch`` (``clods_pl.render.conventions.TORCH``: 16x16 tiles of the 3-sigma box,
0.3 px dilation, alpha clamp 0.99, 1/255 skip, stop before T < 1e-4, pixel centres at +0.5), so ``torch`` stays the
reference (``tests/test_render_cpu.py`` checks images and gradients against it). Float64 inside. The compositing
runs its cameras in parallel on ``torch.get_num_threads()`` Numba threads. The projection kernels are serial: a
few percent of the time, and as ``parallel=True`` kernels they cost more than they gained (at 1k Gaussians x 4
views, one thread: 0.73 ms for the four, 0.47 ms serial).
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.cpu_composite import ATTR, composite_backward, composite_forward
from clods_pl.render.cpu_projection import (
    covariance_backward,
    covariances,
    depth_order,
    project_backward,
    project_forward,
)
from clods_pl.render.projection import EPS_2D, NEAR_PLANE
from clods_pl.render.torch_backend import TILE
from clods_pl.render.types import RenderOutput

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    # workqueue: idle workers sleep. The OpenMP layer's workers spin (measured: 1.8 cores busy for 1 requested),
    # which on a 2-core workstation slows every other process and hides the single-thread cost.
    numba.config.THREADING_LAYER = "workqueue"


class _RasterizeCPU(torch.autograd.Function):
    """(means, quats, scales, opacities, colours, background) -> (rgb (C, H, W, 3), alpha (C, H, W, 1), depth
    (C, H, W, 1), empty without ``return_depth``): projection, depth order and compositing (background, alpha and
    depth images included) in Numba kernels, float64 inside; the backward runs the compositing backward, then the
    projection's chain rule (``cpu_projection``), with no autograd graph in between."""

    @staticmethod
    def forward(
        ctx,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        colors: Tensor,
        background: Tensor,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        return_depth: bool,
        antialiased: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        C, N = viewmats.shape[0], means.shape[0]
        m, q, sc, vm, K = (_f64(t) for t in (means, quats, scales, viewmats, Ks))
        cov3 = np.empty((N, 6))
        covariances(q, sc, cov3)
        mean2d, conic, depth = np.empty((C, N, 2)), np.empty((C, N, 3)), np.empty((C, N))
        radius, comp = np.empty((C, N), np.int64), np.empty((C, N))
        valid = np.empty((C, N), np.bool_)
        project_forward(
            m, cov3, vm, K, width, height, NEAR_PLANE, EPS_2D, antialiased,
            mean2d, conic, depth, radius, valid, comp,
        )  # fmt: skip
        opac = _f64(opacities)
        op = opac[None, :] * comp  # (C, N) opacity composited (with the antialiasing compensation)
        use = valid & (255.0 * op >= 1.0)
        by_depth = np.argsort(np.where(use, depth, np.inf), axis=1)  # unused last; depth_order orders the ties
        start, order, clip = depth_order(mean2d, radius, depth, use, by_depth, TILE, width, height)
        cols = _f64(colors)
        cols = np.broadcast_to(cols, (C, N, 3)) if cols.ndim == 2 else cols
        feats = np.concatenate([cols, depth[..., None]], -1) if return_depth else cols
        log_op = np.log(np.maximum(op, 1e-30))[..., None]
        attrs = np.concatenate([mean2d, conic, log_op, feats], -1).reshape(C * N, ATTR + feats.shape[-1])
        attrs = np.ascontiguousarray(attrs)
        bg = _f64(background)
        rgb, alpha = np.empty((C, height, width, 3)), np.empty((C, height, width, 1))
        depth_img = np.empty((C, height, width, 1)) if return_depth else np.empty((0, 0, 0, 0))
        trans, last = np.empty((C, height, width)), np.empty((C, height, width), np.int64)
        composite_forward(attrs, start, order, clip, bg, rgb, alpha, depth_img, trans, last)
        ctx.arrays = (m, q, sc, cov3, vm, K, opac, op, comp, attrs, start, order, clip, trans, last, depth_img, bg)
        ctx.settings = (width, height, return_depth, antialiased, colors.ndim, means.dtype)
        return tuple(torch.from_numpy(a).to(means.dtype) for a in (rgb, alpha, depth_img if return_depth else bg[:0]))

    @staticmethod
    def backward(ctx, g_rgb: Tensor, g_alpha: Tensor, g_depth: Tensor) -> tuple[Tensor | None, ...]:
        m, q, sc, cov3, vm, K, opac, op, comp, attrs, start, order, clip, trans, last, depth_img, bg = ctx.arrays
        width, height, return_depth, antialiased, color_ndim, dtype = ctx.settings
        C, N = vm.shape[0], m.shape[0]
        g_rgb = np.zeros((C, height, width, 3)) if g_rgb is None else _f64(g_rgb)
        g_alpha = np.zeros((C, height, width, 1)) if g_alpha is None else _f64(g_alpha)
        g_d = np.zeros((0, 0, 0, 0))
        if return_depth:
            g_d = np.zeros((C, height, width, 1)) if g_depth is None else _f64(g_depth)
        g_attrs = np.zeros((C * N, attrs.shape[1]))
        composite_backward(attrs, start, order, clip, bg, depth_img, trans, last, g_rgb, g_alpha, g_d, g_attrs)
        g_attrs = g_attrs.reshape(C, N, -1)
        g_op = np.where(op > 1e-30, g_attrs[..., 5] / np.maximum(op, 1e-30), 0.0)  # d log(op) / d op
        g_opac = (g_op * comp).sum(0)
        g_comp = g_op * opac[None, :] if antialiased else np.zeros((C, N))
        g_depth2d = np.ascontiguousarray(g_attrs[..., ATTR + 3]) if return_depth else np.zeros((C, N))
        g_cols = g_attrs[..., ATTR : ATTR + 3]
        g_means, g_cov = np.zeros((C, N, 3)), np.zeros((C, N, 6))
        project_backward(
            m, cov3, vm, K, width, height, NEAR_PLANE, EPS_2D, antialiased,
            np.ascontiguousarray(g_attrs[..., 0:2]), np.ascontiguousarray(g_attrs[..., 2:5]), g_depth2d, g_comp,
            g_means, g_cov,
        )  # fmt: skip
        g_quats, g_scales = np.zeros((N, 4)), np.zeros((N, 3))
        covariance_backward(q, sc, np.ascontiguousarray(g_cov.sum(0)), g_quats, g_scales)
        g_bg = None
        if ctx.needs_input_grad[5]:
            g_bg = torch.from_numpy(np.einsum("chwk,chw->k", g_rgb, trans)).to(dtype)

        def out(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

        return (
            out(g_means.sum(0)),
            out(g_quats),
            out(g_scales),
            out(g_opac),
            out(g_cols.sum(0) if color_ndim == 2 else g_cols),
            g_bg,
            None, None, None, None, None, None,
        )  # fmt: skip


def _f64(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()


def rasterize_cpu(
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
    """See :func:`clods_pl.render.rasterize` (CPU tensors; float32 or float64, computed in float64)."""
    if means.device.type != "cpu":
        raise BackendUnavailableError(
            f"backend 'cpu' needs CPU tensors, got {means.device}; use backend=torch (or gsplat) on a GPU"
        )
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    bg = torch.zeros(3, dtype=means.dtype) if background is None else background.to(means)
    rgb, alpha, depth = _RasterizeCPU.apply(
        means, quats, scales, opacities, colors, bg, viewmats, Ks, width, height, return_depth, antialiased
    )
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth if return_depth else None)


def compile_kernels() -> float:
    """Compile every Numba kernel of this backend (or load it from Numba's on-disk cache) on a tiny scene; returns
    the seconds it took. ``make install`` calls it, so the first stage to render does not pay ~15 s of compiling."""
    import time  # noqa: PLC0415  (install-time helper only)

    from clods_pl.geometry import ring_cameras  # noqa: PLC0415  (install-time helper only)

    start = time.perf_counter()
    cams = ring_cameras(2, 2.0, width=16, height=16)
    g = torch.Generator().manual_seed(0)
    params = [torch.rand(5, 3, generator=g) - 0.5, torch.randn(5, 4, generator=g), torch.full((5, 3), 0.05),
              torch.full((5,), 0.5), torch.rand(5, 3, generator=g)]  # fmt: skip
    params = [p.requires_grad_(True) for p in params]
    out = rasterize_cpu(*params, cams.w2c, cams.K, 16, 16, torch.ones(3), return_depth=True, antialiased=True)
    (out.rgb.sum() + out.depth.sum()).backward()
    return time.perf_counter() - start


if __name__ == "__main__":  # `make install`
    print(f"[clods-pl] cpu rasterizer kernels ready ({compile_kernels():.1f} s; Numba caches them)")
