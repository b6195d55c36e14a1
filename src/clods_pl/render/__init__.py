"""Differentiable Gaussian rasterization: one contract, four backends (``torch``, ``cpu``, ``gsplat``, ``inria``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from clods_pl.errors import BackendUnavailableError
from clods_pl.render.types import RenderOutput

BACKENDS = ("torch", "cpu", "gsplat", "inria")
# backends that render a batch of scenes (leading dims of every input) in one call; the others get one call per
# scene from :func:`rasterize`
BATCHED_BACKENDS = ("gsplat",)
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


def _check(name: str, t: Tensor, shape: tuple[int | None, ...], batch: tuple[int, ...] = ()) -> None:
    want_ndim = len(batch) + len(shape)
    if (
        t.ndim != want_ndim
        or tuple(t.shape[: len(batch)]) != batch
        or any(s is not None and s != d for s, d in zip(shape, t.shape[len(batch) :]))
    ):
        dims = [str(b) for b in batch] + ["N" if s is None else str(s) for s in shape]
        raise ValueError(f"rasterize: {name} must have shape ({', '.join(dims)}), got {tuple(t.shape)}")


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
    """Render N Gaussians into C cameras; with leading batch dims ``*B``, each of the B scenes into its own cameras.

    Args:
        means: (*B, N, 3) world. quats: (*B, N, 4) wxyz (normalised inside). scales: (*B, N, 3) linear.
        opacities: (*B, N) in [0, 1]. colors: (*B, N, 3) or (*B, C, N, 3) RGB.
        viewmats: (*B, C, 4, 4) world-to-camera, OpenCV axes. Ks: (*B, C, 3, 3) intrinsics, pixel centres at +0.5.
        width, height: image size. background: (3,) or (*B, 3) RGB behind the Gaussians (black when None).
        antialiased: multiply each Gaussian's opacity by ``sqrt(det(Sigma2D) / det(Sigma2D + 0.3 I))`` per camera
            (Mip-Splatting; gsplat's ``rasterize_mode="antialiased"``), so the 0.3 px dilation no longer fattens
            small, thin or edge-on Gaussians. ``inria`` supports it only in builds with an ``antialiasing`` setting.
        backend: ``torch`` (reference, CPU or CUDA), ``cpu`` (Numba kernels, CPU tensors, same results as ``torch``
            7-10x faster on one thread), ``gsplat`` (CUDA; renders a batch in one call), ``inria`` (CUDA,
            user-installed).
    Returns:
        RenderOutput(rgb (*B, C, H, W, 3), alpha (*B, C, H, W, 1), depth (*B, C, H, W, 1) | None).
    """
    fn = _backend_fn(backend)
    batch = tuple(means.shape[:-2])
    N = means.shape[-2] if means.ndim >= 2 else -1
    C = viewmats.shape[-3] if viewmats.ndim == len(batch) + 3 else -1
    _check("means", means, (None, 3), batch)
    _check("quats", quats, (N, 4), batch)
    _check("scales", scales, (N, 3), batch)
    _check("opacities", opacities, (N,), batch)
    _check("viewmats", viewmats, (None, 4, 4), batch)
    _check("Ks", Ks, (C, 3, 3), batch)
    if colors.ndim == len(batch) + 3:
        _check("colors", colors, (C, N, 3), batch)
    else:
        _check("colors", colors, (N, 3), batch)
    if width <= 0 or height <= 0:
        raise ValueError(f"rasterize: image size must be positive, got {width}x{height}")
    if background is not None and background.ndim != 1:
        _check("background", background, (3,), batch)
    elif background is not None:
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
    if not batch or backend in BATCHED_BACKENDS:
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
    return _one_call_per_scene(
        fn,
        (means, quats, scales, opacities, colors, viewmats, Ks),
        background,
        batch,
        width,
        height,
        return_depth,
        antialiased,
    )


def _one_call_per_scene(
    fn: Callable[..., RenderOutput],
    scene: tuple[Tensor, ...],
    background: Tensor | None,
    batch: tuple[int, ...],
    width: int,
    height: int,
    return_depth: bool,
    antialiased: bool,
) -> RenderOutput:
    """A batch (*B leading dims of every tensor in ``scene``) rendered one scene per call and stacked."""
    flat = [t.reshape(-1, *t.shape[len(batch) :]) for t in scene]
    bgs = None if background is None else background.expand(*batch, 3).reshape(-1, 3)
    outs = [
        fn(
            *(t[i] for t in flat),
            int(width),
            int(height),
            None if bgs is None else bgs[i],
            return_depth,
            antialiased=antialiased,
        )
        for i in range(flat[0].shape[0])
    ]

    def stack(images: list[Tensor]) -> Tensor:
        return torch.stack(images).reshape(*batch, *images[0].shape)

    depth = stack([o.depth for o in outs]) if return_depth else None  # type: ignore[misc]
    return RenderOutput(rgb=stack([o.rgb for o in outs]), alpha=stack([o.alpha for o in outs]), depth=depth)
