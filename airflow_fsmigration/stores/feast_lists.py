"""Feast's list values (``feast.types.Value`` ``Int64List``, ``FloatList``, ...) decoded without Feast.

A list value is a ``Value`` whose oneof holds a message with ``repeated <type> val = 1`` (packed
for numbers, as proto3 writes them, or not). Lists are rarer and wider than scalars, so each
value is parsed in one Python pass with its payload unpacked by :mod:`struct` at once; the
scalar bulk decoder is :mod:`airflow_fsmigration.stores.feast_codec`, which hands list dtypes
here. Field numbers checked against Feast 0.67's ``Value_pb2``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: Names of feast.types.Value fields, for errors about a value of the wrong kind (scalars and lists).
FIELD_NAMES = {
    1: "bytes_val",
    2: "string_val",
    3: "int32_val",
    4: "int64_val",
    5: "double_val",
    6: "float_val",
    7: "bool_val",
    8: "unix_timestamp_val",
    11: "bytes_list_val",
    12: "string_list_val",
    13: "int32_list_val",
    14: "int64_list_val",
    15: "double_list_val",
    16: "float_list_val",
    17: "bool_list_val",
    18: "unix_timestamp_list_val",
    19: "null_val",
    32: "json_val",
    33: "json_list_val",
    36: "uuid_val",
    37: "time_uuid_val",
    44: "decimal_val",
}


# feast.types.Value list fields (each a message with ``repeated <type> val = 1``), by list dtype.
LIST_FIELDS = {
    "list_int64": {13: "varint", 14: "varint"},
    "list_float32": {15: "f64", 16: "f32"},
    "list_float64": {15: "f64", 16: "f32"},
    "embedding": {15: "f64", 16: "f32"},
    "list_string": {12: "bytes", 33: "bytes", 38: "bytes", 39: "bytes"},
}


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


def _list_payload(inner: bytes, kind: str) -> list[Any]:
    """The elements of a ``XxxList`` message (field 1, packed or not)."""
    out: list[Any] = []
    pos = 0
    while pos < len(inner):
        tag, pos = varint(inner, pos)
        if tag >> 3 != 1:
            raise ValueError(f"unexpected field {tag >> 3} in a list")
        wire = tag & 7
        if wire == 2:
            size, pos = varint(inner, pos)
            chunk, pos = inner[pos : pos + size], pos + size
            if kind == "bytes":
                out.append(chunk.decode())
            elif kind == "varint":
                p = 0
                while p < len(chunk):
                    v, p = varint(chunk, p)
                    out.append(v - (1 << 64) if v >= 1 << 63 else v)
            else:
                fmt, width = ("<d", 8) if kind == "f64" else ("<f", 4)
                if len(chunk) % width:
                    raise ValueError("packed floats of a wrong length")
                out.extend(float(x[0]) for x in struct.iter_unpack(fmt, chunk))
        elif wire == 0 and kind == "varint":
            v, pos = varint(inner, pos)
            out.append(v - (1 << 64) if v >= 1 << 63 else v)
        elif wire in (1, 5) and kind in ("f64", "f32"):
            width = 8 if wire == 1 else 4
            out.append(float(struct.unpack_from("<d" if wire == 1 else "<f", inner, pos)[0]))
            pos += width
        else:
            raise ValueError(f"wire type {wire} in a {kind} list")
    if pos != len(inner):
        raise ValueError("truncated list")
    return out


def decode_list_values(
    values: Sequence[bytes | None] | pa.Array, dtype: str, *, what: str = "feature"
) -> pa.Array:
    """Decode serialized ``feast.types.Value`` list messages into an Arrow list column of ``dtype``.

    ``None``, empty bytes and ``null_val`` are nulls; an empty list message is an empty list
    (the two stay distinct). A value of another type raises ``ValueError`` naming ``what``. One
    Python pass per value (lists are rarer and wider than scalars; each list's payload is
    unpacked with :mod:`struct` at once).
    """
    import pyarrow as pa

    accepts = LIST_FIELDS.get(str(dtype))
    if accepts is None:
        raise ValueError(f"{what}: {dtype!r} is not a list dtype")
    raw = values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else list(values)
    out: list[list[Any] | None] = []
    for i, value in enumerate(raw):
        if not value:
            out.append(None)
            continue
        try:
            tag, pos = varint(value, 0)
            field_no = tag >> 3
            if field_no == 19:  # null_val
                out.append(None)
                continue
            kind = accepts.get(field_no)
            if kind is None or tag & 7 != 2:
                got = FIELD_NAMES.get(field_no, f"field {field_no}")
                raise ValueError(
                    f"a {got}, which a {dtype} column cannot hold; fix the feature's dtype in the plan"
                )
            size, pos = varint(value, pos)
            if pos + size != len(value):
                raise ValueError("not a single feast.types.Value")
            out.append(_list_payload(value[pos:], kind))
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            raise ValueError(f"{what}: Feast value {i}: {exc}") from None
    element = (
        pa.string() if str(dtype) == "list_string" else pa.int64() if dtype == "list_int64" else pa.float64()
    )
    return pa.array(out, type=pa.list_(element))
