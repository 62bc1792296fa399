"""Feast's Redis online layout as bytes: entity keys, hash fields and protobuf value decoding.

The layout and the wire-format decoder are Feast's own and change only with Feast, so they live
apart from the reader (:mod:`airflow_fsmigration.stores.feast_online`), which adds Redis I/O and
the TTL finding on top. Nothing here talks to Redis.

Feast's layout (``feast/infra/online_stores/redis.py`` and ``helpers.py``, checked on 0.67):

- one Redis hash per entity key and project; the key is ``serialize_entity_key(key, v3)`` followed
  by the project name in UTF-8. Version 3 is ``<u32 number of join keys>``, then per join key
  (sorted) ``<u32 type STRING=2><u32 len><name>``, then per value ``<u32 ValueType><u32 len><bytes>``
  with INT64 as ``<q``, INT32 as ``<i`` and STRING as UTF-8 (all little-endian);
- one field per feature: the 4 little-endian bytes of ``mmh3.hash("<view>:<feature>", unsigned)``;
  its value is a serialized ``feast.types.Value`` protobuf (empty bytes for a null);
- the field ``_ts:<view>``: a serialized ``google.protobuf.Timestamp`` of the row's event time.

The values are decoded from the protobuf wire format directly and in bulk: a ``Value`` holding a
scalar is one tag plus one varint, fixed64, fixed32 or length-delimited payload, so a whole column
of them is parsed with numpy over the reply bytes (no per-value Python object, no generated
classes). List values (``Int64List``, ``FloatList``, ``DoubleList``, ``StringList`` and their
JSON/UUID variants) are decoded one value at a time by :func:`decode_list_values`, for the list
dtypes of :mod:`airflow_fsmigration.semantics_lists`; a map or struct value raises, naming the feature.
Parsing the wire format was chosen over a vendored ``Value`` descriptor because protobuf's parser
builds one Python message per value (about 1 us each), which alone would cap the reader below
Feast's own speed; the decoder is checked against protobuf (a vendored descriptor in the unit
tests) and against Feast's ``get_online_features`` (integration tests), value for value.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.stores.feast_lists import FIELD_NAMES as _FIELD_NAMES
from airflow_fsmigration.stores.feast_lists import LIST_FIELDS, decode_list_values, varint

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.feast_import import FeastView

# feast.types.Value field numbers of the scalar types, by the plan dtype they can fill.
_F_BYTES, _F_STRING, _F_INT32, _F_INT64, _F_DOUBLE, _F_FLOAT, _F_BOOL, _F_UNIX_TS = 1, 2, 3, 4, 5, 6, 7, 8
_F_NULL, _F_JSON, _F_UUID, _F_TIME_UUID, _F_DECIMAL = 19, 32, 36, 37, 44
_TEXT_FIELDS = (_F_STRING, _F_JSON, _F_UUID, _F_TIME_UUID, _F_DECIMAL)
_ACCEPTS = {
    "int64": (_F_INT32, _F_INT64),
    "float64": (_F_DOUBLE, _F_FLOAT, _F_INT32, _F_INT64),
    "bool": (_F_BOOL,),
    "timestamp": (_F_UNIX_TS,),
    "string": _TEXT_FIELDS,
}
# Feast writes a null timestamp feature as NaT's int64 (numpy's minimum int64).
NULL_TIMESTAMP_INT = -(2**63)
# ValueType numbers used in serialized entity keys.
_VT_STRING, _VT_INT32, _VT_INT64 = 2, 3, 4


def mmh3_field(view: str, feature: str) -> bytes:
    """The hash field of a feature: Feast's ``_mmh3("<view>:<feature>")`` (4 bytes, little-endian)."""
    import mmh3

    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def entity_key_prefix(join_key: str) -> bytes:
    """The bytes every v3 key of a single-join-key entity starts with."""
    name = join_key.encode()
    return struct.pack("<III", 1, _VT_STRING, len(name)) + name


def redis_keys(view: FeastView, project: str, entity_ids: Sequence[str]) -> list[bytes]:
    """Feast's Redis keys (entity key serialization v3 + project) of ``entity_ids`` for ``view``."""
    if len(view.join_keys) != 1:
        raise ValueError(
            f"Feast feature view '{view.name}' has {len(view.join_keys)} join keys; "
            "the direct reader supports views with exactly one"
        )
    key = view.join_keys[0]
    head = entity_key_prefix(key.name)
    tail = project.encode()
    if key.value_type == "INT64":
        pre = head + struct.pack("<II", _VT_INT64, 8)
        try:
            return [pre + struct.pack("<q", int(e)) + tail for e in entity_ids]
        except ValueError as exc:
            raise ValueError(f"Feast view '{view.name}': join key '{key.name}' is INT64: {exc}") from None
    if key.value_type == "INT32":
        pre = head + struct.pack("<II", _VT_INT32, 4)
        return [pre + struct.pack("<i", int(e)) + tail for e in entity_ids]
    if key.value_type == "STRING":
        out = []
        for e in entity_ids:
            b = e.encode()
            out.append(b"".join((head, struct.pack("<II", _VT_STRING, len(b)), b, tail)))
        return out
    raise ValueError(f"Feast view '{view.name}': join key type {key.value_type} is not supported")


