"""Feast's Redis online store as a legacy source, read directly: no Feast import, no ``get_online_features``.

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
classes). Only scalar types are accepted; a list or map value raises, naming the feature.
Parsing the wire format was chosen over a vendored ``Value`` descriptor because protobuf's parser
builds one Python message per value (about 1 us each), which alone would cap the reader below
Feast's own speed; the decoder is checked against protobuf (a vendored descriptor in the unit
tests) and against Feast's ``get_online_features`` (integration tests), value for value.

Feast's behaviour that this reader makes explicit rather than copying:

- a missing entity and a null come back from ``get_online_features`` alike (present, no value);
  here a missing entity (no ``_ts:<view>`` field) is an absent row and a null is a null;
- Feast does not apply the view's TTL on online reads (Feast issue #6821) and serves values long
  past it. The frame keeps those values (it is what Feast serves), and :meth:`read_detailed` and
  :meth:`stale_report` list them as *stale in the legacy store*, a finding of its own: the models
  were trained with the TTL applied, so the new store is right not to have them.

Large reads (scans, shadow comparisons) reuse the pipelined raw-protocol reader of
:class:`RedisOnlineSource` (hiredis on a plain socket, a writer thread overlapping send and
receive); :class:`FeastLayout` supplies Feast's keys (built with numpy for a whole batch), fields
and decoding. Serving-sized reads (up to ``small_read`` keys) send one packed burst of HMGETs
over the client's pooled connection instead, so they pay no socket or thread set-up per call.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.semantics import glob_escape as _glob_escape
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, feature_schema
from airflow_fsmigration.stores.redis_online import BATCH, RedisOnlineSource

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from airflow_fsmigration.feast_import import FeastRepo, FeastView
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.stores.feast")

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
_FIELD_NAMES = {
    1: "bytes_val",
    2: "string_val",
    3: "int32_val",
    4: "int64_val",
    5: "double_val",
    6: "float_val",
    7: "bool_val",
    8: "unix_timestamp_val",
    19: "null_val",
    32: "json_val",
    36: "uuid_val",
    37: "time_uuid_val",
    44: "decimal_val",
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


# ----------------------------------------------------------------------------- the source


class FeastLayout:
    """Feast's Redis layout as a :class:`~airflow_fsmigration.stores.redis_online.RedisLayout`.

    Plugged into the pipelined raw-protocol reader of :class:`RedisOnlineSource`, so Feast keys
    are read exactly as fast as the plain layout; only keys, fields and decoding differ.
    """

    def __init__(self, repo: FeastRepo, views: Mapping[str, str]) -> None:
        self.repo = repo
        self.views = dict(views)

    def view(self, group: FeatureGroup) -> FeastView:
        view = self.repo.view_for_group(self.views, group.name)
        if not view.online:
            raise ValueError(
                f"group '{group.name}': Feast view '{view.name}' is offline-only (online=False), "
                "so Feast's online store holds nothing for it; compare its offline store instead"
            )
        return view

    def feast_features(self, group: FeatureGroup) -> list[str]:
        """The Feast feature name behind each plan feature of the group, in order."""
        from airflow_fsmigration.feast_import import feast_feature_names

        return feast_feature_names(self.view(group), group)

    def ts_field(self, group: FeatureGroup) -> bytes:
        return f"_ts:{self.view(group).name}".encode()

    def keys(self, group: FeatureGroup, ids: pa.Array) -> pa.Array:
        return redis_key_array(self.view(group), self.repo.project, ids)

    def fields(self, group: FeatureGroup) -> list[bytes]:
        view = self.view(group)
        return [mmh3_field(view.name, f) for f in self.feast_features(group)] + [self.ts_field(group)]

    def match_pattern(self, group: FeatureGroup) -> str:
        # The fixed bytes of a v3 key are ASCII (small little-endian integers and the key name).
        head = entity_key_prefix(self.view(group).join_keys[0].name).decode("latin-1")
        return f"{_glob_escape(head)}*{_glob_escape(self.repo.project)}"

    def ids_from_keys(self, group: FeatureGroup, keys: list[bytes]) -> list[str]:
        view = self.view(group)
        parsed = (parse_redis_key(view, self.repo.project, k) for k in keys)
        return [e for e in parsed if e is not None]

    def decode(self, group: FeatureGroup, ids: pa.Array, columns: list[pa.Array]) -> pa.Table:
        """Decode one batch; an entity without ``_ts:<view>`` has no row for this view and is dropped."""
        import numpy as np
        import pyarrow as pa

        ts, found = decode_timestamps(columns[-1])
        keep = None if found.all() else pa.array(np.flatnonzero(found))
        arrays = [ids.cast(pa.string())]
        for feature, raw in zip(group.features, columns, strict=False):
            arrays.append(
                decode_values(raw, str(feature.dtype), what=f"group '{group.name}' feature '{feature.name}'")
            )
        arrays.append(ts)
        if keep is not None:
            arrays = [a.take(keep) for a in arrays]
        return pa.Table.from_arrays(arrays, schema=feature_schema(group))

    def encode(self, group: FeatureGroup, table: pa.Table) -> list[pa.Array]:
        raise NotImplementedError(
            f"group '{group.name}': writing Feast's layout is Feast's job (feast materialize), not fsmigrate's"
        )


@dataclass
class StaleReport:
    """Values Feast still serves past the view's TTL: stale in the legacy store, not a new-store mismatch."""

    group: str
    view: str
    ttl_seconds: int
    now: datetime
    checked: int
    present: int
    stale_count: int
    stale_entity_ids: list[str] = field(default_factory=list)
    oldest: datetime | None = None

    @property
    def summary(self) -> str:
        if not self.ttl_seconds:
            return f"group '{self.group}': Feast view '{self.view}' has no TTL, so nothing is stale"
        return (
            f"group '{self.group}': {self.stale_count} of {self.present} entities read from Feast's online "
            f"store are past the view's TTL ({self.ttl_seconds} s) yet still served by Feast: stale in "
            "the legacy store (the models were trained with the TTL applied), not a new-store mismatch"
        )


