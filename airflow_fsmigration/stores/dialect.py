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
- **transactional DDL**: Postgres can roll a failed deploy back, RisingWave cannot;
- **builds that do not block** (RisingWave only): ``SET BACKGROUND_DDL = true`` makes ``CREATE
  MATERIALIZED VIEW`` return at once while the backfill goes on (and resumes after a restart);
  its progress is a row of ``rw_catalog.rw_ddl_progress`` (``ddl_id``, ``ddl_statement``,
  ``progress`` such as ``69.02%``) until it is done
  (https://docs.risingwave.com/sql/commands/sql-set-background-ddl, /docs/1.9/view-statement-progress);
- **redefinition without downtime** (RisingWave only): the new definition is built beside the
  live view (``<group>__fsmig_build``), then ``ALTER MATERIALIZED VIEW live SWAP WITH build``
  exchanges the two names in one statement (https://docs.risingwave.com/sql/commands/sql-alter-swap),
  and the old definition is kept as ``<group>__fsmig_previous`` for rollback.
"""

from __future__ import annotations

import re
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

    def create_view(self, view: pgsql.Composable, body: str, *, plain: bool = False) -> pgsql.Composable:
        """The idempotent statement that creates the live view of a group.

        ``plain`` (RisingWave): a group whose values move with the clock is a plain view, evaluated
        at read time as a batch query, where NOW() may appear anywhere
        (:func:`~.risingwave_lint.read_time_groups`).
        """
        from psycopg import sql

        if self.materialized and not plain:
            return sql.SQL("CREATE MATERIALIZED VIEW IF NOT EXISTS {} AS\n{}\n").format(view, sql.SQL(body))
        if self.materialized:
            return sql.SQL("CREATE VIEW IF NOT EXISTS {} AS\n{}\n").format(view, sql.SQL(body))
        return sql.SQL("CREATE OR REPLACE VIEW {} AS\n{}\n").format(view, sql.SQL(body))

    def replace_view(
        self, view: pgsql.Composable, body: str, *, plain: bool = False
    ) -> list[pgsql.Composable]:
        """Statements that replace a view whose definition or column list changed.

        Postgres runs them in one transaction. RisingWave replaces only a plain view this way
        (a materialized one is rebuilt beside itself and swapped: :meth:`create_build`, :meth:`swap`).
        """
        from psycopg import sql

        if self.materialized and not plain:
            raise NotImplementedError(
                "RisingWave cannot replace a materialized view in place: drop it deliberately and deploy again"
            )
        return [
            sql.SQL("DROP VIEW IF EXISTS {}").format(view),
            sql.SQL("CREATE VIEW {} AS\n{}\n").format(view, sql.SQL(body)),
        ]

    def drop_view(self, view: pgsql.Composable, *, plain: bool = False) -> pgsql.Composable:
        from psycopg import sql

        kind = "MATERIALIZED VIEW" if self.materialized and not plain else "VIEW"
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

    # -- RisingWave: background builds, blue/green redefinition, point-lookup index ------------

    @property
    def background_builds(self) -> bool:
        """Whether a deploy starts a build and returns (RisingWave) instead of finishing it inline."""
        return self.materialized

    def background_ddl(self) -> str | None:
        """The session setting that makes the next ``CREATE MATERIALIZED VIEW`` return at once."""
        return "SET BACKGROUND_DDL = true" if self.materialized else None

    def create_build(self, view: pgsql.Composable, body: str) -> pgsql.Composable:
        """A fresh materialized view (no IF NOT EXISTS: a half-built leftover is dropped first)."""
        from psycopg import sql

        if not self.materialized:
            raise NotImplementedError("a Postgres view has nothing to build: use create_view")
        return sql.SQL("CREATE MATERIALIZED VIEW {} AS\n{}\n").format(view, sql.SQL(body))

    def swap(self, live: pgsql.Composable, build: pgsql.Composable) -> pgsql.Composable:
        """Exchange the names of the live view and its rebuilt twin in one statement."""
        from psycopg import sql

        if not self.materialized:
            raise NotImplementedError("Postgres replaces a view in a transaction: use replace_view")
        return sql.SQL("ALTER MATERIALIZED VIEW {} SWAP WITH {}").format(live, build)

    def rename(self, view: pgsql.Composable, new_name: str) -> pgsql.Composable:
        """Rename within the schema (the target is a bare name, as ``RENAME TO`` takes it)."""
        from psycopg import sql

        kind = "MATERIALIZED VIEW" if self.materialized else "VIEW"
        return sql.SQL("ALTER {} {} RENAME TO {}").format(sql.SQL(kind), view, sql.Identifier(new_name))

    def entity_index(self, view: pgsql.Composable, index: str, key: str) -> pgsql.Composable | None:
        """An index on the entity key of a materialized view, for point lookups; None on Postgres.

        A Postgres view is evaluated at read time, so the raw tables' own indexes serve it.
        """
        from psycopg import sql

        if not self.materialized:
            return None
        return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index), view, sql.Identifier(key)
        )

    progress_sql = "SELECT ddl_id, ddl_statement, progress FROM rw_catalog.rw_ddl_progress ORDER BY ddl_id"


BUILD_SUFFIX = "__fsmig_build"
PREVIOUS_SUFFIX = "__fsmig_previous"


def build_name(group: str) -> str:
    """Where a changed definition is built beside the live view."""
    return f"{group}{BUILD_SUFFIX}"


def previous_name(group: str) -> str:
    """Where the previous definition stays after a swap, for rollback until keep-warm ends."""
    return f"{group}{PREVIOUS_SUFFIX}"


def index_name(group: str, key: str) -> str:
    return f"{group}__by_{key}"[:63]


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_COUNTS = re.compile(r"\(?\s*(\d+)\s*/\s*(\d+)\s*\)?")


def parse_progress(text: str | None) -> tuple[float | None, int | None, int | None]:
    """``'69.02%'`` -> (69.02, None, None); ``'12.5% (125/1000)'`` -> (12.5, 125, 1000).

    RisingWave documents the column as an estimate in percent; some versions add row counts.
    Anything else gives Nones (the caller logs the raw text rather than guess).
    """
    if not text:
        return None, None, None
    pct = _PERCENT.search(text)
    counts = _COUNTS.search(text.replace(",", ""))
    done, total = (int(counts.group(1)), int(counts.group(2))) if counts else (None, None)
    return (float(pct.group(1)) if pct else None), done, total


def statement_builds(statement: str, schema: str, name: str) -> bool:
    """Whether a ``ddl_statement`` creates ``schema.name`` (quoted or not, any case).

    The view is the name after ``CREATE MATERIALIZED VIEW [IF NOT EXISTS]``; a statement that
    names it without its schema (if RisingWave records it so) matches the bare name.
    """
    flat = " ".join(statement.replace('"', "").split()).lower()
    found = re.match(r"create\s+materialized\s+view\s+(?:if\s+not\s+exists\s+)?([^\s(]+)", flat)
    if found is None:
        return False
    created = found.group(1)
    return created == f"{schema}.{name}".lower() or created == name.lower()


POSTGRES = StoreDialect("postgres", materialized=False, transactional_ddl=True, flush_before_read=False)
RISINGWAVE = StoreDialect("risingwave", materialized=True, transactional_ddl=False, flush_before_read=True)


def dialect_for(name: str) -> StoreDialect:
    try:
        return {"postgres": POSTGRES, "risingwave": RISINGWAVE}[str(name)]
    except KeyError:
        raise ValueError(f"unknown new-store dialect {name!r}: use 'postgres' or 'risingwave'") from None
