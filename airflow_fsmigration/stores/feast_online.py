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

Feast's behaviour that this reader makes explicit rather than copying:

- a missing entity and a null come back from ``get_online_features`` alike (present, no value);
  here a missing entity (no ``_ts:<view>`` field) is an absent row and a null is a null;
- Feast does not apply the view's TTL on online reads (Feast issue #6821) and serves values long
  past it. The frame keeps those values (it is what Feast serves), and :meth:`read_detailed` and
  :meth:`stale_report` list them as *stale in the legacy store*, a finding of its own: the models
  were trained with the TTL applied, so the new store is right not to have them.

Reads go to Redis in batches through one server-side Lua script per batch (a reply of flat
values, one round trip, no per-key client work); on Redis Cluster, or where scripts are not
allowed, they fall back to a redis-py pipeline of HMGETs.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.stores.base import DEFAULT_CHUNK, HistoryUnavailable, Progress, rechunk
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, feature_schema

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import redis

    from airflow_fsmigration.feast_import import FeastRepo, FeastView
    from airflow_fsmigration.plan.model import FeatureGroup

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

# KEYS: hash keys; ARGV: the fields. Returns the HMGET replies of all keys, flattened.
_LUA_HMGET_MANY = """
local out = {}
local n = 0
for i = 1, #KEYS do
  local vals = redis.call('HMGET', KEYS[i], unpack(ARGV))
  for j = 1, #vals do
    n = n + 1
    out[n] = vals[j]
  end
end
return out
"""


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
    """Decode one protobuf varint at each position of ``data`` (padded by 10 bytes): (value, length)."""
    import numpy as np

    idx = pos[:, None] + np.arange(10)
    b = data[idx].astype(np.uint64)
    more = (b & np.uint64(0x80)) != 0
    length = np.argmin(more, axis=1) + 1
    keep = np.arange(10) < length[:, None]
    shifts = (np.arange(10, dtype=np.uint64) * np.uint64(7))[None, :]
    with np.errstate(over="ignore"):
        parts = np.where(keep, (b & np.uint64(0x7F)) << shifts, np.uint64(0))
    return np.bitwise_or.reduce(parts, axis=1), length.astype(np.int64)


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
    tag, taglen = _varints(data, starts)
    fieldno = (tag >> np.uint64(3)).astype(np.int64)
    wire = (tag & np.uint64(7)).astype(np.int64)
    fieldno[~present] = 0
    pos = starts + taglen
    valid = present & (fieldno != _F_NULL)
    accepted = _ACCEPTS[str(dtype)]
    bad = valid & ~np.isin(fieldno, accepted)
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


# ----------------------------------------------------------------------------- the source


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
            return f"group '{self.group}': Feast view '{self.view}' has no TTL; nothing can be stale"
        return (
            f"group '{self.group}': {self.stale_count} of {self.present} entities in Feast's online store "
            f"are past the view's TTL ({self.ttl_seconds} s) and still served by Feast (stale in the "
            f"legacy store; the new store is right not to have them)"
        )


@dataclass
class FeastOnlineRead:
    """A read with its finding: ``frame`` as Feast serves it, and ``stale`` (entity_id, _source_ts, age_s)."""

    frame: pa.Table
    stale: pa.Table
    ttl_seconds: int


