"""Deterministic raw events for backfill tests and benchmarks, generated inside Postgres.

Set-based (one ``generate_series`` statement) and hash-seeded rather than ``random()``, so the
same arguments give the same rows on every machine and plan shape. The columns are what the
demo plan's ``user_txn_stats`` and ``merchant_stats`` definitions read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _u(seed: str) -> str:
    """A uniform [0, 1) value from a hash of ``i`` and a salt, in SQL."""
    return f"((hashint8(i * 7919 + {seed}) & 2147483647)::float8 / 2147483648)"


def create_transactions(
    conn: Any,
    *,
    events: int,
    users: int,
    merchants: int = 1000,
    start: datetime,
    end: datetime,
    table: str = "raw.transactions",
    index: bool = True,
) -> None:
    """Create and fill ``raw.transactions`` (user_id, merchant_id, amount, status, is_foreign, event_ts).

    Event times are spread uniformly over [start, end) at whole seconds; users and merchants are
    drawn by hash, so every user gets about ``events / users`` events.
    """
    from psycopg import sql

    schema, name = table.split(".")
    ident = sql.Identifier(schema, name)
    span = int((end - start).total_seconds())
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (txn_id bigint, user_id text, merchant_id text, amount double precision,"
            " status text, is_foreign boolean, event_ts timestamptz)"
        ).format(ident)
    )
    query = (
        "INSERT INTO {t} SELECT i,"
        f" 'u' || (floor({_u('1')} * %(users)s))::bigint,"
        f" 'm' || (floor({_u('2')} * %(merchants)s))::bigint,"
        f" round((1 + {_u('3')} * 499)::numeric, 2)::float8,"
        f" CASE WHEN {_u('4')} < 0.90 THEN 'approved' WHEN {_u('4')} < 0.96 THEN 'declined'"
        f"      WHEN {_u('4')} < 0.99 THEN 'refunded' ELSE 'chargeback' END,"
        f" {_u('5')} < 0.1,"
        f" %(start)s::timestamptz + make_interval(secs => floor({_u('6')} * %(span)s))"
        " FROM generate_series(1, %(events)s::bigint) AS i"
    )
    conn.execute(
        sql.SQL(query).format(t=ident),  # type: ignore[arg-type]
        {"users": users, "merchants": merchants, "start": start, "span": span, "events": events},
    )
    if index:
        # covering: a per-label evaluation reads an entity's window from the index alone
        conn.execute(
            sql.SQL(
                "CREATE INDEX {} ON {} (user_id, event_ts) INCLUDE (merchant_id, amount, status, is_foreign)"
            ).format(sql.Identifier(f"{name}_user_ts_idx"), ident)
        )
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} (event_ts)").format(sql.Identifier(f"{name}_ts_idx"), ident)
        )
    # VACUUM sets the visibility map, so those index-only scans need no heap visit (autocommit conn)
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))


def create_spine(
    conn: Any,
    *,
    labels: int,
    users: int,
    start: datetime,
    end: datetime,
    table: str = "ml.labels",
    distinct_times: int | None = None,
) -> None:
    """A label spine (label_id, user_id, label_ts, label) with ``labels`` rows in [start, end).

    ``distinct_times`` limits how many different label times there are (e.g. 30 daily cut-offs);
    by default every label has its own second.
    """
    from psycopg import sql

    schema, name = table.split(".")
    ident = sql.Identifier(schema, name)
    span = int((end - start).total_seconds())
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (label_id bigint PRIMARY KEY, user_id text, label_ts timestamptz, label boolean)"
        ).format(ident)
    )
    if distinct_times:
        when = f"floor({_u('12')} * {int(distinct_times)}) * {span // max(1, distinct_times)}"
    else:
        when = f"floor({_u('12')} * {span})"
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} SELECT i, 'u' || (floor(" + _u("11") + " * %(users)s))::bigint,"
            " %(start)s::timestamptz + make_interval(secs => " + when + "),"
            " " + _u("13") + " < 0.05 FROM generate_series(1, %(labels)s::bigint) AS i"
        ).format(t=ident),
        {"users": users, "start": start, "labels": labels},
    )
    conn.execute(sql.SQL("ANALYZE {}").format(ident))
