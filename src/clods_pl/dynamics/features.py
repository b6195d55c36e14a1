"""Graph construction and MeshGraphNets cloth input features.

Node input (12) = velocity ``x_t - x_{t-1}`` (3) + node-type one-hot (``NodeType.SIZE`` = 9).
Edge input (7) = relative world position ``x[s] - x[r]`` (3) + its norm (1) + relative mesh position
``u[s] - u[r]`` (2) + its norm (1), for both directions of every mesh edge (deepmind-research ``cloth_model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from clods_pl.geometry import NodeType, unique_edges

NODE_INPUT_SIZE = 3 + int(NodeType.SIZE)
EDGE_INPUT_SIZE = 7


@dataclass
class MeshGraph:
    """A directed graph (or a disjoint union of several) over mesh vertices.

    Attributes:
        senders: (E,) int64 source vertex of each directed edge.
        receivers: (E,) int64 destination vertex; messages are summed at receivers.
        num_nodes: total vertex count V.
        batch_num_nodes: vertices per member graph (one entry for an unbatched graph).
        batch_num_edges: directed edges per member graph.
        cache: backend-specific objects built from this graph (e.g. the DGL graph); not copied by ``to``.
    """

    senders: Tensor
    receivers: Tensor
    num_nodes: int
    batch_num_nodes: tuple[int, ...] = ()
    batch_num_edges: tuple[int, ...] = ()
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.batch_num_nodes:
            self.batch_num_nodes = (int(self.num_nodes),)
            self.batch_num_edges = (int(self.senders.numel()),)

    @property
    def num_edges(self) -> int:
        return int(self.senders.numel())

    @property
    def device(self) -> torch.device:
        return self.senders.device

    def to(self, device: torch.device | str) -> MeshGraph:
        """Copy onto ``device`` (Lightning's batch transfer calls this)."""
        return MeshGraph(
            self.senders.to(device),
            self.receivers.to(device),
            self.num_nodes,
            self.batch_num_nodes,
            self.batch_num_edges,
        )


def graph_from_faces(faces: Tensor, num_nodes: int) -> MeshGraph:
    """Both directions of every unique mesh edge.

    Args:
        faces: (F, 3) int64. num_nodes: V.
    Returns:
        MeshGraph with E = 2 * (#unique edges): first all (i -> j, i < j), then their reverses.
    """
    e = unique_edges(faces.long())
    senders = torch.cat([e[:, 0], e[:, 1]])
    receivers = torch.cat([e[:, 1], e[:, 0]])
    return MeshGraph(senders.contiguous(), receivers.contiguous(), int(num_nodes))


def batch_graphs(graphs: Sequence[MeshGraph]) -> MeshGraph:
    """Disjoint union: member k's vertex indices are offset by the vertex counts of members 0..k-1.

    Node tensors of the members must be concatenated in the same order (dim 0 for (V, ...) tensors).
    """
    offsets, total = [], 0
    for g in graphs:
        offsets.append(total)
        total += g.num_nodes
    senders = torch.cat([g.senders + o for g, o in zip(graphs, offsets)])
    receivers = torch.cat([g.receivers + o for g, o in zip(graphs, offsets)])
    nn_ = tuple(n for g in graphs for n in g.batch_num_nodes)
    ne_ = tuple(n for g in graphs for n in g.batch_num_edges)
    return MeshGraph(senders, receivers, total, nn_, ne_)


def node_features(x_t: Tensor, x_prev: Tensor, node_type: Tensor) -> Tensor:
    """Node inputs.

    Args:
        x_t, x_prev: (V, 3) float world positions at t and t-1. node_type: (V,) int64.
    Returns:
        (V, 12): velocity (3) then node-type one-hot (9).
    """
    one_hot = torch.nn.functional.one_hot(node_type.long(), int(NodeType.SIZE)).to(x_t.dtype)
    return torch.cat([x_t - x_prev, one_hot], dim=-1)


def edge_features(world_pos: Tensor, mesh_pos: Tensor, graph: MeshGraph) -> Tensor:
    """Edge inputs.

    Args:
        world_pos: (V, 3) float world positions at t. mesh_pos: (V, 2) rest-state material coordinates.
    Returns:
        (E, 7): ``x[s]-x[r]`` (3), ``|x[s]-x[r]|``, ``u[s]-u[r]`` (2), ``|u[s]-u[r]|``.
    """
    s, r = graph.senders, graph.receivers
    rel_world = world_pos[s] - world_pos[r]
    rel_mesh = (mesh_pos[s] - mesh_pos[r]).to(world_pos.dtype)
    return torch.cat(
        [rel_world, rel_world.norm(dim=-1, keepdim=True), rel_mesh, rel_mesh.norm(dim=-1, keepdim=True)], dim=-1
    )
