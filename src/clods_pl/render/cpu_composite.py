"""Numba kernels of the ``cpu`` rasterizer's compositing and its backward (see ``cpu_backend``).

Camera by camera, each Gaussian in depth order visits, row by row, the pixels of its ellipse where its alpha can
reach 1/255, within the tiles its 3-sigma box overlaps (``cpu_projection.depth_order``): per pixel the same
Gaussians in the same order as the 16x16-tile rasterizer, so the same image, with one set-up per Gaussian instead
of one per (tile, Gaussian) pair. The pixel loop is branch-free so that LLVM vectorises it (AVX2 / AVX-512 lanes
along a row): a polynomial ``exp`` (``_exp``), selects instead of ``if``s, a finished pixel marked by a negative
transmittance, flat per-camera planes indexed by unsigned integers (a signed index costs a wrap-around test per
access, which stops the vectoriser), interleaved where a loop would otherwise touch many arrays (LLVM gives up
beyond a few runtime alias checks). A row whose 16-pixel segments cannot change is skipped: in the forward, once all
their pixels are finished (re-marked every RECOUNT Gaussians); in the backward, before the last Gaussian any of their
pixels composited. A row is visited in whole multiples of LANES pixels, the ones past its end
masked (alpha 0: they are read and written back unchanged; the planes have LANES pixels of padding at the end), so
that the short rows of small Gaussians (5-6 pixels on average) run in the vector loop and not in its scalar tail.
The backward is the 3DGS one (back to front per pixel, transmittance recovered by division), in float64; each
Gaussian's gradient is summed over its pixels in registers and written once (cameras run in parallel and own their
rows of the gradient: no races).
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
LANES = 8  # rows are visited in whole multiples of this many pixels (AVX-512 doubles), the extra ones masked
SEG = 16  # row segments (pixels) that the kernels skip as a whole once no pixel in them can change
RECOUNT = 512  # the forward re-marks finished segments every this many Gaussians
DEPTH_ALPHA_FLOOR = 1e-10  # depth = accumulated depth / max(alpha, this), as in the torch reference
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
def _lanes(n: int) -> int:
    """n rounded up to a multiple of LANES (0 stays 0)."""
    return (n + LANES - 1) // LANES * LANES


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
    background: np.ndarray,
    rgb: np.ndarray,
    alpha_img: np.ndarray,
    depth_img: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Front to back, per camera: ``rgb`` (C, H, W, 3) = sum of w colour + T background, ``alpha_img`` (C, H, W, 1) =
    1 - T, ``depth_img`` (C, H, W, 1) = sum of w depth / max(alpha, DEPTH_ALPHA_FLOOR) when ``attrs`` has a depth
    column (else it is (0, 0, 0, 0)), ``trans`` (C, H, W) = T, the transmittance left, ``last`` (C, H, W) = the rank
    (position in the camera's depth order) of the last Gaussian a pixel composited, -1 for none."""
    C, H, W = trans.shape
    D = attrs.shape[1] - ATTR
    HW = H * W
    for c in prange(C):
        T_cur = np.ones(HW + LANES)  # negative once the pixel is finished: its transmittance is then -T_cur
        F0, F1, F2, F3 = np.zeros(HW + LANES), np.zeros(HW + LANES), np.zeros(HW + LANES), np.zeros(HW + LANES)
        L = np.full(HW + LANES, -1.0)
        left = HW
        alive = np.ones((H, (W + SEG - 1) // SEG), np.bool_)  # per row segment: any pixel not finished (recounted)
        for r in range(start[c + 1] - start[c]):
            if r % RECOUNT == RECOUNT - 1:  # a row whose segments are all finished is skipped (below)
                for py in range(H):
                    for s in range(alive.shape[1]):
                        if alive[py, s]:
                            any_live = False
                            for px in range(s * SEG, min(W, (s + 1) * SEG)):
                                any_live = any_live or T_cur[py * W + px] > 0.0
                            alive[py, s] = any_live
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
                busy = False  # any pixel of the row's segments not finished?
                for s in range(rx0 // SEG, (rx1 + SEG - 1) // SEG):
                    busy = busy or alive[py, s]
                if not busy:
                    continue
                row, bdy, base = lo - 0.5 * cc * dy * dy, b * dy, py * W
                for px in range(rx0, rx0 + _lanes(rx1 - rx0)):
                    i = np.uint64(base + px)
                    dx = px + 0.5 - mx
                    power = row - (0.5 * a * dx + bdy) * dx
                    alpha = min(_exp(power), ALPHA_MAX) if (power >= LOG_ALPHA_MIN and px < rx1) else 0.0
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
                T = abs(T_cur[i])
                trans[c, py, px] = T
                last[c, py, px] = int(L[i])
                rgb[c, py, px, 0] = F0[i] + T * background[0]
                rgb[c, py, px, 1] = F1[i] + T * background[1]
                rgb[c, py, px, 2] = F2[i] + T * background[2]
                alpha_img[c, py, px, 0] = 1.0 - T
                if D > 3:
                    depth_img[c, py, px, 0] = F3[i] / max(1.0 - T, DEPTH_ALPHA_FLOOR)


@njit(parallel=True, cache=True, fastmath=True)
def composite_backward(
    attrs: np.ndarray,
    start: np.ndarray,
    order: np.ndarray,
    clip: np.ndarray,
    background: np.ndarray,
    depth_img: np.ndarray,
    trans: np.ndarray,
    last: np.ndarray,
    g_rgb: np.ndarray,
    g_alpha: np.ndarray,
    g_depth: np.ndarray,
    g_attrs: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Back to front: ``g_attrs`` (C * N, ATTR + D) += d loss / d (mean x, mean y, a, b, c, log opacity, features)
    from ``g_rgb`` (C, H, W, 3), ``g_alpha`` (C, H, W, 1) and ``g_depth`` (C, H, W, 1; (0, 0, 0, 0) without depth),
    the gradients of :func:`composite_forward`'s images."""
    C, H, W = trans.shape
    D = attrs.shape[1] - ATTR
    HW = H * W
    for c in prange(C):
        # per pixel: T after the Gaussians left to visit; the sum over later ones of w f . g plus g_T * T_final
        TB = np.zeros(2 * (HW + LANES))
        L = np.full(HW + LANES, -1.0)
        G = np.zeros(4 * (HW + LANES))  # per pixel: d loss / d (colour, depth); interleaved, so the loop has few arrays
        for py in range(H):
            for px in range(W):
                i = py * W + px
                T = trans[c, py, px]
                g0, g1, g2 = g_rgb[c, py, px, 0], g_rgb[c, py, px, 1], g_rgb[c, py, px, 2]
                g_a = g_alpha[c, py, px, 0]  # d loss / d alpha, alpha = 1 - T
                if D > 3:  # depth = sum w depth / max(alpha, floor)
                    den = max(1.0 - T, DEPTH_ALPHA_FLOOR)
                    G[4 * i + 3] = g_depth[c, py, px, 0] / den
                    if 1.0 - T > DEPTH_ALPHA_FLOOR:
                        g_a -= g_depth[c, py, px, 0] * depth_img[c, py, px, 0] / den
                TB[2 * i] = T
                TB[2 * i + 1] = (g0 * background[0] + g1 * background[1] + g2 * background[2] - g_a) * T
                L[i] = last[c, py, px]
                G[4 * i], G[4 * i + 1], G[4 * i + 2] = g0, g1, g2
        u1, u2, u3, u4 = np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4)  # unsigned index arithmetic
        seg_last = np.full((H, (W + SEG - 1) // SEG), -1.0)  # per row segment: the last rank any pixel composited
        for py in range(H):
            for px in range(W):
                seg_last[py, px // SEG] = max(seg_last[py, px // SEG], L[py * W + px])
        for r in range(int(L[:HW].max()), -1, -1):
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
                reached = False  # does any pixel of the row's segments get to this Gaussian?
                for s in range(rx0 // SEG, (rx1 + SEG - 1) // SEG):
                    reached = reached or rank <= seg_last[py, s]
                if not reached:
                    continue
                row, bdy, base = lo - 0.5 * cc * dy * dy, b * dy, py * W
                for px in range(rx0, rx0 + _lanes(rx1 - rx0)):
                    i = np.uint64(base + px)
                    dx = px + 0.5 - mx
                    power = row - (0.5 * a * dx + bdy) * dx
                    raw = _exp(power)
                    on = power >= LOG_ALPHA_MIN and rank <= L[i] and px < rx1
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
