"""The torch rasterizer against a brute-force per-pixel reference, finite differences, and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import ring_cameras
from clods_pl.render import available_backends, rasterize
from clods_pl.render.conventions import GSPLAT_1_5, INRIA_3DGS, TORCH, RasterConventions
from clods_pl.render.torch_backend import rasterize_torch

TILE = 16


def reference(
    means,
    quats,
    scales,
    opac,
    colors,
    viewmats,
    Ks,
    W,
    H,
    bg,
    conv: RasterConventions = TORCH,
    antialiased: bool = False,
):
    """Per pixel, per Gaussian, in numpy float64: 3DGS classic semantics written out longhand (``conv``: the
    alpha clamp, the near plane, 16x16-tile coverage or every pixel, and 3DGS's integer-pixel tile rectangle;
    ``antialiased``: opacity times sqrt(det(cov) / det(cov + 0.3 I)), Mip-Splatting's compensation)."""
    C, N = viewmats.shape[0], means.shape[0]
    rgb = np.zeros((C, H, W, 3))
    alpha_img = np.zeros((C, H, W, 1))
    for c in range(C):
        R, T, K = viewmats[c, :3, :3], viewmats[c, :3, 3], Ks[c]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        items = []
        for n in range(N):
            t = R @ means[n] + T
            if t[2] <= conv.near:
                continue
            w, x, y, z = quats[n] / np.linalg.norm(quats[n])
            Rq = np.array(
                [
                    [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
                ]
            )
            M = Rq @ np.diag(scales[n])
            S = R @ (M @ M.T) @ R.T
            tanx, tany = 0.5 * W / fx, 0.5 * H / fy
            u = np.clip(t[0] / t[2], -(cx / fx + 0.3 * tanx), (W - cx) / fx + 0.3 * tanx)
            v = np.clip(t[1] / t[2], -(cy / fy + 0.3 * tany), (H - cy) / fy + 0.3 * tany)
            J = np.array([[fx / t[2], 0, -fx * u / t[2]], [0, fy / t[2], -fy * v / t[2]]])
            cov_raw = J @ S @ J.T
            cov = cov_raw + 0.3 * np.eye(2)
            det = np.linalg.det(cov)
            if det <= 0:
                continue
            o = opac[n] * math.sqrt(max(np.linalg.det(cov_raw), 0.0) / det) if antialiased else opac[n]
            conic = np.linalg.inv(cov)
            mid = 0.5 * (cov[0, 0] + cov[1, 1])
            r = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
            m2 = np.array([fx * t[0] / t[2] + cx, fy * t[1] / t[2] + cy])
            gx, gy = math.ceil(W / TILE), math.ceil(H / TILE)
            if not conv.tile_coverage:  # gsplat 1.5: every pixel (the alpha threshold decides)
                tx0, tx1, ty0, ty1 = 0, gx, 0, gy
            elif conv.integer_pixel_tile_rect:  # 3DGS getRect: pixel-index mean, C int() truncation
                px, py = m2[0] - 0.5, m2[1] - 0.5
                tx0, tx1 = min(gx, max(0, int((px - r) / TILE))), min(gx, max(0, int((px + r + TILE - 1) / TILE)))
                ty0, ty1 = min(gy, max(0, int((py - r) / TILE))), min(gy, max(0, int((py + r + TILE - 1) / TILE)))
            else:
                if not (m2[0] + r > 0 and m2[0] - r < W and m2[1] + r > 0 and m2[1] - r < H):
                    continue
                tx0, tx1 = max(0, math.floor((m2[0] - r) / TILE)), math.ceil((m2[0] + r) / TILE)
                ty0, ty1 = max(0, math.floor((m2[1] - r) / TILE)), math.ceil((m2[1] + r) / TILE)
            items.append((t[2], n, m2, conic, (tx0, tx1, ty0, ty1), o))
        items.sort(key=lambda it: it[0])
        for i in range(H):
            for j in range(W):
                Tr, acc = 1.0, np.zeros(3)
                for _, n, m2, conic, (tx0, tx1, ty0, ty1), o in items:
                    if not (tx0 <= j // TILE < tx1 and ty0 <= i // TILE < ty1):
                        continue
                    d = np.array([j + 0.5, i + 0.5]) - m2
                    power = -0.5 * d @ conic @ d
                    a = min(conv.alpha_max, o * math.exp(power))
                    if a < 1 / 255:
                        continue
                    if Tr * (1 - a) < 1e-4:
                        break
                    acc += colors[n] * a * Tr
                    Tr *= 1 - a
                rgb[c, i, j] = acc + Tr * bg
                alpha_img[c, i, j] = 1 - Tr
    return rgb, alpha_img


def scene(n: int, seed: int, dtype=torch.float64, spread: float = 0.6):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.08 + 0.02
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opac, colors


def central_differences(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d f / d x by central differences, one element of ``x`` at a time (float64 ``x``, scalar ``f``)."""
    num = torch.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        xp, xm = flat.clone(), flat.clone()
        xp[i] += eps
        xm[i] -= eps
        num.view(-1)[i] = (f(xp.view_as(x)) - f(xm.view_as(x))) / (2 * eps)
    return num


CAMS = ring_cameras(2, radius=2.0, width=40, height=36, fov_deg=50.0)


@pytest.mark.parametrize("seed,antialiased", [(0, False), (1, False), (0, True), (1, True)])
def test_forward_matches_brute_force_reference(seed: int, antialiased: bool) -> None:
    means, quats, scales, opac, colors = scene(25, seed)
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    w2c, K = CAMS.w2c.double(), CAMS.K.double()
    out = rasterize(means, quats, scales, opac, colors, w2c, K, 40, 36, bg, antialiased=antialiased)
    ref_rgb, ref_a = reference(
        *(x.numpy() for x in (means, quats, scales, opac, colors, w2c, K)), 40, 36, bg.numpy(), antialiased=antialiased
    )
    assert out.rgb.shape == (2, 36, 40, 3) and out.alpha.shape == (2, 36, 40, 1)
    assert np.abs(out.rgb.numpy() - ref_rgb).max() < 1e-5
    assert np.abs(out.alpha.numpy() - ref_a).max() < 1e-5
    assert float(out.alpha.max()) > 0.5  # the scene is visible


def test_gaussian_straddling_border_matches_reference() -> None:
    means, quats, scales, opac, colors = scene(4, 3)
    uv_edge = torch.tensor(
        [[0.55, 0.0, 0.1], [-0.5, 0.1, 0.4], [0.0, 0.45, -0.52], [0.1, -0.6, 0.0]], dtype=torch.float64
    )
    scales = scales * 3
    w2c, K = CAMS.w2c.double(), CAMS.K.double()
    out = rasterize(uv_edge, quats, scales, opac, colors, w2c, K, 40, 36)
    ref_rgb, _ = reference(*(x.numpy() for x in (uv_edge, quats, scales, opac, colors, w2c, K)), 40, 36, np.zeros(3))
    assert np.abs(out.rgb.numpy() - ref_rgb).max() < 1e-5
    border = out.alpha[:, :, [0, -1]].amax() + out.alpha[:, [0, -1]].amax()
    assert float(border) > 0.1  # some Gaussian really covers the border


@pytest.mark.parametrize(
    "name,antialiased",
    [(n, False) for n in ["means", "quats", "scales", "opac", "colors"]]
    + [("means", True), ("scales", True), ("quats", True)],
)
def test_gradients_match_finite_differences(name: str, antialiased: bool) -> None:
    params = dict(zip(["means", "quats", "scales", "opac", "colors"], scene(6, 7, spread=0.4)))
    w2c, K = CAMS.w2c.double(), CAMS.K.double()
    weight = torch.rand(2, 36, 40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        p = dict(params, **{name: x})
        out = rasterize(
            p["means"], p["quats"], p["scales"], p["opac"], p["colors"], w2c, K, 40, 36, antialiased=antialiased
        )
        return (out.rgb * weight).sum() + out.alpha.sum()

    x = params[name].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    num = central_differences(f, x.detach())
    assert torch.allclose(grad, num, rtol=1e-4, atol=1e-6), (grad - num).abs().max()
    assert grad.abs().sum() > 0


def _one_gaussian(scales: list[float], opacity: float, antialiased: bool, quat=(1.0, 0.0, 0.0, 0.0)):
    cams = ring_cameras(1, radius=2.0, width=64, height=64, fov_deg=40.0)
    t = torch.float64
    out = rasterize(
        torch.zeros(1, 3, dtype=t),
        torch.tensor([quat], dtype=t),
        torch.tensor([scales], dtype=t),
        torch.tensor([opacity], dtype=t),
        torch.ones(1, 3, dtype=t),
        cams.w2c.double(),
        cams.K.double(),
        64,
        64,
        antialiased=antialiased,
    )
    fx = float(cams.K[0, 0, 0])
    return out, fx


def test_antialiasing_keeps_a_small_gaussians_integrated_opacity() -> None:
    """An isotropic Gaussian of sigma 0.4 px: the summed alpha is opacity x 2 pi sigma^2 when antialiased, and
    opacity x 2 pi (sigma^2 + 0.3) in the classic mode (the dilation adds area at full opacity). The 1/255 skip
    drops the tails below it, a fraction (1/255) / peak alpha of a 2D Gaussian's mass."""
    sigma_px, opacity = 0.4, 0.5
    fx = float(ring_cameras(1, radius=2.0, width=64, height=64, fov_deg=40.0).K[0, 0, 0])
    s = sigma_px * 2.0 / fx  # world scale that projects to sigma_px at the centre's depth 2
    var = sigma_px**2 + 0.3
    for antialiased, peak, area in ((True, opacity * sigma_px**2 / var, sigma_px**2), (False, opacity, var)):
        out, _ = _one_gaussian([s, s, s], opacity, antialiased)
        expected = opacity * 2 * math.pi * area * (1 - 1 / (255 * peak))
        assert float(out.alpha.sum()) == pytest.approx(expected, rel=0.01), antialiased


def test_antialiasing_hides_an_edge_on_flat_gaussian() -> None:
    """A flat disk seen exactly edge-on covers no area: classic 3DGS still draws a 0.55 px wide line at full
    opacity, the antialiased mode draws (almost) nothing."""
    flat = [0.2, 0.2, 1e-6]
    edge_on = (math.cos(math.pi / 4), math.sin(math.pi / 4), 0.0, 0.0)  # normal turned into the image plane
    classic, _ = _one_gaussian(flat, 0.9, False, edge_on)
    aa, _ = _one_gaussian(flat, 0.9, True, edge_on)
    assert float(classic.alpha.max()) > 0.5
    assert float(aa.alpha.max()) < 0.02


def test_empty_scene_and_all_behind_camera_give_background() -> None:
    bg = torch.tensor([0.1, 0.2, 0.3])
    e = torch.zeros(0, 3)
    out = rasterize(e, torch.zeros(0, 4), e, torch.zeros(0), e, CAMS.w2c, CAMS.K, 40, 36, bg)
    assert torch.allclose(out.rgb, bg.expand(2, 36, 40, 3)) and float(out.alpha.abs().max()) == 0.0
    means, quats, scales, opac, colors = scene(10, 2, dtype=torch.float32)
    behind = CAMS.centers[0] + (CAMS.centers[0] - 0) * 0.5 + means * 0.1  # behind camera 0
    out = rasterize(behind, quats, scales, opac, colors, CAMS.w2c[:1], CAMS.K[:1], 40, 36, bg)
    assert torch.allclose(out.rgb, bg.expand(1, 36, 40, 3))


def test_per_camera_colours_and_depth() -> None:
    means, quats, scales, opac, colors = scene(8, 4)
    w2c, K = CAMS.w2c.double(), CAMS.K.double()
    per_cam = torch.stack([colors, 1 - colors])
    out = rasterize(means, quats, scales, opac, per_cam, w2c, K, 40, 36, return_depth=True)
    one = rasterize(means, quats, scales, opac, 1 - colors, w2c[1:], K[1:], 40, 36)
    assert torch.allclose(out.rgb[1:], one.rgb)
    covered = out.alpha[..., 0] > 0.5
    d = out.depth[..., 0][covered]
    lo, hi = 2.0 - 0.3 * 3**0.5, 2.0 + 0.3 * 3**0.5  # centres within the cube of half-side 0.3, cameras at radius 2
    assert bool(((d > lo) & (d < hi)).all()), (float(d.min()), float(d.max()))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_a_batch_of_scenes_is_each_scene_in_its_own_cameras(backend: str) -> None:
    """Leading batch dims (2, 3): scene (i, j) rendered into its own cameras over its own background, with depth,
    equals one call per scene; a scene's shape off the batch is a clear error."""
    if backend not in available_backends():
        pytest.skip("numba not installed")
    parts = [scene(6, 10 + k, dtype=torch.float32) for k in range(6)]
    means, quats, scales, opac, colors = (
        torch.stack([p[i] for p in parts]).reshape(2, 3, *parts[0][i].shape) for i in range(5)
    )
    rigs = [ring_cameras(2, radius=2.0 + 0.2 * k, width=20, height=18, fov_deg=50.0) for k in range(6)]
    w2c = torch.stack([r.w2c for r in rigs]).reshape(2, 3, 2, 4, 4)
    K = torch.stack([r.K for r in rigs]).reshape(2, 3, 2, 3, 3)
    bgs = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(0))
    out = rasterize(means, quats, scales, opac, colors, w2c, K, 20, 18, bgs, backend, return_depth=True)
    assert out.rgb.shape == (2, 3, 2, 18, 20, 3) and out.depth.shape == (2, 3, 2, 18, 20, 1)
    for i in range(2):
        for j in range(3):
            one = rasterize(
                means[i, j],
                quats[i, j],
                scales[i, j],
                opac[i, j],
                colors[i, j],
                w2c[i, j],
                K[i, j],
                20,
                18,
                bgs[i, j],
                backend,
                return_depth=True,
            )
            assert torch.equal(out.rgb[i, j], one.rgb) and torch.equal(out.alpha[i, j], one.alpha)
            assert torch.equal(out.depth[i, j], one.depth)
    assert not torch.allclose(out.rgb[0, 0], out.rgb[0, 1])  # the scenes differ: a real batch
    with pytest.raises(ValueError, match=r"Ks must have shape \(2, 3, 2, 3, 3\)"):
        rasterize(means, quats, scales, opac, colors, w2c, K[:1], 20, 18, bgs, backend)
    with pytest.raises(ValueError, match=r"background must have shape \(2, 3, 3\)"):
        rasterize(means, quats, scales, opac, colors, w2c, K, 20, 18, bgs[:1], backend)


def test_bad_inputs_are_clear() -> None:
    means, quats, scales, opac, colors = scene(5, 0, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"quats must have shape \(5, 4\)"):
        rasterize(means, quats[:, :3], scales, opac, colors, CAMS.w2c, CAMS.K, 40, 36)
    bad = means.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="means contains NaN"):
        rasterize(bad, quats, scales, opac, colors, CAMS.w2c, CAMS.K, 40, 36)
    with pytest.raises(BackendUnavailableError, match="unknown rasterizer backend 'foo'"):
        rasterize(means, quats, scales, opac, colors, CAMS.w2c, CAMS.K, 40, 36, backend="foo")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
@pytest.mark.parametrize("backend", ["gsplat", "inria"])
def test_cuda_backends_on_cpu_are_clear_errors(backend: str) -> None:
    means, quats, scales, opac, colors = scene(5, 0, dtype=torch.float32)
    with pytest.raises(BackendUnavailableError, match=f"backend '{backend}' needs"):
        rasterize(means, quats, scales, opac, colors, CAMS.w2c, CAMS.K, 40, 36, backend=backend)
    assert backend not in available_backends()


def test_composite_backward_matches_finite_differences_when_opaque() -> None:
    """The hand-written compositing backward, on layers opaque enough to hit the 0.99 alpha clamp and the
    transmittance cut-off (T < 1e-4), against float64 finite differences."""
    from clods_pl.render.torch_backend import ALPHA_MAX, T_MIN, _Composite

    g = torch.Generator().manual_seed(3)
    B, K, D = 3, 9, 4
    iy, ix = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    px, py = ix.reshape(-1).double() + 0.5, iy.reshape(-1).double() + 0.5
    local_pix = torch.stack([px * px, py * py, px * py, px, py, torch.ones_like(px)], -1)
    # broad Gaussians centred in the block: log alpha = log(opacity) - 0.5 |d|^2 / s^2
    s2 = 4.0 + 6.0 * torch.rand(B, K, generator=g, dtype=torch.float64)
    m = 1.0 + 2.0 * torch.rand(B, K, 2, generator=g, dtype=torch.float64)
    log_op = torch.log(0.5 + 0.5 * torch.rand(B, K, generator=g, dtype=torch.float64))
    log_op[:, 0], s2[:, 0] = math.log(1.2), 20.0  # a broad front layer whose alpha clamps at 0.99 near its centre
    a = 1.0 / s2
    coef = torch.stack(
        [-0.5 * a, -0.5 * a, torch.zeros_like(a), a * m[..., 0], a * m[..., 1], -0.5 * a * (m**2).sum(-1) + log_op], 1
    ).requires_grad_(True)
    valid = torch.ones(B, K, dtype=torch.bool)
    valid[0, -2:] = False  # padding
    feats = torch.rand(B, K, D, generator=g, dtype=torch.float64).requires_grad_(True)
    out, T_final = _Composite.apply(coef, valid, feats, local_pix)
    alpha = torch.exp(torch.matmul(local_pix, coef.detach()).clamp(max=0.0))
    assert bool((alpha[:, :, 0] > ALPHA_MAX).any()), "the scene must exercise the 0.99 clamp"
    kept = torch.where(valid[:, None, :] & (alpha >= 1 / 255), alpha.clamp(max=ALPHA_MAX), torch.zeros_like(alpha))
    assert bool((torch.cumprod(1 - kept, -1)[..., -1] < T_MIN).any()), "the scene must exercise the T cut-off"
    assert bool((T_final >= T_MIN * (1 - ALPHA_MAX)).all())  # compositing stopped there
    weight = torch.rand(B, 16, D, generator=g, dtype=torch.float64)

    def f(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        o, t = _Composite.apply(c, valid, x, local_pix)
        return (o * weight).sum() + 2.0 * t.sum()

    grads = torch.autograd.grad(f(coef, feats), (coef, feats))
    coef0, feats0 = coef.detach(), feats.detach()
    nums = (central_differences(lambda c: f(c, feats0), coef0), central_differences(lambda x: f(coef0, x), feats0))
    for grad, num in zip(grads, nums):
        assert torch.allclose(grad, num, rtol=1e-5, atol=1e-7), (grad - num).abs().max()
        assert grad.abs().sum() > 0


CAMS_48 = ring_cameras(2, radius=2.0, width=48, height=40, fov_deg=50.0)


def _opaque_near_scene(seed: int) -> tuple[torch.Tensor, ...]:
    """float64 scene that exercises every convention: 40% of opacities at 1.0 (the alpha clamps), eight large
    elongated Gaussians whose 1/255 reach crosses tile borders beyond their 3-sigma box, and two points between the
    0.01 and 0.2 near planes of camera 0 (seed 7: each convention changes the image by > 1e-3)."""
    means, quats, scales, opac, colors = scene(30, seed)
    g = torch.Generator().manual_seed(seed)
    opac = torch.where(torch.rand(30, generator=g, dtype=torch.float64) < 0.4, torch.ones_like(opac), opac)
    c2w = torch.linalg.inv(CAMS_48.w2c.double()[0])
    near = torch.tensor([[0.02, 0.01, 0.1, 1.0], [-0.03, 0.0, 0.15, 1.0]], dtype=torch.float64) @ c2w.T
    means[:2] = near[:, :3]
    scales = scales * 0.5
    scales[:2] = 0.002
    scales[2:10] = torch.tensor([0.25, 0.05, 0.03], dtype=torch.float64)
    opac[2:10] = torch.linspace(0.6, 1.0, 8, dtype=torch.float64)
    return means, quats, scales, opac, colors


@pytest.mark.parametrize("conv", [TORCH, GSPLAT_1_5, INRIA_3DGS], ids=["torch", "gsplat_1_5", "inria_3dgs"])
@pytest.mark.parametrize("seed", [7, 1])
def test_conventions_match_brute_force_reference(conv: RasterConventions, seed: int) -> None:
    """The reference reproduces gsplat 1.5.3 and 3DGS conventions exactly (what the GPU parity tests rely on)."""
    params = _opaque_near_scene(seed)
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    w2c, K = CAMS_48.w2c.double(), CAMS_48.K.double()
    out = rasterize_torch(*params, w2c, K, 48, 40, bg, conventions=conv)
    ref_rgb, ref_a = reference(*(x.numpy() for x in (*params, w2c, K)), 48, 40, bg.numpy(), conv)
    assert np.abs(out.rgb.numpy() - ref_rgb).max() < 1e-9
    assert np.abs(out.alpha.numpy() - ref_a).max() < 1e-9


def test_conventions_change_the_image() -> None:
    """Each convention matters on this scene: otherwise the parity tests above would not be testing it."""
    params = _opaque_near_scene(7)
    w2c, K = CAMS_48.w2c.double(), CAMS_48.K.double()
    base = rasterize_torch(*params, w2c, K, 48, 40).rgb
    for conv in (
        GSPLAT_1_5,
        INRIA_3DGS,
        RasterConventions(alpha_max=0.999),
        RasterConventions(near=0.2),
        RasterConventions(tile_coverage=False),
        RasterConventions(integer_pixel_tile_rect=True),
    ):
        other = rasterize_torch(*params, w2c, K, 48, 40, conventions=conv).rgb
        assert float((other - base).abs().max()) > 1e-3, conv


@pytest.mark.parametrize("conv", [GSPLAT_1_5, INRIA_3DGS], ids=["gsplat_1_5", "inria_3dgs"])
def test_conventions_gradients(conv: RasterConventions) -> None:
    """Masked conventions match finite differences; 3DGS's unmasked clamp gradient is G dL/dalpha by hand."""
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.02, 0.1]], dtype=torch.float64)
    quats = torch.randn(2, 4, generator=g, dtype=torch.float64)
    scales = torch.tensor([[0.3, 0.3, 0.3], [0.08, 0.08, 0.08]], dtype=torch.float64)
    opac = torch.tensor([1.0, 0.6], dtype=torch.float64)  # the first one is clamped near its centre
    colors = torch.rand(2, 3, generator=g, dtype=torch.float64)
    w2c, K = CAMS.w2c.double()[:1], CAMS.K.double()[:1]

    def f(o: torch.Tensor) -> torch.Tensor:
        return rasterize_torch(means, quats, scales, o, colors, w2c, K, 40, 36, conventions=conv).alpha.sum()

    o = opac.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(o), o)
    num = central_differences(f, opac)
    if not conv.grad_through_clamp:
        assert torch.allclose(grad, num, rtol=1e-5, atol=1e-8)
    else:  # 3DGS differentiates alpha = opacity * G even where it was clamped: more than the true derivative
        assert float(grad[0]) > float(num[0]) + 1e-3
        assert torch.allclose(grad[1], num[1], rtol=1e-5)
