"""TFRecord files and ``tf.train.Example`` protos without TensorFlow (reader and writer).

Record framing: ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``, little endian,
with CRC-32C (Castagnoli) masked as ``((crc >> 15) | (crc << 17)) + 0xa282ead8``. An Example is
``Features{ map<string, Feature> feature = 1 }`` where ``Feature`` is one of ``bytes_list = 1``,
``float_list = 2``, ``int64_list = 3``, each a ``repeated value = 1`` (floats and ints may be packed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clods_pl.errors import DatasetError

_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC-32C, reflected


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (table driven; fine for the small files tests and imports use)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC TFRecord stores."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def read_records(path: str | Path, verify: bool = True) -> Iterator[bytes]:
    """Yield the raw records of a TFRecord file, checking both CRCs when ``verify``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: TFRecord file not found")
    with open(path, "rb") as fh:
        index = 0
        while True:
            head = fh.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DatasetError(f"{path}: truncated record header at record {index}")
            (length,), (len_crc,) = struct.unpack("<Q", head[:8]), struct.unpack("<I", head[8:])
            if verify and masked_crc32c(head[:8]) != len_crc:
                raise DatasetError(f"{path}: length CRC mismatch at record {index} (corrupt file)")
            data = fh.read(length)
            tail = fh.read(4)
            if len(data) < length or len(tail) < 4:
                raise DatasetError(f"{path}: truncated record {index} ({len(data)} of {length} bytes)")
            if verify and masked_crc32c(data) != struct.unpack("<I", tail)[0]:
                raise DatasetError(f"{path}: data CRC mismatch at record {index} (corrupt file)")
            yield data
            index += 1


def write_records(path: str | Path, records: list[bytes]) -> Path:
    """Write raw records in TFRecord framing."""
    path = Path(path)
    with open(path, "wb") as fh:
        for data in records:
            head = struct.pack("<Q", len(data))
            fh.write(head + struct.pack("<I", masked_crc32c(head)) + data + struct.pack("<I", masked_crc32c(data)))
    return path


# ----- minimal protobuf ---------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DatasetError("malformed protobuf: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 1:
            yield field, wire, buf[pos : pos + 8]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise DatasetError("malformed protobuf: length-delimited field past the end")
            yield field, wire, buf[pos : pos + n]
            pos += n
        elif wire == 5:
            yield field, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise DatasetError(f"malformed protobuf: unsupported wire type {wire}")


FeatureValue = list[bytes] | np.ndarray


def _parse_feature(buf: bytes) -> FeatureValue:
    for field, _, value in _fields(buf):
        assert isinstance(value, bytes)
        if field == 1:  # BytesList
            return [v for f, _, v in _fields(value) if f == 1]  # type: ignore[misc]
        if field == 2:  # FloatList
            floats: list[float] = []
            for _, wire, v in _fields(value):
                if wire == 2:
                    floats.extend(np.frombuffer(v, "<f4").tolist())  # type: ignore[arg-type]
                elif wire == 5:
                    floats.append(struct.unpack("<f", v)[0])  # type: ignore[arg-type]
            return np.asarray(floats, np.float32)
        if field == 3:  # Int64List
            ints: list[int] = []
            for _, wire, v in _fields(value):
                if wire == 2:
                    p = 0
                    while p < len(v):  # type: ignore[arg-type]
                        x, p = _varint(v, p)  # type: ignore[arg-type]
                        ints.append(x - (1 << 64) if x >= 1 << 63 else x)
                else:
                    x = int(v)  # type: ignore[arg-type]
                    ints.append(x - (1 << 64) if x >= 1 << 63 else x)
            return np.asarray(ints, np.int64)
    return []


def parse_example(record: bytes) -> dict[str, FeatureValue]:
    """``tf.train.Example`` bytes -> ``{name: list of bytes | float32 array | int64 array}``."""
    out: dict[str, FeatureValue] = {}
    for field, _, features in _fields(record):
        if field != 1:
            continue
        for f2, _, entry in _fields(features):  # type: ignore[arg-type]
            if f2 != 1:
                continue
            key, value = "", b""
            for f3, _, v in _fields(entry):  # type: ignore[arg-type]
                if f3 == 1:
                    key = v.decode("utf-8")  # type: ignore[union-attr]
                elif f3 == 2:
                    value = v  # type: ignore[assignment]
            out[key] = _parse_feature(value)  # type: ignore[arg-type]
    return out


def _enc_varint(x: int) -> bytes:
    x &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_field(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: dict[str, bytes | list[bytes] | np.ndarray]) -> bytes:
    """Inverse of :func:`parse_example`: bytes -> bytes_list; float arrays -> packed float_list; ints -> int64_list."""
    entries = b""
    for key, value in features.items():
        if isinstance(value, (bytes, list)):
            items = [value] if isinstance(value, bytes) else value
            feature = _enc_field(1, b"".join(_enc_field(1, v) for v in items))
        elif np.issubdtype(np.asarray(value).dtype, np.floating):
            feature = _enc_field(2, _enc_field(1, np.asarray(value, "<f4").tobytes()))
        else:
            feature = _enc_field(3, _enc_field(1, b"".join(_enc_varint(int(v)) for v in np.asarray(value).ravel())))
        entries += _enc_field(1, _enc_field(1, key.encode()) + _enc_field(2, feature))
    return _enc_field(1, entries)
