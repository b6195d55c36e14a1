"""TensorFlow-free TFRecord + tf.train.Example reader/writer and the MeshGraphNets flag conversion."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from clods_pl.data.mgn_import import decode_trajectory, read_mgn_trajectories, to_clods_arrays
from clods_pl.data.tfrecord import crc32c, encode_example, parse_example, read_records, write_records
from clods_pl.errors import DatasetError
from clods_pl.geometry import grid_mesh


def test_crc32c_known_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0


def test_example_round_trip_all_feature_kinds(tmp_path) -> None:
    ex = {
        "raw": b"\x00\x01abc",
        "many": [b"a", b"bc"],
        "f": np.array([1.5, -2.0], np.float32),
        "i": np.array([3, -7, 1 << 40], np.int64),
    }
    path = write_records(tmp_path / "x.tfrecord", [encode_example(ex), encode_example({"raw": b"z"})])
    recs = list(read_records(path))
    assert len(recs) == 2
    back = parse_example(recs[0])
    assert back["raw"] == [b"\x00\x01abc"] and back["many"] == [b"a", b"bc"]
    assert np.array_equal(back["f"], ex["f"]) and np.array_equal(back["i"], ex["i"])
    assert parse_example(recs[1]) == {"raw": [b"z"]}


def test_unpacked_float_list_is_read() -> None:
    # FloatList with two unpacked fixed32 entries (wire type 5), as older writers emit
    floats = b"".join(bytes([0x0D]) + struct.pack("<f", v) for v in (0.5, 2.0))
    feature = bytes([0x12, len(floats)]) + floats
    entry = bytes([0x0A, 1]) + b"k" + bytes([0x12, len(feature)]) + feature
    features = bytes([0x0A, len(entry)]) + entry
    record = bytes([0x0A, len(features)]) + features
    assert np.array_equal(parse_example(record)["k"], np.array([0.5, 2.0], np.float32))


def test_corruption_and_truncation_are_clear(tmp_path) -> None:
    path = write_records(tmp_path / "x.tfrecord", [encode_example({"a": b"hello world"})])
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF
    (tmp_path / "bad.tfrecord").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="data CRC mismatch at record 0"):
        list(read_records(tmp_path / "bad.tfrecord"))
    (tmp_path / "short.tfrecord").write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DatasetError, match="truncated record 0"):
        list(read_records(tmp_path / "short.tfrecord"))
    with pytest.raises(DatasetError, match="not found"):
        list(read_records(tmp_path / "none.tfrecord"))


def write_mgn_flag(tmp_path, num_traj: int = 2, T: int = 6):
    """A small flag_simple-style TFRecord + meta.json in MGN's exact layout (5 x 4 grid)."""
    mesh_pos, faces = grid_mesh(5, 4)
    V = mesh_pos.shape[0]
    node_type = np.zeros((1, V, 1), np.int32)
    node_type[0, ::5, 0] = 3
    records, worlds = [], []
    for k in range(num_traj):
        t = np.arange(T, dtype=np.float32)[:, None]
        world = np.stack(
            [
                mesh_pos[:, 0].numpy()[None].repeat(T, 0),
                mesh_pos[:, 1].numpy()[None].repeat(T, 0) + 0.01 * t * k,
                0.02 * np.sin(t + mesh_pos[:, 0].numpy()[None]),
            ],
            -1,
        ).astype(np.float32)
        worlds.append(world)
        records.append(
            encode_example(
                {
                    "cells": faces.numpy().astype(np.int32)[None].tobytes(),
                    "mesh_pos": mesh_pos.numpy()[None].tobytes(),
                    "node_type": node_type.tobytes(),
                    "world_pos": world.tobytes(),
                }
            )
        )
    meta = {
        "dt": 0.02,
        "trajectory_length": T,
        "field_names": ["cells", "mesh_pos", "node_type", "world_pos"],
        "features": {
            "cells": {"type": "static", "shape": [1, -1, 3], "dtype": "int32"},
            "mesh_pos": {"type": "static", "shape": [1, -1, 2], "dtype": "float32"},
            "node_type": {"type": "static", "shape": [1, -1, 1], "dtype": "int32"},
            "world_pos": {"type": "dynamic", "shape": [T, -1, 3], "dtype": "float32"},
        },
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    write_records(tmp_path / "train.tfrecord", records)
    return tmp_path / "train.tfrecord", tmp_path / "meta.json", worlds, faces


def test_mgn_decode_and_z_up_conversion(tmp_path) -> None:
    rec, meta, worlds, faces = write_mgn_flag(tmp_path)
    trajs = read_mgn_trajectories(rec, meta)
    assert len(trajs) == 2
    arr = to_clods_arrays(trajs[1], frame_stride=2)
    assert arr["verts"].shape == (3, 20, 3) and np.array_equal(arr["faces"], faces.numpy())
    assert int((arr["node_type"] == 3).sum()) == 4
    w = worlds[1][::2]
    assert np.allclose(arr["verts"][..., 0], w[..., 0])
    assert np.allclose(arr["verts"][..., 1], -w[..., 2]) and np.allclose(arr["verts"][..., 2], w[..., 1])


def test_mgn_shape_mismatch_is_clear(tmp_path) -> None:
    rec, meta_path, _, _ = write_mgn_flag(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["features"]["world_pos"]["shape"] = [7, -1, 3]
    with pytest.raises(DatasetError, match="field 'world_pos' has 360 values, not shape"):
        decode_trajectory(parse_example(next(read_records(rec))), meta)
