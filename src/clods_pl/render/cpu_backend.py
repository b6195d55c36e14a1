"""CPU rasterizer: projection, binning, compositing and their backward in Numba kernels (``cpu_projection`` holds the
projection and binning), one autograd function around them.

Same contract and conventions as ``torch`` (``clods_pl.render.conventions.TORCH``: 16x16 tiles of the 3-sigma box,
0.3 px dilation, alpha clamp 0.99, 1/255 skip, stop before T < 1e-4, pixel centres at +0.5), so ``torch`` stays the
reference (``tests/test_render_cpu.py`` checks images and gradients against it). Work per tile: Gaussians in depth
order, each visiting only the pixels of its tile inside the box where its alpha can reach 1/255; the backward is the
3DGS one (back to front per pixel, transmittance recovered by division), in float64. Tiles run in parallel on
``torch.get_num_threads()`` Numba threads; every gradient is written per (tile, Gaussian) pair and summed per
(camera, Gaussian) afterwards, so there are no races. One job (the kernels and the autograd function around them);
over 300 lines because the forward and backward kernels are spelled out side by side.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.conventions import TORCH
from clods_pl.render.cpu_projection import (
    bin_pairs,
    covariance_backward,
    covariances,
    project_backward,
    project_forward,
)
from clods_pl.render.projection import EPS_2D, NEAR_PLANE, num_tiles
from clods_pl.render.torch_backend import T_MIN, TILE
from clods_pl.render.types import RenderOutput

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins
    # workqueue: idle workers sleep. The OpenMP layer's workers spin (measured: 1.8 cores busy for 1 requested),
    # which on a 2-core workstation slows every other process and hides the single-thread cost.
    numba.config.THREADING_LAYER = "workqueue"

ALPHA_MAX = TORCH.alpha_max
ALPHA_MIN = 1.0 / 255.0
LOG_ALPHA_MIN = math.log(ALPHA_MIN)
ATTR = 6  # columns before the features: mean x, mean y, conic a, b, c, log opacity


@njit(cache=True, inline="always")
def _row(mx: float, a: float, b: float, c: float, q: float, dy: float, x0: int, x1: int) -> tuple[int, int]:
    """Pixels [rx0, rx1) of a row (offset ``dy`` from the mean) where ``a dx^2 + 2 b dx dy + c dy^2 <= q``, i.e. where
    alpha can reach 1/255 (``q = 2 (ln opacity - ln(1/255))``), within [x0, x1); a hair wider than exact: the
    per-pixel test still decides."""
    disc = (b * dy) * (b * dy) - a * (c * dy * dy - q)
    if disc < 0.0:
        return x0, x0
    root = math.sqrt(disc)
    lo_x = mx - 0.5 + (-b * dy - root) / a - 1e-6
    hi_x = mx - 0.5 + (-b * dy + root) / a + 1e-6
    return max(x0, int(math.ceil(lo_x))), min(x1, int(math.floor(hi_x)) + 1)


@njit(cache=True, inline="always")
def _tile(t: int, tiles_x: int, tiles_per_cam: int, width: int, height: int) -> tuple[int, int, int, int, int]:
    """Camera and pixel rectangle [x0, x1) x [y0, y1) of flat tile index ``t``."""
    c, lt = t // tiles_per_cam, t % tiles_per_cam
    x0, y0 = (lt % tiles_x) * TILE, (lt // tiles_x) * TILE
    return c, x0, y0, min(x0 + TILE, width), min(y0 + TILE, height)


@njit(cache=True, inline="always")
def _row_start(mx: float, a: float, b: float, cc: float, lo: float, dy: float, rx0: int) -> tuple[float, float]:
    """(opacity * exp(power) at pixel ``rx0`` of the row, its ratio to the next pixel's): log alpha is quadratic in
    dx, so alpha(dx + 1) / alpha(dx) = exp(-a (dx + 1/2) - b dy), and that ratio changes by exp(-a) per pixel."""
    dx = rx0 + 0.5 - mx
    return (
        math.exp(lo - 0.5 * (a * dx * dx + cc * dy * dy) - b * dx * dy),
        math.exp(-0.5 * a * (2.0 * dx + 1.0) - b * dy),
    )


@njit(cache=True, inline="always")
def _box(mx: float, my: float, r: float, x0: int, x1: int, y0: int, y1: int) -> tuple[int, int, int, int]:
    """Pixels [bx0, bx1) x [by0, by1) of the tile [x0, x1) x [y0, y1) whose centres lie within r of the mean."""
    bx0 = max(x0, int(math.ceil(mx - r - 0.5)))
    bx1 = min(x1, int(math.floor(mx + r - 0.5)) + 1)
    by0 = max(y0, int(math.ceil(my - r - 0.5)))
    by1 = min(y1, int(math.floor(my + r - 0.5)) + 1)
    return bx0, bx1, by0, by1


@njit(parallel=True, cache=True)
def _forward(
    attrs: np.ndarray,
    reach: np.ndarray,
    tile_start: np.ndarray,
    gids: np.ndarray,
    tiles_x: int,
    tiles_per_cam: int,
    width: int,
    height: int,
    feat: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    D = feat.shape[-1]
    for t in prange(tile_start.shape[0] - 1):
        s, e = tile_start[t], tile_start[t + 1]
        if e == s:
            continue
        c, x0, y0, x1, y1 = _tile(t, tiles_x, tiles_per_cam, width, height)
        # the tile's pixel state lives in small local arrays (cache-resident), written out once at the end
        T_loc = np.ones((TILE, TILE))
        F_loc = np.zeros((TILE, TILE, D))
        L_loc = np.full((TILE, TILE), -1, np.int64)
        done = np.zeros((TILE, TILE), np.bool_)
        f = np.empty(D)
        left = (x1 - x0) * (y1 - y0)
        row_left = np.full(TILE, x1 - x0, np.int64)  # pixels of each row not yet saturated
        for k in range(s, e):
            g = gids[k]
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            for d in range(D):
                f[d] = attrs[g, ATTR + d]
            bx0, bx1, by0, by1 = _box(mx, my, reach[g], x0, x1, y0, y1)
            q = 2.0 * (lo - LOG_ALPHA_MIN)
            step2 = math.exp(-a)
            for py in range(by0, by1):
                iy = py - y0
                if row_left[iy] == 0:  # every pixel of this row is saturated
                    continue
                dy = py + 0.5 - my
                rx0, rx1 = _row(mx, a, b, cc, q, dy, bx0, bx1)
                if rx0 >= rx1:
                    continue
                G, ratio = _row_start(mx, a, b, cc, lo, dy, rx0)  # then two products per pixel, no exp
                for px in range(rx0, rx1):
                    raw = min(G, 1.0)
                    G *= ratio
                    ratio *= step2
                    ix = px - x0
                    if done[iy, ix] or raw < ALPHA_MIN:
                        continue
                    alpha = min(raw, ALPHA_MAX)
                    T = T_loc[iy, ix]
                    nxt = T * (1.0 - alpha)
                    if nxt < T_MIN:  # stop before the transmittance falls below T_MIN (3DGS)
                        done[iy, ix] = True
                        left -= 1
                        row_left[iy] -= 1
                        continue
                    w = alpha * T
                    for d in range(D):
                        F_loc[iy, ix, d] += w * f[d]
                    T_loc[iy, ix] = nxt
                    L_loc[iy, ix] = k
            if left == 0:
                break
        for py in range(y0, y1):
            for px in range(x0, x1):
                trans[c, py, px] = T_loc[py - y0, px - x0]
                last[c, py, px] = L_loc[py - y0, px - x0]
                for d in range(D):
                    feat[c, py, px, d] = F_loc[py - y0, px - x0, d]


@njit(parallel=True, cache=True)
def _backward(
    attrs: np.ndarray,
    reach: np.ndarray,
    tile_start: np.ndarray,
    gids: np.ndarray,
    tiles_x: int,
    tiles_per_cam: int,
    width: int,
    height: int,
    trans: np.ndarray,
    last: np.ndarray,
    g_feat: np.ndarray,
    g_trans: np.ndarray,
    g_pair: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    D = g_feat.shape[-1]
    for t in prange(tile_start.shape[0] - 1):
        s, e = tile_start[t], tile_start[t + 1]
        if e == s:
            continue
        c, x0, y0, x1, y1 = _tile(t, tiles_x, tiles_per_cam, width, height)
        T_cur = np.ones((TILE, TILE))
        behind = np.zeros((TILE, TILE))  # sum over later Gaussians of w_j f_j . g, plus g_T * T_final
        G_loc = np.zeros((TILE, TILE, D))
        L_loc = np.full((TILE, TILE), -1, np.int64)
        f = np.empty(D)
        for py in range(y0, y1):
            for px in range(x0, x1):
                iy, ix = py - y0, px - x0
                T_cur[iy, ix] = trans[c, py, px]
                behind[iy, ix] = g_trans[c, py, px] * trans[c, py, px]
                L_loc[iy, ix] = last[c, py, px]
                for d in range(D):
                    G_loc[iy, ix, d] = g_feat[c, py, px, d]
        row_last = np.full(TILE, -1, np.int64)  # per row, the last Gaussian that reached any of its pixels
        for iy in range(y1 - y0):
            for ix in range(x1 - x0):
                row_last[iy] = max(row_last[iy], L_loc[iy, ix])
        tile_last = row_last.max()
        for k in range(min(e - 1, tile_last), s - 1, -1):
            g = gids[k]
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            for d in range(D):
                f[d] = attrs[g, ATTR + d]
            bx0, bx1, by0, by1 = _box(mx, my, reach[g], x0, x1, y0, y1)
            q = 2.0 * (lo - LOG_ALPHA_MIN)
            step2 = math.exp(-a)
            g_mx = g_my = g_a = g_b = g_c = g_lo = 0.0
            for py in range(by0, by1):
                if k > row_last[py - y0]:  # no pixel of this row got as far as Gaussian k
                    continue
                dy = py + 0.5 - my
                rx0, rx1 = _row(mx, a, b, cc, q, dy, bx0, bx1)
                if rx0 >= rx1:
                    continue
                G, ratio = _row_start(mx, a, b, cc, lo, dy, rx0)
                iy = py - y0
                for px in range(rx0, rx1):
                    raw = min(G, 1.0)
                    G *= ratio
                    ratio *= step2
                    ix = px - x0
                    if k > L_loc[iy, ix] or raw < ALPHA_MIN:
                        continue
                    alpha = min(raw, ALPHA_MAX)
                    T_before = T_cur[iy, ix] / (1.0 - alpha)
                    fg = 0.0
                    for d in range(D):
                        gd = G_loc[iy, ix, d]
                        fg += f[d] * gd
                        g_pair[k, ATTR + d] += alpha * T_before * gd
                    dl_dalpha = T_before * fg - behind[iy, ix] / (1.0 - alpha)
                    behind[iy, ix] += alpha * T_before * fg
                    T_cur[iy, ix] = T_before
                    if raw < ALPHA_MAX:  # neither clamp active: d alpha / d log alpha = alpha
                        dx = px + 0.5 - mx
                        g_la = dl_dalpha * alpha
                        g_mx += g_la * (a * dx + b * dy)
                        g_my += g_la * (cc * dy + b * dx)
                        g_a += g_la * (-0.5 * dx * dx)
                        g_b += g_la * (-dx * dy)
                        g_c += g_la * (-0.5 * dy * dy)
                        g_lo += g_la
            g_pair[k, 0] += g_mx
            g_pair[k, 1] += g_my
            g_pair[k, 2] += g_a
            g_pair[k, 3] += g_b
            g_pair[k, 4] += g_c
            g_pair[k, 5] += g_lo


class _RasterizeCPU(torch.autograd.Function):
    """(means, quats, scales, opacities, colours) -> (features (C, H, W, D), transmittance (C, H, W)): projection,
    binning and compositing in Numba kernels, float64 inside; the backward runs the compositing backward, then the
    projection's chain rule (``cpu_projection``), with no autograd graph in between."""

    @staticmethod
    def forward(
        ctx,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        colors: Tensor,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        return_depth: bool,
        antialiased: bool,
    ) -> tuple[Tensor, Tensor]:
        C, N = viewmats.shape[0], means.shape[0]
        m, q, sc, vm, K = (_f64(t) for t in (means, quats, scales, viewmats, Ks))
        cov3 = np.empty((N, 6))
        covariances(q, sc, cov3)
        mean2d, conic, depth = np.empty((C, N, 2)), np.empty((C, N, 3)), np.empty((C, N))
        radius, comp = np.empty((C, N), np.int64), np.empty((C, N))
        front, valid = np.empty((C, N), np.bool_), np.empty((C, N), np.bool_)
        project_forward(
            m, cov3, vm, K, width, height, NEAR_PLANE, EPS_2D, antialiased,
            mean2d, conic, depth, radius, front, valid, comp,
        )  # fmt: skip
        opac = _f64(opacities)
        op = opac[None, :] * comp  # (C, N) opacity composited (with the antialiasing compensation)
        tiles_x, tiles_y = num_tiles(width, height, TILE)
        tile_start, gids = bin_pairs(mean2d, radius, depth, valid & (255.0 * op >= 1.0), TILE, tiles_x, tiles_y)
        # where alpha >= 1/255 is possible: |d| <= sqrt(2 ln(255 opacity) lambda_max), lambda_max <= (radius / 3)^2
        reach = (np.sqrt(2.0 * np.log(np.maximum(255.0 * op, 1.0))) * radius / 3.0 + 1e-3).reshape(C * N)
        cols = _f64(colors)
        cols = np.broadcast_to(cols, (C, N, 3)) if cols.ndim == 2 else cols
        feats = np.concatenate([cols, depth[..., None]], -1) if return_depth else cols
        log_op = np.log(np.maximum(op, 1e-30))[..., None]
        attrs = np.concatenate([mean2d, conic, log_op, feats], -1).reshape(C * N, ATTR + feats.shape[-1])
        attrs = np.ascontiguousarray(attrs)
        D = attrs.shape[1] - ATTR
        feat, trans = np.zeros((C, height, width, D)), np.ones((C, height, width))
        last = np.full((C, height, width), -1, np.int64)
        _forward(attrs, reach, tile_start, gids, tiles_x, tiles_x * tiles_y, width, height, feat, trans, last)
        ctx.arrays = (m, q, sc, cov3, vm, K, opac, op, comp, attrs, reach, tile_start, gids, trans, last)
        ctx.settings = (width, height, tiles_x, tiles_y, return_depth, antialiased, colors.ndim, means.dtype)
        return torch.from_numpy(feat).to(means.dtype), torch.from_numpy(trans).to(means.dtype)

    @staticmethod
    def backward(ctx, g_feat: Tensor, g_trans: Tensor) -> tuple[Tensor | None, ...]:
        m, q, sc, cov3, vm, K, opac, op, comp, attrs, reach, tile_start, gids, trans, last = ctx.arrays
        width, height, tiles_x, tiles_y, return_depth, antialiased, color_ndim, dtype = ctx.settings
        C, N = vm.shape[0], m.shape[0]
        D = attrs.shape[1] - ATTR
        gf = np.zeros((C, height, width, D)) if g_feat is None else _f64(g_feat)
        gt = np.zeros((C, height, width)) if g_trans is None else _f64(g_trans)
        g_pair = np.zeros((gids.shape[0], attrs.shape[1]))
        _backward(
            attrs, reach, tile_start, gids, tiles_x, tiles_x * tiles_y, width, height, trans, last, gf, gt, g_pair
        )
        g_attrs = np.zeros((C * N, attrs.shape[1]))
        _scatter_add(g_attrs, gids, g_pair)
        g_attrs = g_attrs.reshape(C, N, -1)
        g_op = np.where(op > 1e-30, g_attrs[..., 5] / np.maximum(op, 1e-30), 0.0)  # d log(op) / d op
        g_opac = (g_op * comp).sum(0)
        g_comp = g_op * opac[None, :] if antialiased else np.zeros((C, N))
        g_depth = np.ascontiguousarray(g_attrs[..., ATTR + 3]) if return_depth else np.zeros((C, N))
        g_cols = g_attrs[..., ATTR : ATTR + 3]
        g_means, g_cov = np.zeros((C, N, 3)), np.zeros((C, N, 6))
        project_backward(
            m, cov3, vm, K, width, height, NEAR_PLANE, EPS_2D, antialiased,
            np.ascontiguousarray(g_attrs[..., 0:2]), np.ascontiguousarray(g_attrs[..., 2:5]), g_depth, g_comp,
            g_means, g_cov,
        )  # fmt: skip
        g_quats, g_scales = np.zeros((N, 4)), np.zeros((N, 3))
        covariance_backward(q, sc, np.ascontiguousarray(g_cov.sum(0)), g_quats, g_scales)

        def out(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

        return (
            out(g_means.sum(0)),
            out(g_quats),
            out(g_scales),
            out(g_opac),
            out(g_cols.sum(0) if color_ndim == 2 else g_cols),
            None, None, None, None, None, None,
        )  # fmt: skip


def _f64(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).contiguous().numpy()


@njit(cache=True)
def _scatter_add(out: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """out[index[k]] += rows[k] for every k (the per-pair gradients summed per (camera, Gaussian))."""
    for k in range(index.shape[0]):
        for d in range(rows.shape[1]):
            out[index[k], d] += rows[k, d]


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
    dtype = means.dtype
    feat, trans = _RasterizeCPU.apply(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, return_depth, antialiased
    )
    T = trans.unsqueeze(-1)
    alpha = 1.0 - T
    bg = torch.zeros(3, dtype=dtype) if background is None else background.to(means)
    rgb = feat[..., :3] + T * bg
    depth = feat[..., 3:4] / alpha.clamp_min(1e-10) if return_depth else None
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
