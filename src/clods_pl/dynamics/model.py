"""MeshGraphNets encode-process-decode for cloth (Pfaff et al. 2021), with pluggable message passing.

One step: features of (x_{t-1}, x_t) -> normalise -> encode (MLP+LayerNorm) -> ``blocks`` residual
message-passing blocks (edge MLP on [e, h_src, h_dst], its first layer applied per node for the h parts; node
MLP on [h, sum of incoming e]) -> decode (MLP, no LayerNorm) -> normalised acceleration a ->
x_{t+1} = 2 x_t - x_{t-1} + a. Non-NORMAL nodes (HANDLE = 3) follow prescribed positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from clods_pl.dynamics.features import EDGE_INPUT_SIZE, NODE_INPUT_SIZE, MeshGraph, edge_features, node_features
from clods_pl.dynamics.message_passing import make_message_passing
from clods_pl.dynamics.normalizer import Normalizer
from clods_pl.errors import BackendUnavailableError
from clods_pl.geometry import NodeType


def mlp(in_size: int, latent: int, out_size: int, hidden_layers: int, layer_norm: bool) -> nn.Sequential:
    """``hidden_layers`` Linear+ReLU of width ``latent``, a Linear to ``out_size``, then LayerNorm if asked."""
    layers: list[nn.Module] = []
    size = in_size
    for _ in range(hidden_layers):
        layers += [nn.Linear(size, latent), nn.ReLU()]
        size = latent
    layers.append(nn.Linear(size, out_size))
    if layer_norm:
        layers.append(nn.LayerNorm(out_size))
    return nn.Sequential(*layers)


class GraphNetBlock(nn.Module):
    """One residual message-passing block with its own edge and node MLPs."""

    def __init__(self, latent: int, mlp_layers: int) -> None:
        super().__init__()
        self.latent = latent
        self.edge_mlp = mlp(3 * latent, latent, latent, mlp_layers, layer_norm=True)
        self.node_mlp = mlp(2 * latent, latent, latent, mlp_layers, layer_norm=True)

    def forward(self, h: Tensor, e: Tensor, graph: MeshGraph, mp) -> tuple[Tensor, Tensor]:
        """h: (V, L) node latents, e: (E, L) edge latents -> updated (h, e).

        ``edge_mlp([e, h_src, h_dst])`` with its first Linear split as ``W_e e + b + (W_s h)_src + (W_r h)_dst``.
        """
        first = self.edge_mlp[0]
        w_e, w_s, w_r = first.weight.split(self.latent, dim=1)
        pre = nn.functional.linear(e, w_e, first.bias) + mp.gather_add(h @ w_s.T, h @ w_r.T, graph)
        e_new = self.edge_mlp[1:](pre)
        h_new = self.node_mlp(torch.cat([h, mp.aggregate(e_new, graph)], dim=-1))
        return h + h_new, e + e_new


class MeshGraphNet(nn.Module):
    """MeshGraphNets cloth model.

    Args:
        latent: width of every MLP and latent vector (128 in MGN).
        blocks: message-passing steps (15 in MGN).
        mlp_layers: hidden layers per MLP (2 in MGN).
        message_passing: ``native`` (index_add_, CPU/CUDA) or ``dgl``; both compute the same function.
        max_accumulations, std_epsilon: normalizer settings (1e6, 1e-8 in MGN).
    """

    def __init__(
        self,
        latent: int = 128,
        blocks: int = 15,
        mlp_layers: int = 2,
        message_passing: str = "native",
        max_accumulations: int = 1_000_000,
        std_epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        self.message_passing = message_passing
        self.mp = make_message_passing(message_passing)
        self.node_normalizer = Normalizer(NODE_INPUT_SIZE, max_accumulations, std_epsilon)
        self.edge_normalizer = Normalizer(EDGE_INPUT_SIZE, max_accumulations, std_epsilon)
        self.output_normalizer = Normalizer(3, max_accumulations, std_epsilon)
        self.node_encoder = mlp(NODE_INPUT_SIZE, latent, latent, mlp_layers, layer_norm=True)
        self.edge_encoder = mlp(EDGE_INPUT_SIZE, latent, latent, mlp_layers, layer_norm=True)
        self.processor = nn.ModuleList(GraphNetBlock(latent, mlp_layers) for _ in range(blocks))
        self.decoder = mlp(latent, latent, 3, mlp_layers, layer_norm=False)
        self._compiled_core: Any = None

    def set_message_passing(self, name: str) -> None:
        """Switch backend without touching weights (both backends compute the same function)."""
        self.message_passing = name
        self.mp = make_message_passing(name)
        self._compiled_core = None

    def compile_core(self, mode: str | None = "reduce-overhead") -> None:
        """Run encode-process-decode through ``torch.compile(mode=mode)`` whenever gradients are enabled (training);
        inference stays eager. ``reduce-overhead`` adds CUDA graphs on a GPU (the eager step is launch-bound there).
        Only the ``native`` message passing compiles."""
        if self.message_passing != "native":
            raise BackendUnavailableError(
                f"compiling the model needs message_passing=native, got {self.message_passing!r}"
            )
        self._compiled_core = torch.compile(self.core, mode=mode, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Whether training steps run the compiled encode-process-decode (:meth:`compile_core`)."""
        return self._compiled_core is not None

    def core(self, nodes: Tensor, edges: Tensor, graph: MeshGraph) -> Tensor:
        """Encode normalised node (V, NODE_INPUT_SIZE) and edge (E, EDGE_INPUT_SIZE) features, run the blocks,
        decode: normalised acceleration (V, 3)."""
        h, e = self.node_encoder(nodes), self.edge_encoder(edges)
        for block in self.processor:
            h, e = block(h, e, graph, self.mp)
        return self.decoder(h)

    def forward(
        self,
        x_prev: Tensor,
        x_t: Tensor,
        mesh_pos: Tensor,
        node_type: Tensor,
        graph: MeshGraph,
        accumulate: bool = False,
    ) -> Tensor:
        """Normalised acceleration (V, 3) for world positions x_prev, x_t: (V, 3); mesh_pos (V, 2); node_type (V,).

        ``accumulate`` adds this step's node and edge features to the input normalizers' statistics.
        """
        nodes = self.node_normalizer(node_features(x_t, x_prev, node_type), accumulate)
        edges = self.edge_normalizer(edge_features(x_t, mesh_pos, graph), accumulate)
        compiled = self._compiled_core is not None and torch.is_grad_enabled()
        return (self._compiled_core if compiled else self.core)(nodes, edges, graph)

    def step(
        self,
        x_prev: Tensor,
        x_t: Tensor,
        mesh_pos: Tensor,
        node_type: Tensor,
        graph: MeshGraph,
        prescribed: Tensor | None = None,
        accumulate: bool = False,
    ) -> Tensor:
        """Next world positions x_{t+1}: (V, 3) = 2 x_t - x_{t-1} + a.

        Args:
            prescribed: (V, 3) positions at t+1 for non-NORMAL nodes; ``None`` keeps them at x_t.
        """
        accel = self.output_normalizer.inverse(self(x_prev, x_t, mesh_pos, node_type, graph, accumulate))
        x_next = 2.0 * x_t - x_prev + accel
        pinned = (node_type != int(NodeType.NORMAL)).unsqueeze(-1)
        return torch.where(pinned, x_t if prescribed is None else prescribed, x_next)

    def rollout(
        self,
        x0: Tensor,
        x1: Tensor,
        steps: int,
        mesh_pos: Tensor,
        node_type: Tensor,
        graph: MeshGraph,
        prescribed: Tensor | None = None,
        accumulate: bool = False,
    ) -> Tensor:
        """Autoregressive rollout from two frames; differentiable through every step.

        Args:
            x0, x1: (V, 3) world positions of frames 0 and 1.
            prescribed: (steps, V, 3) positions of frames 2..steps+1 used at non-NORMAL nodes, or ``None``.
            accumulate: feed the input normalizers during the first step only.
        Returns:
            (steps, V, 3) predicted frames 2..steps+1.
        """
        out, prev, cur = [], x0, x1
        for k in range(steps):
            nxt = self.step(
                prev,
                cur,
                mesh_pos,
                node_type,
                graph,
                None if prescribed is None else prescribed[k],
                accumulate and k == 0,
            )
            out.append(nxt)
            prev, cur = cur, nxt
        return torch.stack(out) if out else x1.new_zeros((0,) + tuple(x1.shape))


def constant_velocity_rollout(
    x0: Tensor, x1: Tensor, steps: int, node_type: Tensor, prescribed: Tensor | None = None
) -> Tensor:
    """Baseline: x_{t+1} = 2 x_t - x_{t-1} (zero acceleration), pinned nodes as in :meth:`MeshGraphNet.rollout`.

    Returns (steps, V, 3) frames 2..steps+1.
    """
    pinned = (node_type != int(NodeType.NORMAL)).unsqueeze(-1)
    out, prev, cur = [], x0, x1
    for k in range(steps):
        nxt = torch.where(pinned, cur if prescribed is None else prescribed[k], 2.0 * cur - prev)
        out.append(nxt)
        prev, cur = cur, nxt
    return torch.stack(out) if out else x1.new_zeros((0,) + tuple(x1.shape))
