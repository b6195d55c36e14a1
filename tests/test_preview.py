"""Contact sheet layout and compositing."""

import numpy as np
import torch
from PIL import Image

from clods_pl.data.format import DatasetInfo, write_dataset_info, write_trajectory
from clods_pl.data.preview import GAP, checkerboard, evenly_spaced, write_contact_sheet
from clods_pl.geometry import grid_mesh, ring_cameras


def test_contact_sheet_grid_and_pixels(tmp_path):
    T, C, S = 5, 3, 8
    frames = np.zeros((T, C, S, S, 4), np.uint8)
    for t in range(T):
        for c in range(C):
            frames[t, c, ..., 0] = 10 * t + c      # red encodes (t, c)
            frames[t, c, ..., 3] = 255
    frames[0, 0, 0, 0, 3] = 0                      # one transparent pixel shows the checkerboard
    mesh_pos, faces = grid_mesh(2, 2)
    verts0 = torch.cat([mesh_pos, torch.zeros(4, 1)], 1)
    write_trajectory(tmp_path, "a", ring_cameras(C, 2.0, width=S, height=S), frames, faces, mesh_pos,
                     torch.zeros(4, dtype=torch.long), verts0)
    write_dataset_info(tmp_path, DatasetInfo("d", 0.02, {"train": ["a"]}))
    out = write_contact_sheet(tmp_path, tmp_path / "sheet.png", max_frames=3)
    img = np.asarray(Image.open(out))
    ts = evenly_spaced(T, 3)
    assert ts == [0, 2, 4]
    assert img.shape == (C * (S + GAP) - GAP, 3 * (S + GAP) - GAP, 3)
    for i in range(C):
        for j, t in enumerate(ts):
            y, x = i * (S + GAP) + 4, j * (S + GAP) + 4
            assert img[y, x, 0] == 10 * t + i
    assert tuple(img[0, 0]) == tuple(checkerboard(S, S)[0, 0])
    assert tuple(img[S, 0]) == (255, 255, 255)  # gutter
