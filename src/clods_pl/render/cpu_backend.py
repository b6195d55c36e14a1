"""CPU rasterizer: the ``torch`` backend's projection (autograd) with compositing and its backward in Numba kernels.

Same contract and conventions as ``torch`` (``clods_pl.render.conventions.TORCH``: 16x16 tiles of the 3-sigma box,
0.3 px dilation, alpha clamp 0.99, 1/255 skip, stop before T < 1e-4, pixel centres at +0.5), so ``torch`` stays the
reference (``tests/test_render_cpu.py`` checks images and gradients against it). Work per tile: Gaussians in depth
order, each visiting only the pixels of its tile inside the box where its alpha can reach 1/255; the backward is the
3DGS one (back to front per pixel, transmittance recovered by division), in float64. Tiles run in parallel on
``torch.get_num_threads()`` Numba threads; every gradient is written per (tile, Gaussian) pair and summed with one
``index_add`` afterwards, so there are no races. One job (the kernels and the autograd function around them);
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
from clods_pl.render.projection import num_tiles, project_gaussians, tile_bounds
from clods_pl.render.torch_backend import T_MIN, TILE, _pairs
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
        for k in range(s, e):
            g = gids[k]
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            for d in range(D):
                f[d] = attrs[g, ATTR + d]
            bx0, bx1, by0, by1 = _box(mx, my, reach[g], x0, x1, y0, y1)
            q = 2.0 * (lo - LOG_ALPHA_MIN)
            step2 = math.exp(-a)
            for py in range(by0, by1):
                dy = py + 0.5 - my
                rx0, rx1 = _row(mx, a, b, cc, q, dy, bx0, bx1)
                if rx0 >= rx1:
                    continue
                G, ratio = _row_start(mx, a, b, cc, lo, dy, rx0)  # then two products per pixel, no exp
                iy = py - y0
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
        for k in range(e - 1, s - 1, -1):
            g = gids[k]
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            for d in range(D):
                f[d] = attrs[g, ATTR + d]
            bx0, bx1, by0, by1 = _box(mx, my, reach[g], x0, x1, y0, y1)
            q = 2.0 * (lo - LOG_ALPHA_MIN)
            step2 = math.exp(-a)
            g_mx = g_my = g_a = g_b = g_c = g_lo = 0.0
            for py in range(by0, by1):
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


class _Composite(torch.autograd.Function):
    """attrs (C*N, 6 + D) [mean2d, conic, log opacity, features] -> (features (C, H, W, D), transmittance (C, H, W))."""

    @staticmethod
    def forward(
        ctx, attrs: Tensor, reach: Tensor, tile_start: Tensor, gids: Tensor, shape: tuple[int, ...]
    ) -> tuple[Tensor, Tensor]:
        C, H, W, tiles_x, tiles_per_cam = shape
        a = attrs.detach().to(torch.float64).contiguous().numpy()
        r, ts, gi = reach.numpy(), tile_start.numpy(), gids.numpy()
        D = a.shape[1] - ATTR
        feat = np.zeros((C, H, W, D))
        trans = np.ones((C, H, W))
        last = np.full((C, H, W), -1, np.int64)
        _forward(a, r, ts, gi, tiles_x, tiles_per_cam, W, H, feat, trans, last)
        ctx.save_for_backward(attrs, reach, tile_start, gids)
        ctx.arrays, ctx.shape = (a, trans, last), shape
        return torch.from_numpy(feat).to(attrs.dtype), torch.from_numpy(trans).to(attrs.dtype)

    @staticmethod
    def backward(ctx, g_feat: Tensor, g_trans: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        attrs, reach, tile_start, gids = ctx.saved_tensors
        a, trans, last = ctx.arrays
        C, H, W, tiles_x, tiles_per_cam = ctx.shape
        gf = np.zeros((C, H, W, a.shape[1] - ATTR)) if g_feat is None else g_feat.to(torch.float64).numpy()
        gt = np.zeros((C, H, W)) if g_trans is None else g_trans.to(torch.float64).numpy()
        g_pair = np.zeros((gids.shape[0], a.shape[1]))
        _backward(
            a,
            reach.numpy(),
            tile_start.numpy(),
            gids.numpy(),
            tiles_x,
            tiles_per_cam,
            W,
            H,
            trans,
            last,
            np.ascontiguousarray(gf),
            np.ascontiguousarray(gt),
            g_pair,
        )
        g_attrs = torch.zeros(attrs.shape, dtype=torch.float64).index_add_(0, gids, torch.from_numpy(g_pair))
        return g_attrs.to(attrs.dtype), None, None, None, None


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
    C, N = viewmats.shape[0], means.shape[0]
    dtype = means.dtype
    p = project_gaussians(means, quats, scales, viewmats, Ks, width, height, antialiased=antialiased)
    tiles_x, tiles_y = num_tiles(width, height, TILE)
    x0, x1, y0, y1 = tile_bounds(p, TILE, tiles_x, tiles_y)
    opac = p.opacities(opacities)  # (C, N)
    op = opac.detach().to(torch.float64)
    live = p.front & (255.0 * op >= 1.0)
    x1, y1 = torch.where(live, x1, x0), torch.where(live, y1, y0)
    tile_id, gid = _pairs(x0, x1, y0, y1, p.depth, tiles_x, tiles_x * tiles_y)
    n_tiles = C * tiles_x * tiles_y
    counts = torch.bincount(tile_id, minlength=n_tiles) if tile_id.numel() else torch.zeros(n_tiles, dtype=torch.long)
    tile_start = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    # where alpha >= 1/255 is possible: |d| <= sqrt(2 ln(255 opacity) lambda_max), lambda_max <= (radius / 3)^2
    reach = torch.sqrt(2.0 * torch.log((255.0 * op).clamp_min(1.0))) * p.radius.to(torch.float64) / 3.0
    reach = (reach + 1e-3).reshape(C * N).contiguous()

    cols = colors if colors.ndim == 3 else colors.unsqueeze(0).expand(C, N, 3)
    feats = torch.cat([cols, p.depth.unsqueeze(-1)], -1) if return_depth else cols
    log_opac = torch.log(opac.clamp_min(1e-30)).unsqueeze(-1)
    attrs = torch.cat([p.mean2d, p.conic, log_opac, feats], -1).reshape(C * N, ATTR + feats.shape[-1])
    feat, trans = _Composite.apply(
        attrs, reach, tile_start, gid.contiguous(), (C, height, width, tiles_x, tiles_x * tiles_y)
    )
    T = trans.unsqueeze(-1)
    alpha = 1.0 - T
    bg = torch.zeros(3, dtype=dtype) if background is None else background.to(means)
    rgb = feat[..., :3] + T * bg
    depth = feat[..., 3:4] / alpha.clamp_min(1e-10) if return_depth else None
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth)
