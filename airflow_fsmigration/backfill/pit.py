"""Point-in-time validation: does the new definition, evaluated as of a past time, give what the
old offline store recorded at that time?

Pairs are sampled from the old store's own history (an entity and one of its recorded event
times, so the old value at that time is known exactly), or for caller-given times from its
entities. The new side evaluates the group definition in the new store as of each pair's time,
with the same per-label SQL as a spine backfill (:func:`replay.spine_select_sql`), so what is
validated is exactly what a backfill would write. Both sides go through the comparison engine
(tolerances, null policies, explanations) with streaming lag disabled: at a fixed past time
there is no lag to excuse. Rows are keyed ``entity@time`` so samples name both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.replay import (
    SpineSpec,
    _ident,
    as_of_sql,
    spine_select_sql,
)
from airflow_fsmigration.backfill.retention import iso_utc
from airflow_fsmigration.backfill.strategy import session_settings

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.compare.engine import ComparisonResult
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.backfill")
_SPINE = "fsmig_pit_spine"


@dataclass
class PitResult:
    """Consistency of the new definition with the old store's history at sampled points in time."""

    group: str
    pairs: int
    times: list[datetime]
    comparison: ComparisonResult

    @property
    def consistency(self) -> float | None:
        return self.comparison.match_rate

    @property
    def verdict(self) -> str:
        return str(self.comparison.verdict)

    @property
    def summary(self) -> str:
        rate = self.consistency
        return (
            f"point-in-time validation of '{self.group}': {self.verdict.upper()}, "
            f"{'n/a' if rate is None else f'{rate:.4%}'} of values agree over {self.pairs} (entity, time) pairs "
            f"at {len(self.times)} times"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "pairs": self.pairs,
            "times": [iso_utc(t) for t in self.times],
            "consistency": self.consistency,
            "verdict": self.verdict,
            "summary": self.summary,
            "comparison": self.comparison.to_dict(),
        }


def sample_pairs(
    offline_conn: Any,
    plan: MigrationPlan,
    group: str,
    *,
    sample_size: int,
    n_times: int = 10,
    seed: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[tuple[str, datetime]]:
    """(entity, time) pairs from the old history table: ``n_times`` recorded times, entities at each.

    Deterministic for a seed (hash ordering, not ``random()``), so a failing check can be re-run.
    """
    from psycopg import sql

    g = plan.groups[group]
    ent = sql.Identifier(g.legacy_offline.entity_column or g.entity_key)
    ts = sql.Identifier(g.legacy_offline.event_time_column)
    table = _ident(g.legacy_offline.table)
    where = sql.SQL("WHERE {ts} >= %(start)s AND {ts} <= %(end)s").format(ts=ts)
    params = {
        "start": start or datetime(1, 1, 1, tzinfo=UTC),
        "end": end or datetime(9999, 1, 1, tzinfo=UTC),
        "seed": seed,
        "n_times": n_times,
        "per_time": max(1, -(-sample_size // max(1, n_times))),
        "limit": sample_size,
    }
    query = sql.SQL(
        "WITH times AS (SELECT DISTINCT {ts} AS t FROM {table} {where}),"
        " picked AS (SELECT t FROM times ORDER BY hashtextextended(t::text, %(seed)s) LIMIT %(n_times)s),"
        " ranked AS (SELECT CAST(h.{ent} AS text) AS e, h.{ts} AS t, row_number() OVER ("
        "   PARTITION BY h.{ts} ORDER BY hashtextextended(CAST(h.{ent} AS text), %(seed)s)) AS r"
        "   FROM {table} AS h JOIN picked AS p ON h.{ts} = p.t)"
        " SELECT e, t FROM ranked WHERE r <= %(per_time)s ORDER BY t, e LIMIT %(limit)s"
    ).format(ts=ts, ent=ent, table=table, where=where)
    with offline_conn.transaction():
        offline_conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = offline_conn.execute(query, params).fetchall()
    return [(str(e), t.astimezone(UTC)) for e, t in rows]


def new_values_as_of(
    store_conn: Any, plan: MigrationPlan, group: str, pairs: Sequence[tuple[str, datetime]]
) -> pa.Table:
    """The new definition's values for each (entity, time) pair, as a frame keyed ``entity@time``.

    A pair whose entity the definition does not return at that time is absent (a missing key),
    not a row of nulls.
    """
    import pyarrow as pa
    from psycopg import sql

    from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, conform

    g = plan.groups[group]
    body = sql.SQL(as_of_sql(plan, group, "NULL::timestamptz").replace("%%", "%"))  # type: ignore[arg-type]
    spine = SpineSpec(_SPINE, "entity", "ts")
    with store_conn.transaction():
        store_conn.execute("SET LOCAL TimeZone = 'UTC'")
        session_settings(store_conn, "lateral")  # the planner settings of a spine backfill's chunk
        store_conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(_SPINE)))
        store_conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {s} ON COMMIT DROP AS SELECT fsmig_d.{k} AS entity, NULL::timestamptz AS ts"
                " FROM ({body}) AS fsmig_d WITH NO DATA"
            ).format(s=sql.Identifier(_SPINE), k=sql.Identifier(g.entity_key), body=body)
        )
        (key_type,) = store_conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = 'entity'",
            (f"pg_temp.{_SPINE}",),
        ).fetchone()
        store_conn.execute(
            sql.SQL(
                "INSERT INTO {s} SELECT CAST(e AS {kt}), t FROM unnest(%s::text[], %s::timestamptz[]) AS u(e, t)"
            ).format(s=sql.Identifier(_SPINE), kt=sql.SQL(key_type)),
            ([e for e, _ in pairs], [t for _, t in pairs]),
        )
        store_conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(_SPINE)))
        query = spine_select_sql(plan, group, spine, "lateral", found=True)
        lo = min(t for _, t in pairs)
        hi = max(t for _, t in pairs) + timedelta(microseconds=1)
        with store_conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT * FROM ({q}) AS fsmig_q WHERE fsmig_found").format(q=query),
                {"lo": lo, "hi": hi},
            )
            names = [d.name for d in cur.description]
            rows = cur.fetchall()
    data: dict[str, list[Any]] = {n: [] for n in names}
    for row in rows:
        for n, v in zip(names, row, strict=True):
            data[n].append(float(v) if _is_decimal(v) else v)
    keys = [f"{e}@{iso_utc(t)}" for e, t in zip(data[g.entity_key], data["label_ts"], strict=True)]
    columns: dict[str, Any] = {ENTITY: pa.array(keys, pa.string())}
    for f in g.feature_names:
        columns[f] = pa.array(data[f]) if rows else pa.nulls(0)
    if "source_ts" in data:
        columns[SOURCE_TS] = pa.array(data["source_ts"], pa.timestamp("us", tz="UTC"))
    return conform(pa.table(columns), g)


