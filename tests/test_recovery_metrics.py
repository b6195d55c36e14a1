"""Stage-2 metrics: vertex RMSE, Chamfer (torch fallback vs brute force / pytorch3d), per-frame summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clods_pl.stages import recovery_metrics as rm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny renders are much faster on one thread; restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_vertex_rmse_and_chamfer_against_hand_values() -> None:
    a = torch.zeros(2, 4, 3)
    b = a.clone()
    b[1, :, 0] = 0.3
    np.testing.assert_allclose(rm.vertex_rmse(b, a).numpy(), [0.0, 0.3], atol=1e-7)
    x = torch.tensor([[0.0, 0.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert float(rm.chamfer_distance_torch(x, y)) == pytest.approx(1.0 + (1.0 + 4.0) / 2)
    assert float(rm.chamfer_distance(y, y)) == 0.0
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(3, 50, 3, generator=g), torch.rand(3, 40, 3, generator=g)
    d = ((p[:, :, None] - q[:, None]) ** 2).sum(-1)
    brute = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    assert torch.allclose(rm.chamfer_distance_torch(p, q), brute, atol=1e-6)
    assert torch.allclose(rm.chamfer_distance(p[0], q[0]), brute[0], atol=1e-5)  # pytorch3d when installed
    assert rm.flag_size(torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 0.8]])) == pytest.approx(1.5)
