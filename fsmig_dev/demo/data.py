"""A realistic legacy feature store for the demo plan, and a new store with one realistic bug.

What it writes (one Postgres server, Redis db 0):

- **Event log** (database ``events``, schema ``raw``): ``users``, ``merchants``, ``items``,
  ``transactions``, ``user_events``, ``clickstream`` with exactly the columns the demo SQL reads,
  generated set-based (``generate_series`` and ``random()`` after ``setseed``, no parallel
  workers) so a size is reproducible and fast. Activity is skewed: a per-user activity factor,
  popular merchants and items. Each table spans what the backfill windows need (capped at
  ``days``) and is then purged to its declared retention at day granularity, as a nightly purge
  job would: ``raw.clickstream`` keeps 30 days although ``user_session_stats`` promises a 14-day
  backfill of 30-day windows, which is the gap the retention audit should find.
- **New store** (the same ``events`` database, schema ``features``): Postgres views cannot read
  across databases and RisingWave ingests the same event stream, so the new store lives next to
  the raw tables. :func:`deploy_new_store` creates the views from a plan's definitions.
- **Legacy offline store** (database ``legacy``, schema ``legacy``): per group a history table
  ``(entity key, event_ts, features)`` with one snapshot per day over the group's backfill
  window, computed by running the group's *correct* definition as of each day
  (:func:`~airflow_fsmigration.plan.definitions.render_as_of`), before the purge, as the old
  pipeline did at the time. To keep the size sane, history covers the first
  ``history_entities`` entities of each kind; every demo definition aggregates per entity, so
  restricting the raw inputs to those entities gives them exactly the full-data values.
- **Legacy online store** (Redis): one hash per entity at the group's key template, computed as
  of ``now`` with the correct definitions and written with pipelined ``HSET``
  (see :func:`encode_value` for the value encodings).
- **Registry and model metrics** (database ``registry``): the registry creates its tables on
  first use; ``fsmig.model_metrics`` gets a week of hourly AUC and precision per model before
  ``now`` (:func:`write_model_metrics`), the pre-ramp baseline of the bake gates.
- **A frozen clock** in the event-log database (:func:`freeze_clock`): ``now()`` there returns the
  logical now the legacy stores were computed at, so the new store's live views and the old store
  are compared at the same logical time, however long after generation the demo runs.

The bug: the plan copy the demo migrates (``plan_dir``) carries a ported ``user_session_stats``
definition that reads the clickstream's event time as New York wall-clock time, as happens when
a streaming source declares ``event_ts`` as ``TIMESTAMP`` instead of ``TIMESTAMPTZ``. Last-click
times come out shifted by the UTC offset (-5 h in winter) and the 24-hour windows cover only 19.

All three databases may be the same one (the schemas do not collide); tests do that.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("fsmig_dev.demo")

# The master table of each entity kind of the demo plan (ids are sequential, so "first N" is a fair sample).
ENTITY_TABLES = {"user_id": "raw.users", "merchant_id": "raw.merchants", "item_id": "raw.items"}
PG_TYPES = {
    "int64": "bigint",
    "float64": "double precision",
    "string": "text",
    "bool": "boolean",
    "timestamp": "timestamptz",
}
BUG_GROUP = "user_session_stats"
BUG_ZONE = "America/New_York"


@dataclass(frozen=True)
class DemoBug:
    """The defect planted in the new store, so the demo can check it was found and explained."""

    group: str
    kind: str
    features: tuple[str, ...]
    description: str
    sql_path: Path


@dataclass
class DemoEnvironment:
    """Where the demo data lives and how to reach it (``conn_env`` for every connection id of the plan)."""

    plan_dir: Path
    now: datetime
    urls: dict[str, str]
    conn_env: dict[str, str]
    bug: DemoBug | None
    entities: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def load_plan(self) -> MigrationPlan:
        """The plan the demo migrates: the demo plan with the buggy definition swapped in."""
        from airflow_fsmigration.plan import load_plan

        return load_plan(self.plan_dir)

    def apply_env(self) -> None:
        """Export the ``AIRFLOW_CONN_*`` variables into this process (CLI, hooks and tests read them)."""
        import os

        os.environ.update(self.conn_env)

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_dir": str(self.plan_dir),
            "now": self.now.isoformat(),
            "urls": self.urls,
            "conn_env": self.conn_env,
            "bug": None
            if self.bug is None
            else {
                "group": self.bug.group,
                "kind": self.bug.kind,
                "features": list(self.bug.features),
                "description": self.bug.description,
                "sql_path": str(self.bug.sql_path),
            },
            "entities": self.entities,
            "counts": self.counts,
            "timings": self.timings,
        }


# --- value encodings of the legacy online store ----------------------------------------------


def encode_value(value: Any, dtype: str, encoding: str) -> str | None:
    """How the old pipeline wrote one feature value into a Redis hash field; None = field absent.

    ``string``: ints ``"42"``, floats ``repr()``, bools ``"true"``/``"false"``, timestamps ISO-8601
    with offset, strings as is. ``json``: the JSON scalar (timestamps as ISO strings).
    """
    return value_encoder(dtype, encoding)(value)


def value_encoder(dtype: str, encoding: str) -> Callable[[Any], str | None]:
    """The encoder of one feature (chosen once per feature: the online store writes millions of values)."""
    as_json = str(encoding) == "json"
    dtype = str(dtype)

    def _int(v: Any) -> str | None:
        return None if v is None else str(int(v))

    def _float(v: Any) -> str | None:
        # json.dumps(float) is float.__repr__ for finite values, so both encodings agree.
        return None if v is None else repr(float(v))

    def _bool(v: Any) -> str | None:
        return None if v is None else ("true" if v else "false")

    def _timestamp(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, datetime):
            raise TypeError(f"expected a datetime for a timestamp feature, got {type(v).__name__}")
        text = (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        return json.dumps(text) if as_json else text

    def _string(v: Any) -> str | None:
        if v is None:
            return None
        return json.dumps(str(v)) if as_json else str(v)

    encoders: dict[str, Callable[[Any], str | None]] = {
        "int64": _int,
        "float64": _float,
        "bool": _bool,
        "timestamp": _timestamp,
        "string": _string,
    }
    return encoders[dtype]


def encode_source_ts(value: datetime | None, encoding: str) -> str | None:
    """The ``timestamp_field``: source event time as whole epoch seconds (raw events are whole seconds)."""
    if value is None:
        return None
    seconds = int(value.timestamp())
    return json.dumps(seconds) if str(encoding) == "json" else str(seconds)


# --- the bug ---------------------------------------------------------------------------------

_BUG_HEADER = f"""-- PORTED TO THE NEW STORE. The streaming source declares clickstream.event_ts as TIMESTAMP
-- (wall-clock time in {BUG_ZONE}) instead of TIMESTAMPTZ, so every event time below is the
-- local wall-clock time read as if it were UTC. (Planted by the demo: this is the bug to find.)
"""
_BUG_CTE = f"""clickstream_src AS (
    SELECT user_id, item_id, session_id, event_type,
           (event_ts AT TIME ZONE '{BUG_ZONE}') AT TIME ZONE 'UTC' AS event_ts
    FROM raw.clickstream
),
"""


def buggy_session_stats_sql(correct_sql: str) -> str:
    """The demo's buggy port of ``user_session_stats``: clickstream times shifted to New York wall-clock."""
    marker = "FROM raw.clickstream AS c"
    if correct_sql.count(marker) != 2 or "WITH sessions AS (" not in correct_sql:
        raise ValueError(
            f"the {BUG_GROUP} definition no longer has the shape the demo bug expects "
            f"(two '{marker}' and a 'WITH sessions AS (' CTE): update fsmig_dev/demo/data.py"
        )
    sql = correct_sql.replace(marker, "FROM clickstream_src AS c")
    sql = sql.replace("WITH sessions AS (", "WITH " + _BUG_CTE + "sessions AS (", 1)
    return _BUG_HEADER + sql


