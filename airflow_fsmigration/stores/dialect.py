"""Every difference between new-store dialects lives here, and nowhere else.

Postgres (tests, the embedded demo) and RisingWave (production) speak the same wire protocol
and mostly the same SQL. They differ in:

- **what a live view is**: Postgres gets a plain ``VIEW`` (evaluated at read time, so it is
  always fresh and ``now()`` is the read time); RisingWave gets a ``MATERIALIZED VIEW``,
  maintained incrementally as events stream in;
- **how a view is replaced**: Postgres ``CREATE OR REPLACE VIEW`` (and, when the column list
  changed, drop and create in one transaction); RisingWave ``CREATE MATERIALIZED VIEW IF NOT
  EXISTS`` (a changed definition needs an explicit drop, which this code never does silently);
- **temporal filters**: the definition's ``:as_of`` becomes ``now()``; in RisingWave a
  comparison with ``now()`` in ``WHERE`` is a temporal filter that expires rows as time passes;
- **refresh before a read**: RisingWave ``FLUSH`` makes writes acknowledged so far visible in
  materialized views; a Postgres view needs nothing;
- **transactional DDL**: Postgres can roll a failed deploy back, RisingWave cannot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_fsmigration.plan.definitions import render_live

if TYPE_CHECKING:
    from psycopg import sql as pgsql


@dataclass(frozen=True)
class StoreDialect:
    name: str
    materialized: bool
    transactional_ddl: bool
    flush_before_read: bool

    def live_sql(self, definition: str) -> str:
        """The definition as of now, in this store's own clock (a temporal filter in RisingWave)."""
        return render_live(definition).strip().rstrip(";")

    def create_view(self, view: pgsql.Composable, body: str) -> pgsql.Composable:
        """The idempotent statement that creates the live view of a group."""
        from psycopg import sql

        if self.materialized:
            return sql.SQL("CREATE MATERIALIZED VIEW IF NOT EXISTS {} AS\n{}\n").format(view, sql.SQL(body))
        return sql.SQL("CREATE OR REPLACE VIEW {} AS\n{}\n").format(view, sql.SQL(body))

    def replace_view(self, view: pgsql.Composable, body: str) -> list[pgsql.Composable]:
        """Statements that replace a view whose column list changed (run in one transaction)."""
        from psycopg import sql

        if self.materialized:
            raise NotImplementedError(
                "RisingWave cannot replace a materialized view in place: drop it deliberately and deploy again"
            )
        return [
            sql.SQL("DROP VIEW IF EXISTS {}").format(view),
            sql.SQL("CREATE VIEW {} AS\n{}\n").format(view, sql.SQL(body)),
        ]

    def drop_view(self, view: pgsql.Composable) -> pgsql.Composable:
        from psycopg import sql

        kind = "MATERIALIZED VIEW" if self.materialized else "VIEW"
        return sql.SQL("DROP {} IF EXISTS {}").format(sql.SQL(kind), view)

    def before_read(self) -> str | None:
        """A statement to run before reading views, or None."""
        return "FLUSH" if self.flush_before_read else None

    @property
    def relation_exists_sql(self) -> str:
        """Catalog query (schema, name) -> row if a table or (materialized) view exists."""
        return (
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s "
            "UNION ALL SELECT 1 FROM pg_catalog.pg_matviews WHERE schemaname = %s AND matviewname = %s"
        )


POSTGRES = StoreDialect("postgres", materialized=False, transactional_ddl=True, flush_before_read=False)
RISINGWAVE = StoreDialect("risingwave", materialized=True, transactional_ddl=False, flush_before_read=True)


def dialect_for(name: str) -> StoreDialect:
    try:
        return {"postgres": POSTGRES, "risingwave": RISINGWAVE}[str(name)]
    except KeyError:
        raise ValueError(f"unknown new-store dialect {name!r}: use 'postgres' or 'risingwave'") from None
