"""Numba kernels of the ``cpu`` rasterizer's compositing and its backward (see ``cpu_backend``).

Camera by camera, each Gaussian in depth order visits, row by row, the pixels of its ellipse where its alpha can
reach 1/255, within the tiles its 3-sigma box overlaps (``cpu_projection.depth_order``): per pixel the same
Gaussians in the same order as the 16x16-tile rasterizer, so the same image, with one set-up per Gaussian instead
of one per (tile, Gaussian) pair. Along a long row alpha is stepped by two products per pixel; the short rows of
small Gaussians (most of them here) take one ``exp`` per pixel. The backward is the 3DGS one (back to front per
pixel, transmittance recovered by division), in float64; each Gaussian's gradient is summed over its pixels in
registers and written once (cameras run in parallel and own their rows of the gradient: no races).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from clods_pl.render.conventions import TORCH
from clods_pl.render.torch_backend import T_MIN

ALPHA_MAX = TORCH.alpha_max
ALPHA_MIN = 1.0 / 255.0
LOG_ALPHA_MIN = math.log(ALPHA_MIN)
ATTR = 6  # columns before the features: mean x, mean y, conic a, b, c, log opacity
SMALL_BOX = 8  # Gaussians at most this many pixels wide: every pixel of the box, an exp where it draws


@njit(cache=True, inline="always")
def _bounds(attrs: np.ndarray, clip: np.ndarray, g: int) -> tuple[int, int, int, int]:
    """Pixels [x0, x1) x [y0, y1) of Gaussian ``g``: the bounding box of the ellipse ``a dx^2 + 2 b dx dy + c dy^2 <=
    q`` where its alpha can reach 1/255 (``q = 2 (ln opacity - ln(1/255))``; a hair wider than exact, the per-pixel
    test decides), within its tile rectangle ``clip[g]``; empty when it cannot reach 1/255 anywhere."""
    mx, my, a, b, c = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4]
    q = 2.0 * (attrs[g, 5] - LOG_ALPHA_MIN)
    det = a * c - b * b
    if q <= 0.0 or det <= 0.0:
        return 0, 0, 0, 0
    hx = math.sqrt(q * c / det) + 1e-6
    hy = math.sqrt(q * a / det) + 1e-6
    x0 = max(clip[g, 0], int(math.ceil(mx - hx - 0.5)))
    x1 = min(clip[g, 1], int(math.floor(mx + hx - 0.5)) + 1)
    y0 = max(clip[g, 2], int(math.ceil(my - hy - 0.5)))
    y1 = min(clip[g, 3], int(math.floor(my + hy - 0.5)) + 1)
    return x0, x1, y0, y1


@njit(cache=True, inline="always")
def _span(mx: float, a: float, b: float, c: float, q: float, dy: float, x0: int, x1: int) -> tuple[int, int]:
    """Pixels [rx0, rx1) of a row (offset ``dy`` from the mean) inside the ellipse ``a dx^2 + 2 b dx dy + c dy^2 <=
    q``, within [x0, x1); a hair wider than exact (the per-pixel test decides)."""
    disc = (b * dy) * (b * dy) - a * (c * dy * dy - q)
    if disc < 0.0:
        return x0, x0
    root = math.sqrt(disc)
    centre = mx - 0.5 - b * dy / a
    return max(x0, int(math.ceil(centre - root / a - 1e-6))), min(x1, int(math.floor(centre + root / a + 1e-6)) + 1)


@njit(cache=True, inline="always")
def _row_start(mx: float, a: float, b: float, row: float, dy: float, rx0: int) -> tuple[float, float]:
    """(alpha before the clamp at pixel ``rx0`` of a row, its ratio to the next pixel's): log alpha is quadratic in
    dx, so alpha(dx + 1) / alpha(dx) = exp(-a (dx + 1/2) - b dy), and that ratio changes by exp(-a) per pixel."""
    dx = rx0 + 0.5 - mx
    return math.exp(row - (0.5 * a * dx + b * dy) * dx), math.exp(-0.5 * a * (2.0 * dx + 1.0) - b * dy)


@njit(cache=True, inline="always")
def _row_setup(
    small: bool, mx: float, a: float, b: float, c: float, lo: float, q: float, dy: float, x0: int, x1: int
) -> tuple[float, int, int, float, float]:
    """(log alpha at dx = 0 less the dx terms, first and end pixel, alpha there and its ratio to the next pixel) of a
    row: a small Gaussian visits every pixel of its box (G and ratio unused), a larger one its ellipse's span."""
    row = lo - 0.5 * c * dy * dy
    if small:
        return row, x0, x1, 0.0, 0.0
    rx0, rx1 = _span(mx, a, b, c, q, dy, x0, x1)
    G, ratio = _row_start(mx, a, b, row, dy, rx0)
    return row, rx0, rx1, G, ratio


@njit(parallel=True, cache=True)
def composite_forward(
    attrs: np.ndarray,
    start: np.ndarray,
    order: np.ndarray,
    clip: np.ndarray,
    feat: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Front to back: ``feat`` (C, H, W, D) += w f, ``trans`` (C, H, W) *= 1 - alpha, ``last`` (C, H, W) = the rank
    (position in the camera's depth order) of the last Gaussian a pixel composited, -1 for none."""
    C, H, W, D = feat.shape
    for c in prange(C):
        T_img, F_img, L_img = trans[c], feat[c], last[c]
        done = np.zeros((H, W), np.bool_)
        left = H * W
        for r in range(start[c + 1] - start[c]):
            g = order[start[c] + r]
            x0, x1, y0, y1 = _bounds(attrs, clip, g)
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            small = x1 - x0 <= SMALL_BOX
            q, step = 2.0 * (lo - LOG_ALPHA_MIN), (1.0 if small else math.exp(-a))
            for py in range(y0, y1):
                dy = py + 0.5 - my
                row, rx0, rx1, G, ratio = _row_setup(small, mx, a, b, cc, lo, q, dy, x0, x1)
                for px in range(rx0, rx1):
                    if small:  # the tests first: an exp only where the Gaussian draws
                        dx = px + 0.5 - mx
                        power = row - (0.5 * a * dx + b * dy) * dx
                        if power < LOG_ALPHA_MIN or done[py, px]:
                            continue
                        raw = math.exp(power)
                    else:  # along the row: two products per pixel instead of an exp
                        raw = G
                        G *= ratio
                        ratio *= step
                        if raw < ALPHA_MIN or done[py, px]:
                            continue
                    alpha = min(raw, ALPHA_MAX)
                    T = T_img[py, px]
                    nxt = T * (1.0 - alpha)
                    if nxt < T_MIN:  # stop before the transmittance falls below T_MIN (3DGS)
                        done[py, px] = True
                        left -= 1
                        continue
                    w = alpha * T
                    for d in range(D):
                        F_img[py, px, d] += w * attrs[g, ATTR + d]
                    T_img[py, px] = nxt
                    L_img[py, px] = r
            if left == 0:
                break


@njit(parallel=True, cache=True)
def composite_backward(
    attrs: np.ndarray,
    start: np.ndarray,
    order: np.ndarray,
    clip: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
    g_feat: np.ndarray,
    g_trans: np.ndarray,
    g_attrs: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Back to front: ``g_attrs`` (C * N, ATTR + D) += d loss / d (mean x, mean y, a, b, c, log opacity, features)
    from ``g_feat`` (C, H, W, D) and ``g_trans`` (C, H, W)."""
    D = g_feat.shape[-1]
    for c in prange(start.shape[0] - 1):
        T_cur = trans[c].copy()
        behind = g_trans[c] * trans[c]  # sum over later Gaussians of w_j f_j . g, plus g_T * T_final
        L_img, G_img = last[c], g_feat[c]
        for r in range(L_img.max(), -1, -1):
            g = order[start[c] + r]
            x0, x1, y0, y1 = _bounds(attrs, clip, g)
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            g_mx = g_my = g_a = g_b = g_c = g_lo = 0.0
            small = x1 - x0 <= SMALL_BOX
            q, step = 2.0 * (lo - LOG_ALPHA_MIN), (1.0 if small else math.exp(-a))
            for py in range(y0, y1):
                dy = py + 0.5 - my
                row, rx0, rx1, G, ratio = _row_setup(small, mx, a, b, cc, lo, q, dy, x0, x1)
                for px in range(rx0, rx1):
                    dx = px + 0.5 - mx
                    if small:
                        power = row - (0.5 * a * dx + b * dy) * dx
                        if power < LOG_ALPHA_MIN or r > L_img[py, px]:
                            continue
                        raw = math.exp(power)
                    else:
                        raw = G
                        G *= ratio
                        ratio *= step
                        if raw < ALPHA_MIN or r > L_img[py, px]:
                            continue
                    alpha = min(raw, ALPHA_MAX)
                    inv = 1.0 / (1.0 - alpha)
                    T_before = T_cur[py, px] * inv
                    w = alpha * T_before
                    fg = 0.0
                    for d in range(D):
                        gd = G_img[py, px, d]
                        fg += attrs[g, ATTR + d] * gd
                        g_attrs[g, ATTR + d] += w * gd
                    dl_dalpha = T_before * fg - behind[py, px] * inv
                    behind[py, px] += w * fg
                    T_cur[py, px] = T_before
                    if raw < ALPHA_MAX:  # neither clamp active: d alpha / d log alpha = alpha
                        g_la = dl_dalpha * alpha
                        g_mx += g_la * (a * dx + b * dy)
                        g_my += g_la * (cc * dy + b * dx)
                        g_a += g_la * (-0.5 * dx * dx)
                        g_b += g_la * (-dx * dy)
                        g_c += g_la * (-0.5 * dy * dy)
                        g_lo += g_la
            g_attrs[g, 0] += g_mx
            g_attrs[g, 1] += g_my
            g_attrs[g, 2] += g_a
            g_attrs[g, 3] += g_b
            g_attrs[g, 4] += g_c
            g_attrs[g, 5] += g_lo