def write_demo_plan(
    source_dir: str | Path, dest_dir: str | Path, *, inject_bug: bool = True
) -> DemoBug | None:
    """Copy the demo plan to ``dest_dir``; with ``inject_bug`` swap in the buggy definition."""
    src, dest = Path(source_dir), Path(dest_dir)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    if not inject_bug:
        return None
    from airflow_fsmigration.plan import load_plan

    plan = load_plan(dest)
    path = plan.definition_path(BUG_GROUP)
    path.write_text(buggy_session_stats_sql(path.read_text()))
    return DemoBug(
        group=BUG_GROUP,
        kind="time_zone_offset",
        features=("sessions_24h", "clicks_24h", "last_click_ts", "sessions_7d", "avg_session_events_7d"),
        description=(
            f"the new store reads raw.clickstream.event_ts as {BUG_ZONE} wall-clock time (a TIMESTAMP "
            "source column instead of TIMESTAMPTZ): last_click_ts is shifted by the UTC offset (-5 h in "
            "winter, -4 h in summer) and the 24-hour windows end 5 hours early"
        ),
        sql_path=path,
    )


# --- raw events --------------------------------------------------------------------------------

_RAW_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
DROP TABLE IF EXISTS raw.users, raw.merchants, raw.items, raw.transactions, raw.user_events, raw.clickstream;
CREATE TABLE raw.users (
    user_id text PRIMARY KEY, created_at timestamptz NOT NULL, country text NOT NULL,
    is_verified boolean NOT NULL, kyc_level integer NOT NULL, email_domain_risk double precision NOT NULL);
CREATE TABLE raw.merchants (
    merchant_id text PRIMARY KEY, category text NOT NULL, static_risk double precision NOT NULL,
    updated_at timestamptz NOT NULL);
CREATE TABLE raw.items (
    item_id text PRIMARY KEY, price numeric(10, 2) NOT NULL, category text NOT NULL, updated_at timestamptz NOT NULL);
CREATE TABLE raw.transactions (
    user_id text NOT NULL, merchant_id text NOT NULL, amount numeric(12, 2) NOT NULL, status text NOT NULL,
    is_foreign boolean NOT NULL, event_ts timestamptz NOT NULL);
