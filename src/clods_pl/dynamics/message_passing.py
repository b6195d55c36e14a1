"""Message-passing backends with one interface: ``dgl`` (DGL builtins) and ``native`` (``index_add_``).

Both compute the same two graph operations of a MeshGraphNets block:

* ``gather_add(a, b, graph) -> a[senders] + b[receivers]``  (E, D) from two (V, D) node tensors
* ``aggregate(e, graph) -> sum of e over incoming edges``     (V, D)

The edge MLP's first layer on ``[e, h_src, h_dst]`` is ``W_e e + W_s h_src + W_r h_dst + b``; the model applies
``W_s`` and ``W_r`` to the V nodes and gathers the products with ``gather_add`` instead of applying the
3L-wide layer to the E (~6 V) concatenated edge inputs: the same function with a third of the work there.

``native`` runs wherever torch runs (CPU and CUDA). ``dgl`` uses ``DGLGraph.apply_edges`` /
``update_all(copy_e, sum)``; PyPI's DGL 2.1 is CPU-only, so on CUDA it raises a clear error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from clods_pl.dynamics.dgl_compat import import_dgl
from clods_pl.dynamics.features import MeshGraph
from clods_pl.errors import BackendUnavailableError

BACKENDS = ("native", "dgl")


class MessagePassing(ABC):
    """Graph gather/scatter used by every processor block. Stateless; safe to share between blocks."""

    name: str = ""

    @abstractmethod
    def gather_add(self, a: Tensor, b: Tensor, graph: MeshGraph) -> Tensor:
        """``a[src] + b[dst]`` per edge: a, b (V, D) -> (E, D)."""

    @abstractmethod
    def aggregate(self, e: Tensor, graph: MeshGraph) -> Tensor:
        """Sum of edge features at their receivers: e (E, D) -> (V, D)."""


class NativeMessagePassing(MessagePassing):
    """Pure torch: indexing for the gather, ``index_add_`` for the sum (CPU and CUDA)."""

    name = "native"

    def gather_add(self, a: Tensor, b: Tensor, graph: MeshGraph) -> Tensor:
        return a[graph.senders] + b[graph.receivers]

    def aggregate(self, e: Tensor, graph: MeshGraph) -> Tensor:
        out = e.new_zeros(graph.num_nodes, e.shape[-1])
        return out.index_add_(0, graph.receivers, e)


class DGLMessagePassing(MessagePassing):
    """DGL builtins on a (batched) ``DGLGraph`` built once per :class:`MeshGraph` and cached on it."""

    name = "dgl"

    def __init__(self) -> None:
        self.dgl = import_dgl()

    def dgl_graph(self, graph: MeshGraph) -> Any:
        """The DGLGraph of ``graph``: batched (same structure as ``dgl.batch`` of its members) when it has several."""
        g = graph.cache.get(self.name)
        if g is not None:
            return g
        if graph.device.type != "cpu" and not self._cuda_ok():
            raise BackendUnavailableError(
                "message_passing=dgl: the installed DGL is CPU-only; use message_passing=native on "
                f"{graph.device.type} (or install a CUDA build of DGL)"
            )
        g = self.dgl.graph((graph.senders, graph.receivers), num_nodes=graph.num_nodes, device=graph.device)
        if len(graph.batch_num_nodes) > 1:
            dev = graph.device
            g.set_batch_num_nodes(torch.tensor(graph.batch_num_nodes, dtype=torch.int64, device=dev))
            g.set_batch_num_edges(torch.tensor(graph.batch_num_edges, dtype=torch.int64, device=dev))
        graph.cache[self.name] = g
        return g

    def _cuda_ok(self) -> bool:
        try:
            self.dgl.graph(([0], [0]), device="cuda")
            return True
        except Exception:
            return False

    def gather_add(self, a: Tensor, b: Tensor, graph: MeshGraph) -> Tensor:
        g = self.dgl_graph(graph)
        with g.local_scope():
            g.srcdata["a"] = a
            g.dstdata["b"] = b
            g.apply_edges(self.dgl.function.u_add_v("a", "b", "m"))
            return g.edata["m"]

    def aggregate(self, e: Tensor, graph: MeshGraph) -> Tensor:
        g = self.dgl_graph(graph)
        fn = self.dgl.function
        with g.local_scope():
            g.edata["e"] = e
            g.update_all(fn.copy_e("e", "m"), fn.sum("m", "agg"))
            return g.ndata["agg"]


def make_message_passing(name: str) -> MessagePassing:
    """Backend by name (``native`` or ``dgl``)."""
    if name == "native":
        return NativeMessagePassing()
    if name == "dgl":
        return DGLMessagePassing()
    raise BackendUnavailableError(f"model.message_passing={name!r} is unknown; use one of {BACKENDS}")
