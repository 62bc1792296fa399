"""Feast's Postgres offline store as the legacy historical source, with Feast's point-in-time rules.

``get_historical_features`` (``feast/infra/offline_stores/contrib/postgres_offline_store``, 0.67)
joins each spine row ``(entity, t)`` to the newest source row of the view with

- ``event_timestamp <= t``, and ``event_timestamp >= t - ttl`` when the view has a TTL (0 = none);
- ties on the event time broken by the newest ``created_timestamp_column``;

and leaves the features null when no row qualifies. The same rule is written here as one
set-based query per chunk of spine rows (:meth:`FeastPostgresOfflineSource.read_spine`): the
chunk goes to a temporary table, the source rows of its entities (within the TTL of the chunk's
times) are merged with the spine rows in one sort by (entity, time, spine after source, created),
and each spine row takes the last source row before it, as a running count over that order. One
scan of the batch source per chunk, whatever the indexes: Feast's source tables are often
unindexed, where a per-row lookup is one full scan per spine row. When the source table has no
index on (join key, event time), a notice names the ``CREATE INDEX`` that lets Postgres read only
the chunk's entities. Rows are read with ADBC (Arrow end to end). A spine row without a
qualifying source row is an absent row, not a row of nulls, per the frame contract;
:meth:`read_spine` keeps the spine position to line rows up. The former per-row reader is kept
as :meth:`read_spine_per_row` (the benchmark's "before").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.stores import _pg
from airflow_fsmigration.stores.base import DEFAULT_CHUNK, check_as_of, rechunk
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, conform, feature_schema
from airflow_fsmigration.stores.postgres_offline import PostgresOfflineSource

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import sql as pgsql

    from airflow_fsmigration.feast_import import FeastRepo, FeastView
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.stores.feast")

ROW = "_row"
AS_OF = "_as_of"
SPINE_TABLE = "_fsmig_feast_spine"
#: Spine rows per set-based query (one temporary-table load and one source scan each).
SPINE_CHUNK = 250_000
_KEY_SQL_TYPES = {"INT64": "bigint", "INT32": "bigint", "STRING": "text"}


class FeastPostgresOfflineSource(PostgresOfflineSource):
    """Feast feature views' Postgres batch sources, read as of a time with each view's TTL.

    Shares the ADBC plumbing of :class:`PostgresOfflineSource` (connection, context manager,
    groups by name); every read is Feast's own point-in-time rule instead of a history table's.
    """

    store = "Feast Postgres offline store"

    def __init__(
        self,
        url: str,
        repo: FeastRepo,
        plan: MigrationPlan | None = None,
        conn_id: str = "legacy_offline",
        *,
        views: Mapping[str, str] | None = None,
        clock: Any = None,
    ) -> None:
        super().__init__(url, plan, conn_id)
        self.repo = repo
        self.views = dict(views) if views is not None else repo.default_mapping()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.spine_chunk = SPINE_CHUNK
        self._advised: dict[str, str | None] = {}

    def __repr__(self) -> str:
        return f"FeastPostgresOfflineSource(conn_id={self.conn_id!r}, project={self.repo.project!r})"

    def view_of(self, group: FeatureGroup) -> FeastView:
        view = self.repo.view_for_group(self.views, group.name)
        if view.source is None or not (view.source.table or view.source.query):
            raise ValueError(f"Feast view '{view.name}' has no Postgres batch source (table or query)")
        if len(view.join_keys) != 1 or view.join_keys[0].value_type not in _KEY_SQL_TYPES:
            raise ValueError(
                f"Feast view '{view.name}': the offline reader supports one INT64, INT32 or STRING join key"
            )
        return view

    def _from(self, view: FeastView) -> pgsql.Composable:
        """The batch source: a quoted table, or the repo's own query as a subquery (as Feast does)."""
        from psycopg import sql

        src = view.source
        assert src is not None
        if src.table:
            return sql.SQL("{} AS src").format(_pg.qualified(src.table))
        return sql.SQL("({}) AS src").format(sql.SQL(src.query or ""))

    def _select_list(self, group: FeatureGroup, view: FeastView) -> list[pgsql.Composable]:
        """``src.<column> AS <plan feature>`` for each feature, then the event time as ``_source_ts``."""
        from psycopg import sql

        from airflow_fsmigration.feast_import import feast_feature_names

        src = view.source
        assert src is not None
        cols: list[pgsql.Composable] = [
            sql.SQL("src.{} AS {}").format(_pg.ident(src.column_for(feast_name)), _pg.ident(f.name))
            for f, feast_name in zip(group.features, feast_feature_names(view, group), strict=True)
        ]
        cols.append(sql.SQL("src.{} AS {}").format(_pg.ident(src.timestamp_field), _pg.ident(SOURCE_TS)))
        return cols

    def _point_in_time(self, group: FeatureGroup, view: FeastView, eid: str, at: str) -> pgsql.Composable:
        """The newest source row of entity ``eid`` at time ``at`` within the TTL (Feast's rule), as a subquery."""
        from psycopg import sql

        src = view.source
        assert src is not None
        key = _pg.ident(src.column_for(view.join_keys[0].name))
        ts = _pg.ident(src.timestamp_field)
        where = [
            sql.SQL("src.{} = CAST({} AS {})").format(
                key, sql.SQL(eid), sql.SQL(_KEY_SQL_TYPES[view.join_keys[0].value_type])
            ),
            sql.SQL("src.{} <= {}").format(ts, sql.SQL(at)),
        ]
        if view.ttl_seconds:
            where.append(
                sql.SQL("src.{} >= {} - make_interval(secs => {})").format(
                    ts, sql.SQL(at), sql.Literal(view.ttl_seconds)
                )
            )
        order = [sql.SQL("src.{} DESC").format(ts)]
        if src.created_timestamp_column:
            order.append(sql.SQL("src.{} DESC").format(_pg.ident(src.created_timestamp_column)))
        return sql.SQL("SELECT {cols} FROM {src} WHERE {where} ORDER BY {order} LIMIT 1").format(
            cols=sql.SQL(", ").join(self._select_list(group, view)),
            src=self._from(view),
            where=sql.SQL(" AND ").join(where),
            order=sql.SQL(", ").join(order),
        )

    # -- FeatureSource ---------------------------------------------------------------------------

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        """What a point-in-time query would return now: the newest row within the TTL."""
        return self.read_as_of(group, entity_ids, self.clock())

    def read_as_of(
        self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array, as_of: datetime
    ) -> pa.Table:
        """Each entity as ``get_historical_features`` would return it for a spine row at ``as_of``."""
        check_as_of(as_of)
        ids = list(dict.fromkeys(_pg.id_param(entity_ids)))
        frame = self.read_spine(group, ids, [as_of] * len(ids))
        return frame.drop_columns([ROW, AS_OF])

    def read_spine(
        self, group: FeatureGroup | str, entity_ids: Sequence[str], timestamps: Sequence[datetime]
    ) -> pa.Table:
        """Point-in-time rows for a spine of (entity, time) pairs, like ``get_historical_features``.

        Returns ``_row`` (the spine position), ``_as_of`` (the spine time), then the frame columns;
        spine rows with no source row within the TTL are absent (Feast returns them as nulls).
        One set-based query per :attr:`spine_chunk` spine rows (see the module docstring).
        """
        import pyarrow as pa

        g = self._group(group)
        view = self.view_of(g)
        if len(entity_ids) != len(timestamps):
            raise ValueError(f"spine has {len(entity_ids)} entity ids but {len(timestamps)} timestamps")
        for t in timestamps:
            check_as_of(t)
        self.index_advice(g)
        names = [ROW, AS_OF, *feature_schema(g).names]
        ids = pa.array([str(e) for e in entity_ids], type=pa.string())
        micros = pa.array(timestamps, type=pa.timestamp("us", tz="UTC")).cast(pa.int64())
        conn = self._arrow()
        key_type = _KEY_SQL_TYPES[view.join_keys[0].value_type]
        _pg.execute(
            conn,
            f"CREATE TEMP TABLE IF NOT EXISTS {SPINE_TABLE} "
            "(row_no bigint, eid_text text, eid_int bigint, eid_str text, at timestamptz)",
            None,
            self.conn_id,
            self.store,
        )
        query = _pg.render(self._merge_query(g, view, key_type))
        frames = []
        for start in range(0, len(ids), self.spine_chunk):
            end = min(start + self.spine_chunk, len(ids))
            self._load_spine(conn, ids[start:end], micros[start:end], start, key_type)
            raw = _pg.fetch_table(conn, query, None, self.conn_id, self.store)
            frame = conform(raw.drop_columns([ROW, AS_OF]), g)
            head = [raw.column(ROW).cast(pa.int64()), raw.column(AS_OF).cast(pa.timestamp("us", tz="UTC"))]
            frames.append(pa.Table.from_arrays(head + frame.columns, names=names))
        if len(ids) and not sum(f.num_rows for f in frames):
            self._check_any_entity(g, view, key_type, len(ids))
        if not frames:
            schema = pa.schema(
                [pa.field(ROW, pa.int64()), pa.field(AS_OF, pa.timestamp("us", tz="UTC")), *feature_schema(g)]
            )
            return schema.empty_table()
        return pa.concat_tables(frames)

    def _check_any_entity(self, g: FeatureGroup, view: FeastView, key_type: str, asked: int) -> None:
        """After a read of no rows: does the source hold any row of the (last chunk's) entities at all?

        Rows outside the TTL or after the spine times are an answer; a source with none of the
        entities is a plan that does not describe it (key column, source, project): inconclusive.
        """
        from psycopg import sql

        from airflow_fsmigration.stores.feast_online import FeastLayoutMismatch

        src = view.source
        assert src is not None
        key = src.column_for(view.join_keys[0].name)
        query = sql.SQL(
            "SELECT count(*) AS n FROM (SELECT 1 FROM {} WHERE src.{} IN (SELECT {} FROM {}) LIMIT 1) x"
        ).format(
            self._from(view),
            _pg.ident(key),
            sql.SQL("eid_int" if key_type == "bigint" else "eid_str"),
            sql.Identifier(SPINE_TABLE),
        )
        if self._fetch(query, None).column("n")[0].as_py():
            return
        where = src.table or f"the query of source '{src.name}'"
        raise FeastLayoutMismatch(
            self.conn_id,
            f"group '{g.name}': none of the {asked} spine rows found a row in {where} of connection "
            f"'{self.conn_id}', which holds no row of these entities at any time (column '{key}'): check "
            "legacy_offline.table / entity_column in the plan and that the entity ids are this view's",
        )

    def _load_spine(self, conn: Any, ids: pa.Array, micros: pa.Array, offset: int, key_type: str) -> None:
        """Replace the temporary spine table's rows with one chunk (ids as text, times as epoch us)."""
        import pyarrow as pa

        _pg.execute(conn, f"TRUNCATE {SPINE_TABLE}", None, self.conn_id, self.store)
        offsets = pa.array([0, len(ids)], pa.int32())
        params = pa.record_batch(
            [pa.ListArray.from_arrays(offsets, ids), pa.ListArray.from_arrays(offsets, micros)],
            names=["p1", "p2"],
        )
        typed = "CAST(s.eid AS bigint), NULL" if key_type == "bigint" else "NULL, s.eid"
        _pg.execute(
            conn,
            f"INSERT INTO {SPINE_TABLE} SELECT s.ord - 1 + {int(offset)}, s.eid, {typed}, "
            "timestamptz 'epoch' + s.us * interval '1 microsecond' "
            "FROM unnest(CAST($1 AS text[]), CAST($2 AS bigint[])) WITH ORDINALITY AS s(eid, us, ord)",
            params,
            self.conn_id,
            self.store,
        )
        _pg.execute(conn, f"ANALYZE {SPINE_TABLE}", None, self.conn_id, self.store)

    def _merge_query(self, g: FeatureGroup, view: FeastView, key_type: str) -> pgsql.Composable:
        """The set-based point-in-time join of the spine table with the view's batch source.

        Source rows (kind 0) and spine rows (kind 1) of an entity, sorted by (time, kind,
        created): a spine row sorts after every source row at or before its time, and among
        source rows of one event time the newest ``created`` comes last (a NULL last of all, as
        Feast's ``ORDER BY created DESC`` in Postgres ranks it first). The running count of
        source rows then names, for each spine row, the source row it takes; the TTL is checked
        on that row (if the newest row at or before ``t`` is older than ``t - ttl``, so is every
        other). Exactly the per-row rule, in one sort.
        """
        from psycopg import sql

        from airflow_fsmigration.feast_import import feast_feature_names

        src = view.source
        assert src is not None
        key = _pg.ident(src.column_for(view.join_keys[0].name))
        ts = _pg.ident(src.timestamp_field)
        spine_key = sql.SQL("eid_int" if key_type == "bigint" else "eid_str")
        created = (
            sql.SQL("src.{}").format(_pg.ident(src.created_timestamp_column))
            if src.created_timestamp_column
            else sql.SQL("CAST(NULL AS timestamptz)")
        )
        feats = [
            (_pg.ident(src.column_for(feast_name)), _pg.ident(f.name))
            for f, feast_name in zip(g.features, feast_feature_names(view, g), strict=True)
        ]
        ttl = sql.Literal(view.ttl_seconds)
        window = sql.SQL(" AND src.{ts} >= k.lo - make_interval(secs => {ttl})").format(ts=ts, ttl=ttl)
        keep = sql.SQL(" AND h._t >= s._t - make_interval(secs => {ttl})").format(ttl=ttl)
        return sql.SQL(
            "WITH keys AS MATERIALIZED ("
            "  SELECT {spine_key} AS eid, max(at) AS hi, min(at) AS lo FROM {spine} GROUP BY 1"
            "), merged AS ("
            "  SELECT src.{key} AS eid, src.{ts} AS _t, 0 AS _kind, {created} AS _cr, "
            "CAST(NULL AS bigint) AS _r, CAST(NULL AS text) AS _e, {src_cols}"
            "  FROM {source} JOIN keys k ON src.{key} = k.eid WHERE src.{ts} <= k.hi{window}"
            "  UNION ALL"
            "  SELECT {spine_key}, at, 1, NULL, row_no, eid_text, {nulls} FROM {spine}"
            "), numbered AS MATERIALIZED ("
            "  SELECT m.*, count(*) FILTER (WHERE m._kind = 0) OVER ("
            "PARTITION BY m.eid ORDER BY m._t, m._kind, m._cr ROWS UNBOUNDED PRECEDING) AS _g FROM merged m"
            ")"
            " SELECT s._r AS {row}, s._t AS {as_of}, s._e AS {entity}, {out_cols}, h._t AS {source_ts}"
            " FROM numbered s JOIN numbered h ON h.eid = s.eid AND h._g = s._g AND h._kind = 0"
            " WHERE s._kind = 1{keep} ORDER BY s._r"
        ).format(
            spine_key=spine_key,
            spine=sql.Identifier(SPINE_TABLE),
            key=key,
            ts=ts,
            created=created,
            src_cols=sql.SQL(", ").join(sql.SQL("src.{} AS {}").format(c, n) for c, n in feats),
            source=self._from(view),
            window=window if view.ttl_seconds else sql.SQL(""),
            nulls=sql.SQL(", ").join(sql.SQL("NULL") for _ in feats),
            row=_pg.ident(ROW),
            as_of=_pg.ident(AS_OF),
            entity=_pg.ident(ENTITY),
            out_cols=sql.SQL(", ").join(sql.SQL("h.{}").format(n) for _, n in feats),
            source_ts=_pg.ident(SOURCE_TS),
            keep=keep if view.ttl_seconds else sql.SQL(""),
        )

    def index_advice(self, group: FeatureGroup | str) -> str | None:
        """The ``CREATE INDEX`` the point-in-time query wants on the source table, or None if it has it.

        Without an index on (join key, event time) every spine chunk scans the whole table;
        with one, Postgres reads only the chunk's entities. Logged once per group as a notice.
        Query sources get no advice (the index belongs on the tables the query reads).
        """
        g = self._group(group)
        if g.name in self._advised:
            return self._advised[g.name]
        from psycopg import sql

        view = self.view_of(g)
        src = view.source
        assert src is not None
        advice = None
        if src.table:
            key, ts = src.column_for(view.join_keys[0].name), src.timestamp_field
            found = self._fetch(
                sql.SQL(
                    "SELECT count(*) AS n FROM pg_index i "
                    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                    "JOIN pg_attribute b ON b.attrelid = i.indrelid AND b.attnum = i.indkey[1] "
                    "WHERE i.indrelid = to_regclass({rel}) AND a.attname = {key} AND b.attname = {ts}"
                ).format(
                    rel=sql.Literal(_pg.render(_pg.qualified(src.table))),
                    key=sql.Literal(key),
                    ts=sql.Literal(ts),
                ),
                None,
            )
            if not found.column("n")[0].as_py():
                advice = _pg.render(
                    sql.SQL("CREATE INDEX ON {} ({}, {})").format(
                        _pg.qualified(src.table), _pg.ident(key), _pg.ident(ts)
                    )
                )
                log.warning(
                    "group '%s': Feast source table %s has no index on (%s, %s), so each point-in-time "
                    "chunk reads it whole; to read only the spine's entities run: %s",
                    g.name,
                    src.table,
                    key,
                    ts,
                    advice,
                )
        self._advised[g.name] = advice
        return advice

    def read_spine_per_row(
        self, group: FeatureGroup | str, entity_ids: Sequence[str], timestamps: Sequence[datetime]
    ) -> pa.Table:
        """The former reader: one ``LATERAL`` lookup per spine row (kept as the benchmark's "before").

        Same rows as :meth:`read_spine`; on an unindexed source each lookup is a full scan.
        """
        import pyarrow as pa
        from psycopg import sql

        g = self._group(group)
        view = self.view_of(g)
        if len(entity_ids) != len(timestamps):
            raise ValueError(f"spine has {len(entity_ids)} entity ids but {len(timestamps)} timestamps")
        times = [check_as_of(t).astimezone(UTC).isoformat() for t in timestamps]
        query = sql.SQL(
            "SELECT CAST(s.ord - 1 AS bigint) AS {row}, s.at AS {as_of}, s.eid AS {entity}, f.* "
            "FROM unnest(CAST($1 AS text[]), CAST(CAST($2 AS text[]) AS timestamptz[])) "
            "WITH ORDINALITY AS s(eid, at, ord) "
            "CROSS JOIN LATERAL ({lookup}) AS f ORDER BY s.ord"
        ).format(
            row=_pg.ident(ROW),
            as_of=_pg.ident(AS_OF),
            entity=_pg.ident(ENTITY),
            lookup=self._point_in_time(g, view, "s.eid", "s.at"),
        )
        raw = self._fetch(query, [[str(e) for e in entity_ids], times])
        frame = conform(raw.drop_columns([ROW, AS_OF]), g)
        head = [raw.column(ROW).cast(pa.int64()), raw.column(AS_OF).cast(pa.timestamp("us", tz="UTC"))]
        return pa.Table.from_arrays(head + frame.columns, names=[ROW, AS_OF, *feature_schema(g).names])

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Every entity with a row in the view's batch source (at any time), sorted."""
        from psycopg import sql

        g = self._group(group)
        view = self.view_of(g)
        assert view.source is not None
        key = sql.SQL("src.{}").format(_pg.ident(view.source.column_for(view.join_keys[0].name)))
        return _pg.distinct_ids(lambda q: self._fetch(q, None), key, self._from(view), shard, limit)

    def scan(
        self,
        group: FeatureGroup | str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        shard: tuple[int, int] | None = None,
        as_of: datetime | None = None,
    ) -> Iterator[pa.Table]:
        """Every entity's row as of ``as_of`` (default now) within the TTL, streamed in key order."""
        from psycopg import sql

        g = self._group(group)
        view = self.view_of(g)
        src = view.source
        assert src is not None
        at = check_as_of(as_of or self.clock()).astimezone(UTC).isoformat()
        key = _pg.ident(src.column_for(view.join_keys[0].name))
        ts = _pg.ident(src.timestamp_field)
        where = [sql.SQL("src.{} <= CAST($1 AS timestamptz)").format(ts)]
        if view.ttl_seconds:
            where.append(
                sql.SQL("src.{} >= CAST($1 AS timestamptz) - make_interval(secs => {})").format(
                    ts, sql.Literal(view.ttl_seconds)
                )
            )
        order = [sql.SQL("src.{}").format(key), sql.SQL("src.{} DESC").format(ts)]
        if src.created_timestamp_column:
            order.append(sql.SQL("src.{} DESC").format(_pg.ident(src.created_timestamp_column)))
        query = sql.SQL(
            "SELECT DISTINCT ON (src.{key}) CAST(src.{key} AS text) AS {entity}, {cols} FROM {src} "
            "WHERE {where} ORDER BY {order}"
        ).format(
            key=key,
            entity=_pg.ident(ENTITY),
            cols=sql.SQL(", ").join(self._select_list(g, view)),
            src=self._from(view),
            where=sql.SQL(" AND ").join(where),
            order=sql.SQL(", ").join(order),
        )
        batches = _pg.stream_batches(self._arrow(), _pg.render(query), [at], self.conn_id, self.store)
        yield from rechunk(_pg.conformed(batches, g, shard), chunk_size)

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest event time in the view's batch source."""
        from psycopg import sql

        g = self._group(group)
        view = self.view_of(g)
        assert view.source is not None
        query = sql.SQL("SELECT max(src.{}) AS newest FROM {}").format(
            _pg.ident(view.source.timestamp_field), self._from(view)
        )
        value = self._fetch(query, None).column("newest")[0].as_py()
        if value is None:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)


def offline_source_for(plan: MigrationPlan, url: str, conn_id: str | None = None) -> PostgresOfflineSource:
    """The plan's legacy offline source: Feast's batch sources when the plan was imported from Feast."""
    from airflow_fsmigration.feast_import import find_feast_repo

    conn_id = conn_id or plan.connections.legacy_offline
    repo = find_feast_repo(plan)
    if repo is None or not any(v.source for v in repo.views.values()):
        return PostgresOfflineSource(url, plan, conn_id)
    return FeastPostgresOfflineSource(url, repo, plan, conn_id)