CREATE TABLE raw.user_events (
    user_id text NOT NULL, device_id text NOT NULL, event_type text NOT NULL, event_ts timestamptz NOT NULL);
CREATE TABLE raw.clickstream (
    user_id text NOT NULL, item_id text NOT NULL, session_id text NOT NULL, event_type text NOT NULL,
    event_ts timestamptz NOT NULL);
"""

_USERS = """
INSERT INTO raw.users
SELECT 'u' || lpad(g::text, 7, '0'),
       date_trunc('second', %(now)s::timestamptz - random() ^ 2 * interval '1095 days'),
       (ARRAY['US','US','US','US','GB','DE','FR','BR','IN','CA','MX','NG'])[1 + floor(random() * 12)::int],
       random() < 0.8,
       floor(random() * 4)::int,
       round((random() ^ 3)::numeric, 4)::double precision
FROM generate_series(1, %(n)s) AS g
"""

_MERCHANTS = """
INSERT INTO raw.merchants
SELECT 'm' || lpad(g::text, 6, '0'),
       (ARRAY['grocery','fuel','electronics','travel','restaurants','fashion','gaming','pharmacy'])[1 + floor(random() * 8)::int],
       round((random() ^ 2)::numeric, 4)::double precision,
       date_trunc('second', %(now)s::timestamptz - CASE WHEN random() < 0.03 THEN random() * interval '30 days'
                                                  ELSE interval '30 days' + random() * interval '700 days' END)
FROM generate_series(1, %(n)s) AS g
"""

_ITEMS = """
INSERT INTO raw.items
SELECT 'i' || lpad(g::text, 6, '0'),
       round((exp(random() * 5) + 1)::numeric, 2),
       (ARRAY['books','shoes','phones','toys','kitchen','garden','beauty','sports'])[1 + floor(random() * 8)::int],
       date_trunc('second', %(now)s::timestamptz - CASE WHEN random() < 0.05 THEN random() * interval '21 days'
                                                  ELSE interval '21 days' + random() * interval '700 days' END)
FROM generate_series(1, %(n)s) AS g
"""

# Per-user activity: an exponential factor (a few heavy users), a foreign-card share, devices.
_ACTIVITY = """
CREATE TEMP TABLE demo_activity AS
SELECT user_id, created_at, -ln(1 - random()) AS act,
       CASE WHEN random() < 0.1 THEN 0.3 + random() * 0.6 ELSE random() * 0.08 END AS foreign_p,
       1 + floor(random() * random() * 4)::int AS devices
FROM raw.users ORDER BY user_id
"""

# k = 1..n per user, n = activity x rate x active days in the span. OFFSET 0 keeps the subquery a
# planning fence, so each random() is drawn once per row.
_PER_USER_ROWS = """
    FROM demo_activity AS a
    CROSS JOIN LATERAL generate_series(1, floor(a.act * %(rate)s * greatest(extract(epoch FROM
        %(now)s::timestamptz - greatest(a.created_at, %(start)s::timestamptz)), 0) / 86400)::int) AS k
    OFFSET 0
) AS x
"""

_TRANSACTIONS = (
    """
INSERT INTO raw.transactions
SELECT user_id, 'm' || lpad(m::text, 6, '0'), amount,
       CASE WHEN r < 0.88 THEN 'approved' WHEN r < 0.95 THEN 'declined'
            WHEN r < 0.985 THEN 'refunded' ELSE 'chargeback' END,
       fr < foreign_p,
       date_trunc('second', s + (%(now)s::timestamptz - s) * t)
