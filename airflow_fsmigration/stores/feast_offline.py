"""Feast's Postgres offline store as the legacy historical source, with Feast's point-in-time rules.

``get_historical_features`` (``feast/infra/offline_stores/contrib/postgres_offline_store``, 0.67)
joins each spine row ``(entity, t)`` to the newest source row of the view with

- ``event_timestamp <= t``, and ``event_timestamp >= t - ttl`` when the view has a TTL (0 = none);
- ties on the event time broken by the newest ``created_timestamp_column``;

and leaves the features null when no row qualifies. The same rule is written here as one
``LATERAL`` lookup per entity (an index on ``(join key, event time)`` serves it), reading the
view's batch source directly: its table, or its query as a subquery. Rows are read with ADBC
(Arrow end to end). A spine row without a qualifying source row is an absent row, not a row of
nulls, per the frame contract; :meth:`read_spine` keeps the spine position to line rows up.
"""

from __future__ import annotations

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

ROW = "_row"
AS_OF = "_as_of"
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
        from psycopg import sql

        g = self._group(group)
        view = self.view_of(g)
        check_as_of(as_of)
        ids = list(dict.fromkeys(_pg.id_param(entity_ids)))
        query = sql.SQL(
            "SELECT s.eid AS {entity}, f.* FROM unnest(CAST($1 AS text[])) AS s(eid) "
            "CROSS JOIN LATERAL ({lookup}) AS f"
        ).format(
            entity=_pg.ident(ENTITY),
            lookup=self._point_in_time(g, view, "s.eid", "CAST($2 AS timestamptz)"),
        )
        return conform(self._fetch(query, [ids, as_of.astimezone(UTC).isoformat()]), g)

    def read_spine(
        self, group: FeatureGroup | str, entity_ids: Sequence[str], timestamps: Sequence[datetime]
    ) -> pa.Table:
        """Point-in-time rows for a spine of (entity, time) pairs, like ``get_historical_features``.

        Returns ``_row`` (the spine position), ``_as_of`` (the spine time), then the frame columns;
        spine rows with no source row within the TTL are absent (Feast returns them as nulls).
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
