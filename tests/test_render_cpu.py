"""The Numba ``cpu`` rasterizer against the ``torch`` reference: images and gradients on random scenes (float64 and
float32), opaque layers (alpha clamp, transmittance cut-off), per-camera colours, depth and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clods_pl.geometry import ring_cameras
from clods_pl.render import rasterize

NAMES = ["means", "quats", "scales", "opacities", "colors"]


def scene(n: int, seed: int, dtype: torch.dtype, opaque: bool = False, spread: float = 0.8) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.05 + 0.01
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    if opaque:  # a third fully opaque: the 0.99 clamp and the 1e-4 transmittance cut-off both happen
        opac = torch.where(torch.rand(n, generator=g, dtype=dtype) < 0.33, torch.ones_like(opac), opac)
        scales = scales * 2
    cols = torch.rand(n, 3, generator=g, dtype=dtype)
    return [means, quats, scales, opac, cols]


def render(
    backend: str,
    params: list[torch.Tensor],
    size: int = 48,
    views: int = 3,
    depth: bool = False,
    antialiased: bool = False,
):
    cams = ring_cameras(views, 2.0, width=size, height=size)
    dtype = params[0].dtype
    leaves = [p.clone().requires_grad_(True) for p in params]
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=dtype)
    out = rasterize(
        *leaves,
        cams.w2c.to(dtype),
        cams.K.to(dtype),
        size,
        size,
        bg,
        backend=backend,
        return_depth=depth,
        antialiased=antialiased,
    )
    weight = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    loss = (out.rgb * weight).sum() + 0.5 * out.alpha.sum() + (out.depth.sum() * 0.1 if depth else 0)
    grads = torch.autograd.grad(loss, leaves)
    return out, grads


@pytest.mark.parametrize("dtype,img_tol,grad_tol", [(torch.float64, 1e-10, 1e-8), (torch.float32, 1e-5, 1e-4)])
@pytest.mark.parametrize("opaque,antialiased", [(False, False), (True, False), (True, True)])
def test_cpu_matches_torch(
    dtype: torch.dtype, img_tol: float, grad_tol: float, opaque: bool, antialiased: bool
) -> None:
    params = scene(300, 1, dtype, opaque)
    ref, ref_g = render("torch", params, antialiased=antialiased)
    out, out_g = render("cpu", params, antialiased=antialiased)
    assert float(ref.alpha.detach().max()) > 0.9  # the scene is visible
    assert float((ref.rgb - out.rgb).detach().abs().max()) < img_tol
    assert float((ref.alpha - out.alpha).detach().abs().max()) < img_tol
    for name, a, b in zip(NAMES, ref_g, out_g):
        rel = float((a - b).norm() / a.norm())
        assert rel < grad_tol, (name, rel)


def test_cpu_depth_and_per_camera_colours() -> None:
    params = scene(200, 2, torch.float64)
    params[4] = torch.rand(3, 200, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref, ref_g = render("torch", params, depth=True)
    out, out_g = render("cpu", params, depth=True)
    assert torch.allclose(ref.depth, out.depth, atol=1e-9)
    assert torch.allclose(ref.rgb, out.rgb, atol=1e-10)
    for a, b in zip(ref_g, out_g):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-10)


def test_cpu_empty_and_behind_camera_give_background() -> None:
    cams = ring_cameras(2, 2.0, width=20, height=20)
    bg = torch.tensor([0.1, 0.2, 0.3])
    empty = rasterize(
        torch.zeros(0, 3),
        torch.zeros(0, 4),
        torch.zeros(0, 3),
        torch.zeros(0),
        torch.zeros(0, 3),
        cams.w2c,
        cams.K,
        20,
        20,
        bg,
        backend="cpu",
    )
    assert torch.allclose(empty.rgb, bg.expand(2, 20, 20, 3)) and float(empty.alpha.abs().max()) == 0.0
    far = -cams.w2c[0, :3, :3].T @ cams.w2c[0, :3, 3] * 3  # far out behind camera 0: culled there
    params = [
        far[None].float(),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.full((1, 3), 0.05),
        torch.ones(1),
        torch.ones(1, 3),
    ]
    a = rasterize(*params, cams.w2c, cams.K, 20, 20, bg, backend="cpu")
    b = rasterize(*params, cams.w2c, cams.K, 20, 20, bg, backend="torch")
    assert torch.allclose(a.rgb, b.rgb, atol=1e-6)


def test_cpu_backend_refuses_cuda_tensors_clearly() -> None:
    from clods_pl.errors import BackendUnavailableError
    from clods_pl.render.cpu_backend import rasterize_cpu

    meta = torch.zeros(1, 3, device="meta")
    with pytest.raises(BackendUnavailableError, match="backend 'cpu' needs CPU tensors"):
        rasterize_cpu(meta, meta, meta, meta[:, 0], meta, torch.eye(4)[None], torch.eye(3)[None], 8, 8)


def test_cpu_matches_torch_on_tile_borders_and_depth_ties() -> None:
    """Large elongated Gaussians whose 1/255 ellipse reaches past the tiles their 3-sigma box overlaps (the tile
    rule must cut them where the reference does), Gaussians at exactly equal depth (drawn in index order), and an
    image whose size is not a multiple of the 16-pixel tile."""
    means, quats, scales, opac, cols = scene(200, 4, torch.float64)
    scales[:150] = torch.tensor([0.2, 0.03, 0.02], dtype=torch.float64)
    opac[:150] = 1.0
    means[160:164] = means[159]  # four copies at the same depth, different colours: only the order tells them apart
    cams = ring_cameras(2, 2.0, width=47, height=38)
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    outs = []
    for backend in ("torch", "cpu"):
        leaves = [p.clone().requires_grad_(True) for p in (means, quats, scales, opac, cols)]
        out = rasterize(*leaves, cams.w2c.double(), cams.K.double(), 47, 38, bg, backend=backend)
        grads = torch.autograd.grad((out.rgb * torch.linspace(0, 1, 3, dtype=torch.float64)).sum(), leaves)
        outs.append((out.rgb.detach(), grads))
    (ref, ref_g), (got, got_g) = outs
    assert float((ref - got).abs().max()) < 1e-10
    for name, a, b in zip(NAMES, ref_g, got_g):
        assert float((a - b).norm() / a.norm()) < 1e-8, name


def test_polynomial_exp_is_exact_to_double_precision_where_it_is_used() -> None:
    """The compositing's vectorisable ``_exp`` against libm's over ln(1/255) .. 0 (where alpha is used) and up to
    0.5 (opacities above 1 clamp there, above the 0.99 alpha clamp): relative error below 5e-13."""
    from clods_pl.render.cpu_composite import LOG_ALPHA_MIN, _exp  # noqa: PLC0415  (numba: cpu tests only)

    xs = np.linspace(LOG_ALPHA_MIN - 1.0, 0.5, 20001)
    got = np.array([_exp.py_func(float(x)) for x in xs])
    assert np.max(np.abs(got / np.exp(xs) - 1.0)) < 5e-13
    assert _exp.py_func(-1e6) > 0.0 and _exp.py_func(-1e6) < 1e-3  # clamped, finite: no NaN from a far pixel
    assert _exp.py_func(1e6) > 1.0  # clamped above the alpha clamp: a saturated pixel stays saturated


def test_cpu_background_gradient_and_a_loss_on_one_output() -> None:
    """The background is composited inside the cpu kernel's autograd function: its gradient, and the Gaussians'
    gradients when the loss reads only ``alpha`` (no gradient reaches rgb), match the torch reference."""
    params = scene(150, 3, torch.float64)
    cams = ring_cameras(2, 2.0, width=32, height=32)
    got = {}
    for backend in ("torch", "cpu"):
        leaves = [p.clone().requires_grad_(True) for p in params]
        bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
        out = rasterize(*leaves, cams.w2c.double(), cams.K.double(), 32, 32, bg, backend=backend)
        (g_bg,) = torch.autograd.grad((out.rgb**2).sum(), [bg])
        g_alpha = torch.autograd.grad(
            rasterize(*leaves, cams.w2c.double(), cams.K.double(), 32, 32, bg, backend=backend).alpha.sum(), leaves
        )
        got[backend] = (g_bg, g_alpha)
    assert float(got["torch"][0].abs().min()) > 1.0  # the background shows, so its gradient is not trivially zero
    assert torch.allclose(got["torch"][0], got["cpu"][0], rtol=1e-9)
    for a, b in zip(got["torch"][1], got["cpu"][1]):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-12)


def _both_backends(params: list[torch.Tensor], width: int, height: int) -> list[tuple]:
    """(rgb, alpha, gradients of a weighted rgb + alpha loss) from ``torch`` and ``cpu``, float64, 2 ring cameras."""
    cams = ring_cameras(2, 2.0, width=width, height=height)
    outs = []
    for backend in ("torch", "cpu"):
        leaves = [p.clone().requires_grad_(True) for p in params]
        out = rasterize(
            *leaves, cams.w2c.double(), cams.K.double(), width, height, torch.ones(3).double(), backend=backend
        )
        weight = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        grads = torch.autograd.grad((out.rgb * weight).sum() + out.alpha.sum(), leaves)
        outs.append((out.rgb.detach(), out.alpha.detach(), grads))
    return outs


def _assert_same(outs: list[tuple]) -> None:
    (ref_rgb, ref_alpha, ref_g), (rgb, alpha, got_g) = outs
    assert float((ref_rgb - rgb).abs().max()) < 1e-10
    assert float((ref_alpha - alpha).abs().max()) < 1e-10
    for name, a, b in zip(NAMES, ref_g, got_g):
        assert float((a - b).norm() / a.norm()) < 1e-8, name


def test_cpu_matches_torch_where_gaussians_cross_the_image_edges() -> None:
    """Rows are composited in whole multiples of 8 pixels with the ones past a row's end masked; a Gaussian cut by
    the right or bottom edge makes those masked pixels the next row's first pixels, or the padding after the last
    row. A scene wider than the view (odd image size) must still match the reference in images and gradients."""
    outs = _both_backends(scene(400, 6, torch.float64, opaque=True, spread=3.0), 37, 29)
    ref_alpha = outs[0][1]
    edges = torch.cat([ref_alpha[:, :, -1, 0].flatten(), ref_alpha[:, -1, :, 0].flatten()])
    assert float(edges.max()) > 0.5  # Gaussians do draw on the last column and the last row
    _assert_same(outs)


def test_cpu_matches_torch_when_opaque_layers_finish_pixels_early() -> None:
    """Over 512 Gaussians per camera in opaque layers: most pixels finish long before the last Gaussian, so the
    forward re-marks finished row segments (every 512 Gaussians) and skips them, and the backward skips segments
    that no pixel composited as far as the current Gaussian; neither may change the image or a gradient."""
    outs = _both_backends(scene(1500, 8, torch.float64, opaque=True, spread=0.6), 40, 24)
    assert float((outs[0][1] > 0.999).float().mean()) > 0.3  # over a third of the pixels are opaque (finished)
    _assert_same(outs)