FROM (
    SELECT a.user_id, a.foreign_p, greatest(a.created_at, %(start)s::timestamptz) AS s,
           1 + floor(%(merchants)s * random() ^ 1.6)::int AS m,
           round((exp(random() * 5.3) + random() * 4)::numeric, 2) AS amount,
           random() AS r, random() AS fr, random() AS t
"""
    + _PER_USER_ROWS
)

_USER_EVENTS = (
    """
INSERT INTO raw.user_events
SELECT user_id, user_id || '-d' || dev,
       CASE WHEN r < 0.72 THEN 'login' WHEN r < 0.84 THEN 'login_failed'
            WHEN r < 0.95 THEN 'logout' ELSE 'password_reset' END,
       date_trunc('second', s + (%(now)s::timestamptz - s) * t)
FROM (
    SELECT a.user_id, greatest(a.created_at, %(start)s::timestamptz) AS s,
           1 + floor(random() * a.devices)::int AS dev, random() AS r, random() AS t
"""
    + _PER_USER_ROWS
)

_SESSIONS = (
    """
CREATE TEMP TABLE demo_sessions AS
SELECT user_id, user_id || ':' || k AS session_id,
       date_trunc('second', s + (%(now)s::timestamptz - s) * t) AS started_at,
       1 + floor(random() ^ 2 * 12)::int AS n_events
FROM (
    SELECT a.user_id, k, greatest(a.created_at, %(start)s::timestamptz) AS s, random() AS t
"""
    + _PER_USER_ROWS
)

_CLICKSTREAM = """
INSERT INTO raw.clickstream
SELECT user_id, 'i' || lpad(i::text, 6, '0'), session_id,
       CASE WHEN r < 0.6 THEN 'view' WHEN r < 0.85 THEN 'click'
            WHEN r < 0.95 THEN 'add_to_cart' ELSE 'purchase' END,
       least(ts, %(now)s::timestamptz)
FROM (
    SELECT s.user_id, s.session_id, 1 + floor(%(items)s * random() ^ 2.5)::int AS i, random() AS r,
           date_trunc('second', s.started_at + e * interval '40 seconds' + random() * interval '30 seconds') AS ts
    FROM demo_sessions AS s
    CROSS JOIN LATERAL generate_series(0, s.n_events - 1) AS e
    OFFSET 0
) AS x
"""

# Events per user per day (times the user's activity factor, mean 1).
RATES = {"transactions": 0.3, "user_events": 0.2, "sessions": 0.12}


def _spans(plan: MigrationPlan, days: int) -> dict[str, tuple[int, timedelta | None]]:
    """Per raw event table: days to generate (what the backfills need, at most ``days``) and retention.

    A table is generated over the longest backfill window plus feature window that any group
    (directly or through an upstream) needs, capped at ``days``, so the legacy history is computed
    from complete data before the purge.
    """
    from airflow_fsmigration.backfill.retention import group_event_sources

    need: dict[str, timedelta] = {}
    retention: dict[str, timedelta] = {}
    for name, g in plan.groups.items():
        for _via, src in group_event_sources(plan, name):
            window = g.backfill_window + src.longest_window + timedelta(days=1)
            need[src.table] = max(need.get(src.table, timedelta(0)), window)
            retention[src.table] = min(retention.get(src.table, src.retention), src.retention)
    out: dict[str, tuple[int, timedelta | None]] = {}
    for table in ("raw.transactions", "raw.user_events", "raw.clickstream"):
        ret = retention.get(table)
        wanted = max(need.get(table, timedelta(days=days)), ret or timedelta(0))
        out[table] = (min(days, max(1, -(-int(wanted.total_seconds()) // 86400))), ret)
    return out


def _day(ts: datetime) -> datetime:
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def generate_raw(
    conn: Any, plan: MigrationPlan, *, entities: int, days: int, seed: float, now: datetime
) -> dict[str, int]:
    """Create and fill the ``raw`` tables; returns row counts. ``conn`` is autocommit psycopg."""
    merchants = max(20, entities // 50)
    items = max(50, entities // 20)
    spans = _spans(plan, days)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET max_parallel_workers_per_gather = 0")  # reproducible random() needs one process
    conn.execute("SELECT setseed(%s)", (seed,))
    conn.execute(_RAW_DDL)
    counts: dict[str, int] = {}

    def run(label: str, statement: str, **params: Any) -> None:
        t0 = time.perf_counter()
        cur = conn.execute(statement, {"now": now, **params})
        counts[label] = cur.rowcount
        took = time.perf_counter() - t0
        log.info(
            "raw.%s: %s rows in %.1fs (%.0f rows/s)",
            label,
            f"{cur.rowcount:,}",
            took,
            cur.rowcount / max(took, 1e-6),
        )

    run("users", _USERS, n=entities)
    run("merchants", _MERCHANTS, n=merchants)
    run("items", _ITEMS, n=items)
    conn.execute("DROP TABLE IF EXISTS demo_activity, demo_sessions")
    conn.execute(_ACTIVITY)
    span, _ = spans["raw.transactions"]
    run(
        "transactions",
        _TRANSACTIONS,
        start=_day(now - timedelta(days=span)),
        rate=RATES["transactions"],
        merchants=merchants,
    )
    span, _ = spans["raw.user_events"]
    run("user_events", _USER_EVENTS, start=_day(now - timedelta(days=span)), rate=RATES["user_events"])
    span, _ = spans["raw.clickstream"]
    conn.execute(
        _SESSIONS, {"now": now, "start": _day(now - timedelta(days=span)), "rate": RATES["sessions"]}
    )
    run("clickstream", _CLICKSTREAM, items=items)
    conn.execute("DROP TABLE IF EXISTS demo_activity, demo_sessions")
    t0 = time.perf_counter()
    for stmt in (
        "CREATE INDEX ON raw.transactions (event_ts)",
        "CREATE INDEX ON raw.user_events (event_ts)",
        "CREATE INDEX ON raw.clickstream (event_ts)",
        "CREATE INDEX ON raw.merchants (updated_at)",
        "CREATE INDEX ON raw.items (updated_at)",
        "CREATE INDEX ON raw.users (created_at)",
        "ANALYZE raw.users, raw.merchants, raw.items, raw.transactions, raw.user_events, raw.clickstream",
    ):
        conn.execute(stmt)
    log.info("raw indexes and statistics in %.1fs", time.perf_counter() - t0)
    return counts


def purge_to_retention(conn: Any, plan: MigrationPlan, *, now: datetime) -> dict[str, int]:
    """Delete events older than each source's declared retention (whole days, like a nightly purge)."""
    from psycopg import sql

    seen: dict[tuple[str, str], timedelta] = {}
    for g in plan.groups.values():
        for src in g.event_sources:
            key = (src.table, src.time_column)
            seen[key] = min(seen.get(key, src.retention), src.retention)
    deleted = {}
    for (table, column), retention in sorted(seen.items()):
        cutoff = _day(now - retention)
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} < %s").format(
                sql.Identifier(*table.split(".")), sql.Identifier(column)
            ),
            (cutoff,),
        )
        if cur.rowcount:
            deleted[table] = cur.rowcount
            log.info(
                "purged %s events of %s older than %s (retention %s)",
                f"{cur.rowcount:,}",
                table,
                cutoff.date(),
                retention,
            )
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(*table.split("."))))
    return deleted


