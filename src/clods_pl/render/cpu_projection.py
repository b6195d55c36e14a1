"""Numba kernels for the ``cpu`` rasterizer's projection, its backward, and each camera's depth order.

The same EWA projection as :func:`clods_pl.render.projection.project_gaussians` (the torch reference), computed per
(camera, Gaussian) in float64 without autograd: camera-space centre ``t = R mu + T``, ``Sigma = M M^T`` with
``M = R(q) diag(s)``, the perspective Jacobian at ``t`` with x/z and y/z clamped to 1.3x the field of view, the 2D
covariance plus 0.3 px^2, its conic, 3-sigma radius, and (antialiased) Mip-Splatting's compensation. The backward
is the chain rule of that forward written out (no autograd graph); ``tests/test_render_cpu.py`` checks it against
torch's autograd of the reference. The depth order sorts each camera's Gaussians by depth, ties by index, as
the reference's stable sort does, and gives each the pixels of the tiles its 3-sigma box overlaps. Over 300 lines
because each forward kernel has its backward next to it, spelled out.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

FOV_CLAMP = 1.3


@njit(cache=True)
def _rotation(qw: float, qx: float, qy: float, qz: float) -> tuple:
    """(w, x, y, z, norm, R00, R01, ..., R22): the normalised quaternion, its norm and its rotation matrix."""
    norm = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
    w, x, y, z = qw / norm, qx / norm, qy / norm, qz / norm
    return (
        w, x, y, z, norm,
        1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y),
        2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x),
        2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y),
    )  # fmt: skip


@njit(cache=True)
def covariances(quats: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover  (compiled)
    """out (N, 6) = the upper triangle (00, 01, 02, 11, 12, 22) of ``M M^T``, ``M = R(q) diag(s)``."""
    for n in range(quats.shape[0]):
        r = _rotation(quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3])
        a0, a1, a2 = scales[n, 0] ** 2, scales[n, 1] ** 2, scales[n, 2] ** 2
        out[n, 0] = r[5] * r[5] * a0 + r[6] * r[6] * a1 + r[7] * r[7] * a2
        out[n, 1] = r[5] * r[8] * a0 + r[6] * r[9] * a1 + r[7] * r[10] * a2
        out[n, 2] = r[5] * r[11] * a0 + r[6] * r[12] * a1 + r[7] * r[13] * a2
        out[n, 3] = r[8] * r[8] * a0 + r[9] * r[9] * a1 + r[10] * r[10] * a2
        out[n, 4] = r[8] * r[11] * a0 + r[9] * r[12] * a1 + r[10] * r[13] * a2
        out[n, 5] = r[11] * r[11] * a0 + r[12] * r[12] * a1 + r[13] * r[13] * a2


@njit(cache=True)
def _sandwich(V: np.ndarray, s: np.ndarray) -> tuple:
    """Upper triangle of ``A S A^T`` (A = V[:3, :3]; S symmetric, given by its upper triangle ``s`` (6,))."""
    return _sym_product(
        V[0, 0], V[0, 1], V[0, 2], V[1, 0], V[1, 1], V[1, 2], V[2, 0], V[2, 1], V[2, 2],
        s[0], s[1], s[2], s[3], s[4], s[5],
    )  # fmt: skip


@njit(cache=True)
def _sym_product(a00, a01, a02, a10, a11, a12, a20, a21, a22, s00, s01, s02, s11, s12, s22) -> tuple:  # noqa: ANN001
    """Upper triangle of ``A S A^T`` for a 3x3 ``A`` (row-major scalars) and a symmetric ``S``."""
    r00 = a00 * s00 + a01 * s01 + a02 * s02
    r01 = a00 * s01 + a01 * s11 + a02 * s12
    r02 = a00 * s02 + a01 * s12 + a02 * s22
    r10 = a10 * s00 + a11 * s01 + a12 * s02
    r11 = a10 * s01 + a11 * s11 + a12 * s12
    r12 = a10 * s02 + a11 * s12 + a12 * s22
    r20 = a20 * s00 + a21 * s01 + a22 * s02
    r21 = a20 * s01 + a21 * s11 + a22 * s12
    r22 = a20 * s02 + a21 * s12 + a22 * s22
    return (
        r00 * a00 + r01 * a01 + r02 * a02,
        r00 * a10 + r01 * a11 + r02 * a12,
        r00 * a20 + r01 * a21 + r02 * a22,
        r10 * a10 + r11 * a11 + r12 * a12,
        r10 * a20 + r11 * a21 + r12 * a22,
        r20 * a20 + r21 * a21 + r22 * a22,
    )


@njit(cache=True)
def _camera(V: np.ndarray, K: np.ndarray, width: int, height: int, mean: np.ndarray, near: float) -> tuple:
    """(x, y, z, zs, fx, fy, cx, cy, ux, uy, ux_c, uy_c, in_x, in_y): camera-space centre, the safe depth, the
    intrinsics, x/z and y/z, the same clamped to 1.3x the field of view, and whether each was inside it."""
    x = V[0, 0] * mean[0] + V[0, 1] * mean[1] + V[0, 2] * mean[2] + V[0, 3]
    y = V[1, 0] * mean[0] + V[1, 1] * mean[1] + V[1, 2] * mean[2] + V[1, 3]
    z = V[2, 0] * mean[0] + V[2, 1] * mean[1] + V[2, 2] * mean[2] + V[2, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    lxp = (width - cx) / fx + (FOV_CLAMP - 1.0) * tan_x
    lxn = cx / fx + (FOV_CLAMP - 1.0) * tan_x
    lyp = (height - cy) / fy + (FOV_CLAMP - 1.0) * tan_y
    lyn = cy / fy + (FOV_CLAMP - 1.0) * tan_y
    zs = z if z > near else 1.0
    ux, uy = x / zs, y / zs
    ux_c, uy_c = min(lxp, max(-lxn, ux)), min(lyp, max(-lyn, uy))
    in_x = 1.0 if -lxn < ux < lxp else 0.0
    in_y = 1.0 if -lyn < uy < lyp else 0.0
    return x, y, z, zs, fx, fy, cx, cy, ux, uy, ux_c, uy_c, in_x, in_y


@njit(cache=True)
def project_forward(
    means: np.ndarray,
    cov3: np.ndarray,
    viewmats: np.ndarray,
    Ks: np.ndarray,
    width: int,
    height: int,
    near: float,
    eps2d: float,
    antialiased: bool,
    mean2d: np.ndarray,
    conic: np.ndarray,
    depth: np.ndarray,
    radius: np.ndarray,
    valid: np.ndarray,
    comp: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Outputs (C, N, ...): mean2d (2), conic (3), depth, radius (int64), valid (in front, non-degenerate, on
    screen), comp (1 unless antialiased).
    ``cov3`` (N, 6): :func:`covariances`."""
    C, N = viewmats.shape[0], means.shape[0]
    for idx in range(C * N):
        c, n = idx // N, idx % N
        V = viewmats[c]
        x, y, z, zs, fx, fy, cx, cy, _, _, ux_c, uy_c, _, _ = _camera(V, Ks[c], width, height, means[n], near)
        s00, s01, s02, s11, s12, s22 = _sandwich(V, cov3[n])
        j00, j02, j11, j12 = fx / zs, -fx * ux_c / zs, fy / zs, -fy * uy_c / zs
        c00 = j00 * j00 * s00 + 2.0 * j00 * j02 * s02 + j02 * j02 * s22
        c01 = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
        c11 = j11 * j11 * s11 + 2.0 * j11 * j12 * s12 + j12 * j12 * s22
        a, b, cc = c00 + eps2d, c01, c11 + eps2d
        det = a * cc - b * b
        ds = det if det > 0 else 1.0
        conic[c, n, 0], conic[c, n, 1], conic[c, n, 2] = cc / ds, -b / ds, a / ds
        mid = 0.5 * (a + cc)
        r = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(mid * mid - det, 0.1))))
        radius[c, n] = r
        mx, my = fx * x / zs + cx, fy * y / zs + cy
        mean2d[c, n, 0], mean2d[c, n, 1] = mx, my
        depth[c, n] = z
        fr = z > near and det > 0
        valid[c, n] = fr and r > 0 and mx + r > 0 and mx - r < width and my + r > 0 and my - r < height
        comp[c, n] = math.sqrt(max((c00 * c11 - b * b) / ds, 1e-12)) if antialiased else 1.0


