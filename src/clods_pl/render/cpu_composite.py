"""Numba kernels of the ``cpu`` rasterizer's compositing and its backward (see ``cpu_backend``).

Camera by camera, each Gaussian in depth order visits, row by row, the pixels of its ellipse where its alpha can
reach 1/255, within the tiles its 3-sigma box overlaps (``cpu_projection.depth_order``): per pixel the same
Gaussians in the same order as the 16x16-tile rasterizer, so the same image, with one set-up per Gaussian instead
of one per (tile, Gaussian) pair. The pixel loop is branch-free so that LLVM vectorises it (AVX2 / AVX-512 lanes
along a row): a polynomial ``exp`` (``_exp``), selects instead of ``if``s, a finished pixel marked by a negative
transmittance, flat per-camera planes indexed by unsigned integers (a signed index costs a wrap-around test per
access, which stops the vectoriser), interleaved where a loop would otherwise touch many arrays (LLVM gives up
beyond a few runtime alias checks). The backward is the 3DGS one (back to front per pixel, transmittance
recovered by division), in float64; each Gaussian's gradient is summed over its pixels in registers and written
once (cameras run in parallel and own their rows of the gradient: no races).
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
SMALL_BOX = 8  # Gaussians at most this many pixels wide visit every pixel of their box, larger ones their ellipse


@njit(cache=True, inline="always")
def _exp(x: float) -> float:
    """exp(x) to 3e-13 relative for x in [-8, 0.5] (x is clamped to it; below ln(1/255) and above ln(0.99) the
    callers do not use the value): the degree-8 Taylor polynomial of exp(x / 64), squared six times. Plain
    arithmetic, so a loop that calls it vectorises (``math.exp`` is a scalar libm call)."""
    y = min(max(x, -8.0), 0.5) * 0.015625
    p = 1.0 + y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0 + y * (
        1.0 / 720.0 + y * (1.0 / 5040.0 + y * (1.0 / 40320.0))))))))  # fmt: skip
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    p = p * p
    return p * p


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
def _row(
    small: bool, mx: float, a: float, b: float, c: float, q: float, dy: float, x0: int, x1: int
) -> tuple[int, int]:
    """Pixels of a row to visit: the whole box for a small Gaussian, its ellipse's span for a larger one."""
    if small:
        return x0, x1
    return _span(mx, a, b, c, q, dy, x0, x1)


