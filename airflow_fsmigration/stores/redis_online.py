"""The legacy online store: Redis, one hash per entity, read fast enough for 1M-entity compares.

Three rooms: :mod:`.redis_conn` speaks RESP (pipelined raw sockets, payloads built with Arrow
kernels), :mod:`.redis_codec` knows what keys, fields and values mean (the layout, value
decoding per :mod:`airflow_fsmigration.semantics`), and this module is the reader a comparison
uses: which entities to read or scan, existence checks, writing demo data. The layout is a
:class:`RedisLayout`, so Feast's layout (hashed field names, protobuf values) plugs in as another
layout without touching the pipelining.

A value the reader cannot decode does not abort the read: it is a null with a true flag in the
frame's ``_undecodable.<feature>`` column, and the comparison counts it as its own mismatch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.stores.base import DEFAULT_CHUNK, HistoryUnavailable, Progress, rechunk
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, UNDECODABLE_PREFIX, conform, empty_frame
from airflow_fsmigration.stores.redis_codec import (
    HashPerEntityLayout,
    RedisLayout,
    decode_column,
    encode_epoch,
    encode_value_column,
)
from airflow_fsmigration.stores.redis_conn import (
    PARSE_AT,
    _columns_from_replies,
    _data_view,
    _hmget_payload,
    _hset_payload,
    _is_reply_error,
    _LazyRaw,
    _Raw,
    _resp_bulk,
    _Writer,
)
from airflow_fsmigration.stores.sharding import filter_shard

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

__all__ = [
    "BATCH",
    "PARSE_AT",
    "HashPerEntityLayout",
    "RedisLayout",
    "RedisOnlineSource",
    "_LazyRaw",
    "_Raw",
    "_Writer",
    "_columns_from_replies",
    "_data_view",
    "_hmget_payload",
    "_hset_payload",
    "_resp_bulk",
    "decode_column",
    "encode_epoch",
    "encode_value_column",
]

log = logging.getLogger("airflow_fsmigration.stores")

BATCH = 20_000  # entities per pipelined batch: bounds memory, keeps both ends busy


def _with_flags(tables: list[pa.Table], g: FeatureGroup) -> pa.Table:
    """Batches conformed to the group's frame, plus every ``_undecodable.*`` column any batch had."""
    import pyarrow as pa

    flags = sorted({n for t in tables for n in t.column_names if n.startswith(UNDECODABLE_PREFIX)})
    if not flags:
        return conform(pa.concat_tables(tables), g)
    parts = []
    for t in tables:
        for name in flags:
            if name not in t.column_names:
                t = t.append_column(name, pa.array([False] * t.num_rows, type=pa.bool_()))
        parts.append(t.select([*[c for c in t.column_names if c not in flags], *flags]))
    whole = pa.concat_tables(parts)
    out = conform(whole.drop_columns(flags), g)
    for name in flags:
        out = out.append_column(name, whole.column(name))
    return out


class _SeenHashes:
    """Ids already produced by a scan, kept as sorted 64-bit hashes (bounded memory)."""

    def __init__(self) -> None:
        import numpy as np

        self.merged = np.empty(0, dtype=np.uint64)
        self.recent: set[int] = set()

    def fresh(self, ids: list[str]) -> list[str]:
        """The ids not seen before, in order; marks them seen."""
        import numpy as np

        from airflow_fsmigration.stores.sharding import hash_ids

        if not ids:
            return []
        hashes = hash_ids(ids)
        old = np.isin(hashes, self.merged)
        out = []
        for i, h in enumerate(hashes.tolist()):
            if old[i] or h in self.recent:
                log.debug("scan: skipping id %r, already produced (same 64-bit key hash)", ids[i])
                continue
            self.recent.add(h)
            out.append(ids[i])
        if len(self.recent) >= 1_000_000:
            self.merged = np.union1d(self.merged, np.fromiter(self.recent, dtype=np.uint64))
            self.recent.clear()
        return out


