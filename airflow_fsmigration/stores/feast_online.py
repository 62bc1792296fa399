"""Feast's Redis online store as a legacy source, read directly: no Feast import, no ``get_online_features``.

Feast's key layout, hash fields and the bulk decoder of its protobuf values are in
:mod:`airflow_fsmigration.stores.feast_codec`; this module is the reader built on them. The
codec's public names are re-exported here, where callers have long imported them from.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.semantics import glob_escape as _glob_escape
from airflow_fsmigration.stores.feast_codec import (
    NULL_TIMESTAMP_INT,
    decode_timestamps,
    decode_values,
    entity_key_prefix,
    mmh3_field,
    parse_redis_key,
    redis_key_array,
    redis_keys,
)
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, feature_schema
from airflow_fsmigration.stores.redis_online import BATCH, RedisOnlineSource

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.feast_import import FeastRepo, FeastView
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

# The codec's names stay importable from here (callers and plans written before the split).
__all__ = [
    "NULL_TIMESTAMP_INT",
    "FeastLayout",
    "FeastLayoutMismatch",
    "FeastOnlineRead",
    "FeastRedisOnlineSource",
    "StaleReport",
    "decode_timestamps",
    "decode_values",
    "entity_key_prefix",
    "mmh3_field",
    "online_source_for",
    "parse_redis_key",
    "redis_key_array",
    "redis_keys",
    "stale_rows",
]

log = logging.getLogger("airflow_fsmigration.stores.feast")

# Keys a layout check looks at before it calls a read of no rows inconclusive without a full scan.
PROBE_BUDGET = 200_000


class FeastLayoutMismatch(StoreUnavailable):
    """A read found none of the keys it expected, and the store holds no key of the view's layout.

    Not an empty result: the plan's Feast project, view, join key or serialization version does
    not describe this Redis (or it is not the Feast online store). Callers treat it as a store
    that could not be read: inconclusive (exit 3), never a pass.
    """

    def __init__(self, conn_id: str, message: str) -> None:
        ConnectionError.__init__(self, message)
        self.conn_id = conn_id


class FeastLayout:
    """Feast's Redis layout as a :class:`~airflow_fsmigration.stores.redis_online.RedisLayout`.

    Plugged into the pipelined raw-protocol reader of :class:`RedisOnlineSource`, so Feast keys
    are read exactly as fast as the plain layout; only keys, fields and decoding differ.
    """

    def __init__(self, repo: FeastRepo, views: Mapping[str, str]) -> None:
        self.repo = repo
        self.views = dict(views)
        self._fields: dict[tuple[str, tuple[str, ...]], list[bytes]] = {}

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
        # Memoised per group (frozen plan objects): serving-sized reads ask for them on every call.
        key = (group.name, tuple(group.feature_names))
        if key not in self._fields:
            view = self.view(group)
            names = self.feast_features(group)
            self._fields[key] = [mmh3_field(view.name, f) for f in names] + [self.ts_field(group)]
        return self._fields[key]

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

    if not ttl_seconds or frame.num_rows == 0:
        return _stale_schema().empty_table()
    now_us = int(now.timestamp()) * 1_000_000 + now.microsecond
    age_us = now_us - frame.column(SOURCE_TS).cast(pa.int64()).to_numpy()  # _source_ts is never null
    mask = age_us > ttl_seconds * 1_000_000
    if not mask.any():
        return _stale_schema().empty_table()
    keep = pa.array(mask)
    return pa.Table.from_arrays(
        [
            frame.column(ENTITY).filter(keep),
            frame.column(SOURCE_TS).filter(keep),
            pa.array(age_us[mask] / 1e6),
        ],
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
        self._layout_seen: set[str] = set()  # groups whose view's keys this store was seen to hold

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
        if frame.num_rows:
            self._layout_seen.add(g.name)
        elif len(entity_ids) and g.name not in self._layout_seen:
            self._check_layout(g, len(entity_ids))
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

    def _check_layout(self, g: FeatureGroup, asked: int) -> None:
        """After a read of no rows: does this Redis hold any key of the view's layout at all?

        A few absent entities are an answer; a store with no key of the project and join key is
        a plan that does not describe it, which must not pass as "0 of N rows". Looked at once
        per group (and never after a read that found rows), within :data:`PROBE_BUDGET` keys.
        """
        from airflow_fsmigration.stores.feast_codec import entity_key_prefix

        view = self.feast.view(g)
        head = entity_key_prefix(view.join_keys[0].name)
        pattern = _glob_escape(head.decode("latin-1")) + "*"
        tail = self.repo.project.encode()
        ts_field = self.feast.ts_field(g)
        projects: set[str] = set()
        cursor, looked, without_view = 0, 0, 0
        while True:
            cursor, keys = self._redis_call(self.client.scan, cursor=cursor, match=pattern, count=10_000)
            ours = [k for k in keys if k.endswith(tail) and parse_redis_key(view, self.repo.project, k)]
            projects.update(_key_project(k, len(head)) for k in keys)
            if ours:
                with self.client.pipeline(transaction=False) as pipe:
                    for k in ours[:1000]:
                        pipe.hexists(k, ts_field)
                    if any(self._redis_call(pipe.execute)):
                        self._layout_seen.add(g.name)
                        return
                without_view += len(ours)
            looked += 10_000
            if not cursor or looked >= PROBE_BUDGET:
                break
        where = "" if not cursor else f" (looked at {looked:,} keys, not all)"
        others = sorted(p for p in projects if p and p != self.repo.project)
        hint = (
            f"{without_view:,} keys of the project hold no field {ts_field.decode()!r}: is the view name right?"
            if without_view
            else f"keys of join key '{view.join_keys[0].name}' exist for project(s) {', '.join(map(repr, others[:5]))}"
            if others
            else f"it holds no Feast key of join key '{view.join_keys[0].name}' at all"
        )
        raise FeastLayoutMismatch(
            self.conn_id,
            f"group '{g.name}': none of the {asked} entities read from connection '{self.conn_id}' has a key "
            f"of Feast project '{self.repo.project}', view '{view.name}' (entity key serialization "
            f"v3){where}, and {hint}: check legacy_online.project / view / join_key in the plan, "
            f"and that AIRFLOW_CONN_{self.conn_id.upper()} is Feast's online store",
        )

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
        # Columns as Python lists: the small-batch decoders loop over them (no Arrow nesting).
        columns: list[Any] = [list(c) for c in zip(*replies, strict=True)]
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


def _key_project(key: bytes, head_len: int) -> str:
    """The project suffix of a v3 single-key Feast key (for the layout check's hint), or ''."""
    import struct

    if len(key) < head_len + 8:
        return ""
    _, vlen = struct.unpack_from("<II", key, head_len)
    return key[head_len + 8 + vlen :].decode("utf-8", "replace")


def online_source_for(plan: MigrationPlan, url: str, conn_id: str | None = None) -> RedisOnlineSource:
    """The plan's legacy online source: Feast's layout when the plan was imported from Feast."""
    from airflow_fsmigration.feast_import import find_feast_repo

    conn_id = conn_id or plan.connections.legacy_online
    repo = find_feast_repo(plan)
    if repo is None:
        return RedisOnlineSource(url, plan, conn_id)
    return FeastRedisOnlineSource(url, repo, plan, conn_id)
