"""The few places where Gaussian rasterizers that share the 3DGS forward model still differ.

The ``torch`` backend follows :data:`TORCH`. Passing :data:`GSPLAT_1_5` or :data:`INRIA_3DGS` to
:func:`clods_pl.render.torch_backend.rasterize_torch` makes the reference reproduce what gsplat 1.5.3 or the
original graphdeco-inria ``diff_gaussian_rasterization`` compute, so the GPU parity tests compare like with like at
round-off tolerances instead of tolerances wide enough to hide these differences. Read off the CUDA sources:

* gsplat 1.5.3 (``ProjectionEWA3DGSFused.cu``, ``RasterizeToPixels3DGSFwd/Bwd.cu``): ``alpha = min(0.999, ...)``; the
  tile box is opacity-aware and per axis, ``ceil(sqrt(2 ln(255 opacity)) sqrt(Sigma_xx))``, which contains every
  pixel where ``alpha >= 1/255`` (the 3.33 cap never binds for opacity <= 1), so a Gaussian reaches exactly the
  pixels where its alpha passes the threshold; the backward zeroes the alpha gradient where the clamp is active.
* graphdeco-inria (``auxiliary.h``, ``forward.cu``, ``backward.cu``): ``alpha = min(0.99, ...)``; points with camera
  ``z <= 0.2`` are culled (``in_frustum``); the 16x16 tile rectangle of the 3-sigma radius is computed from the
  mean in pixel-index coordinates (pixel centres at integers: ours minus 0.5) with truncation,
  ``[int((p - r) / 16), int((p + r + 15) / 16))``; the backward ignores the alpha clamp (opacity and conic get
  gradient ``G dL/dalpha`` even where ``alpha`` was clamped to 0.99).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RasterConventions:
    """Attributes:
    alpha_max: per-pixel alpha clamp. near: camera-z culling plane (metres).
    tile_coverage: a Gaussian touches only the 16x16 tiles its 3-sigma box overlaps (3DGS); False: every pixel
        where ``alpha >= 1/255`` (gsplat 1.5's opacity-aware box).
    integer_pixel_tile_rect: compute that tile rectangle as 3DGS does (mean in pixel-index coordinates,
        truncating division) instead of from the mean with pixel centres at +0.5 (floor / ceil).
    grad_through_clamp: the alpha gradient ignores the ``alpha_max`` clamp (3DGS's backward).
    """

    alpha_max: float = 0.99
    near: float = 0.01
    tile_coverage: bool = True
    integer_pixel_tile_rect: bool = False
    grad_through_clamp: bool = False


TORCH = RasterConventions()
GSPLAT_1_5 = RasterConventions(alpha_max=0.999, tile_coverage=False)
INRIA_3DGS = RasterConventions(near=0.2, integer_pixel_tile_rect=True, grad_through_clamp=True)