def parse_redis_key(view: FeastView, project: str, key: bytes) -> str | None:
    """The entity id of a Feast Redis key of ``view``'s entity in ``project``, or None if it is not one."""
    head = entity_key_prefix(view.join_keys[0].name)
    tail = project.encode()
    if not key.startswith(head) or not key.endswith(tail) or len(key) < len(head) + 8 + len(tail):
        return None
    vtype, vlen = struct.unpack_from("<II", key, len(head))
    start = len(head) + 8
    if start + vlen + len(tail) != len(key):
        return None
    raw = key[start : start + vlen]
    if vtype == _VT_INT64 and vlen == 8:
        return str(struct.unpack("<q", raw)[0])
    if vtype == _VT_INT32 and vlen == 4:
        return str(struct.unpack("<i", raw)[0])
    if vtype == _VT_STRING:
        return raw.decode()
    return None


def redis_key_array(view: FeastView, project: str, ids: pa.Array) -> pa.Array:
    """Vectorised :func:`redis_keys`: the keys of an Arrow array of entity ids, as a binary array."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(view.join_keys) != 1:
        redis_keys(view, project, [])  # raises the explanatory error
    key = view.join_keys[0]
    head = entity_key_prefix(key.name)
    tail = project.encode()
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(ids)
    if key.value_type in ("INT64", "INT32"):
        try:
            values = pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"Feast view '{view.name}': join key '{key.name}' is {key.value_type}, "
                f"so entity ids must be integers: {exc}"
            ) from None
        if key.value_type == "INT64":
            pre, raw = head + struct.pack("<II", _VT_INT64, 8), values.astype("<i8")
        else:
            pre, raw = head + struct.pack("<II", _VT_INT32, 4), values.astype("<i4")
        width_v = raw.dtype.itemsize
        width = len(pre) + width_v + len(tail)
        rows = np.empty((n, width), dtype=np.uint8)
        rows[:, : len(pre)] = np.frombuffer(pre, np.uint8)
        rows[:, len(pre) : len(pre) + width_v] = raw.view(np.uint8).reshape(n, width_v)
        rows[:, len(pre) + width_v :] = np.frombuffer(tail, np.uint8)
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rows)])
    if key.value_type == "STRING":
        text = ids.cast(pa.string())
        lengths = pc.binary_length(text).to_numpy(zero_copy_only=False).astype("<u4")
        lens = pa.BinaryArray.from_buffers(
            pa.binary(),
            n,
            [
                None,
                pa.py_buffer(np.arange(0, (n + 1) * 4, 4, dtype=np.int32)),
                pa.py_buffer(lengths.tobytes()),
            ],
        )
        pre = head + struct.pack("<I", _VT_STRING)
        return pc.binary_join_element_wise(pre, lens, text.cast(pa.binary()), tail, b"")
    raise ValueError(f"Feast view '{view.name}': join key type {key.value_type} is not supported")


# ----------------------------------------------------------------------------- wire-format decoding


def _varints(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode one protobuf varint at each position of ``data`` (padded by 10 bytes): (value, length).

    One numpy pass per varint byte, over the values still open: Feast's tags and small numbers
    take one or two passes, event-time seconds five.
    """
    import numpy as np

    n = len(pos)
    value = np.zeros(n, dtype=np.uint64)
    length = np.zeros(n, dtype=np.int64)
    live = np.arange(n)
    for k in range(10):
        b = data[pos[live] + k]
        value[live] |= (b & 0x7F).astype(np.uint64) << np.uint64(7 * k)
        done = b < 0x80
        length[live[done]] = k + 1
        live = live[~done]
        if not len(live):
            break
    return value, length


