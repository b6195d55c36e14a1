"""Export Gaussians as a standard 3DGS ``.ply`` (binary little-endian), readable by common 3DGS viewers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clods_pl.smgs.model import Gaussians
from clods_pl.utils.files import atomic_write

_EPS = 1e-7


def ply_properties(num_rest: int) -> list[str]:
    """Vertex property names in the 3DGS order."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def export_ply(path: str | Path, gaussians: Gaussians) -> Path:
    """Write ``gaussians`` as 3DGS PLY: opacity as a logit, scales as logs, rotation wxyz, SH (DC + rest, the
    rest stored channel-major as 3DGS does)."""
    g = gaussians
    n = len(g)
    sh = g.sh.detach().cpu().double()
    dc = sh[:, 0]
    rest = sh[:, 1:].transpose(1, 2).reshape(n, -1)  # (N, 3 * (M - 1)), channel-major
    op = g.opacities.detach().cpu().double().clamp(_EPS, 1 - _EPS)
    cols = [
        g.means.detach().cpu().double(),
        torch.zeros(n, 3, dtype=torch.float64),
        dc,
        rest,
        torch.log(op / (1 - op)).unsqueeze(1),
        torch.log(g.scales.detach().cpu().double().clamp_min(1e-12)),
        torch.nn.functional.normalize(g.quats.detach().cpu().double(), dim=1),
    ]
    data = torch.cat(cols, dim=1).numpy().astype("<f4")
    names = ply_properties(rest.shape[1])
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in names) + "end_header\n"

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(np.ascontiguousarray(data).tobytes())

    return atomic_write(path, _w)


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian float PLY written by :func:`export_ply` -> ``{property: (N,) array}``."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or "binary_little_endian" not in lines[1]:
        raise ValueError(f"{path}: not a binary little-endian PLY")
    n = int(next(line.split()[2] for line in lines if line.startswith("element vertex")))
    props = [line.split()[2] for line in lines if line.startswith("property float")]
    arr = np.frombuffer(raw[end:], dtype="<f4").reshape(n, len(props))
    return {p: arr[:, i] for i, p in enumerate(props)}