# --- the legacy offline store --------------------------------------------------------------------


def as_of_sql(plan: MigrationPlan, group: str, as_of: str, table_map: dict[str, str] | None = None) -> str:
    """The group's as-of SQL with ``as_of`` as an SQL expression, raw tables optionally swapped."""
    from airflow_fsmigration.plan.definitions import render_as_of

    sql = render_as_of(plan, group, param=as_of)
    if not table_map:
        return sql
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="postgres")

    def swap(node: exp.Expression) -> Any:
        if isinstance(node, exp.Table) and f"{node.db}.{node.name}" in table_map:
            alias = node.alias or node.name
            return exp.to_table(table_map[f"{node.db}.{node.name}"]).as_(alias)
        return node

    return tree.transform(swap).sql(dialect="postgres")


def bind_definition(sql_text: str, as_of: str, table_map: dict[str, str]) -> str:
    """A definition with ``:as_of`` replaced by an SQL expression and relations swapped (no inlining).

    Used to compute a derived group from its upstream groups' already materialized results, which
    is what its live view does (it reads the upstream views as of the same time).
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql_text, read="postgres")
    as_of_expr = sqlglot.parse_one(as_of, read="postgres")

    def swap(node: exp.Expression) -> Any:
        if isinstance(node, exp.Placeholder) and node.name == "as_of":
            return as_of_expr.copy()
        if isinstance(node, exp.Table) and f"{node.db}.{node.name}" in table_map:
            return exp.to_table(table_map[f"{node.db}.{node.name}"]).as_(node.alias or node.name)
        return node

    return tree.transform(swap).sql(dialect="postgres")


def _raw_tables(sql: str) -> set[str]:
    from airflow_fsmigration.plan.definitions import referenced_tables

    return {t for t in referenced_tables(sql) if t.startswith("raw.")}


def _entity_column(group: FeatureGroup) -> str:
    return group.legacy_offline.entity_column or group.entity_key


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def write_legacy_history(
    events: Any,
    legacy: Any,
    plan: MigrationPlan,
    *,
    now: datetime,
    history_entities: int,
) -> dict[str, int]:
    """Daily snapshots per group over its backfill window, for the first ``history_entities`` entities.

    ``events`` and ``legacy`` are autocommit psycopg connections (possibly the same database).
    Computed in the event log (COPY out, binary) and loaded into the legacy store (COPY in).
    """
    from psycopg import sql

    from airflow_fsmigration.plan.graph import compute_waves

    events.execute("SET TimeZone = 'UTC'")
    legacy.execute("SET TimeZone = 'UTC'")
    limits = _sample_limits(events, history_entities)
    samples: dict[tuple[str, str], str] = {}
    counts: dict[str, int] = {}
    for name in compute_waves(plan).order:
        g = plan.groups[name]
        key = g.entity_key
        if key not in ENTITY_TABLES:
            raise ValueError(
                f"group '{name}': the demo generator knows entity keys {sorted(ENTITY_TABLES)}, not '{key}'"
            )
        table_map = {}
        for raw in sorted(_raw_tables(as_of_sql(plan, name, "d.as_of"))):
            table_map[raw] = _sample_table(events, raw, key, limits[key], samples)
        inner = as_of_sql(plan, name, "d.as_of", table_map)
        schema, table = _split(g.legacy_offline.table)
        ent, ts_col = _entity_column(g), g.legacy_offline.event_time_column
        columns = [
            sql.SQL("{} text NOT NULL").format(sql.Identifier(ent)),
            sql.SQL("{} timestamptz NOT NULL").format(sql.Identifier(ts_col)),
        ]
        columns += [
            sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(PG_TYPES[str(f.dtype)]))
            for f in g.features
        ]
        target = sql.Identifier(schema, table)
        legacy.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        legacy.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
        legacy.execute(
            sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}, {}))").format(
                target, sql.SQL(", ").join(columns), sql.Identifier(ent), sql.Identifier(ts_col)
            )
        )
        snapshots = max(1, int(g.backfill_window.total_seconds() // 86400))
        last = _day(now)
        first = last - timedelta(days=snapshots - 1)
        select = [sql.SQL("q.{}::text").format(sql.Identifier(key)), sql.SQL("d.as_of")]
        select += [
            sql.SQL("q.{}::{}").format(sql.Identifier(f.name), sql.SQL(PG_TYPES[str(f.dtype)]))
            for f in g.features
        ]
        query = sql.SQL(
            "COPY (SELECT {} FROM generate_series({}::timestamptz, {}::timestamptz, interval '1 day') AS d(as_of) "
            "CROSS JOIN LATERAL ({}) AS q) TO STDOUT (FORMAT BINARY)"
        ).format(sql.SQL(", ").join(select), sql.Literal(first), sql.Literal(last), sql.SQL(inner))
        load = sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(target)
        t0 = time.perf_counter()
        with events.cursor().copy(query) as out, legacy.cursor().copy(load) as into:
            for chunk in out:
                into.write(chunk)
        rows = legacy.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
        legacy.execute(sql.SQL("ANALYZE {}").format(target))
        counts[g.legacy_offline.table] = rows
        took = time.perf_counter() - t0
        log.info(
            "legacy history %s: %s rows (%d daily snapshots %s .. %s) in %.1fs",
            g.legacy_offline.table,
            f"{rows:,}",
            snapshots,
            first.date(),
            last.date(),
            took,
        )
    return counts


def _sample_limits(conn: Any, history_entities: int) -> dict[str, int]:
    """Entities per kind in the history: ``history_entities`` users, the same share of the others (>= 20)."""
    from psycopg import sql

    totals = {
        key: conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*_split(table)))
        ).fetchone()[0]
        for key, table in ENTITY_TABLES.items()
    }
    share = min(1.0, history_entities / max(totals["user_id"], 1))
    return {key: max(min(20, n), round(n * share)) for key, n in totals.items()}


def _sample_table(conn: Any, raw: str, key: str, limit: int, cache: dict[tuple[str, str], str]) -> str:
    """A temp copy of ``raw`` restricted to the first ``limit`` entities of kind ``key``.

    A table without the entity column is used whole (still correct, only slower).
    """
    from psycopg import sql

    if (raw, key) in cache:
        return cache[(raw, key)]
    schema, name = _split(raw)
    has = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s AND column_name = %s",
        (schema, name, key),
    ).fetchone()
    if not has:
        cache[(raw, key)] = raw
        return raw
    master_schema, master = _split(ENTITY_TABLES[key])
    total = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(master_schema, master))
    ).fetchone()[0]
    if total <= limit:  # the sample is everything: the indexed raw table is faster than a copy
        cache[(raw, key)] = raw
        return raw
    temp = f"sample_{name}_by_{key}"
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(temp)))
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {t} AS SELECT r.* FROM {raw} AS r WHERE r.{k} IN "
            "(SELECT m.{k} FROM {master} AS m ORDER BY m.{k} LIMIT {n})"
        ).format(
            t=sql.Identifier(temp),
            raw=sql.Identifier(schema, name),
            k=sql.Identifier(key),
            master=sql.Identifier(master_schema, master),
            n=sql.Literal(limit),
        )
    )
    time_columns = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
        "AND data_type LIKE 'timestamp%%'",
        (schema, name),
    ).fetchall()
    for (column,) in time_columns:
        conn.execute(sql.SQL("CREATE INDEX ON {} ({})").format(sql.Identifier(temp), sql.Identifier(column)))
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(temp)))
    cache[(raw, key)] = f"pg_temp.{temp}"
    return cache[(raw, key)]


# --- the legacy online store ---------------------------------------------------------------------


def iter_as_of(
    conn: Any, plan: MigrationPlan, group: str, as_of: datetime, batch: int = 10_000
) -> Iterator[list[dict[str, Any]]]:
    """Rows of a group's correct definition as of ``as_of`` (upstreams inlined), in batches."""
    from psycopg.rows import dict_row

    query = as_of_sql(plan, group, "%(as_of)s")
    with conn.transaction(), conn.cursor(name=f"demo_{group}", row_factory=dict_row) as cur:
        cur.itersize = batch
        cur.execute(query, {"as_of": as_of})
        while rows := cur.fetchmany(batch):
            yield rows


