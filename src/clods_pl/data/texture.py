"""Procedural cloth texture: enough detail to track motion, distinct front and back colours."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FRONT_A, FRONT_B = (0.85, 0.15, 0.12), (0.95, 0.85, 0.25)  # red / yellow checks
BACK_A, BACK_B = (0.10, 0.35, 0.80), (0.75, 0.90, 0.95)  # blue / pale blue checks
CHECKS = (8, 6)
STRIPE_FREQ = 23.0


def cloth_texture(uv: Tensor, front: Tensor, checks: tuple[int, int] = CHECKS) -> Tensor:
    """RGB albedo at texture coordinates.

    Args:
        uv: (..., 2) in [0, 1]^2 (material coordinates normalised by the flag size).
        front: (...) bool, True where the front side is seen.
    Returns:
        (..., 3) float in [0, 1]: a checkerboard (front red/yellow, back blue/pale), thin diagonal stripes and a
        smooth low-frequency shade, so every region of the cloth is locally distinctive.
    """
    u, v = uv[..., 0], uv[..., 1]
    check = ((torch.floor(u * checks[0]) + torch.floor(v * checks[1])) % 2).unsqueeze(-1)
    fa, fb = (
        torch.tensor(FRONT_A, dtype=uv.dtype, device=uv.device),
        torch.tensor(FRONT_B, dtype=uv.dtype, device=uv.device),
    )
    ba, bb = (
        torch.tensor(BACK_A, dtype=uv.dtype, device=uv.device),
        torch.tensor(BACK_B, dtype=uv.dtype, device=uv.device),
    )
    front_rgb = fa * check + fb * (1 - check)
    back_rgb = ba * check + bb * (1 - check)
    rgb = torch.where(front.unsqueeze(-1), front_rgb, back_rgb)
    stripe = (torch.sin(STRIPE_FREQ * math.pi * (u + 0.6 * v)) > 0.85).to(uv.dtype).unsqueeze(-1)
    shade = (
        0.85 + 0.15 * torch.sin(2 * math.pi * (1.3 * u + 0.2)) * torch.cos(2 * math.pi * (0.9 * v + 0.1))
    ).unsqueeze(-1)
    return (rgb * shade * (1 - 0.6 * stripe)).clamp(0, 1)
