"""GPU parity of the rasterizer backends (marker `gpu`: skipped without CUDA; run by benchmarks/gpu.sh).

Each CUDA rasterizer is compared with the torch reference run with *its* conventions (clods_pl.render.conventions:
gsplat 1.5.3 clamps alpha at 0.999 and reaches every pixel where alpha >= 1/255; graphdeco-inria culls z <= 0.2,
computes tile rectangles in pixel-index coordinates and ignores the alpha clamp in its backward), on a scene with
opacities up to 1.0 and points between the two near planes, in float32. What is left is float32 round-off
(``__expf``, summation order) and the rare pixel where a Gaussian's alpha sits on the 1/255 threshold or the
transmittance on 1e-4 and the two sides decide differently: hence a tight mean, a tight 99.9th percentile, and a
maximum of one threshold flip (about 1/255). The same tests fail with the torch conventions for gsplat/inria
(``test_conventions_matter_on_this_scene``).
"""

from __future__ import annotations

import pytest
import torch

from clods_pl.geometry import ring_cameras
from clods_pl.render import rasterize
from clods_pl.render.conventions import GSPLAT_1_5, INRIA_3DGS, TORCH, RasterConventions
from clods_pl.render.torch_backend import rasterize_torch

pytestmark = pytest.mark.gpu  # conftest skips these without CUDA

DEVICE = "cuda"
SIZE = 128
MODULES = {"gsplat": "gsplat", "inria": "diff_gaussian_rasterization"}
CONVENTIONS = {"gsplat": GSPLAT_1_5, "inria": INRIA_3DGS}


def parity_scene(n: int = 2000, seed: int = 0) -> list[torch.Tensor]:
    """n Gaussians in a 0.8 m cube seen from 2.5 m, 40% of them fully opaque, and 20 points 0.05-0.19 m in front
    of camera 0 (between gsplat's 0.01 and 3DGS's 0.2 near planes)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.02 + 0.005
    opac = torch.rand(n, generator=g) * 0.95 + 0.05
    opac = torch.where(torch.rand(n, generator=g) < 0.4, torch.ones_like(opac), opac)
    cols = torch.rand(n, 3, generator=g)
    c2w = torch.linalg.inv(_cameras().w2c[0])
    k = 20
    local = torch.cat(
        [(torch.rand(k, 2, generator=g) - 0.5) * 0.1, torch.rand(k, 1, generator=g) * 0.14 + 0.05, torch.ones(k, 1)], -1
    )
    means[:k] = (local @ c2w.T)[:, :3]
    scales[:k] = 0.002
    return [t.to(DEVICE).requires_grad_(True) for t in (means, quats, scales, opac, cols)]


def _cameras():
    return ring_cameras(3, 2.5, width=SIZE, height=SIZE)


def render(
    backend: str, params: list[torch.Tensor], conventions: RasterConventions = TORCH, antialiased: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(rgb, alpha, gradients of a weighted image sum) for ``backend``; ``torch`` uses ``conventions``."""
    cams = _cameras().to(DEVICE)
    bg = torch.tensor([1.0, 0.5, 0.25], device=DEVICE)
    if backend == "torch":
        out = rasterize_torch(
            *params, cams.w2c, cams.K, SIZE, SIZE, bg, conventions=conventions, antialiased=antialiased
        )
    else:
        out = rasterize(*params, cams.w2c, cams.K, SIZE, SIZE, bg, backend=backend, antialiased=antialiased)
    weight = torch.linspace(0.5, 1.5, SIZE * SIZE * 3, device=DEVICE).reshape(1, SIZE, SIZE, 3)
    loss = (out.rgb * weight).sum() + out.alpha.sum()
    grads = torch.autograd.grad(loss, params)
    return out.rgb.detach(), out.alpha.detach(), [g.detach() for g in grads]


