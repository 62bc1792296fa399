"""Versioned schema migrations for the project's own tables in the registry Postgres.

Each component (registry, shadow results, backfill checkpoints, ...) owns an ordered list of
DDL steps; :func:`ensure_schema` applies the ones not yet recorded, under an advisory lock so
concurrent workers starting at once do not race. Steps are append-only: never edit a shipped one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SCHEMA = "fsmig"
_LOCK_KEY = 0x46534D4947  # "FSMIG"


def ensure_schema(conn: Any, component: str, migrations: Sequence[str]) -> int:
    """Apply pending migrations of ``component``; return its schema version afterwards.

    ``conn`` is a psycopg connection. Each step runs in its own transaction with its version row,
    so a failure leaves the schema at the last good version.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{SCHEMA}".schema_version ('
            " component text NOT NULL, version int NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
        row = conn.execute(
            f'SELECT coalesce(max(version), 0) FROM "{SCHEMA}".schema_version WHERE component = %s',
            (component,),
        ).fetchone()
        current = int(row[0])
        if current > len(migrations):
            raise RuntimeError(
                f"the registry database has {component} schema version {current}, newer than this package knows "
                f"({len(migrations)}): upgrade airflow-fsmigration on this host"
            )
        for version, ddl in enumerate(migrations[current:], start=current + 1):
            conn.execute(ddl)
            conn.execute(
                f'INSERT INTO "{SCHEMA}".schema_version (component, version) VALUES (%s, %s)',
                (component, version),
            )
    return len(migrations)