def materialize_as_of(conn: Any, plan: MigrationPlan, as_of: datetime) -> dict[str, str]:
    """Every group's correct values as of ``as_of`` in a temp table, upstream first; group -> table.

    A derived group reads its upstreams' temp tables instead of recomputing them inline: the same
    values (both are "as of ``as_of``"), computed once.
    """
    from psycopg import sql

    from airflow_fsmigration.plan.graph import compute_waves

    tables: dict[str, str] = {}
    for name in compute_waves(plan).order:
        t0 = time.perf_counter()
        temp = f"online_{name}"
        upstream = {plan.view_name(up): tables[up] for up in plan.groups[name].depends_on if up in tables}
        query = bind_definition(plan.definition_sql(name), "%(as_of)s::timestamptz", upstream)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(temp)))
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} AS ").format(sql.Identifier(temp)) + sql.SQL(query),
            {"as_of": as_of},
        )
        tables[name] = f"pg_temp.{temp}"
        log.info("computed %s as of %s in %.1fs", name, as_of.isoformat(), time.perf_counter() - t0)
    return tables


def write_online_store(
    events: Any, client: Any, plan: MigrationPlan, *, now: datetime, batch: int = 5_000, replace: bool = False
) -> dict[str, int]:
    """Write every group's values as of ``now`` into Redis, one hash per entity, pipelined.

    Into an empty database (the generator flushes it first); ``replace`` deletes each hash before
    writing it, so fields of a previous run that are now null do not linger.
    """
    from psycopg import sql
    from psycopg.rows import dict_row

    events.execute("SET TimeZone = 'UTC'")
    tables = materialize_as_of(events, plan, now)
    counts = {}
    for name, g in plan.groups.items():
        t0 = time.perf_counter()
        enc = str(g.legacy_online.encoding)
        template, ts_field = g.legacy_online.key_template, g.legacy_online.timestamp_field
        encoders = [(f.name, value_encoder(str(f.dtype), enc)) for f in g.features]
        written = 0
        with events.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(*tables[name].split("."))))
            while rows := cur.fetchmany(batch):
                pipe = client.pipeline(transaction=False)
                for row in rows:
                    mapping = {}
                    for fname, encode in encoders:
                        v = encode(row[fname])
                        if v is not None:
                            mapping[fname] = v
                    if ts_field:
                        ts = encode_source_ts(row.get("source_ts"), enc)
                        if ts is not None:
                            mapping[ts_field] = ts
                    key = template.format(entity=row[g.entity_key])
                    if replace:
                        pipe.delete(key)
                    if mapping:
                        pipe.hset(key, mapping=mapping)
                pipe.execute()
                written += len(rows)
        counts[name] = written
        took = time.perf_counter() - t0
        log.info(
            "redis %s: %s hashes in %.1fs (%.0f/s)", template, f"{written:,}", took, written / max(took, 1e-6)
        )
    for table in tables.values():
        events.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(*table.split("."))))
    return counts