def parity_stats(ref: tuple, other: tuple) -> dict[str, float]:
    """Image and gradient differences between two ``render`` results."""
    d = (ref[0] - other[0]).abs().flatten()
    a = (ref[1] - other[1]).abs().flatten()
    stats = {
        "rgb_mean": float(d.mean()),
        "rgb_p999": float(torch.quantile(d[: 1 << 24], 0.999)),
        "rgb_max": float(d.max()),
        "alpha_mean": float(a.mean()),
        "alpha_max": float(a.max()),
    }
    for name, g1, g2 in zip(["means", "quats", "scales", "opacities", "colors"], ref[2], other[2]):
        stats[f"grad_{name}_rel"] = float((g1 - g2).norm() / g1.norm().clamp_min(1e-30))
        stats[f"grad_{name}_cos"] = float(torch.nn.functional.cosine_similarity(g1.flatten(), g2.flatten(), dim=0))
    return stats


def assert_parity(stats: dict[str, float]) -> None:
    assert stats["rgb_mean"] < 2e-5 and stats["alpha_mean"] < 2e-5, stats
    assert stats["rgb_p999"] < 1e-4, stats
    assert stats["rgb_max"] < 6e-3 and stats["alpha_max"] < 6e-3, stats  # one 1/255 threshold flip at most
    for name in ["means", "quats", "scales", "opacities", "colors"]:
        assert stats[f"grad_{name}_rel"] < 1e-2 and stats[f"grad_{name}_cos"] > 0.9999, (name, stats)


@pytest.mark.parametrize("backend", ["gsplat", "inria"])
def test_backend_matches_torch_reference_with_its_conventions(backend: str) -> None:
    pytest.importorskip(MODULES[backend], reason=f"{MODULES[backend]} not installed")
    params = parity_scene()
    stats = parity_stats(render("torch", params, CONVENTIONS[backend]), render(backend, params))
    print(backend, stats)
    assert_parity(stats)


def test_gsplat_antialiased_mode_matches_torch_reference() -> None:
    """gsplat's rasterize_mode="antialiased" against the torch reference's antialiased=True (same compensation)."""
    pytest.importorskip("gsplat", reason="gsplat not installed")
    params = parity_scene()
    stats = parity_stats(
        render("torch", params, CONVENTIONS["gsplat"], antialiased=True), render("gsplat", params, antialiased=True)
    )
    print("gsplat antialiased", stats)
    assert_parity(stats)


@pytest.mark.parametrize("backend", ["gsplat", "inria"])
def test_conventions_matter_on_this_scene(backend: str) -> None:
    """With the torch backend's own conventions the same comparison fails: the scene exercises the differences."""
    pytest.importorskip(MODULES[backend], reason=f"{MODULES[backend]} not installed")
    params = parity_scene()
    stats = parity_stats(render("torch", params, TORCH), render(backend, params))
    print(backend, "torch conventions", stats)
    with pytest.raises(AssertionError):
        assert_parity(stats)


def test_torch_backend_runs_on_cuda_like_on_cpu() -> None:
    params = parity_scene(300)
    cams = ring_cameras(2, 2.5, width=64, height=64)
    cuda = rasterize(*params, cams.w2c.cuda(), cams.K.cuda(), 64, 64).rgb.cpu()
    cpu = rasterize(*[p.detach().cpu() for p in params], cams.w2c, cams.K, 64, 64).rgb
    assert torch.allclose(cuda.detach(), cpu, atol=1e-4)


def test_stage_modules_follow_the_device() -> None:
    """SMGS render and the dynamics model on CUDA give the CPU numbers (device placement in the model code)."""
    from clods_pl.dynamics import MeshGraphNet, graph_from_faces
    from clods_pl.geometry import NodeType, grid_mesh

    mesh_pos, faces = grid_mesh(6, 5)
    v = mesh_pos.shape[0]
    node_type = torch.zeros(v, dtype=torch.int64)
    node_type[:2] = int(NodeType.HANDLE)
    x0 = torch.cat([mesh_pos, torch.zeros(v, 1)], -1)
    x1 = x0 + 0.01
    torch.manual_seed(0)
    model = MeshGraphNet(16, 2)
    graph = graph_from_faces(faces, v)
    cpu = model(x0, x1, mesh_pos, node_type, graph)
    gpu = model.cuda()(x0.cuda(), x1.cuda(), mesh_pos.cuda(), node_type.cuda(), graph.to("cuda"))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