@dataclass
class FeastOnlineRead:
    """A read with its finding: ``frame`` as Feast serves it; ``stale`` lists (entity_id, _source_ts, age_s)."""

    frame: pa.Table
    stale: pa.Table
    ttl_seconds: int


def _stale_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field(ENTITY, pa.string()),
            pa.field(SOURCE_TS, pa.timestamp("us", tz="UTC")),
            pa.field("age_s", pa.float64()),
        ]
    )


def stale_rows(frame: pa.Table, ttl_seconds: int, now: datetime) -> pa.Table:
    """Rows of ``frame`` whose ``_source_ts`` is older than ``now - ttl`` (none when the view has no TTL).

    The boundary is Feast's own: ``get_historical_features`` keeps a row with
    ``event_timestamp >= as_of - ttl``, so only an age strictly above the TTL is stale.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not ttl_seconds or frame.num_rows == 0:
        return _stale_schema().empty_table()
    now_us = int(now.timestamp()) * 1_000_000 + now.microsecond
    ts = frame.column(SOURCE_TS).cast(pa.int64())
    age_us = pc.subtract(pa.scalar(now_us, pa.int64()), ts)
    mask = pc.greater(age_us, pa.scalar(ttl_seconds * 1_000_000, pa.int64()))
    age_s = pc.divide(age_us.cast(pa.float64()), 1e6)
    return pa.Table.from_arrays(
        [frame.column(ENTITY).filter(mask), frame.column(SOURCE_TS).filter(mask), age_s.filter(mask)],
        schema=_stale_schema(),
    )


class FeastRedisOnlineSource(RedisOnlineSource):
    """Feast's Redis online store as a :class:`~airflow_fsmigration.stores.base.FeatureSource`.

    :param url_or_client: a Redis URL or ``redis.Redis`` client (Feast's ``connection_string``).
    :param repo: the Feast repository: ``FeastRepo.from_json(path)`` of the ``<plan>.feast.json``
        that ``fsmigrate import-feast`` writes beside the plan.
    :param plan: optional, so groups can be passed by name.
    :param views: group name -> Feast feature view name; by default every view under its plan name.
    :param small_read: reads of at most this many keys go over the pooled redis-py connection;
        larger ones over the pipelined raw-protocol reader.
    :param clock: "now" for the TTL check (tests pin it).
    """

    store = "Feast Redis online store"

    def __init__(
        self,
        url_or_client: str | Any,
        repo: FeastRepo,
        plan: MigrationPlan | None = None,
        conn_id: str = "legacy_online",
        *,
        views: Mapping[str, str] | None = None,
        batch_size: int = BATCH,
        small_read: int = 2000,
        clock: Any = None,
    ) -> None:
        views = dict(views) if views is not None else repo.default_mapping()
        self.feast = FeastLayout(repo, views)
        super().__init__(url_or_client, plan, conn_id, layout=self.feast, batch_size=batch_size)
        self.repo = repo
        self.clock = clock or (lambda: datetime.now(UTC))
        self.small_read = small_read
        self.last_read: FeastOnlineRead | None = None

    def __repr__(self) -> str:
        return f"FeastRedisOnlineSource(conn_id={self.conn_id!r}, project={self.repo.project!r})"

    def read_detailed(
        self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array, *, now: datetime | None = None
    ) -> FeastOnlineRead:
        """The frame as Feast serves it, and the entities in it whose value is past the view's TTL."""
        g = self._group(group)
        if len(entity_ids) <= self.small_read:
            frame = self._read_small(g, entity_ids)
        else:
            frame = super().read(g, entity_ids)
        ttl = self.feast.view(g).ttl_seconds
        stale = stale_rows(frame, ttl, now or self.clock())
        if stale.num_rows:
            log.info(
                "group '%s': %d of %d entities are past Feast TTL %s s (stale in the legacy store)",
                g.name,
                stale.num_rows,
                frame.num_rows,
                ttl,
            )
        self.last_read = FeastOnlineRead(frame, stale, ttl)
        return self.last_read

    def _read_small(self, g: FeatureGroup, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        """A few keys over the client's pooled connection: no new socket or writer thread per call.

        Serving-sized reads (Feast's own batches of ~100) would otherwise pay the bulk path's set-up
        for each call. Absent entities need no EXISTS round trip: no ``_ts:<view>`` means no row.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        ids = entity_ids if isinstance(entity_ids, pa.Array) else pa.array(list(entity_ids), type=pa.string())
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        ids = pc.unique(ids.cast(pa.string()))
        if len(ids) == 0:
            return feature_schema(g).empty_table()
        import redis as redis_lib

        from airflow_fsmigration.connections import StoreUnavailable

        fields = self.feast.fields(g)
        head = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
        tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
        payload = b"".join(
            b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in self.feast.keys(g, ids).to_pylist()
        )
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc
        try:
            conn.send_packed_command([payload])
            replies = [conn.read_response() for _ in range(len(ids))]
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            conn.disconnect()
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc
        except BaseException:
            conn.disconnect()  # replies may be left unread on the socket: never reuse it
            raise
        finally:
            pool.release(conn)
        nested = pa.array(replies, type=pa.list_(pa.binary()))
        columns = [pc.list_element(nested, j) for j in range(len(fields))]
        return self.feast.decode(g, ids, columns)

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        """What Feast serves (past-TTL values included); their list is in ``last_read.stale``."""
        return self.read_detailed(group, entity_ids).frame

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Entities with a row of the group's view (the hash may hold other views of the same entity)."""
        import pyarrow as pa

        from airflow_fsmigration.stores.sharding import filter_shard

        g = self._group(group)
        found: set[str] = set()
        ts_field = self.feast.ts_field(g)
        for ids in self._scan_ids(g):
            ids = filter_shard(ids, shard)
            if not ids:
                continue
            keys = self.feast.keys(g, pa.array(ids, type=pa.string())).to_pylist()
            with self.client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hexists(k, ts_field)
                has = self._redis_call(pipe.execute)
            found.update(e for e, h in zip(ids, has, strict=True) if h)
            if limit is not None and len(found) >= limit:
                break
        result = sorted(found)
        return result[:limit] if limit is not None else result

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest ``_ts:<view>`` over all entities (a full scan)."""
        import pyarrow.compute as pc

        newest: datetime | None = None
        for table in self.scan(self._group(group)):
            value = pc.max(table.column(SOURCE_TS)).as_py()
            if value is not None and (newest is None or value > newest):
                newest = value
        return newest

    def stale_report(
        self,
        group: FeatureGroup | str,
        entity_ids: Sequence[str] | None = None,
        *,
        now: datetime | None = None,
        sample: int = 20,
    ) -> StaleReport:
        """Entities whose Feast value is past the view's TTL (over all entities when ``entity_ids`` is None)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        g = self._group(group)
        view = self.feast.view(g)
        now = now or self.clock()
        if entity_ids is None:
            frames = list(self.scan(g))
            checked = sum(f.num_rows for f in frames)
        else:
            frames = [self.read_detailed(g, entity_ids, now=now).frame]
            checked = len(set(entity_ids))
        stale = pa.concat_tables(
            [stale_rows(f, view.ttl_seconds, now) for f in frames] or [_stale_schema().empty_table()]
        )
        oldest = pc.min(stale.column(SOURCE_TS)).as_py() if stale.num_rows else None
        return StaleReport(
            group=g.name,
            view=view.name,
            ttl_seconds=view.ttl_seconds,
            now=now,
            checked=checked,
            present=sum(f.num_rows for f in frames),
            stale_count=stale.num_rows,
            stale_entity_ids=sorted(stale.column(ENTITY).to_pylist())[:sample],
            oldest=oldest,
        )


def online_source_for(plan: MigrationPlan, url: str, conn_id: str | None = None) -> RedisOnlineSource:
    """The plan's legacy online source: Feast's layout when the plan was imported from Feast."""
    from airflow_fsmigration.feast_import import find_feast_repo

    conn_id = conn_id or plan.connections.legacy_online
    repo = find_feast_repo(plan)
    if repo is None:
        return RedisOnlineSource(url, plan, conn_id)
    return FeastRedisOnlineSource(url, repo, plan, conn_id)