class RedisOnlineSource:
    """The legacy Redis online store of a plan (current values only)."""

    store = "Redis"

    def __init__(
        self,
        url_or_client: str | Any,
        plan: MigrationPlan | None = None,
        conn_id: str = "legacy_online",
        *,
        layout: RedisLayout | None = None,
        batch_size: int = BATCH,
    ) -> None:
        import redis
        from redis.connection import parse_url

        self.plan = plan
        self.conn_id = conn_id
        self.layout: RedisLayout = layout or HashPerEntityLayout()
        self.batch_size = batch_size
        if isinstance(url_or_client, str):
            self.params = dict(parse_url(url_or_client))
            self.client = redis.Redis.from_url(url_or_client, socket_connect_timeout=5, socket_timeout=60)
            self._own_client = True
        else:
            self._own_client = False
            self.client = url_or_client
            self.params = dict(url_or_client.connection_pool.connection_kwargs)
        connection_class = self.params.pop("connection_class", None)
        if connection_class is not None and "SSL" in connection_class.__name__:
            self.params["ssl"] = True

    def __repr__(self) -> str:
        return f"RedisOnlineSource(conn_id={self.conn_id!r})"

    def __enter__(self) -> RedisOnlineSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the control client if this source made it (bulk reads open their own sockets)."""
        if self._own_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def _group(self, group: FeatureGroup | str) -> FeatureGroup:
        if isinstance(group, str):
            if self.plan is None:
                raise ValueError(f"group '{group}' given by name, but this source has no plan")
            return self.plan.groups[group]
        return group

    def _redis_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis

        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(self.conn_id, self.store, exc) from exc

    # -- reads -----------------------------------------------------------------------------

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:

        g = self._group(group)
        tables = list(self._read_batches(g, entity_ids))
        if not tables:
            return empty_frame(g)
        return _with_flags(tables, g)

    def read_as_of(self, group: FeatureGroup | str, entity_ids: Sequence[str], as_of: datetime) -> pa.Table:
        raise HistoryUnavailable(self.conn_id, self.store, self._group(group).name)

    def _read_batches(self, g: FeatureGroup, entity_ids: Sequence[str] | pa.Array) -> Iterator[pa.Table]:
        import pyarrow as pa

        ids = entity_ids if isinstance(entity_ids, pa.Array) else pa.array(list(entity_ids), type=pa.string())
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        if len(ids) == 0:
            return
        unique = ids.unique()  # first occurrences, in order: one row per entity, like the SQL stores
        if len(unique) < len(ids):
            ids = unique
        fields = self.layout.fields(g)
        step = self.batch_size
        slices = [ids.slice(i, step) for i in range(0, len(ids), step)]

        def payloads() -> Iterator[tuple[memoryview, int]]:
            for chunk in slices:
                yield _hmget_payload(self.layout.keys(g, chunk), fields), len(chunk)

        raw = _Raw(self.params, self.conn_id)
        # Existence checks go over a second connection: the first one is busy with the pipeline.
        aux = _LazyRaw(self.params, self.conn_id)
        progress = Progress(f"group '{g.name}': reading Redis ({self.conn_id})", total=len(ids))
        start = 0
        try:
            for count, columns in raw.hmget_columns(payloads(), len(ids), len(fields)):
                yield self._batch_table(g, ids.slice(start, count), columns, aux)
                start += count
                progress.add(count)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable) or not _is_reply_error(exc):
                raise
            raise ValueError(
                f"group '{g.name}': Redis ({self.conn_id}) refused HMGET: {exc}. "
                f"Are the keys of '{g.legacy_online.key_template}' hashes?"
            ) from None
        finally:
            raw.close()
            aux.close()

    def _batch_table(
        self, g: FeatureGroup, ids: pa.Array, columns: list[pa.Array], aux: _LazyRaw
    ) -> pa.Table:
        present = self._present(g, ids, columns, aux)
        if present is not None:
            ids = ids.filter(present)
            columns = [c.filter(present) for c in columns]
        return self.layout.decode(g, ids, columns)

    def _present(
        self, g: FeatureGroup, ids: pa.Array, columns: list[pa.Array], aux: _LazyRaw
    ) -> pa.Array | None:
        """Which rows exist: a row whose fields are all absent may be a missing key, so ask EXISTS."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        all_null = np.ones(len(ids), dtype=bool)
        for col in columns:
            all_null &= col.is_null().to_numpy(zero_copy_only=False)
        if not all_null.any():
            return None
        unsure = np.flatnonzero(all_null)
        keys = self.layout.keys(g, ids.take(pa.array(unsure)))
        exists = np.zeros(len(unsure), dtype=bool)
        payload = _data_view(pc.binary_join_element_wise(b"*2\r\n$6\r\nEXISTS\r\n", _resp_bulk(keys), b""))
        for replies in aux.get().pipeline(iter([(payload, len(unsure))])):
            exists[:] = np.asarray(replies, dtype=np.int64) > 0
        keep = ~all_null
        keep[unsure] = exists
        return pa.array(keep)

    # -- writing (demo data, benchmarks, keep-warm tests) -------------------------------------

    def write(self, group: FeatureGroup | str, table: pa.Table) -> int:
        """Write a frame in this layout (replacing each entity's hash); returns entities written.

        A row whose fields are all null is deleted, not written: Redis has no empty hashes.
        """
        g = self._group(group)
        table = conform(table, g)
        if table.num_rows == 0:
            return 0
        fields = self.layout.fields(g)
        step = self.batch_size
        chunks = [table.slice(i, step) for i in range(0, table.num_rows, step)]

        def payloads() -> Iterator[tuple[bytes, int]]:
            for chunk in chunks:
                keys = self.layout.keys(g, chunk.column(ENTITY).combine_chunks())
                yield _hset_payload(keys, fields, self.layout.encode(g, chunk))

        raw = _Raw(self.params, self.conn_id)
        progress = Progress(f"group '{g.name}': writing Redis ({self.conn_id})", total=table.num_rows)
        try:
            for chunk, replies in zip(chunks, raw.pipeline(payloads()), strict=False):
                errors = [r for r in replies if isinstance(r, Exception)]
                if errors:
                    raise ValueError(f"group '{g.name}': Redis ({self.conn_id}) refused a write: {errors[0]}")
                progress.add(chunk.num_rows)
        finally:
            raw.close()
        return table.num_rows

    # -- listing ---------------------------------------------------------------------------

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Entity ids found by ``SCAN MATCH`` on the key template, sorted; at most ``limit``.

        With a limit the scan stops early, so the ids are the first ones Redis returns
        (arbitrary but cheap), then sorted.
        """
        g = self._group(group)
        found: set[str] = set()
        for ids in self._scan_ids(g):
            found.update(filter_shard(ids, shard))
            if limit is not None and len(found) >= limit:
                break
        result = sorted(found)
        return result[:limit] if limit is not None else result

    def _scan_ids(self, g: FeatureGroup, count: int = 10_000) -> Iterator[list[str]]:
        pattern = self.layout.match_pattern(g)
        cursor = 0
        while True:
            cursor, keys = self._redis_call(self.client.scan, cursor=cursor, match=pattern, count=count)
            if keys:
                yield self.layout.ids_from_keys(g, keys)
            if int(cursor) == 0:
                return

    def scan(
        self,
        group: FeatureGroup | str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[pa.Table]:
        """Every entity of the group (or one shard), ``chunk_size`` rows at a time.

        SCAN may return a key twice (when Redis resizes its table mid-scan), so ids are
        deduplicated across the scan by their 64-bit key hash (:mod:`.sharding`), 8 bytes per
        entity instead of a set of strings (80 MB rather than about 1 GB for 10M entities). Two
        distinct ids with the same 64-bit hash would make the second one skipped; for n entities
        that has probability about n^2 / 2^65 (3e-6 for 10M), and a skip is logged.
        """
        g = self._group(group)
        seen = _SeenHashes()

        def tables() -> Iterator[pa.Table]:
            pending: list[str] = []
            for ids in self._scan_ids(g):
                pending.extend(seen.fresh(filter_shard(ids, shard)))
                if len(pending) >= chunk_size:
                    yield self.read(g, pending)
                    pending = []
            if pending:
                yield self.read(g, pending)

        yield from rechunk(tables(), chunk_size)

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest ``timestamp_field`` over all entities (a full scan), or None without one."""
        import pyarrow.compute as pc

        g = self._group(group)
        if not g.legacy_online.timestamp_field:
            return None
        newest: datetime | None = None
        for table in self.scan(g):
            value = pc.max(table.column(SOURCE_TS)).as_py()
            if value is not None and (newest is None or value > newest):
                newest = value
        return newest.astimezone(UTC) if newest is not None else None

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers."""
        self._redis_call(self.client.ping)
