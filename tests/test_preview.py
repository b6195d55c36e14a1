"""Contact sheet layout and compositing."""

import numpy as np
import torch
from PIL import Image

from clods_pl.data.format import DatasetInfo
from clods_pl.data.preview import (
    GAP,
    LABEL_LEFT,
    LABEL_TOP,
    checkerboard,
    evenly_spaced,
    tile_origin,
    write_contact_sheet,
)
from clods_pl.data.writer import write_dataset_info, write_trajectory
from clods_pl.geometry import grid_mesh, ring_cameras


def test_contact_sheet_grid_and_pixels(tmp_path):
    T, C, S = 5, 3, 8
    frames = np.zeros((T, C, S, S, 4), np.uint8)
    for t in range(T):
        for c in range(C):
            frames[t, c, ..., 0] = 10 * t + c  # red encodes (t, c)
            frames[t, c, ..., 3] = 255
    frames[0, 0, 0, 0, 3] = 0  # one transparent pixel shows the checkerboard
    frames[0, :, -1, -1, 3] = 0  # frame 0 has background (the reader refuses one opaque in every view)
    mesh_pos, faces = grid_mesh(2, 2)
    verts0 = torch.cat([mesh_pos, torch.zeros(4, 1)], 1)
    write_trajectory(
        tmp_path,
        "a",
        ring_cameras(C, 2.0, width=S, height=S),
        frames,
        faces,
        mesh_pos,
        torch.zeros(4, dtype=torch.long),
        verts0,
    )
    write_dataset_info(tmp_path, DatasetInfo("d", 0.02, {"train": ["a"]}))
    out = write_contact_sheet(tmp_path, tmp_path / "sheet.png", max_frames=3)
    img = np.asarray(Image.open(out))
    ts = evenly_spaced(T, 3)
    assert ts == [0, 2, 4]
    assert img.shape == (LABEL_TOP + C * (S + GAP) - GAP, LABEL_LEFT + 3 * (S + GAP) - GAP, 3)
    for i in range(C):
        for j, t in enumerate(ts):
            y, x = tile_origin(i, j, S, S)
            assert img[y + 4, x + 4, 0] == 10 * t + i
    y0, x0 = tile_origin(0, 0, S, S)
    assert tuple(img[y0, x0]) == tuple(checkerboard(S, S)[0, 0])
    assert tuple(img[y0 + S, x0]) == (255, 255, 255)  # gutter
    # labels: "t=<frame>" above every column, the view name left of every row (dark text on white)
    for j in range(3):
        x = tile_origin(0, j, S, S)[1]
        assert (img[:LABEL_TOP, x : x + 12].max(-1) < 128).any(), f"no frame label above column {j}"
    for i in range(C):
        y = tile_origin(i, 0, S, S)[0]
        assert (img[y : y + S, :LABEL_LEFT].max(-1) < 128).any(), f"no view label left of row {i}"
