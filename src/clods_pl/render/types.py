"""The rasterizer output shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RenderOutput:
    """rgb (C, H, W, 3) composited over the background; alpha (C, H, W, 1) coverage; depth (C, H, W, 1) expected
    camera depth (alpha-normalised) or None."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor | None = None


def composite(rgba: Tensor, background: Tensor) -> Tensor:
    """Straight-alpha RGBA (..., 4) in [0, 1] over ``background (3,)`` -> RGB (..., 3): how targets are compared
    with renders (stages 1 and 2 and the novel-view metrics)."""
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + background * (1.0 - a)
