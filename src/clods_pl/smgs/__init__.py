"""Spatial Mapping Gaussian Splatting: mesh-anchored Gaussians, their appearance and opacity field."""

from clods_pl.smgs.model import SMGS, Gaussians
from clods_pl.smgs.opacity import OPACITY_MODES
from clods_pl.smgs.ply import export_ply, read_ply

__all__ = ["SMGS", "Gaussians", "OPACITY_MODES", "export_ply", "read_ply"]
