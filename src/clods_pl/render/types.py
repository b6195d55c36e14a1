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
