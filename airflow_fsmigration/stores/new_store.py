"""The new store over the Postgres wire: deploy each group's definition, read it now or as of.

One definition, three uses: ``deploy`` creates the group's live view from the definition with
``:as_of`` = ``now()``; ``read`` reads that view; ``read_as_of`` runs the same definition with
``:as_of`` bound to a past time (upstream views inlined by
:func:`~airflow_fsmigration.plan.definitions.render_as_of`), so live and historical values can
never disagree by construction. Dialect differences are in :mod:`.dialect`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.stores import _pg
from airflow_fsmigration.stores.base import DEFAULT_CHUNK, UpstreamNotDeployed, check_as_of, rechunk
from airflow_fsmigration.stores.dialect import StoreDialect, dialect_for
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, conform

if TYPE_CHECKING:
    import pyarrow as pa
    from psycopg import sql as pgsql

    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.stores")

SOURCE_COLUMN = "source_ts"  # what every definition selects as the newest source event time


class DeployError(RuntimeError):
    """A group's definition could not be deployed; the message names the group and the cause."""


class NewStore(_pg.AdbcReader):
    """A Postgres-wire new store (RisingWave or Postgres) holding one view per feature group."""

    store = "new store"

    def __init__(self, url: str, plan: MigrationPlan, conn_id: str = "new_store") -> None:
        self.url = url
        self.plan = plan
        self.conn_id = conn_id
        self.dialect: StoreDialect = dialect_for(plan.new_store.dialect)
        self.schema = plan.new_store.schema_name
        self._adbc: Any = None
        self._columns: dict[str, dict[str, str]] = {}
        self._nullable: dict[str, dict[str, bool]] = {}
        self._read_time: set[str] | None = None

    def __repr__(self) -> str:
        return f"NewStore(conn_id={self.conn_id!r}, dialect={self.dialect.name!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _group(self, group: FeatureGroup | str) -> FeatureGroup:
        return self.plan.groups[group] if isinstance(group, str) else group

    def _psycopg(self) -> Any:
        from airflow_fsmigration.connections import connect_postgres

        return connect_postgres(self.conn_id, self.url, autocommit=True)

    def relation(self, group: str) -> str:
        """The relation holding a group's values: its live view (a build's twin in a subclass)."""
        return group

    def view(self, group: FeatureGroup | str) -> pgsql.Identifier:
        return _pg.qualified(f"{self.schema}.{self.relation(self._group(group).name)}")

    def _fetch(self, query: str, params: Sequence[Any] | None) -> pa.Table:
        conn = self._arrow()
        if (stmt := self.dialect.before_read()) is not None:
            _pg.fetch_table(conn, stmt, None, self.conn_id, self.store)
        return _pg.fetch_table(conn, query, params, self.conn_id, self.store)

    def _exists(self, conn: Any, group: str) -> bool:
        return (
            conn.execute(
                self.dialect.relation_exists_sql, (self.schema, group, self.schema, group)
            ).fetchone()
            is not None
        )

    # -- deploy ------------------------------------------------------------------------------

    def upstream_of(self, group: FeatureGroup | str) -> list[str]:
        """Groups whose views this group's definition reads (declared or found in its SQL)."""
        from airflow_fsmigration.plan.definitions import groups_reading, referenced_tables

        g = self._group(group)
        found = groups_reading(referenced_tables(self.plan.definition_sql(g.name)), self.plan) - {g.name}
        return sorted(set(g.depends_on) | found)

    def deploy(self, group: FeatureGroup | str) -> None:
        """Create the schema and the group's live view; running it again changes nothing.

        Refuses, naming the upstream group, when a view this definition reads is not deployed:
        the database's own "relation does not exist" would not say which group to deploy first.
        """
        import psycopg

        g = self._group(group)
        body = self.dialect.live_sql(self.plan.definition_sql(g.name))
        view = self.view(g)
        plain = self.plain(g)
        self._refuse(g)
        with self._psycopg() as conn:
            self._prepare(conn, g)
            try:
                self._create(conn, view, body, plain=plain)
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(self.conn_id, self.store, exc) from exc
            except psycopg.Error as exc:
                raise DeployError(
                    f"group '{g.name}': deploying {self.plan.view_name(g.name)} from "
                    f"{self.plan.definition_path(g.name)} failed in connection '{self.conn_id}': "
                    f"{type(exc).__name__}: {str(exc).strip()}"
                ) from exc
        self._after_build(g)
        log.info("group '%s': deployed %s (%s)", g.name, self.plan.view_name(g.name), self.dialect.name)

    def _after_build(self, g: FeatureGroup) -> None:
        """Index the entity key on RisingWave where the view's key may not lead with it; check columns."""
        self._columns.pop(g.name, None)
        self._nullable.pop(g.name, None)
        if self.dialect.materialized:
            from airflow_fsmigration.stores.risingwave_deploy import index_entity_key

            index_entity_key(self, g)
        self._check_columns(g)

    def start_deploy(self, group: FeatureGroup | str, *, redefine: bool = False) -> str | None:
        """Start a background build (RisingWave); the view name to follow, or None when done.

        See :func:`~airflow_fsmigration.stores.risingwave_deploy.start_deploy`; Postgres: :meth:`deploy`.
        """
        g = self._group(group)
        if not self.dialect.background_builds:
            self.deploy(g)
            return None
        from airflow_fsmigration.stores.risingwave_deploy import start_deploy

        return start_deploy(self, g, redefine=redefine)

    def finish_deploy(self, group: FeatureGroup | str, target: str | None) -> None:
        """After a background build of ``target``: swap a rebuilt view in, keep the old one, index."""
        from airflow_fsmigration.stores.risingwave_deploy import finish_deploy

        finish_deploy(self, self._group(group), target)

    def plain(self, g: FeatureGroup) -> bool:
        """Whether the group is a plain view on a materialized dialect (its values move with the clock)."""
        if not self.dialect.materialized:
            return False
        from airflow_fsmigration.stores.risingwave_lint import read_time_groups

        if self._read_time is None:
            self._read_time = read_time_groups(self.plan)
        return g.name in self._read_time

    def _refuse(self, g: FeatureGroup) -> None:
        """On RisingWave, a definition it would refuse fails here, with file and line, before any DDL."""
        if self.dialect.materialized:
            from airflow_fsmigration.stores.risingwave_deploy import unstreamable

            if (refusal := unstreamable(self, g)) is not None:
                raise DeployError(refusal)

    def _prepare(self, conn: Any, g: FeatureGroup) -> None:
        """The schema exists and every upstream view is deployed; else a clear error."""
        from psycopg import sql

        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(_pg.ident(self.schema)))
        missing = [up for up in self.upstream_of(g) if not self._exists(conn, up)]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            raise UpstreamNotDeployed(
                f"group '{g.name}' reads the view(s) of upstream group(s) {names}, not deployed in "
                f"connection '{self.conn_id}': deploy {names} first (deploy_all deploys in wave order)"
            )

    def _create(self, conn: Any, view: pgsql.Identifier, body: str, *, plain: bool = False) -> None:
        import psycopg

        if not self.dialect.transactional_ddl:
            conn.execute(self.dialect.create_view(view, body, plain=plain))
            return
        try:
            with conn.transaction():
                conn.execute(self.dialect.create_view(view, body))
        except psycopg.errors.InvalidTableDefinition:
            # The column list changed (renamed, retyped or dropped column): CREATE OR REPLACE
            # cannot do that; drop and create in one transaction, which fails cleanly if other
            # views depend on this one.
            with conn.transaction():
                for stmt in self.dialect.replace_view(view, body):
                    conn.execute(stmt)

    def _check_columns(self, g: FeatureGroup) -> None:
        cols = self.columns(g)
        missing = [c for c in (g.entity_key, *g.feature_names) if c not in cols]
        if missing:
            raise DeployError(
                f"group '{g.name}': the definition {self.plan.definition_path(g.name)} does not select "
                f"{', '.join(missing)}; the view {self.plan.view_name(g.name)} has {', '.join(cols)}"
            )

    def deploy_all(self, plan: MigrationPlan | None = None) -> list[str]:
        """Deploy every group of the plan, upstream waves first; returns the order used."""
        from airflow_fsmigration.plan.graph import compute_waves

        order = compute_waves(plan or self.plan).order
        for name in order:
            self.deploy(name)
        return order

    def drop(self, group: FeatureGroup | str) -> None:
        """Drop a group's view (used by rollback of a deploy and by tests)."""
        with self._psycopg() as conn:
            conn.execute(self.dialect.drop_view(self.view(group), plain=self.plain(self._group(group))))
        self._columns.pop(self._group(group).name, None)
        self._nullable.pop(self._group(group).name, None)

    # -- schema ------------------------------------------------------------------------------

    def columns(self, group: FeatureGroup | str) -> dict[str, str]:
        """The deployed view's columns and SQL types (``information_schema`` spelling), in order."""
        g = self._group(group)
        if g.name not in self._columns:
            with self._psycopg() as conn:
                rows = conn.execute(
                    "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                    "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                    (self.schema, self.relation(g.name)),
                ).fetchall()
            if not rows:
                raise DeployError(
                    f"group '{g.name}' has no view {self.plan.view_name(g.name)} in connection "
                    f"'{self.conn_id}': deploy it first"
                )
            self._columns[g.name] = {name: dtype for name, dtype, _ in rows}
            self._nullable[g.name] = {name: str(flag).upper() != "NO" for name, _, flag in rows}
        return dict(self._columns[g.name])

    def nullability(self, group: FeatureGroup | str) -> dict[str, bool]:
        """Whether each column of the deployed view is declared nullable (``is_nullable``).

        What the schema declares, not what the data hold: schema parity judges this, the shadow
        comparison judges null counts. Postgres and RisingWave views declare every column nullable.
        """
        g = self._group(group)
        self.columns(g)
        return dict(self._nullable[g.name])

    # -- reads -------------------------------------------------------------------------------

    def _select_list(self, g: FeatureGroup, alias: str, has_source: bool) -> pgsql.Composable:
        from psycopg import sql

        a = _pg.ident(alias)
        items = [sql.SQL("CAST({}.{} AS text) AS {}").format(a, _pg.ident(g.entity_key), _pg.ident(ENTITY))]
        items += [sql.SQL("{}.{}").format(a, _pg.ident(f)) for f in g.feature_names]
        source = (
            sql.SQL("{}.{}").format(a, _pg.ident(SOURCE_COLUMN))
            if has_source
            else sql.SQL("CAST(NULL AS timestamptz)")
        )
        items.append(sql.SQL("{} AS {}").format(source, _pg.ident(SOURCE_TS)))
        return sql.SQL(", ").join(items)

    def _id_filter(self, g: FeatureGroup, alias: str, param: str) -> pgsql.Composable:
        from psycopg import sql

        key_type = _pg.ENTITY_SQL_TYPES[str(g.entity_dtype)]
        return sql.SQL("{}.{} = ANY(CAST({} AS text[])::{}[])").format(
            _pg.ident(alias), _pg.ident(g.entity_key), sql.SQL(param), sql.SQL(key_type)
        )

    def read(self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array) -> pa.Table:
        """Current values of ``entity_ids`` from the group's live view."""
        from psycopg import sql

        g = self._group(group)
        has_source = SOURCE_COLUMN in self.columns(g)
        query = sql.SQL("SELECT {} FROM {} AS v WHERE {}").format(
            self._select_list(g, "v", has_source), self.view(g), self._id_filter(g, "v", "$1")
        )
        return conform(self._fetch(_pg.render(query), _pg.bind(entity_ids)), g)

    def read_as_of(
        self, group: FeatureGroup | str, entity_ids: Sequence[str] | pa.Array, as_of: datetime
    ) -> pa.Table:
        """Values of ``entity_ids`` as of ``as_of``, from the same definition (no view needed)."""
        from psycopg import sql

        from airflow_fsmigration.plan.definitions import output_columns, render_as_of

        g = self._group(group)
        check_as_of(as_of)
        body = render_as_of(self.plan, g.name, param="CAST($2 AS timestamptz)").strip().rstrip(";")
        selected = output_columns(self.plan.definition_sql(g.name))
        has_source = selected is None or SOURCE_COLUMN in selected
        query = sql.SQL("SELECT {} FROM (\n{}\n) AS v WHERE {}").format(
            self._select_list(g, "v", has_source), sql.SQL(body), self._id_filter(g, "v", "$1")
        )
        return conform(self._fetch(_pg.render(query), _pg.bind(entity_ids, as_of.astimezone(UTC))), g)

    def replay(
        self,
        group: FeatureGroup | str,
        sql: str,
        entity_ids: Sequence[str],
        as_of: datetime,
        *,
        pushdown: bool = True,
    ) -> pa.Table:
        """What definition text ``sql`` gives for ``entity_ids`` as of ``as_of``, on the raw events.

        The diagnosis replays rewrites of a definition this way; the entity filter is pushed
        into the definition wherever that keeps it exact, so a sample costs a few index probes
        (``pushdown=False`` skips that analysis: the definition already reads only the sample,
        e.g. the staged copies of :meth:`stage`).
        """
        from psycopg import sql as pgsql

        from airflow_fsmigration.backfill.pushdown import entity_filtered_sql
        from airflow_fsmigration.plan.definitions import output_columns, render_as_of

        g = self._group(group)
        check_as_of(as_of)
        key_type = _pg.ENTITY_SQL_TYPES[str(g.entity_dtype)]
        if pushdown:
            body = entity_filtered_sql(
                self.plan,
                g.name,
                "CAST($2 AS timestamptz)",
                f"(CAST($1 AS text[])::{key_type}[])",
                sql=sql,
                op="= ANY",
            )
        else:
            body = render_as_of(self.plan, g.name, param="CAST($2 AS timestamptz)", sql=sql)
        selected = output_columns(sql)
        has_source = selected is None or SOURCE_COLUMN in selected
        query = pgsql.SQL("SELECT {} FROM (\n{}\n) AS v WHERE {}").format(
            self._select_list(g, "v", has_source),
            pgsql.SQL(body.strip().rstrip(";")),
            self._id_filter(g, "v", "$1"),
        )
        try:
            table = self._fetch(_pg.render(query), _pg.bind(entity_ids, as_of.astimezone(UTC)))
        except Exception:
            # a rewrite that does not run must not leave the connection in a failed transaction
            if self._adbc is not None:
                with contextlib.suppress(Exception):
                    self._adbc.close()
                self._adbc = None
            raise
        return conform(table, g)

    def stage(self, tables: Sequence[str], key: str, entity_ids: Sequence[str]) -> dict[str, str]:
        """Copy the rows of ``entity_ids`` from each raw table into a temporary table.

        The diagnosis replays dozens of rewrites on the same few hundred entities; reading their
        events once (one scan per table) instead of once per rewrite is what keeps a replay of a
        large group within seconds. Returns table -> ``pg_temp`` name for the tables that have
        the key column; the copies live as long as this store's connection (see :meth:`staged`).
        """
        from psycopg import sql as pgsql

        out: dict[str, str] = {}
        conn = self._arrow()
        for i, table in enumerate(tables):
            schema, _, name = table.rpartition(".")
            with self._psycopg() as pc:
                has_key = pc.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                    " AND column_name = %s",
                    (schema or "public", name, key),
                ).fetchone()
            if not has_key:
                continue
            tmp = f"fsmig_replay_{i}"
            source = pgsql.Identifier(*([schema, name] if schema else [name]))
            ddl = pgsql.SQL(
                "CREATE TEMP TABLE {} AS SELECT * FROM {} WHERE CAST({} AS text) = ANY(CAST($1 AS text[]))"
            )
            _pg.execute(conn, f"DROP TABLE IF EXISTS pg_temp.{tmp}", None, self.conn_id, self.store)
            query = ddl.format(pgsql.Identifier(tmp), source, pgsql.Identifier(key))
            _pg.execute(conn, _pg.render(query), _pg.bind(entity_ids), self.conn_id, self.store)
            _pg.execute(conn, f"ANALYZE pg_temp.{tmp}", None, self.conn_id, self.store)
            out[table] = f"pg_temp.{tmp}"
        self._staged_on = conn
        return out

    def staged(self) -> bool:
        """Whether the temporary copies of :meth:`stage` still exist (the connection is the same)."""
        return self._adbc is not None and getattr(self, "_staged_on", None) is self._adbc

    def clock(self) -> datetime:
        """The store's own ``now()``: the time its live views describe."""
        table = self._fetch("SELECT now() AS t", None)
        value = table.column(0)[0].as_py()
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def entity_ids(
        self, group: FeatureGroup | str, *, shard: tuple[int, int] | None = None, limit: int | None = None
    ) -> list[str]:
        """Entity keys in the live view, sorted; one hash shard and at most ``limit`` if asked."""
        g = self._group(group)
        return _pg.distinct_ids(
            lambda q: self._fetch(_pg.render(q), None), _pg.ident(g.entity_key), self.view(g), shard, limit
        )

    def scan(
        self,
        group: FeatureGroup | str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[pa.Table]:
        """The whole view in key order, streamed; a shard is filtered client-side by key hash."""
        from psycopg import sql

        g = self._group(group)
        has_source = SOURCE_COLUMN in self.columns(g)
        query = sql.SQL("SELECT {} FROM {} AS v ORDER BY 1").format(
            self._select_list(g, "v", has_source), self.view(g)
        )
        conn = self._arrow()
        if (stmt := self.dialect.before_read()) is not None:
            _pg.fetch_table(conn, stmt, None, self.conn_id, self.store)
        batches = _pg.stream_batches(conn, _pg.render(query), None, self.conn_id, self.store)
        yield from rechunk(_pg.conformed(batches, g, shard), chunk_size)

    def freshness(self, group: FeatureGroup | str) -> datetime | None:
        """The newest ``source_ts`` in the live view."""
        from psycopg import sql

        g = self._group(group)
        if SOURCE_COLUMN not in self.columns(g):
            return None
        query = sql.SQL("SELECT max({}) AS newest FROM {}").format(_pg.ident(SOURCE_COLUMN), self.view(g))
        value = self._fetch(_pg.render(query), None).column(0)[0].as_py()
        return value.astimezone(UTC) if value is not None else None


__all__ = ["DeployError", "NewStore", "UpstreamNotDeployed"]
