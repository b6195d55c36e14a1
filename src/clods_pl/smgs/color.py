"""Per-Gaussian colour as real spherical harmonics (degree 0..3, the 3DGS convention)."""

from __future__ import annotations

from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
MAX_SH_DEGREE = 3


def num_sh_coeffs(degree: int) -> int:
    """(degree + 1)^2."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Inverse of the degree-0 mapping ``rgb = 0.5 + C0 * sh``."""
    return (rgb - 0.5) / SH_C0


def eval_sh(sh: Tensor, dirs: Tensor | None) -> Tensor:
    """Colours from SH coefficients.

    Args:
        sh: (N, M, 3) coefficients, M = (d + 1)^2. dirs: (..., N, 3) unit view directions (camera -> Gaussian),
            needed when d > 0.
    Returns:
        (..., N, 3) RGB, ``0.5 + sum_k c_k Y_k(dir)``, clamped to >= 0 (not above 1, as in 3DGS).
    """
    M = sh.shape[1]
    out = SH_C0 * sh[:, 0]
    if M > 1:
        if dirs is None:
            raise ValueError("view directions are needed for sh_degree > 0")
        x, y, z = dirs[..., 0:1], dirs[..., 1:2], dirs[..., 2:3]
        out = out - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
        if M > 4:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out = (
                out
                + SH_C2[0] * xy * sh[:, 4]
                + SH_C2[1] * yz * sh[:, 5]
                + SH_C2[2] * (2 * zz - xx - yy) * sh[:, 6]
                + SH_C2[3] * xz * sh[:, 7]
                + SH_C2[4] * (xx - yy) * sh[:, 8]
            )
            if M > 9:
                out = (
                    out
                    + SH_C3[0] * y * (3 * xx - yy) * sh[:, 9]
                    + SH_C3[1] * xy * z * sh[:, 10]
                    + SH_C3[2] * y * (4 * zz - xx - yy) * sh[:, 11]
                    + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[:, 12]
                    + SH_C3[4] * x * (4 * zz - xx - yy) * sh[:, 13]
                    + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                    + SH_C3[6] * x * (xx - 3 * yy) * sh[:, 15]
                )
    return (out + 0.5).clamp_min(0.0)