class FeastRedisOnlineSource:
    """Feast's Redis online store as a :class:`~airflow_fsmigration.stores.base.FeatureSource`.

    :param client: a ``redis.Redis`` client or a Redis URL.
    :param repo: the Feast repository (``FeastRepo.from_json(...)`` of the ``.feast.json`` that
        ``fsmigrate import-feast`` writes beside the plan).
    :param views: group name -> Feast feature view name; by default each view's plan name.
    :param method: ``"lua"`` (one script per batch), ``"pipeline"`` (HMGET per key) or ``"auto"``.
    :param batch_size: keys per round trip; a Lua batch holds Redis for its duration (about 1 ms per 1000 keys).
    :param clock: returns "now" for TTL checks (tests pin it).
    """

    store = "Feast Redis online store"

    def __init__(
        self,
        client: redis.Redis | str,
        repo: FeastRepo,
        *,
        views: Mapping[str, str] | None = None,
        conn_id: str = "feast_online",
        method: str = "auto",
        batch_size: int = 1000,
        clock: Any = None,
    ) -> None:
        from airflow_fsmigration.feast_import import plan_name

        if isinstance(client, str):
            import redis as redis_lib

            client = redis_lib.Redis.from_url(client)
        if method not in ("auto", "lua", "pipeline"):
            raise ValueError(f"method must be 'auto', 'lua' or 'pipeline', got {method!r}")
        self.client = client
        self.repo = repo
        self.conn_id = conn_id
        self.method = method
        self.batch_size = batch_size
        self.clock = clock or (lambda: datetime.now(UTC))
        self.views = dict(views) if views is not None else {plan_name(v): v for v in repo.views}
        self.last_read: FeastOnlineRead | None = None
        self._script: Any = None

    # -- mapping plan groups to Feast ----------------------------------------------------------

    def view_of(self, group: FeatureGroup) -> FeastView:
        name = self.views.get(group.name)
        if name is None:
            raise KeyError(
                f"group '{group.name}' is not mapped to a Feast feature view of project "
                f"'{self.repo.project}' (mapped: {', '.join(sorted(self.views)) or 'none'})"
            )
        return self.repo.view(name)

    def _fields(self, group: FeatureGroup, view: FeastView) -> list[tuple[str, bytes]]:
        """(plan feature, hash field) per feature of the group."""
        from airflow_fsmigration.feast_import import plan_name

        by_plan = {plan_name(f.name): f.name for f in view.features}
        out = []
        for f in group.features:
            feast_name = by_plan.get(f.name, f.name)
            if feast_name not in {x.name for x in view.features}:
                raise KeyError(
                    f"group '{group.name}': feature '{f.name}' is not in Feast view '{view.name}' "
                    f"(it has {', '.join(x.name for x in view.features)})"
                )
            out.append((f.name, mmh3_field(view.name, feast_name)))
        return out

    # -- raw reads ------------------------------------------------------------------------------

    def _hmget_many(self, keys: list[bytes], fields: list[bytes]) -> list[bytes | None]:
        """HMGET ``fields`` of every key, flattened (len(keys) * len(fields) values)."""
        import redis as redis_lib

        from airflow_fsmigration.connections import StoreUnavailable

        out: list[bytes | None] = []
        try:
            for i in range(0, len(keys), self.batch_size):
                batch = keys[i : i + self.batch_size]
                if self.method != "pipeline":
                    try:
                        if self._script is None:
                            self._script = self.client.register_script(_LUA_HMGET_MANY)
                        out.extend(self._script(keys=batch, args=fields))
                        continue
                    except redis_lib.ResponseError as exc:
                        if self.method == "lua":
                            raise
                        log.info("Lua reads unavailable (%s); using pipelined HMGET", exc)
                        self.method = "pipeline"
                with self.client.pipeline(transaction=False) as pipe:
                    for key in batch:
                        pipe.hmget(key, fields)
                    for reply in pipe.execute():
                        out.extend(reply)
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc
        return out

    def read_detailed(
        self, group: FeatureGroup, entity_ids: Sequence[str], *, now: datetime | None = None
    ) -> FeastOnlineRead:
        """The frame as Feast serves it, plus the entities whose value is past the view's TTL."""
        import numpy as np
        import pyarrow as pa

        view = self.view_of(group)
        ids = list(dict.fromkeys(str(e) for e in entity_ids))
        fields = self._fields(group, view)
        ts_field = f"_ts:{view.name}".encode()
        width = len(fields) + 1
        flat = self._hmget_many(redis_keys(view, self.repo.project, ids), [f for _, f in fields] + [ts_field])
        ts, found = decode_timestamps(flat[len(fields) :: width])
        keep = np.flatnonzero(found)
        columns = [pa.array(ids, type=pa.string()).take(keep)]
        for j, (name, _) in enumerate(fields):
            col = decode_values(
                flat[j::width], group.feature(name).dtype, what=f"group '{group.name}' feature '{name}'"
            )
            columns.append(col.take(keep))
        columns.append(ts.take(keep))
        frame = pa.Table.from_arrays(columns, schema=feature_schema(group))
        now = now or self.clock()
        stale = _stale_table(frame, view.ttl_seconds, now)
        self.last_read = FeastOnlineRead(frame, stale, view.ttl_seconds)
        if stale.num_rows:
            log.info(
                "group '%s': %d of %d entities are past Feast TTL %ss (stale in the legacy store)",
                group.name,
                stale.num_rows,
                frame.num_rows,
                view.ttl_seconds,
            )
        return self.last_read

    # -- FeatureSource ----------------------------------------------------------------------------

    def read(self, group: FeatureGroup, entity_ids: Sequence[str]) -> pa.Table:
        """What Feast serves for ``entity_ids`` (past-TTL values included; see :meth:`stale_report`)."""
        return self.read_detailed(group, entity_ids).frame

    def read_as_of(self, group: FeatureGroup, entity_ids: Sequence[str], as_of: datetime) -> pa.Table:
        raise HistoryUnavailable(self.conn_id, self.store, group.name)

    def _scan_keys(self, view: FeastView) -> Iterator[list[str]]:
        """Entity ids of ``view``'s entity that have a row of ``view`` (SCAN, then HEXISTS _ts:<view>)."""
        import redis as redis_lib

        from airflow_fsmigration.connections import StoreUnavailable

        pattern = (
            _glob_escape(entity_key_prefix(view.join_keys[0].name))
            + b"*"
            + _glob_escape(self.repo.project.encode())
        )
        ts_field = f"_ts:{view.name}".encode()
        cursor = 0
        try:
            while True:
                cursor, keys = self.client.scan(cursor=cursor, match=pattern, count=5000)
                parsed = [(k, parse_redis_key(view, self.repo.project, k)) for k in keys]
                parsed = [(k, e) for k, e in parsed if e is not None]
                if parsed:
                    with self.client.pipeline(transaction=False) as pipe:
                        for k, _ in parsed:
                            pipe.hexists(k, ts_field)
                        has = pipe.execute()
                    yield [e for (_, e), h in zip(parsed, has, strict=True) if h]
                if cursor == 0:
                    return
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc

    def entity_ids(
        self, group: FeatureGroup, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        from airflow_fsmigration.stores.sharding import filter_shard

        view = self.view_of(group)
        out: list[str] = []
        for ids in self._scan_keys(view):
            out.extend(filter_shard(ids, shard))
            if limit is not None and len(out) >= limit:
                return sorted(out)[:limit]
        return sorted(out)

    def scan(
        self, group: FeatureGroup, *, chunk_size: int = DEFAULT_CHUNK, shard: tuple[int, int] | None = None
    ) -> Iterator[pa.Table]:
        ids = self.entity_ids(group, shard=shard)
        progress = Progress(f"group '{group.name}' from {self.store}", total=len(ids))

        def frames() -> Iterator[pa.Table]:
            for i in range(0, len(ids), chunk_size):
                frame = self.read(group, ids[i : i + chunk_size])
                progress.add(len(ids[i : i + chunk_size]))
                yield frame

        yield from rechunk(frames(), chunk_size)

    def freshness(self, group: FeatureGroup) -> datetime | None:
        import pyarrow.compute as pc

        newest = None
        for frame in self.scan(group):
            top = pc.max(frame.column(SOURCE_TS)).as_py()
            if top is not None and (newest is None or top > newest):
                newest = top
        return newest

    # -- the staleness finding ---------------------------------------------------------------------

    def stale_report(
        self,
        group: FeatureGroup,
        entity_ids: Sequence[str] | None = None,
        *,
        now: datetime | None = None,
        sample: int = 20,
    ) -> StaleReport:
        """Count the entities whose Feast value is past the view's TTL (all entities when ``entity_ids`` is None)."""
        import pyarrow as pa

        view = self.view_of(group)
        now = now or self.clock()
        ids = list(entity_ids) if entity_ids is not None else self.entity_ids(group)
        frames, stales = [], []
        for i in range(0, max(len(ids), 1), DEFAULT_CHUNK):
            res = self.read_detailed(group, ids[i : i + DEFAULT_CHUNK], now=now)
            frames.append(res.frame.num_rows)
            stales.append(res.stale)
        stale = pa.concat_tables(stales) if stales else _stale_table(None, 0, now)
        oldest = None
        if stale.num_rows:
            import pyarrow.compute as pc

            oldest = pc.min(stale.column(SOURCE_TS)).as_py()
        return StaleReport(
            group=group.name,
            view=view.name,
            ttl_seconds=view.ttl_seconds,
            now=now,
            checked=len(ids),
            present=sum(frames),
            stale_count=stale.num_rows,
            stale_entity_ids=stale.column(ENTITY).to_pylist()[:sample],
            oldest=oldest,
        )


def _stale_table(frame: pa.Table | None, ttl_seconds: int, now: datetime) -> pa.Table:
    """Rows of ``frame`` whose ``_source_ts`` is before ``now - ttl`` (none when the view has no TTL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = pa.schema(
        [
            pa.field(ENTITY, pa.string()),
            pa.field(SOURCE_TS, pa.timestamp("us", tz="UTC")),
            pa.field("age_s", pa.float64()),
        ]
    )
    if frame is None or not ttl_seconds or frame.num_rows == 0:
        return schema.empty_table()
    now_us = int(now.timestamp() * 1_000_000)
    ts = frame.column(SOURCE_TS).cast(pa.int64())
    age_s = pc.divide(pc.subtract(pa.scalar(now_us, pa.int64()), ts).cast(pa.float64()), 1e6)
    mask = pc.greater(age_s, float(ttl_seconds))
    return pa.Table.from_arrays(
        [frame.column(ENTITY).filter(mask), frame.column(SOURCE_TS).filter(mask), age_s.filter(mask)],
        schema=schema,
    )


def _glob_escape(raw: bytes) -> bytes:
    """Escape Redis glob characters so binary key bytes match literally."""
    out = bytearray()
    for b in raw:
        if b in b"*?[]\\":
            out += b"\\"
        out.append(b)
    return bytes(out)