def _is_decimal(value: Any) -> bool:
    from decimal import Decimal

    return isinstance(value, Decimal)


def old_values_as_of(offline: Any, group: str, pairs: Sequence[tuple[str, datetime]]) -> pa.Table:
    """The old store's history value for each pair (latest row at or before its time), keyed ``entity@time``."""
    import pyarrow as pa

    from airflow_fsmigration.stores.frames import ENTITY

    by_time: dict[datetime, list[str]] = {}
    for e, t in pairs:
        by_time.setdefault(t, []).append(e)
    parts = []
    for t, ids in sorted(by_time.items()):
        frame = offline.read_as_of(group, ids, t)
        keys = pa.array([f"{e}@{iso_utc(t)}" for e in frame.column(ENTITY).to_pylist()], pa.string())
        parts.append(frame.set_column(frame.schema.get_field_index(ENTITY), ENTITY, keys))
    return pa.concat_tables(parts)


def validate_point_in_time(
    plan: MigrationPlan,
    group: str,
    store_conn: Any,
    offline: Any,
    *,
    offline_conn: Any | None = None,
    pairs: Sequence[tuple[str, datetime]] | None = None,
    sample_size: int = 1000,
    n_times: int = 10,
    seed: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
) -> PitResult:
    """Compare the new system's as-of values with the old offline store's at sampled (entity, time) pairs.

    ``offline`` is a :class:`~airflow_fsmigration.stores.postgres_offline.PostgresOfflineSource`;
    pairs are sampled from its history table through ``offline_conn`` (a psycopg connection to
    the same database, opened from ``offline.url`` when not given) unless ``pairs`` are passed.
    No pair at all is inconclusive, never a pass.
    """
    from airflow_fsmigration.compare.engine import ComparisonAccumulator

    g = plan.groups[group]
    if pairs is None:
        own = offline_conn is None
        if own:
            import psycopg

            offline_conn = psycopg.connect(offline.url, autocommit=True)
        try:
            pairs = sample_pairs(
                offline_conn,
                plan,
                group,
                sample_size=sample_size,
                n_times=n_times,
                seed=seed,
                start=start,
                end=end,
            )
        finally:
            if own and offline_conn is not None:
                offline_conn.close()
    pairs = [(str(e), t.astimezone(UTC)) for e, t in pairs]
    acc = ComparisonAccumulator(
        g, settings=plan.settings_for(g), staleness=timedelta(0), requested=len(pairs), keep_flags=False
    )
    times = sorted({t for _, t in pairs})
    if not pairs:
        acc.mark_unreadable("old", f"no history rows to sample in {g.legacy_offline.table}")
    else:
        log.info("point-in-time validation of %s: %d pairs at %d times", group, len(pairs), len(times))
        new = new_values_as_of(store_conn, plan, group, pairs)
        old = old_values_as_of(offline, group, pairs)
        acc.add(old, new)
    result = acc.result(logical_time=max(times) if times else None)
    pit = PitResult(group=group, pairs=len(pairs), times=times, comparison=result)
    log.info("%s", pit.summary)
    return pit