def test_gsplat_renders_a_batch_of_scenes_as_one_call_per_scene() -> None:
    """gsplat's batch dims (the one-call path stage 2 takes): (2, 3) scenes, each in its own cameras over its own
    background, give the images and gradients of one call per scene."""
    pytest.importorskip("gsplat", reason="gsplat not installed")
    scenes = [parity_scene(500, seed) for seed in range(6)]
    params = [torch.stack([s[i].detach() for s in scenes]).reshape(2, 3, *scenes[0][i].shape) for i in range(5)]
    params = [p.requires_grad_(True) for p in params]
    rigs = [ring_cameras(2, 2.3 + 0.1 * k, width=64, height=64).to(DEVICE) for k in range(6)]
    w2c = torch.stack([r.w2c for r in rigs]).reshape(2, 3, 2, 4, 4)
    K = torch.stack([r.K for r in rigs]).reshape(2, 3, 2, 3, 3)
    bgs = torch.rand(2, 3, 3, device=DEVICE)
    out = rasterize(*params, w2c, K, 64, 64, bgs, backend="gsplat")
    grads = torch.autograd.grad((out.rgb**2).sum() + out.alpha.sum(), params)
    for i in range(2):
        for j in range(3):
            one_params = [p[i, j].detach().requires_grad_(True) for p in params]
            one = rasterize(*one_params, w2c[i, j], K[i, j], 64, 64, bgs[i, j], backend="gsplat")
            one_grads = torch.autograd.grad((one.rgb**2).sum() + one.alpha.sum(), one_params)
            assert (out.rgb[i, j] - one.rgb).abs().max() < 1e-5 and (out.alpha[i, j] - one.alpha).abs().max() < 1e-5
            for g, g1 in zip(grads, one_grads):
                assert (g[i, j] - g1).norm() <= 1e-4 * g1.norm() + 1e-7
    assert not torch.allclose(out.rgb[0, 0], out.rgb[0, 1])


def test_smgs_batch_render_on_gsplat_matches_one_render_per_mesh() -> None:
    """Stage 2's one-call render (B meshes x both coverage passes, supersampled) on gsplat against one render per
    mesh on gsplat: images and vertex gradients to float32 round-off."""
    pytest.importorskip("gsplat", reason="gsplat not installed")
    from clods_pl.geometry import grid_mesh
    from clods_pl.smgs.model import SMGS

    torch.manual_seed(0)
    mesh_pos, faces = grid_mesh(12, 10)
    verts0 = torch.cat([mesh_pos - 0.5, torch.zeros(mesh_pos.shape[0], 1)], 1)
    smgs = SMGS(faces, mesh_pos, verts0, gaussians_per_face=4, opacity_mode="dual", coverage_scale=2.0,
                supersample=2, antialiased=True, lambert_light=True).to(DEVICE)  # fmt: skip
    cams = [ring_cameras(4, 2.0 + 0.2 * b, width=48, height=48).to(DEVICE) for b in range(3)]
    verts = (verts0.to(DEVICE) + 0.03 * torch.randn(3, *verts0.shape, device=DEVICE)).requires_grad_(True)
    bg = torch.tensor([1.0, 1.0, 1.0], device=DEVICE)
    out = smgs.render_batch(verts, cams, bg, "gsplat")
    (g_batch,) = torch.autograd.grad((out.rgb**2).sum() + out.alpha.sum(), verts)
    singles = [smgs.render(verts[b], cams[b], bg, "gsplat") for b in range(3)]
    (g_single,) = torch.autograd.grad(sum((o.rgb**2).sum() + o.alpha.sum() for o in singles), verts)
    for b, one in enumerate(singles):
        assert (out.rgb[b] - one.rgb).abs().max() < 1e-4 and (out.alpha[b] - one.alpha).abs().max() < 1e-4
    assert (g_batch - g_single).norm() <= 1e-3 * g_single.norm() and float(out.alpha.amax()) > 0.2