# --- the new store -------------------------------------------------------------------------------


def deploy_new_store(conn: Any, plan: MigrationPlan) -> list[str]:
    """Create the plan's live views in the new store (schema ``plan.new_store.schema``), upstream first."""
    from psycopg import sql

    from airflow_fsmigration.plan.definitions import render_live
    from airflow_fsmigration.plan.graph import compute_waves

    order = compute_waves(plan).order
    schema = plan.new_store.schema_name
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    for name in reversed(order):
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {} CASCADE").format(sql.Identifier(schema, name)))
    for name in order:
        conn.execute(
            sql.SQL("CREATE VIEW {} AS {}").format(
                sql.Identifier(schema, name), sql.SQL(render_live(plan.definition_sql(name)))
            )
        )
    log.info("deployed %d views in the new store schema '%s'", len(order), schema)
    return [plan.view_name(n) for n in order]


def freeze_clock(conn: Any, now: datetime) -> None:
    """Make ``now()`` in the event-log database return the demo's logical now.

    The legacy stores were computed as of ``now``; the new store's live views use ``now()``. With
    the clock frozen, both are read at the same logical time however long after generation the
    demo runs (and reruns reuse the data). It works by name resolution: the database's
    ``search_path`` puts schema ``demo_clock`` before ``pg_catalog``, so an unqualified ``now()``
    in a view created afterwards is ``demo_clock.now()``. Demo only: never do this to a real store.
    """
    from psycopg import sql

    dbname = conn.execute("SELECT current_database()").fetchone()[0]
    conn.execute("CREATE SCHEMA IF NOT EXISTS demo_clock")
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION demo_clock.now() RETURNS timestamptz LANGUAGE sql STABLE AS {}"
        ).format(sql.Literal(f"SELECT {sql.Literal(now.isoformat()).as_string(conn)}::timestamptz"))
    )
    conn.execute(
        sql.SQL('ALTER DATABASE {} SET search_path = demo_clock, pg_catalog, "$user", public').format(
            sql.Identifier(dbname)
        )
    )
    conn.execute('SET search_path = demo_clock, pg_catalog, "$user", public')
    log.info("event-log clock frozen at %s (demo only): the new store's now() is the legacy stores' now", now)


# --- model metrics ----------------------------------------------------------------------------

# A plausible steady level per model: (AUC, precision at the decision threshold).
MODEL_BASELINES = {
    "fraud_gbdt_v7": (0.942, 0.81),
    "fraud_rules_shadow": (0.874, 0.66),
    "account_takeover_v3": (0.911, 0.74),
    "merchant_risk_v2": (0.853, 0.62),
    "recs_ranker_v12": (0.781, 0.35),
    "recs_candidate_gen_v4": (0.743, 0.28),
}


