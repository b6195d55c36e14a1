"""MeshGraphNets cloth dynamics: features, normalizers, encode-process-decode, message-passing backends.

Get DGL only through :func:`clods_pl.dynamics.dgl_compat.import_dgl`.
"""

from clods_pl.dynamics.features import (
    EDGE_INPUT_SIZE,
    NODE_INPUT_SIZE,
    MeshGraph,
    batch_graphs,
    edge_features,
    graph_from_faces,
    node_features,
)
from clods_pl.dynamics.message_passing import MessagePassing, make_message_passing
from clods_pl.dynamics.model import MeshGraphNet, constant_velocity_rollout
from clods_pl.dynamics.normalizer import Normalizer

__all__ = [
    "EDGE_INPUT_SIZE",
    "NODE_INPUT_SIZE",
    "MeshGraph",
    "batch_graphs",
    "edge_features",
    "graph_from_faces",
    "node_features",
    "MessagePassing",
    "make_message_passing",
    "MeshGraphNet",
    "constant_velocity_rollout",
    "Normalizer",
]