@njit(cache=True)
def project_backward(
    means: np.ndarray,
    cov3: np.ndarray,
    viewmats: np.ndarray,
    Ks: np.ndarray,
    width: int,
    height: int,
    near: float,
    eps2d: float,
    antialiased: bool,
    g_mean2d: np.ndarray,
    g_conic: np.ndarray,
    g_depth: np.ndarray,
    g_comp: np.ndarray,
    g_means: np.ndarray,
    g_cov3: np.ndarray,
) -> None:  # pragma: no cover  (compiled)
    """Per (camera, Gaussian): the gradient of the mean (C, N, 3) and of the 3D covariance as ``Q = dL/dS +
    (dL/dS)^T`` (C, N, 6, upper triangle) from those of mean2d, conic, depth and comp; :func:`covariance_backward`
    takes Q summed over cameras to the quaternions and scales."""
    C, N = viewmats.shape[0], means.shape[0]
    for idx in range(C * N):
        c, n = idx // N, idx % N
        gm0, gm1 = g_mean2d[c, n, 0], g_mean2d[c, n, 1]
        gq0, gq1, gq2 = g_conic[c, n, 0], g_conic[c, n, 1], g_conic[c, n, 2]
        gd, gk = g_depth[c, n], g_comp[c, n]
        if gm0 == 0.0 and gm1 == 0.0 and gq0 == 0.0 and gq1 == 0.0 and gq2 == 0.0 and gd == 0.0 and gk == 0.0:
            continue
        V = viewmats[c]
        x, y, z, zs, fx, fy, _, _, _, _, ux_c, uy_c, in_x, in_y = _camera(V, Ks[c], width, height, means[n], near)
        s00, s01, s02, s11, s12, s22 = _sandwich(V, cov3[n])
        tx, ty = zs * ux_c, zs * uy_c
        j00, j02, j11, j12 = fx / zs, -fx * ux_c / zs, fy / zs, -fy * uy_c / zs
        c00 = j00 * j00 * s00 + 2.0 * j00 * j02 * s02 + j02 * j02 * s22
        c01 = j00 * j11 * s01 + j00 * j12 * s02 + j02 * j11 * s12 + j02 * j12 * s22
        c11 = j11 * j11 * s11 + 2.0 * j11 * j12 * s12 + j12 * j12 * s22
        a, b, cc = c00 + eps2d, c01, c11 + eps2d
        det = a * cc - b * b
        ga = gb = gc = 0.0
        if det > 0:
            inv = 1.0 / det
            inv2 = inv * inv
            ga = -gq0 * cc * cc * inv2 + gq1 * b * cc * inv2 + gq2 * (inv - a * cc * inv2)
            gb = 2.0 * gq0 * cc * b * inv2 + gq1 * (-inv - 2.0 * b * b * inv2) + 2.0 * gq2 * a * b * inv2
            gc = gq0 * (inv - a * cc * inv2) + gq1 * a * b * inv2 - gq2 * a * a * inv2
            if antialiased and gk != 0.0:
                draw = c00 * c11 - b * b
                ratio = draw * inv
                if ratio > 1e-12:
                    gr = gk * 0.5 / math.sqrt(ratio)
                    ga += gr * (c11 * inv - draw * cc * inv2)
                    gc += gr * (c00 * inv - draw * a * inv2)
                    gb += gr * (-2.0 * b * inv + 2.0 * draw * b * inv2)
        # cov2 = J Sc J^T, d/d cov2 = [[ga, gb], [0, gc]] (b is cov2[0, 1] only), J = [[j00, 0, j02], [0, j11, j12]]
        # P = g Sc + g Sc^T (symmetric); g J = (G2 + G2^T) J Sc
        p00 = 2.0 * ga * j00 * j00
        p01 = gb * j00 * j11
        p02 = 2.0 * ga * j00 * j02 + gb * j00 * j12
        p11 = 2.0 * gc * j11 * j11
        p12 = gb * j02 * j11 + 2.0 * gc * j11 * j12
        p22 = 2.0 * ga * j02 * j02 + 2.0 * gb * j02 * j12 + 2.0 * gc * j12 * j12
        js00, js01, js02 = j00 * s00 + j02 * s02, j00 * s01 + j02 * s12, j00 * s02 + j02 * s22
        js10, js11, js12 = j11 * s01 + j12 * s02, j11 * s11 + j12 * s12, j11 * s12 + j12 * s22
        gj00 = 2.0 * ga * js00 + gb * js10
        gj02 = 2.0 * ga * js02 + gb * js12
        gj11 = gb * js01 + 2.0 * gc * js11
        gj12 = gb * js02 + 2.0 * gc * js12
        z2, z3 = zs * zs, zs * zs * zs
        gzs = -fx / z2 * gj00 - fy / z2 * gj11 + 2.0 * fx * tx / z3 * gj02 + 2.0 * fy * ty / z3 * gj12
        gtx, gty = -fx / z2 * gj02, -fy / z2 * gj12
        gx = in_x * gtx + fx / zs * gm0
        gy = in_y * gty + fy / zs * gm1
        gzs += (1.0 - in_x) * gtx * ux_c + (1.0 - in_y) * gty * uy_c - fx * x / z2 * gm0 - fy * y / z2 * gm1
        gz = gd + (gzs if z > near else 0.0)
        for j in range(3):
            g_means[c, n, j] = V[0, j] * gx + V[1, j] * gy + V[2, j] * gz
        # Q = V^T P V (P given by its upper triangle)
        q = _sandwich_t(V, p00, p01, p02, p11, p12, p22)
        for j in range(6):
            g_cov3[c, n, j] = q[j]


