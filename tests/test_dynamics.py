"""MeshGraphNets pieces: features, normalizers, DGL/native parity, rollout gradients, baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clods_pl.dynamics import (
    MeshGraphNet,
    Normalizer,
    batch_graphs,
    constant_velocity_rollout,
    edge_features,
    graph_from_faces,
    node_features,
)
from clods_pl.dynamics.dgl_compat import import_dgl
from clods_pl.dynamics.message_passing import DGLMessagePassing, make_message_passing
from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import NodeType, grid_mesh

# Two triangles sharing edge 1-2: a unit square in material space, lifted in z at vertex 3.
FACES = torch.tensor([[0, 1, 2], [1, 3, 2]])
MESH_POS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
WORLD = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 2.0]])


def test_graph_from_two_triangles_has_both_directions_of_five_edges():
    g = graph_from_faces(FACES, 4)
    pairs = set(zip(g.senders.tolist(), g.receivers.tolist()))
    undirected = {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)}
    assert pairs == undirected | {(b, a) for a, b in undirected}
    assert g.num_edges == 10 and g.num_nodes == 4


def test_edge_and_node_features_by_hand():
    g = graph_from_faces(FACES, 4)
    ef = edge_features(WORLD, MESH_POS, g)
    assert ef.shape == (10, 7)
    k = [i for i, (s, r) in enumerate(zip(g.senders.tolist(), g.receivers.tolist())) if (s, r) == (3, 1)][0]
    # x3 - x1 = (0, 1, 2), |.| = sqrt(5); u3 - u1 = (0, 1), |.| = 1
    expected = torch.tensor([0.0, 1.0, 2.0, 5**0.5, 0.0, 1.0, 1.0])
    assert torch.allclose(ef[k], expected)
    x_prev = WORLD - torch.tensor([0.1, 0.0, -0.2])
    nt = torch.tensor([3, 0, 0, 0])
    nf = node_features(WORLD, x_prev, nt)
    assert nf.shape == (4, 12)
    assert torch.allclose(nf[:, :3], torch.tensor([0.1, 0.0, -0.2]).expand(4, 3))
    assert nf[0, 3 + 3] == 1 and nf[1, 3 + 0] == 1 and nf[:, 3:].sum() == 4


def test_batch_graphs_offsets_match_dgl_batch():
    dgl = import_dgl()
    g1, g2 = graph_from_faces(FACES, 4), graph_from_faces(grid_mesh(3, 2)[1], 6)
    b = batch_graphs([g1, g2])
    assert b.num_nodes == 10 and b.batch_num_nodes == (4, 6)
    assert torch.equal(b.senders[g1.num_edges :], g2.senders + 4)
    ref = dgl.batch([dgl.graph((g.senders, g.receivers), num_nodes=g.num_nodes) for g in (g1, g2)])
    ours = DGLMessagePassing().dgl_graph(b)
    assert torch.equal(torch.stack(ours.edges()), torch.stack(ref.edges()))
    assert torch.equal(ours.batch_num_nodes(), ref.batch_num_nodes())
    assert torch.equal(ours.batch_num_edges(), ref.batch_num_edges())


def test_normalizer_matches_numpy_and_freezes():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(50, 4)) for _ in range(5)]
    norm = Normalizer(4, max_accumulations=3)
    for b in batches:
        norm(torch.as_tensor(b, dtype=torch.float32), accumulate=True)
    seen = np.concatenate(batches[:3])  # frozen after 3 accumulations
    assert np.allclose(norm.mean().numpy(), seen.mean(0), atol=1e-5)
    assert np.allclose(norm.std().numpy(), seen.std(0), atol=1e-5)
    x = torch.as_tensor(batches[4], dtype=torch.float32)
    assert torch.allclose(norm.inverse(norm(x)), x, atol=1e-5)
    const = Normalizer(2)
    const.accumulate(torch.ones(10, 2))
    assert torch.all(const.std() == 1e-8)
    assert torch.equal(Normalizer(3).std(), torch.ones(3, dtype=torch.float64))


def _random_case(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    graphs, x0s, mps, nts = [], [], [], []
    for nx, ny in [(4, 3), (3, 3)]:
        mp, faces = grid_mesh(nx, ny)
        graphs.append(graph_from_faces(faces, nx * ny))
        x0s.append(torch.cat([mp, torch.zeros(nx * ny, 1)], -1) + 0.05 * torch.randn(nx * ny, 3, generator=gen))
        mps.append(mp)
        nt = torch.zeros(nx * ny, dtype=torch.long)
        nt[0] = int(NodeType.HANDLE)
        nts.append(nt)
    x0 = torch.cat(x0s).to(dtype)
    x1 = x0 + 0.01 * torch.randn(x0.shape, generator=gen, dtype=dtype)
    return x0, x1, torch.cat(mps).to(dtype), torch.cat(nts), batch_graphs(graphs)


def test_dgl_and_native_agree_on_outputs_and_gradients():
    torch.manual_seed(0)
    x0, x1, mp, nt, g = _random_case()
    native = MeshGraphNet(latent=16, blocks=3, message_passing="native").double()
    native.node_normalizer.accumulate(node_features(x1, x0, nt))
    dgl_model = MeshGraphNet(latent=16, blocks=3, message_passing="dgl").double()
    dgl_model.load_state_dict(native.state_dict())
    outs, grads = [], []
    for m in (native, dgl_model):
        xr = x1.clone().requires_grad_(True)
        roll = m.rollout(x0, xr, 3, mp, nt, g)
        loss = (roll**2).sum()
        params = list(m.parameters())
        gr = torch.autograd.grad(loss, params + [xr])
        outs.append(roll.detach())
        grads.append(gr)
    assert torch.allclose(outs[0], outs[1], atol=1e-12, rtol=1e-10)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)
    assert any(a.abs().sum() > 0 for a in grads[0])


@pytest.mark.parametrize("backend", ["native", "dgl"])
def test_block_with_split_first_layer_equals_edge_mlp_on_concatenated_inputs(backend):
    """The per-node first layer is an optimisation only: same outputs and gradients as MGN's literal block."""
    torch.manual_seed(1)
    _x0, _x1, _mp, _nt, g = _random_case()
    model = MeshGraphNet(latent=8, blocks=1, message_passing=backend).double()
    block = model.processor[0]
    h = torch.randn(g.num_nodes, 8, dtype=torch.float64, requires_grad=True)
    e = torch.randn(g.senders.numel(), 8, dtype=torch.float64, requires_grad=True)
    h_out, e_out = block(h, e, g, model.mp)
    e_ref = block.edge_mlp(torch.cat([e, h[g.senders], h[g.receivers]], -1))
    agg = torch.zeros_like(h).index_add(0, g.receivers, e_ref)
    h_ref = h + block.node_mlp(torch.cat([h, agg], -1))
    torch.testing.assert_close(e_out, e + e_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h_out, h_ref, atol=1e-12, rtol=1e-10)
    w = torch.randn_like(h_out)
    params = [h, e, *block.parameters()]
    got = torch.autograd.grad((h_out * w).sum() + e_out.sum(), params)
    ref = torch.autograd.grad((h_ref * w).sum() + (e + e_ref).sum(), params)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_rollout_gradient_reaches_first_step_and_first_input():
    torch.manual_seed(1)
    x0, x1, mp, nt, g = _random_case(dtype=torch.float32)
    model = MeshGraphNet(latent=16, blocks=2)
    xr = x1.clone().requires_grad_(True)
    roll = model.rollout(x0, xr, 4, mp, nt, g)
    loss_last = roll[-1].pow(2).mean()  # only the last frame: gradients must flow back through steps 1..3
    grads = torch.autograd.grad(loss_last, [xr, model.decoder[-1].weight, model.node_encoder[0].weight])
    assert all(gr.abs().sum() > 0 for gr in grads)
    # Cutting the graph after step 1 changes the gradient: step 1 contributes to the last-frame loss.
    model.zero_grad()
    prev, cur = x0, model.step(x0, x1, mp, nt, g).detach()
    for _ in range(3):
        prev, cur = cur, model.step(prev, cur, mp, nt, g)
    g_cut = torch.autograd.grad(cur.pow(2).mean(), model.decoder[-1].weight)[0]
    assert not torch.allclose(g_cut, grads[1])


