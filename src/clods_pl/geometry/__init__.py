"""Triangle-mesh topology and camera conventions shared by every stage."""

from clods_pl.geometry.cameras import Cameras, look_at, ring_cameras
from clods_pl.geometry.mesh import NodeType, grid_mesh, unique_edges

__all__ = ["Cameras", "look_at", "ring_cameras", "NodeType", "grid_mesh", "unique_edges"]
