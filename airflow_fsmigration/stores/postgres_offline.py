"""The legacy offline store: a Postgres history table of (entity, event time, features).

``read`` is the latest row per entity; ``read_as_of`` is the latest row whose event time is at
or before the as-of time (``DISTINCT ON``, ids bound as one array parameter), which is what a
training pipeline would have seen then. ``_source_ts`` is the row's event time. Ties on the
event time are broken arbitrarily by Postgres: a history table should not have them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.stores import _pg
from airflow_fsmigration.stores.base import DEFAULT_CHUNK, check_as_of, rechunk
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, conform

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import sql as pgsql

    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan


class OfflineTableError(LookupError):
    """The history table of a group is missing or lacks a column the plan names."""


class PostgresOfflineSource(_pg.AdbcReader):
    """Reads a group's history table with ADBC (Arrow end to end)."""

    store = "Postgres offline"

    def __init__(self, url: str, plan: MigrationPlan | None = None, conn_id: str = "legacy_offline") -> None:
        self.url = url
        self.plan = plan
        self.conn_id = conn_id
        self._adbc: Any = None
        self._columns: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"PostgresOfflineSource(conn_id={self.conn_id!r})"

    def _group(self, group: FeatureGroup | str) -> FeatureGroup:
        if isinstance(group, str):
            if self.plan is None:
                raise ValueError(f"group '{group}' given by name, but this source has no plan")
            return self.plan.groups[group]
        return group

    def _fetch(self, query: pgsql.Composable, params: Sequence[Any] | None) -> pa.Table:
        return _pg.fetch_table(self._arrow(), _pg.render(query), params, self.conn_id, self.store)

    @staticmethod
    def entity_column(g: FeatureGroup) -> str:
        return g.legacy_offline.entity_column or g.entity_key

    def table_columns(self, group: FeatureGroup | str) -> dict[str, str]:
        """The history table's columns and SQL types; a clear error when it or a column is missing."""
        g = self._group(group)
        if g.name in self._columns:
            return self._columns[g.name]
        table = g.legacy_offline.table
        query = (
            "SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute AS a "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
        )
        rows = _pg.fetch_table(
            self._arrow(), query, [_pg.render(_pg.qualified(table))], self.conn_id, self.store
        )
        cols = dict(zip(rows.column("name").to_pylist(), rows.column("type").to_pylist(), strict=True))
        if not cols:
            raise OfflineTableError(
                f"group '{g.name}': history table {table} does not exist in connection '{self.conn_id}' "
                "(check legacy_offline.table in the plan)"
            )
        needed = [self.entity_column(g), g.legacy_offline.event_time_column, *g.feature_names]
        missing = [c for c in needed if c not in cols]
        if missing:
            raise OfflineTableError(
                f"group '{g.name}': history table {table} in connection '{self.conn_id}' has no column(s) "
                f"{', '.join(missing)} (check legacy_offline.entity_column / event_time_column and the feature names)"
            )
        self._columns[g.name] = cols
        return cols

    def _latest_query(self, g: FeatureGroup, *, ids: bool, as_of: bool) -> pgsql.Composable:
        from psycopg import sql

        cols = self.table_columns(g)
        entity, event_time = self.entity_column(g), g.legacy_offline.event_time_column
        h = _pg.ident("h")
        select = [sql.SQL("CAST(h.{} AS text) AS {}").format(_pg.ident(entity), _pg.ident(ENTITY))]
        select += [sql.SQL("h.{}").format(_pg.ident(f)) for f in g.feature_names]
        select.append(sql.SQL("h.{} AS {}").format(_pg.ident(event_time), _pg.ident(SOURCE_TS)))
        where: list[pgsql.Composable] = []
        if ids:
            key_type = cols[entity]
            param = (
                sql.SQL("$1")
                if key_type == "text"
                else sql.SQL("CAST($1 AS text[])::{}[]").format(sql.SQL(key_type))
            )
            where.append(sql.SQL("h.{} = ANY({})").format(_pg.ident(entity), param))
        if as_of:
            where.append(
                sql.SQL("h.{} <= CAST(${} AS timestamptz)").format(
                    _pg.ident(event_time), sql.SQL(str(1 + ids))
                )
            )
        return sql.SQL(
            "SELECT DISTINCT ON (h.{e}) {select} FROM {table} AS {h}{where} ORDER BY h.{e}, h.{t} DESC"
        ).format(
            e=_pg.ident(entity),
            t=_pg.ident(event_time),
            h=h,
            select=sql.SQL(", ").join(select),
            table=_pg.qualified(g.legacy_offline.table),
            where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        """The latest history row of each entity."""
        g = self._group(group)
        return conform(self._fetch(self._latest_query(g, ids=True, as_of=False), _pg.bind(entity_ids)), g)

    def read_as_of(
        self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array, as_of: datetime
    ) -> pa.Table:
        """The latest history row of each entity with event time <= ``as_of``."""
        g = self._group(group)
        check_as_of(as_of)
        params = _pg.bind(entity_ids, as_of.astimezone(UTC))
        return conform(self._fetch(self._latest_query(g, ids=True, as_of=True), params), g)

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        g = self._group(group)
        self.table_columns(g)
        return _pg.distinct_ids(
            lambda q: self._fetch(q, None),
            _pg.ident(self.entity_column(g)),
            _pg.qualified(g.legacy_offline.table),
            shard,
            limit,
        )

    def scan(
        self,
        group: FeatureGroup | str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[pa.Table]:
        """Latest row of every entity, streamed in key order; a shard is filtered by key hash."""
        g = self._group(group)
        query = _pg.render(self._latest_query(g, ids=False, as_of=False))
        batches = _pg.stream_batches(self._arrow(), query, None, self.conn_id, self.store)
        yield from rechunk(_pg.conformed(batches, g, shard), chunk_size)

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest event time in the history table."""
        from psycopg import sql

        g = self._group(group)
        self.table_columns(g)
        query = sql.SQL("SELECT max({}) AS newest FROM {}").format(
            _pg.ident(g.legacy_offline.event_time_column), _pg.qualified(g.legacy_offline.table)
        )
        value = self._fetch(query, None).column(0)[0].as_py()
        if value is None:
            return None
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # a timestamp without time zone is taken as UTC
        return value.astimezone(UTC)
