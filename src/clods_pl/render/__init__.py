"""Differentiable Gaussian rasterization: one contract, four backends (``torch``, ``cpu``, ``gsplat``, ``inria``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.types import RenderOutput

BACKENDS = ("torch", "cpu", "gsplat", "inria")
# CUDA backends: name -> (module to import, how to install it)
CUDA_BACKENDS = {
    "gsplat": ("gsplat", "pip install gsplat==1.5.3"),
    "inria": (
        "diff_gaussian_rasterization",
        "build graphdeco-inria/diff-gaussian-rasterization yourself (non-commercial licence)",
    ),
}

__all__ = ["BACKENDS", "RenderOutput", "available_backends", "rasterize"]


def _backend_fn(name: str) -> Callable[..., RenderOutput]:
    if name == "torch":
        from clods_pl.render.torch_backend import rasterize_torch  # noqa: PLC0415  (backends load on first use)

        return rasterize_torch
    if name == "cpu":
        try:
            from clods_pl.render.cpu_backend import rasterize_cpu  # noqa: PLC0415  (numba: first use only)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend 'cpu' needs numba (`pip install numba`; {exc}); use backend=torch"
            ) from exc
        return rasterize_cpu
    if name == "gsplat":
        from clods_pl.render.gsplat_backend import rasterize_gsplat  # noqa: PLC0415  (CUDA backends on use)

        return rasterize_gsplat
    if name == "inria":
        from clods_pl.render.inria_backend import rasterize_inria  # noqa: PLC0415  (CUDA backends on use)

        return rasterize_inria
    raise BackendUnavailableError(f"unknown rasterizer backend '{name}'; choose one of {', '.join(BACKENDS)}")


def available_backends() -> list[str]:
    """Backends usable on this machine (``torch`` always, ``cpu`` with numba; the CUDA ones when installed and a GPU
    is visible)."""
    out = ["torch"]
    try:
        import numba  # noqa: F401,PLC0415  (probe only)

        out.append("cpu")
    except ImportError:
        pass
    if torch.cuda.is_available():
        for name, (module, _install) in CUDA_BACKENDS.items():
            try:
                __import__(module)
                out.append(name)
            except ImportError:
                pass
    return out


def _check(name: str, t: Tensor, shape: tuple[int | None, ...]) -> None:
    if t.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"rasterize: {name} must have shape {want}, got {tuple(t.shape)}")


def _check_finite(named: dict[str, Tensor]) -> None:
    """NaN/inf anywhere -> ValueError naming the input. One host sync for all inputs (one per tensor stalls a
    GPU that is fed faster than it computes); NumPy on CPU tensors (4x less overhead than torch ops there)."""
    tensors = list(named.values())
    if all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors):
        if all(np.isfinite(t.detach().numpy()).all() for t in tensors):
            return
    elif bool(torch.stack([torch.isfinite(t).all().to(named["means"].device) for t in tensors]).all()):
        return
    bad = next(name for name, t in named.items() if not bool(torch.isfinite(t).all()))
    raise ValueError(f"rasterize: {bad} contains NaN/inf")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    backend: str = "torch",
    return_depth: bool = False,
    antialiased: bool = False,
) -> RenderOutput:
    """Render N Gaussians into C cameras.

    Args:
        means: (N, 3) world. quats: (N, 4) wxyz (normalised inside). scales: (N, 3) linear.
        opacities: (N,) in [0, 1]. colors: (N, 3) or (C, N, 3) RGB.
        viewmats: (C, 4, 4) world-to-camera, OpenCV axes. Ks: (C, 3, 3) intrinsics, pixel centres at +0.5.
        width, height: image size. background: (3,) RGB behind the Gaussians (black when None).
        antialiased: multiply each Gaussian's opacity by ``sqrt(det(Sigma2D) / det(Sigma2D + 0.3 I))`` per camera
            (Mip-Splatting; gsplat's ``rasterize_mode="antialiased"``), so the 0.3 px dilation no longer fattens
            small, thin or edge-on Gaussians. ``inria`` supports it only in builds with an ``antialiasing`` setting.
        backend: ``torch`` (reference, CPU or CUDA), ``cpu`` (Numba kernels, CPU tensors, same results as ``torch``
            7-10x faster on one thread), ``gsplat`` (CUDA), ``inria`` (CUDA, user-installed).
    Returns:
        RenderOutput(rgb (C, H, W, 3), alpha (C, H, W, 1), depth (C, H, W, 1) | None).
    """
    fn = _backend_fn(backend)
    N = means.shape[0] if means.ndim == 2 else -1
    C = viewmats.shape[0] if viewmats.ndim == 3 else -1
    _check("means", means, (None, 3))
    _check("quats", quats, (N, 4))
    _check("scales", scales, (N, 3))
    _check("opacities", opacities, (N,))
    _check("viewmats", viewmats, (None, 4, 4))
    _check("Ks", Ks, (C, 3, 3))
    if colors.ndim == 3:
        _check("colors", colors, (C, N, 3))
    else:
        _check("colors", colors, (N, 3))
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize: image size must be positive, got {width}x{height}")
    if background is not None:
        _check("background", background, (3,))
    _check_finite(
        {
            "means": means,
            "quats": quats,
            "scales": scales,
            "opacities": opacities,
            "colors": colors,
            "viewmats": viewmats,
            "Ks": Ks,
            **({} if background is None else {"background": background}),
        }
    )
    return fn(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        int(width),
        int(height),
        background,
        return_depth,
        antialiased=antialiased,
    )
