"""The DGL shim makes `import dgl` work on a current torch and message passing matches index_add_."""

import sys

import torch

from clods_pl.dynamics.dgl_compat import import_dgl


def test_import_dgl_registers_graphbolt_stub_and_works():
    dgl = import_dgl()
    assert "dgl.graphbolt" in sys.modules
    assert hasattr(dgl, "graph") and hasattr(dgl, "function")


def test_update_all_sum_matches_index_add_with_gradients():
    dgl = import_dgl()
    g0 = torch.Generator().manual_seed(0)
    src = torch.randint(0, 20, (60,), generator=g0)
    dst = torch.randint(0, 20, (60,), generator=g0)
    x = torch.randn(20, 5, generator=g0, dtype=torch.float64, requires_grad=True)
    w = torch.randn(60, 5, generator=g0, dtype=torch.float64)

    g = dgl.graph((src, dst), num_nodes=20)
    g.ndata["h"] = x
    g.edata["w"] = w
    g.update_all(dgl.function.u_mul_e("h", "w", "m"), dgl.function.sum("m", "s"))
    out = g.ndata["s"]
    ref = torch.zeros(20, 5, dtype=torch.float64).index_add_(0, dst, x[src] * w)
    assert torch.equal(out, ref)

    (gx,) = torch.autograd.grad((out**2).sum(), x)
    (rx,) = torch.autograd.grad((ref**2).sum(), x)
    assert torch.allclose(gx, rx, atol=1e-12)