def test_step_pins_handles_and_const_velocity_is_exact_on_linear_motion():
    x0, x1, mp, nt, g = _random_case(dtype=torch.float32)
    model = MeshGraphNet(latent=8, blocks=1)
    presc = x1 + 1.0
    out = model.step(x0, x1, mp, nt, g, prescribed=presc)
    pinned = nt != 0
    assert torch.equal(out[pinned], presc[pinned])
    assert torch.equal(model.step(x0, x1, mp, nt, g)[pinned], x1[pinned])
    v = torch.randn_like(x0) * 0.01
    frames = torch.stack([x0 + k * v for k in range(8)])
    presc = torch.where(pinned[None, :, None], frames[2:], torch.full_like(frames[2:], 99.0))  # only pinned rows
    pred = constant_velocity_rollout(frames[0], frames[1], 6, nt, prescribed=presc)
    assert torch.allclose(pred, frames[2:], atol=1e-6)  # free vertices extrapolated, pinned ones prescribed


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match="message_passing"):
        make_message_passing("pyg")


def test_compiled_core_matches_eager_outputs_and_gradients():
    """``compile_core`` (torch.compile of encode-process-decode, used by stage 3 with model.compile_mode) computes
    the same function and gradients as eager; inference stays eager."""
    mesh_pos, faces = grid_mesh(5, 4)
    v = mesh_pos.shape[0]
    graph = graph_from_faces(faces, v)
    node_type = torch.zeros(v, dtype=torch.int64)
    node_type[:2] = int(NodeType.HANDLE)
    x0 = torch.cat([mesh_pos, torch.zeros(v, 1)], -1)
    x1 = x0 + 0.01 * torch.randn(v, 3, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MeshGraphNet(16, 2)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = model.rollout(x0, x1, 3, mesh_pos, node_type, graph)
        (out**2).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    eager_out, eager_grads = run()
    model.compile_core("default")
    assert model.compiled
    comp_out, comp_grads = run()
    assert torch.allclose(eager_out, comp_out, atol=1e-5)
    for g1, g2 in zip(eager_grads, comp_grads):
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # eager under no_grad (evaluation): same numbers, no compile
        assert torch.allclose(model.rollout(x0, x1, 3, mesh_pos, node_type, graph), eager_out, atol=1e-6)
    model.set_message_passing("native")
    assert not model.compiled


def test_compile_needs_native_message_passing():
    from clods_pl.stages.dynamics import DynamicsConfigError, DynamicsModule

    with pytest.raises(BackendUnavailableError, match="needs message_passing=native"):
        MeshGraphNet(8, 1, message_passing="dgl").compile_core()
    with pytest.raises(DynamicsConfigError, match="model.compile_mode='fast' is not one of"):
        DynamicsModule(8, 1, compile_mode="fast")
    with pytest.raises(DynamicsConfigError, match="needs model.message_passing=native"):
        DynamicsModule(8, 1, message_passing="dgl", compile_mode="default")
