"""A picture of what stage 2 fitted: input images next to the SMGS render of the recovered mesh."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import torch

from clods_pl.render.types import composite
from clods_pl.smgs import SMGS
from clods_pl.stages.mesh_cache import MeshCache


@torch.no_grad()
def recovered_render_sheet(
    smgs: SMGS,
    dataset: Any,
    cache_dir: str | os.PathLike,
    names: Sequence[str],
    views: Sequence[int],
    background: Sequence[float],
    path: str | os.PathLike,
    backend: str = "torch",
    frames_per_traj: int = 3,
    scale: int = 3,
) -> Path | None:
    """A PNG contact sheet: per trajectory, view and a few frames, the input image next to the SMGS render of the
    recovered mesh (stage 2's output), so a reader sees what stage 2 fitted. None when no cache is there."""
    bg = torch.as_tensor(background, dtype=torch.float32)
    rows = []
    for name in names:
        cache_path = Path(cache_dir) / f"{name}.npz"
        if not cache_path.is_file():
            continue
        cache = MeshCache.load(cache_path)
        traj = dataset.trajectory(name)
        last = max(1, cache.frames_done - 1)
        ts = sorted({int(round(x)) for x in np.linspace(1, last, frames_per_traj)})
        for v in views:
            cells = []
            for t in ts:
                target = composite(traj.image_tensor(t)[[v]], bg)[0]
                verts = torch.as_tensor(cache.verts[t], dtype=torch.float32)
                render = smgs.render(verts, traj.cameras[[v]], bg, backend).rgb[0].clamp(0, 1)
                gap = torch.ones(target.shape[0], 2, 3)
                cells += [target, render, gap, gap]
            rows.append(torch.cat(cells[:-2], 1))
            rows.append(torch.ones(2, rows[-1].shape[1], 3))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [torch.cat([r, torch.ones(r.shape[0], width - r.shape[1], 3)], 1) for r in rows[:-1]]
    img = (torch.cat(rows, 0).numpy() * 255).round().astype(np.uint8)
    img = np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(out, img)
    return out