def write_model_metrics(
    conn: Any, plan: MigrationPlan, *, end: datetime, days: int = 7, seed: float = 0.42
) -> int:
    """Hourly AUC and precision-at-threshold per model over ``days`` before ``end``: the pre-ramp
    baseline the bake gates compare against (``fsmig.model_metrics`` of the model-metrics database).
    """
    import random

    from airflow_fsmigration.gates.metrics import AUC, PRECISION, ensure_metrics_schema

    ensure_metrics_schema(conn)
    rng = random.Random(seed)
    rows = []
    for model in sorted({m for g in plan.groups.values() for m in g.models} | set(plan.models)):
        auc, precision = MODEL_BASELINES.get(model, (0.8, 0.5))
        for hour in range(days * 24):
            ts = end - timedelta(hours=days * 24 - hour)
            rows.append((model, AUC, round(auc + rng.gauss(0, 0.002), 5), ts))
            rows.append((model, PRECISION, round(precision + rng.gauss(0, 0.004), 5), ts))
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM fsmig.model_metrics WHERE ts <= %s", (end,))
        with cur.copy("COPY fsmig.model_metrics (model, metric, value, ts) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    log.info(
        "model metrics: %d hourly points for %d models (pre-ramp baseline)",
        len(rows),
        len(rows) // (days * 48),
    )
    return len(rows)


# --- all of it -----------------------------------------------------------------------------------


def connection_urls(
    plan: MigrationPlan, *, events_url: str, legacy_url: str, registry_url: str, redis_url: str
) -> dict[str, str]:
    """Connection id -> URL for every connection of the plan."""
    c = plan.connections
    return {
        c.legacy_online: redis_url,
        c.legacy_offline: legacy_url,
        c.event_log: events_url,
        c.new_store: events_url,
        c.registry: registry_url,
        c.model_metrics: registry_url,
    }


def generate_demo(
    events_url: str,
    legacy_url: str,
    registry_url: str,
    redis_url: str,
    plan: MigrationPlan,
    *,
    entities: int = 100_000,
    days: int = 90,
    seed: float = 0.42,
    now: datetime | None = None,
    history_entities: int = 2_000,
    plan_dir: str | Path | None = None,
    inject_bug: bool = True,
    purge: bool = True,
    deploy: bool = False,
    frozen_clock: bool = True,
) -> DemoEnvironment:
    """Generate the whole demo world for ``plan`` (the correct demo plan) and return how to reach it.

    :param entities: users; merchants are 1/50 and items 1/20 of it.
    :param days: at most this many days of raw events, ending ``now``.
    :param seed: ``setseed`` value in [-1, 1]; the same seed, sizes and ``now`` give the same data.
    :param now: the logical "now" of the legacy stores (default: the current time, whole seconds).
    :param history_entities: entities per kind in the legacy offline history.
    :param plan_dir: where to write the plan the demo migrates (default: a temp folder).
    :param inject_bug: swap the buggy ``user_session_stats`` into that plan copy.
    :param purge: apply the declared retention to the raw tables afterwards.
    :param deploy: also create the new store's views from the (buggy) plan copy.
    :param frozen_clock: freeze ``now()`` in the event-log database at ``now`` (:func:`freeze_clock`).
    """
    import psycopg
    import redis

    if not -1.0 <= seed <= 1.0:
        raise ValueError(f"seed must be in [-1, 1] (Postgres setseed), got {seed}")
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    target_dir = Path(plan_dir) if plan_dir else Path(tempfile.mkdtemp(prefix="fsmig_demo_plan_"))
    bug = write_demo_plan(plan.source_dir, target_dir, inject_bug=inject_bug)

    with psycopg.connect(events_url, autocommit=True) as events:
        t0 = time.perf_counter()
        raw_counts = generate_raw(events, plan, entities=entities, days=days, seed=seed, now=now)
        timings["raw_events"] = time.perf_counter() - t0
        counts.update({f"raw.{k}": v for k, v in raw_counts.items()})

        t0 = time.perf_counter()
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushdb()
            online = write_online_store(events, client, plan, now=now)
        finally:
            client.close()
        timings["legacy_online"] = time.perf_counter() - t0
        counts.update({f"redis:{k}": v for k, v in online.items()})

        t0 = time.perf_counter()
        with psycopg.connect(legacy_url, autocommit=True) as legacy:
            history = write_legacy_history(events, legacy, plan, now=now, history_entities=history_entities)
        timings["legacy_offline"] = time.perf_counter() - t0
        counts.update(history)

        if purge:
            t0 = time.perf_counter()
            for table, n in purge_to_retention(events, plan, now=now).items():
                counts[f"purged:{table}"] = n
            timings["purge"] = time.perf_counter() - t0
        if frozen_clock:
            freeze_clock(events, now)
        if deploy:
            from airflow_fsmigration.plan import load_plan

            deploy_new_store(events, load_plan(target_dir))

    with psycopg.connect(registry_url, autocommit=True) as metrics:
        counts["model_metrics"] = write_model_metrics(metrics, plan, end=now, seed=seed)

    urls = connection_urls(
        plan, events_url=events_url, legacy_url=legacy_url, registry_url=registry_url, redis_url=redis_url
    )
    from fsmig_dev.devservices import airflow_conn_env

    env: dict[str, str] = {}
    for conn_id, url in urls.items():
        env.update(airflow_conn_env(conn_id, url))
    return DemoEnvironment(
        plan_dir=target_dir,
        now=now,
        urls=urls,
        conn_env=env,
        bug=bug,
        entities={
            "user_id": entities,
            "merchant_id": max(20, entities // 50),
            "item_id": max(50, entities // 20),
        },
        counts=counts,
        timings=timings,
    )