@njit(cache=True)
def _sandwich_t(V: np.ndarray, p00: float, p01: float, p02: float, p11: float, p12: float, p22: float) -> tuple:
    """Upper triangle of ``A^T P A`` (A = V[:3, :3], P symmetric)."""
    return _sym_product(
        V[0, 0], V[1, 0], V[2, 0], V[0, 1], V[1, 1], V[2, 1], V[0, 2], V[1, 2], V[2, 2],
        p00, p01, p02, p11, p12, p22,
    )  # fmt: skip


@njit(cache=True)
def covariance_backward(
    quats: np.ndarray, scales: np.ndarray, g_cov3: np.ndarray, g_quats: np.ndarray, g_scales: np.ndarray
) -> None:  # pragma: no cover  (compiled)
    """Quaternion (N, 4) and scale (N, 3) gradients from ``Q`` (N, 6) = dL/dS + (dL/dS)^T summed over cameras:
    ``dL/dM = Q M`` with ``M = R(q) diag(s)``, then through ``R`` and the quaternion's normalisation."""
    for n in range(quats.shape[0]):
        r = _rotation(quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3])
        w, qx, qy, qz, qnorm = r[0], r[1], r[2], r[3], r[4]
        q00, q01, q02 = g_cov3[n, 0], g_cov3[n, 1], g_cov3[n, 2]
        q11, q12, q22 = g_cov3[n, 3], g_cov3[n, 4], g_cov3[n, 5]
        s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
        gR = np.empty(9)
        gs0 = gs1 = gs2 = 0.0
        for i in range(3):
            qi0 = q00 if i == 0 else (q01 if i == 1 else q02)
            qi1 = q01 if i == 0 else (q11 if i == 1 else q12)
            qi2 = q02 if i == 0 else (q12 if i == 1 else q22)
            # (Q R)_ij, then dL/dM_ij = (Q R)_ij s_j
            m0 = (qi0 * r[5] + qi1 * r[8] + qi2 * r[11]) * s0
            m1 = (qi0 * r[6] + qi1 * r[9] + qi2 * r[12]) * s1
            m2 = (qi0 * r[7] + qi1 * r[10] + qi2 * r[13]) * s2
            gR[3 * i], gR[3 * i + 1], gR[3 * i + 2] = m0 * s0, m1 * s1, m2 * s2
            gs0 += m0 * r[5 + 3 * i]
            gs1 += m1 * r[6 + 3 * i]
            gs2 += m2 * r[7 + 3 * i]
        g_scales[n, 0], g_scales[n, 1], g_scales[n, 2] = gs0, gs1, gs2
        g00, g01, g02, g10, g11, g12, g20, g21, g22 = gR[0], gR[1], gR[2], gR[3], gR[4], gR[5], gR[6], gR[7], gR[8]
        dw = 2.0 * (-qz * g01 + qy * g02 + qz * g10 - qx * g12 - qy * g20 + qx * g21)
        dx = 2.0 * (qy * g01 + qz * g02 + qy * g10 - 2.0 * qx * g11 - w * g12 + qz * g20 + w * g21 - 2.0 * qx * g22)
        dy = 2.0 * (-2.0 * qy * g00 + qx * g01 + w * g02 + qx * g10 + qz * g12 - w * g20 + qz * g21 - 2.0 * qy * g22)
        dz = 2.0 * (-2.0 * qz * g00 - w * g01 + qx * g02 + w * g10 - 2.0 * qz * g11 + qy * g12 + qx * g20 + qy * g21)
        dot = w * dw + qx * dx + qy * dy + qz * dz
        g_quats[n, 0] = (dw - w * dot) / qnorm
        g_quats[n, 1] = (dx - qx * dot) / qnorm
        g_quats[n, 2] = (dy - qy * dot) / qnorm
        g_quats[n, 3] = (dz - qz * dot) / qnorm


