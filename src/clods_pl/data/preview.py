"""Contact sheet of a dataset: views (rows) x frames (columns), RGBA composited over a checkerboard, with the
frame index above each column and the view name left of each row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from clods_pl.data.format import Dataset, read_dataset
from clods_pl.render.types import composite

CHECKER_SIZE = 8
CHECKER_LIGHT, CHECKER_DARK = 200, 150
GAP = 2
LABEL_TOP, LABEL_LEFT = 14, 56  # px for "t=12" above the columns and "view_03" left of the rows
LABEL_COLOUR = (40, 40, 40)


def checkerboard(height: int, width: int, size: int = CHECKER_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 grey checkerboard."""
    yy, xx = np.mgrid[0:height, 0:width]
    light = (yy // size + xx // size) % 2 == 0
    return np.where(light[..., None], CHECKER_LIGHT, CHECKER_DARK).astype(np.uint8).repeat(3, axis=2)


def evenly_spaced(n: int, k: int) -> list[int]:
    """At most ``k`` indices spread evenly over ``range(n)``, first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)}) if k > 1 else [0]


def write_contact_sheet(
    dataset: str | Path | Dataset, out_png: str | Path, traj: str | None = None, max_frames: int = 8, max_views: int = 8
) -> Path:
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
    sheet = np.full(
        (LABEL_TOP + len(views) * (H + GAP) - GAP, LABEL_LEFT + len(frames) * (W + GAP) - GAP, 3), 255, np.uint8
    )
    bg = torch.from_numpy(checkerboard(H, W)).float() / 255.0
    for j, t in enumerate(frames):
        imgs = tr.load_frame(t)
        for i, c in enumerate(views):
            y, x = tile_origin(i, j, H, W)
            rgb = composite(torch.from_numpy(imgs[c]).float() / 255.0, bg)  # over the checkerboard
            sheet[y : y + H, x : x + W] = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(sheet, "RGB")
    draw = ImageDraw.Draw(image)
    for j, t in enumerate(frames):
        draw.text((tile_origin(0, j, H, W)[1] + 1, 1), f"t={t}", fill=LABEL_COLOUR)
    for i, c in enumerate(views):
        draw.text((2, tile_origin(i, 0, H, W)[0] + max(0, H // 2 - 5)), str(tr.cameras.names[c])[:9], fill=LABEL_COLOUR)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return out


def tile_origin(row: int, col: int, height: int, width: int) -> tuple[int, int]:
    """(y, x) of the top-left pixel of the tile of view row ``row`` and frame column ``col``."""
    return LABEL_TOP + row * (height + GAP), LABEL_LEFT + col * (width + GAP)
