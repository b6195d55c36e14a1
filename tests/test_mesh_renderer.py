"""Ground-truth mesh renderer: coverage vs analytic area, front/back colours, depth order, anti-aliasing."""

from __future__ import annotations

import pytest
import torch

from clods_pl.data.mesh_renderer import TorchMeshRenderer, make_mesh_renderer, pytorch3d_available
from clods_pl.data.texture import BACK_A, BACK_B, FRONT_A, FRONT_B
from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import Cameras, look_at

S = 32
K = torch.tensor([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])


def cams(eyes: list[tuple[float, float, float]]) -> Cameras:
    w2c = torch.stack([look_at(torch.tensor(e), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0])) for e in eyes])
    return Cameras(K.expand(len(eyes), 3, 3).clone(), w2c, S, S)


def quad(z: float = 0.0, half: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    verts = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return verts, faces, uv


def test_coverage_matches_analytic_area() -> None:
    verts, faces, uv = quad(half=0.25)
    img = TorchMeshRenderer(supersample=4).render(verts, faces, uv, cams([(0.0, 0.0, 2.0)]))
    assert img.shape == (1, S, S, 4)
    # a 0.5 x 0.5 square at distance 2 with f = 32 spans 8 x 8 pixels
    assert abs(float(img[0, ..., 3].sum()) - 64.0) < 1.0
    assert float(img[0, 16, 16, 3]) == 1.0 and float(img[0, 2, 2, 3]) == 0.0


def test_front_and_back_colours_differ() -> None:
    verts, faces, uv = quad()
    img = TorchMeshRenderer(2).render(verts, faces, uv, cams([(0.0, 0.0, 2.0), (0.0, 0.0, -2.0)]))
    front, back = img[0, 14:18, 14:18, :3].mean((0, 1)), img[1, 14:18, 14:18, :3].mean((0, 1))
    # front palette is red/yellow (R > B), back is blue/pale blue (B > R)
    assert float(front[0]) > float(front[2]) and float(back[2]) > float(back[0])
    assert max(FRONT_A[0], FRONT_B[0]) > max(FRONT_A[2], FRONT_B[2]) and BACK_A[2] > BACK_A[0] and BACK_B[2] > BACK_B[0]


def test_nearer_triangle_wins() -> None:
    near, faces, uv = quad(z=0.3, half=0.1)
    far, _, _ = quad(z=-0.3, half=0.4)
    verts = torch.cat([far, near])
    faces2 = torch.cat([faces, faces + 4])
    r = TorchMeshRenderer(1)
    frags = r.fragments(verts, faces2, cams([(0.0, 0.0, 2.0)]))
    assert int(frags.face[0, 16, 16]) in (2, 3)  # the near quad's faces
    assert int(frags.face[0, 16, 12]) in (0, 1)  # only the far quad out there
    assert int(frags.face[0, 16, 3]) == -1  # nothing beyond it
    back = r.fragments(verts, faces2, cams([(0.0, 0.0, -2.0)]))
    assert int(back.face[0, 16, 16]) in (0, 1)  # from behind, the far quad is nearer


def test_antialiased_edge_has_fractional_alpha() -> None:
    verts, faces, uv = quad(half=0.2)
    verts = verts + torch.tensor([0.013, 0.007, 0.0])  # edges off the pixel grid
    img = TorchMeshRenderer(supersample=4).render(verts, faces, uv, cams([(0.0, 0.0, 2.0)]))
    a = img[0, ..., 3]
    assert bool(((a > 0.05) & (a < 0.95)).any())


def test_pytorch3d_choice() -> None:
    if pytorch3d_available():
        verts, faces, uv = quad()
        c = cams([(0.3, 0.2, 2.0)])
        a = make_mesh_renderer("pytorch3d", 2).render(verts, faces, uv, c)
        b = make_mesh_renderer("torch", 2).render(verts, faces, uv, c)
        assert (a - b).abs().mean() < 0.01
    else:
        with pytest.raises(BackendUnavailableError, match="conda install"):
            make_mesh_renderer("pytorch3d")
        assert isinstance(make_mesh_renderer("auto"), TorchMeshRenderer)


def test_barycentrics_are_perspective_correct() -> None:
    # a quad strongly tilted in depth: screen-space barycentrics would put the 3D point off the pixel ray
    verts = torch.tensor([[-0.4, -0.3, -0.8], [0.4, -0.3, -0.8], [0.4, 0.3, 0.6], [-0.4, 0.3, 0.6]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    c = cams([(0.0, 0.0, 2.0)])
    frags = TorchMeshRenderer(1).fragments(verts, faces, c)
    hit = frags.face[0] >= 0
    assert int(hit.sum()) > 100
    pts = (frags.bary[0][hit].unsqueeze(-1) * verts[faces[frags.face[0][hit]]]).sum(-2)  # (N, 3) world
    pix, _ = c.project(pts)
    ys, xs = torch.nonzero(hit, as_tuple=True)
    centres = torch.stack([xs, ys], -1).float() + 0.5
    assert float((pix[0] - centres).abs().max()) < 1e-3


def test_non_square_image_coverage() -> None:
    verts, faces, uv = quad(half=0.25)
    w2c = look_at(torch.tensor([0.0, 0.0, 2.0]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))[None]
    Kw = torch.tensor([[[32.0, 0, 24], [0, 32.0, 16], [0, 0, 1]]])
    img = TorchMeshRenderer(supersample=4).render(verts, faces, uv, Cameras(Kw, w2c, 48, 32))
    assert img.shape == (1, 32, 48, 4)
    assert abs(float(img[0, ..., 3].sum()) - 64.0) < 1.0
    ys, xs = torch.nonzero(img[0, ..., 3] > 0.5, as_tuple=True)
    assert (int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())) == (20, 27, 12, 19)  # centred 8x8 block


def test_diffuse_share_sets_how_much_the_pose_shades() -> None:
    """``diffuse`` 0 renders the texture alone, as bright whichever way the cloth faces the light; the default
    Lambert share darkens a quad turned away from it (what a per-Gaussian SMGS colour cannot follow)."""
    verts, faces, uv = quad()
    turn = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, -0.8, 0.6]])  # normal (0, 0.8, 0.6): n . l ~ 0.08
    view = cams([(0.0, 0.0, 2.0)])

    def brightness(r: TorchMeshRenderer, v: torch.Tensor) -> float:
        img = r.render(v, faces, uv, view)[0]
        inside = img[..., 3] > 0.99
        return float(img[..., :3][inside].mean())

    flat = TorchMeshRenderer(2, diffuse=0.0)
    assert abs(brightness(flat, verts @ turn.T) / brightness(flat, verts) - 1.0) < 0.05
    shaded = TorchMeshRenderer(2)
    assert brightness(shaded, verts @ turn.T) / brightness(shaded, verts) < 0.6