@njit(cache=True)
def depth_order(
    mean2d: np.ndarray,
    radius: np.ndarray,
    depth: np.ndarray,
    use: np.ndarray,
    by_depth: np.ndarray,
    tile: int,
    width: int,
    height: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover  (compiled)
    """(start (C + 1,), order (M,), clip (C * N, 4)): each camera's drawn Gaussians (flat index c * N + n) in
    ``order[start[c]:start[c + 1]]``, sorted by depth with ties in index order (the reference's stable sort), and each
    one's pixel rectangle [x0, x1) x [y0, y1): the union of the tiles its 3-sigma box overlaps, which is where the
    tile rasterizer lets it draw. ``by_depth`` (C, N): any argsort of each camera's depth with the unused Gaussians
    last (NumPy's quicksort, several times faster than Numba's); runs of equal depth are put in index order here."""
    C, N = use.shape
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    start = np.zeros(C + 1, np.int64)
    for c in range(C):
        start[c + 1] = start[c] + use[c].sum()
    order = np.empty(start[-1], np.int64)
    clip = np.zeros((C * N, 4), np.int64)
    for c in range(C):
        srt, d, m = by_depth[c], depth[c], start[c + 1] - start[c]
        i = 0
        while i < m:
            j = i + 1
            while j < m and d[srt[j]] == d[srt[i]]:
                j += 1
            if j - i > 1:
                srt[i:j] = np.sort(srt[i:j])
            i = j
        for k in range(m):
            n = srt[k]
            r = float(radius[c, n])
            mx, my = mean2d[c, n, 0], mean2d[c, n, 1]
            g = c * N + n
            clip[g, 0] = min(max(int(math.floor((mx - r) / tile)), 0), tiles_x) * tile
            clip[g, 1] = min(min(max(int(math.ceil((mx + r) / tile)), 0), tiles_x) * tile, width)
            clip[g, 2] = min(max(int(math.floor((my - r) / tile)), 0), tiles_y) * tile
            clip[g, 3] = min(min(max(int(math.ceil((my + r) / tile)), 0), tiles_y) * tile, height)
            order[start[c] + k] = g
    return start, order, clip
