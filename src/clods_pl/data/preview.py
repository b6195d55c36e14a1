"""Contact sheet of a dataset: views (rows) x frames (columns), RGBA composited over a checkerboard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clods_pl.data.format import Dataset, read_dataset

CHECKER_SIZE = 8
CHECKER_LIGHT, CHECKER_DARK = 200, 150
GAP = 2


def checkerboard(height: int, width: int, size: int = CHECKER_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 grey checkerboard."""
    yy, xx = np.mgrid[0:height, 0:width]
    light = ((yy // size + xx // size) % 2 == 0)
    return np.where(light[..., None], CHECKER_LIGHT, CHECKER_DARK).astype(np.uint8).repeat(3, axis=2)


def composite_over(rgba: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Blend (H, W, 4) uint8 over (H, W, 3) uint8 -> (H, W, 3) uint8."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def write_contact_sheet(dataset: str | Path | Dataset, out_png: str | Path, traj: str | None = None,
                        max_frames: int = 8, max_views: int = 8) -> Path:
    """Write a PNG grid of one trajectory: row = view, column = frame (evenly spaced), GAP px white gutters.

    Args:
        dataset: dataset folder or an open :class:`Dataset`. traj: trajectory name (first one when None).
    Returns:
        the PNG path.
    """
    ds = dataset if isinstance(dataset, Dataset) else read_dataset(dataset)
    name = traj or ds.names()[0]
    tr = ds.trajectory(name)
    frames = evenly_spaced(tr.num_frames, max_frames)
    views = evenly_spaced(len(tr.cameras), max_views)
    H, W = tr.cameras.height, tr.cameras.width
    sheet = np.full((len(views) * (H + GAP) - GAP, len(frames) * (W + GAP) - GAP, 3), 255, np.uint8)
    bg = checkerboard(H, W)
    for j, t in enumerate(frames):
        imgs = tr.load_frame(t)
        for i, c in enumerate(views):
            y, x = i * (H + GAP), j * (W + GAP)
            sheet[y:y + H, x:x + W] = composite_over(imgs[c], bg)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet, "RGB").save(out)
    return out