def _fixed(data: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    import numpy as np

    idx = pos[:, None] + np.arange(width)
    return np.ascontiguousarray(data[idx]).view(dtype).reshape(-1)


def _binary_parts(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, padded data) of a binary Arrow array."""
    import numpy as np
    import pyarrow as pa

    if not pa.types.is_binary(arr.type):
        arr = arr.cast(pa.binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(
        np.int64
    )
    raw = arr.buffers()[2]
    data = np.frombuffer(raw, dtype=np.uint8) if raw is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data[: offsets[-1]], np.zeros(16, np.uint8)])
    return offsets[:-1], offsets[1:], data


def decode_values(
    values: Sequence[bytes | None] | pa.Array, dtype: str, *, what: str = "feature"
) -> pa.Array:
    """Decode serialized ``feast.types.Value`` messages into one Arrow column of the plan ``dtype``.

    ``None`` (field absent) and empty bytes (an unset ``Value``, Feast's null) and ``null_val``
    become Arrow nulls. A value of a type the dtype cannot hold raises ``ValueError`` naming ``what``.
    """
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.stores.frames import arrow_type

    if str(dtype) in LIST_FIELDS:
        return decode_list_values(values, str(dtype), what=what)
    if len(values) <= SMALL_DECODE:
        # Serving-sized batches: a plain loop beats numpy's per-call overhead (same rules, tested alike).
        raw = values.to_pylist() if isinstance(values, pa.Array) else list(values)
        return pa.array(_decode_few(raw, str(dtype), what), type=arrow_type(dtype))
    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.binary())
    n = len(arr)
    target = arrow_type(dtype)
    if n == 0:
        return pa.array([], type=target)
    starts, ends, data = _binary_parts(arr)
    present = (ends - starts) > 0
    first = data[starts].astype(np.int64)
    if (first < 0x80).all():  # fields 1-15: a one-byte tag, the common case
        fieldno, wire, pos = first >> 3, first & 7, starts + 1
    else:
        tag, taglen = _varints(data, starts)
        fieldno = (tag >> np.uint64(3)).astype(np.int64)
        wire = (tag & np.uint64(7)).astype(np.int64)
        pos = starts + taglen
    fieldno[~present] = 0
    valid = present & (fieldno != _F_NULL)
    allowed = np.zeros(n, dtype=bool)
    for number in _ACCEPTS[str(dtype)]:
        allowed |= fieldno == number
    bad = valid & ~allowed
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        got = _FIELD_NAMES.get(int(fieldno[i]), f"field {int(fieldno[i])} (a list, map or struct)")
        raise ValueError(
            f"{what}: Feast value {i} is a {got}, which a {dtype} column cannot hold "
            f"({int(bad.sum())} of {n} values); fix the feature's dtype in the plan"
        )
    ok_end = np.ones(n, dtype=bool)
    if str(dtype) == "string":
        length, lenlen = _varints(data, pos)
        pstart = pos + lenlen
        plen = length.astype(np.int64)
        ok_end[valid] = (pstart + plen == ends)[valid]
        plen = np.where(valid, plen, 0)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(plen, out=offsets[1:])
        total = int(offsets[-1])
        if total:
            gather = np.repeat(pstart - offsets[:-1], plen) + np.arange(total)
            payload = data[gather].tobytes()
        else:
            payload = b""
        _check_ends(ok_end, valid, what)
        validity = None if valid.all() else _validity(valid)
        out = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(payload), validity)
        out.validate(full=True)
        return out
    result = np.zeros(n, dtype=np.float64 if str(dtype) == "float64" else np.int64)
    is_var = valid & (wire == 0)
    if is_var.any():
        v, vlen = _varints(data, pos)
        ok_end[is_var] = (pos + vlen == ends)[is_var]
        signed = v.view(np.int64)
        if str(dtype) == "float64":
            result[is_var] = signed[is_var].astype(np.float64)
        else:
            result[is_var] = signed[is_var]
    is_f64 = valid & (wire == 1)
    if is_f64.any():
        sel = np.flatnonzero(is_f64)
        result[sel] = _fixed(data, pos[sel], 8, "<f8")
        ok_end[sel] = pos[sel] + 8 == ends[sel]
    is_f32 = valid & (wire == 5)
    if is_f32.any():
        sel = np.flatnonzero(is_f32)
        result[sel] = _fixed(data, pos[sel], 4, "<f4").astype(np.float64)
        ok_end[sel] = pos[sel] + 4 == ends[sel]
    _check_ends(ok_end, valid, what)
    if str(dtype) == "timestamp":
        valid = valid & (result != NULL_TIMESTAMP_INT)
        return pa.array(result * 1_000_000, type=pa.int64(), mask=~valid).cast(target)
    if str(dtype) == "bool":
        return pa.array(result != 0, type=pa.bool_(), mask=~valid)
    return pa.array(result, type=target, mask=~valid)


#: Batches of at most this many values are decoded by :func:`_decode_few` (a loop, no numpy).
SMALL_DECODE = 256


def _decode_few(raw: list[bytes | None], dtype: str, what: str) -> list[Any]:
    """:func:`decode_values`' rules one value at a time: Python values, None for nulls."""
    accepts = _ACCEPTS[dtype]
    out: list[Any] = []
    for i, value in enumerate(raw):
        if not value:
            out.append(None)
            continue
        tag, pos = varint(value, 0)
        number, wire = tag >> 3, tag & 7
        if number == _F_NULL:
            out.append(None)
            continue
        if number not in accepts:
            got = _FIELD_NAMES.get(number, f"field {number} (a list, map or struct)")
            bad = sum(1 for v in raw if v and varint(v, 0)[0] >> 3 not in (*accepts, _F_NULL))
            raise ValueError(
                f"{what}: Feast value {i} is a {got}, which a {dtype} column cannot hold "
                f"({bad} of {len(raw)} values); fix the feature's dtype in the plan"
            )
        try:
            if wire == 2:
                size, pos = varint(value, pos)
                item: Any = value[pos : pos + size].decode()
                pos += size
            elif wire == 0:
                item, pos = varint(value, pos)
                item = item - (1 << 64) if item >= 1 << 63 else item
            elif wire == 1:
                item, pos = struct.unpack_from("<d", value, pos)[0], pos + 8
            elif wire == 5:
                item, pos = float(struct.unpack_from("<f", value, pos)[0]), pos + 4
            else:
                raise ValueError(f"wire type {wire}")
        except (ValueError, struct.error, UnicodeDecodeError):
            pos = -1
        if pos != len(value):
            raise ValueError(
                f"{what}: a value is not a single scalar feast.types.Value (first at row {i}); "
                "is this really Feast's Redis layout?"
            )
        if dtype == "timestamp":
            item = None if item == NULL_TIMESTAMP_INT else item * 1_000_000  # epoch us
        elif dtype == "bool":
            item = item != 0
        elif dtype == "float64":
            item = float(item)
        out.append(item)
    return out


def _timestamps_few(raw: list[bytes | None]) -> list[int | None]:
    """:func:`decode_timestamps`' rule one value at a time: epoch microseconds, None if absent."""
    out: list[int | None] = []
    for value in raw:
        if value is None:
            out.append(None)
            continue
        seconds = nanos = pos = 0
        while pos < len(value):
            tag, pos = varint(value, pos)
            v, pos = varint(value, pos)
            v = v - (1 << 64) if v >= 1 << 63 else v
            if tag == 0x08:
                seconds = v
            elif tag == 0x10:
                nanos = v
            else:
                raise ValueError(
                    "a _ts field is not a google.protobuf.Timestamp; is this Feast's Redis layout?"
                )
        out.append(seconds * 1_000_000 + nanos // 1000)
    return out


def _validity(valid: np.ndarray) -> pa.Buffer:
    import pyarrow as pa

    return pa.array(valid, type=pa.bool_()).buffers()[1]


def _check_ends(ok_end: np.ndarray, valid: np.ndarray, what: str) -> None:
    import numpy as np

    broken = valid & ~ok_end
    if broken.any():
        raise ValueError(
            f"{what}: {int(broken.sum())} value(s) are not a single scalar feast.types.Value "
            f"(first at row {int(np.flatnonzero(broken)[0])}); is this really Feast's Redis layout?"
        )


def decode_timestamps(values: Sequence[bytes | None] | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Decode ``google.protobuf.Timestamp`` bytes (Feast's ``_ts:<view>``): (UTC us column, found mask).

    ``found`` is False where the field is absent: the entity has no row for the view.
    An empty message is the epoch, as in Feast.
    """
    import numpy as np
    import pyarrow as pa

    arr = values if isinstance(values, pa.Array) else pa.array(values, type=pa.binary())
    n = len(arr)
    found = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if n == 0:
        return pa.array([], type=pa.timestamp("us", tz="UTC")), found
    if n <= SMALL_DECODE:
        return pa.array(_timestamps_few(arr.to_pylist()), type=pa.int64()).cast(
            pa.timestamp("us", tz="UTC")
        ), found
    starts, ends, data = _binary_parts(arr)
    seconds = np.zeros(n, dtype=np.int64)
    nanos = np.zeros(n, dtype=np.int64)
    pos = starts.copy()
    for _ in range(2):  # field 1 (seconds) then field 2 (nanos), each optional
        live = pos < ends
        if not live.any():
            break
        tag, taglen = _varints(data, pos)
        v, vlen = _varints(data, pos + taglen)
        is_sec = live & (tag == 0x08)
        is_nano = live & (tag == 0x10)
        if (live & ~is_sec & ~is_nano).any():
            raise ValueError("a _ts field is not a google.protobuf.Timestamp; is this Feast's Redis layout?")
        seconds[is_sec] = v.view(np.int64)[is_sec]
        nanos[is_nano] = v.view(np.int64)[is_nano]
        pos = np.where(live, pos + taglen + vlen, pos)
    micros = seconds * 1_000_000 + nanos // 1000
    ts = pa.array(micros, type=pa.int64(), mask=~found).cast(pa.timestamp("us", tz="UTC"))
    return ts, found