@njit(parallel=True, cache=True, fastmath=True)
def composite_forward(
    attrs: np.ndarray,
    start: np.ndarray,
    order: np.ndarray,
    clip: np.ndarray,
    feat: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Front to back: ``feat`` (C, H, W, D) = sum of w f, ``trans`` (C, H, W) = the transmittance left (1 where
    nothing drew), ``last`` (C, H, W) = the rank (position in the camera's depth order) of the last Gaussian a pixel
    composited, -1 for none. D is 3 (colour) or 4 (colour and depth)."""
    C, H, W, D = feat.shape
    HW = H * W
    for c in prange(C):
        T_cur = np.ones(HW)  # negative once the pixel is finished: its transmittance is then -T_cur
        F0, F1, F2, F3 = np.zeros(HW), np.zeros(HW), np.zeros(HW), np.zeros(HW)  # F3: depth (or unused zeros)
        L = np.full(HW, -1.0)
        left = HW
        for r in range(start[c + 1] - start[c]):
            g = order[start[c] + r]
            x0, x1, y0, y1 = _bounds(attrs, clip, g)
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            f0, f1, f2 = attrs[g, ATTR], attrs[g, ATTR + 1], attrs[g, ATTR + 2]
            f3 = attrs[g, ATTR + 3] if D > 3 else 0.0
            small, q, rank = x1 - x0 <= SMALL_BOX, 2.0 * (lo - LOG_ALPHA_MIN), float(r)
            stopped = 0
            for py in range(y0, y1):
                dy = py + 0.5 - my
                rx0, rx1 = _row(small, mx, a, b, cc, q, dy, x0, x1)
                row, bdy, base = lo - 0.5 * cc * dy * dy, b * dy, py * W
                for px in range(rx0, rx1):
                    i = np.uint64(base + px)
                    dx = px + 0.5 - mx
                    power = row - (0.5 * a * dx + bdy) * dx
                    alpha = min(_exp(power), ALPHA_MAX) if power >= LOG_ALPHA_MIN else 0.0
                    T = T_cur[i]  # negative: the pixel is finished, with transmittance -T
                    nxt = T * (1.0 - alpha)
                    live = T > 0.0
                    stop = live and nxt < T_MIN  # stop before the transmittance falls below T_MIN (3DGS)
                    draw = live and not stop
                    w = alpha * T if draw else 0.0
                    T_cur[i] = nxt if draw else (-T if stop else T)
                    stopped += 1 if stop else 0
                    F0[i] += w * f0
                    F1[i] += w * f1
                    F2[i] += w * f2
                    F3[i] += w * f3
                    L[i] = rank if w > 0.0 else L[i]
            left -= stopped
            if left == 0:
                break
        for py in range(H):
            for px in range(W):
                i = py * W + px
                trans[c, py, px] = abs(T_cur[i])
                last[c, py, px] = int(L[i])
                for d in range(D):
                    feat[c, py, px, d] = (F0, F1, F2, F3)[d][i]


@njit(parallel=True, cache=True, fastmath=True)
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
    C, H, W, D = g_feat.shape
    HW = H * W
    for c in prange(C):
        TB = np.empty(2 * HW)  # per pixel: T after the Gaussians left to visit; the sum over later ones of w f . g
        # plus g_T * T_final
        L = np.empty(HW)
        G = np.zeros(4 * HW)  # per pixel: d loss / d (colour, depth); interleaved, so the loop has few arrays
        for py in range(H):
            for px in range(W):
                i = py * W + px
                TB[2 * i] = trans[c, py, px]
                TB[2 * i + 1] = g_trans[c, py, px] * trans[c, py, px]
                L[i] = last[c, py, px]
                for d in range(D):
                    G[4 * i + d] = g_feat[c, py, px, d]
        u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)  # unsigned index arithmetic
        for r in range(int(L.max()), -1, -1):
            g = order[start[c] + r]
            x0, x1, y0, y1 = _bounds(attrs, clip, g)
            mx, my, a, b, cc, lo = attrs[g, 0], attrs[g, 1], attrs[g, 2], attrs[g, 3], attrs[g, 4], attrs[g, 5]
            f0, f1, f2 = attrs[g, ATTR], attrs[g, ATTR + 1], attrs[g, ATTR + 2]
            f3 = attrs[g, ATTR + 3] if D > 3 else 0.0
            small, q, rank = x1 - x0 <= SMALL_BOX, 2.0 * (lo - LOG_ALPHA_MIN), float(r)
            g_mx = g_my = g_a = g_b = g_c = g_lo = g_f0 = g_f1 = g_f2 = g_f3 = 0.0
            for py in range(y0, y1):
                dy = py + 0.5 - my
                rx0, rx1 = _row(small, mx, a, b, cc, q, dy, x0, x1)
                row, bdy, base = lo - 0.5 * cc * dy * dy, b * dy, py * W
                for px in range(rx0, rx1):
                    i = np.uint64(base + px)
                    dx = px + 0.5 - mx
                    power = row - (0.5 * a * dx + bdy) * dx
                    raw = _exp(power)
                    on = power >= LOG_ALPHA_MIN and rank <= L[i]
                    alpha = min(raw, ALPHA_MAX) if on else 0.0  # 0: the pixel is left as it is
                    inv = 1.0 / (1.0 - alpha)
                    i2, i4 = u2 * i, u4 * i
                    T_before = TB[i2] * inv
                    w = alpha * T_before
                    gd0, gd1, gd2, gd3 = G[i4], G[i4 + u1], G[i4 + u2], G[i4 + u3]
                    fg = f0 * gd0 + f1 * gd1 + f2 * gd2 + f3 * gd3
                    g_f0 += w * gd0
                    g_f1 += w * gd1
                    g_f2 += w * gd2
                    g_f3 += w * gd3
                    bh = TB[i2 + u1]
                    dl_dalpha = T_before * fg - bh * inv
                    TB[i2 + u1] = bh + w * fg
                    TB[i2] = T_before
                    g_la = dl_dalpha * alpha if raw < ALPHA_MAX else 0.0  # d alpha / d log alpha, no clamp active
                    g_mx += g_la * (a * dx + bdy)
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
            g_attrs[g, ATTR] += g_f0
            g_attrs[g, ATTR + 1] += g_f1
            g_attrs[g, ATTR + 2] += g_f2
            if D > 3:
                g_attrs[g, ATTR + 3] += g_f3
