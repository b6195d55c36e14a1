"""Numba kernels of the ``cpu`` rasterizer's compositing and its backward (see ``cpu_backend``).

Work per tile: Gaussians in depth order, each visiting only the pixels of its tile inside the ellipse where its
alpha can reach 1/255 (per-row bounds), alpha along a row by two products per pixel instead of an ``exp``; the tile's
pixel state in small local arrays. The backward is the 3DGS one (back to front per pixel, transmittance recovered by
division), in float64; every gradient is written per (tile, Gaussian) pair and summed per (camera, Gaussian)
afterwards (``scatter_add_rows``), so tiles run in parallel without races.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from clods_pl.render.conventions import TORCH
from clods_pl.render.torch_backend import T_MIN, TILE

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
def composite_forward(
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
def composite_backward(
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


@njit(cache=True)
def scatter_add_rows(out: np.ndarray, index: np.ndarray, rows: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """out[index[k]] += rows[k] for every k (the per-pair gradients summed per (camera, Gaussian))."""
    for k in range(index.shape[0]):
        for d in range(rows.shape[1]):
            out[index[k], d] += rows[k, d]
