"""Import DeepMind MeshGraphNets cloth trajectories (``flag_simple`` / ``flag_dynamic``) into this format.

MGN stores one trajectory per ``tf.train.Example``; every field is one raw byte string of a numpy array whose
dtype and shape (``-1`` for the unknown dimension) are in ``meta.json``. Static fields (``cells``, ``mesh_pos``,
``node_type``) have a leading length-1 time axis; ``world_pos`` is (T, V, 3) with y up. We convert to this
project's +z-up world (rotation (x, y, z) -> (x, -z, y)), render every frame from cameras around the cloth with the
ground-truth mesh renderer, and write GT vertices for evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clods_pl.data.format import DatasetInfo
from clods_pl.data.generate import default_cameras, render_sequence
from clods_pl.data.tfrecord import parse_example, read_records
from clods_pl.data.writer import write_dataset_info, write_trajectory
from clods_pl.errors import DatasetError

REQUIRED_FIELDS = ("cells", "mesh_pos", "node_type", "world_pos")
Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float32)


def read_meta(path: str | Path) -> dict[str, Any]:
    """Read and check an MGN ``meta.json``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: meta.json not found")
    meta = json.loads(path.read_text())
    feats = meta.get("features", {})
    missing = [f for f in REQUIRED_FIELDS if f not in feats]
    if missing:
        raise DatasetError(f"{path}: features {missing} missing (need {list(REQUIRED_FIELDS)})")
    return meta


def decode_trajectory(example: dict[str, Any], meta: dict[str, Any], source: str = "tfrecord") -> dict[str, np.ndarray]:
    """Decode one Example's fields with ``meta`` -> ``{field: array}`` with the meta shapes."""
    out = {}
    for name, spec in meta["features"].items():
        if name not in example:
            raise DatasetError(f"{source}: field '{name}' listed in meta.json is missing from the record")
        value = example[name]
        if not isinstance(value, list) or len(value) != 1:
            raise DatasetError(f"{source}: field '{name}' must be one bytes value")
        arr = np.frombuffer(value[0], dtype=np.dtype(spec["dtype"]))
        try:
            out[name] = arr.reshape(spec["shape"])
        except ValueError as exc:
            raise DatasetError(f"{source}: field '{name}' has {arr.size} values, not shape {spec['shape']}") from exc
    return out


def to_clods_arrays(
    fields: dict[str, np.ndarray], frame_stride: int = 1, max_frames: int | None = None
) -> dict[str, np.ndarray]:
    """MGN fields -> faces (F,3) int64, mesh_pos (V,2), node_type (V,) int64, verts (T,V,3) float32 z-up."""
    verts = fields["world_pos"].astype(np.float32)[::frame_stride]
    if max_frames is not None:
        verts = verts[:max_frames]
    verts = verts @ Y_UP_TO_Z_UP.T
    return {
        "faces": fields["cells"][0].astype(np.int64),
        "mesh_pos": fields["mesh_pos"][0].astype(np.float32),
        "node_type": fields["node_type"][0].reshape(-1).astype(np.int64),
        "verts": np.ascontiguousarray(verts),
    }


def read_mgn_trajectories(
    tfrecord_path: str | Path, meta_path: str | Path, num_trajectories: int | None = None
) -> list[dict[str, np.ndarray]]:
    """Decoded MGN trajectories (raw fields) of a TFRecord file."""
    meta = read_meta(meta_path)
    out = []
    for i, record in enumerate(read_records(tfrecord_path)):
        if num_trajectories is not None and i >= num_trajectories:
            break
        out.append(decode_trajectory(parse_example(record), meta, f"{tfrecord_path} record {i}"))
    return out


def import_mgn_flag(
    tfrecord_path: str | Path,
    meta_path: str | Path,
    out_dir: str | Path,
    num_trajectories: int | None = None,
    frame_stride: int = 1,
    max_frames: int | None = None,
    num_views: int = 4,
    resolution: int = 64,
    renderer: str = "auto",
    test_fraction: float = 0.25,
) -> Path:
    """Convert MGN flag trajectories into a clods-multiview dataset in ``out_dir`` (rendered RGBA + GT)."""

    meta = read_meta(meta_path)
    trajs = read_mgn_trajectories(tfrecord_path, meta_path, num_trajectories)
    if not trajs:
        raise DatasetError(f"{tfrecord_path}: no trajectories")
    names = []
    for i, fields in enumerate(trajs):
        arr = to_clods_arrays(fields, frame_stride, max_frames)
        cams = default_cameras(arr["verts"], num_views, resolution, resolution)
        frames = render_sequence(arr["verts"], arr["faces"], arr["mesh_pos"], cams, renderer=renderer)
        name = f"mgn_{i:04d}"
        write_trajectory(
            out_dir,
            name,
            cams,
            frames,
            arr["faces"],
            arr["mesh_pos"],
            arr["node_type"],
            arr["verts"][0],
            gt_verts=arr["verts"],
        )
        names.append(name)
    n_test = max(1, int(round(len(names) * test_fraction))) if len(names) > 1 else 0
    splits = {"train": names[: len(names) - n_test], "test_viewed": names[len(names) - n_test :]}
    dt = float(meta.get("dt", 0.02)) * frame_stride
    write_dataset_info(
        out_dir,
        DatasetInfo(
            name=f"mgn-{Path(tfrecord_path).stem}",
            dt=dt,
            splits=splits,
            extra={"source": str(tfrecord_path), "frame_stride": frame_stride},
        ),
    )
    return Path(out_dir)
