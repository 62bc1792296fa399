"""SQL of a backfill: the definition as of a time, the chunk statements, their checksums, the bounds.

Every statement is built from the very SQL text of the live view (:func:`as_of_sql`, which binds
``:as_of`` to a column and inlines upstream groups as of the same time), so a backfill can never
compute a feature differently from the view. The entity filter of per-label evaluation lives in
:mod:`.pushdown`. Nothing here writes checkpoints or runs chunks (:mod:`.checkpoints`, :mod:`.replay`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from airflow_fsmigration.backfill.pushdown import AS_OF_MARK, entity_filtered_sql

if TYPE_CHECKING:
    from psycopg import sql as psql

    from airflow_fsmigration.plan.model import MigrationPlan

__all__ = [
    "BackfillError",
    "Mode",
    "SpineSpec",
    "Strategy",
    "as_of_sql",
    "binary_hashable",
    "definition_columns",
    "detect_spine",
    "ensure_output_table",
    "entity_filtered_sql",
    "grid_insert_sql",
    "grid_times",
    "lock_key",
    "output_table_name",
    "spine_chunks",
    "spine_insert_sql",
    "spine_select_sql",
]

Mode = Literal["grid", "spine"]
SPLIT_MIN_LABELS = 5_000  # a spine is cut into more chunks than its size asks only down to this
Strategy = Literal["auto", "lateral", "per_timestamp", "set"]


class BackfillError(RuntimeError):
    """A backfill cannot start or go on; the message names the group and what to do."""


@dataclass(frozen=True)
class SpineSpec:
    """A label spine: a table of (entity, timestamp) rows in the new store."""

    table: str
    entity_column: str
    time_column: str


def _ident(name: str) -> psql.Identifier:
    from psycopg import sql

    return sql.Identifier(*name.split("."))


def output_table_name(plan: MigrationPlan, group: str, mode: Mode) -> str:
    suffix = "snapshots" if mode == "grid" else "labels"
    return f"{plan.new_store.schema_name}_history.{group}_{suffix}"


def definition_columns(plan: MigrationPlan, group: str) -> list[str]:
    """The columns a backfill keeps: the entity key, every plan feature, and ``source_ts`` if selected."""
    from airflow_fsmigration.plan.definitions import output_columns

    g = plan.groups[group]
    selected = output_columns(plan.definition_sql(group))
    wanted = [g.entity_key, *g.feature_names]
    if selected is not None:
        missing = [c for c in wanted if c not in selected]
        if missing:
            raise BackfillError(
                f"group '{group}': definition {plan.definition_path(group)} does not select "
                f"{', '.join(missing)}; the plan's features must be columns of the definition"
            )
        if "source_ts" in selected:
            wanted.append("source_ts")
    return wanted


def as_of_sql(plan: MigrationPlan, group: str, column: str) -> str:
    """The definition with ``:as_of`` bound to a column reference (``%`` escaped for psycopg)."""
    from airflow_fsmigration.plan.definitions import render_as_of

    # a trailing newline, so a definition ending in a -- comment cannot swallow the closing parenthesis
    return render_as_of(plan, group, param=AS_OF_MARK).replace(AS_OF_MARK, column) + "\n"


def _cols(names: Sequence[str], prefix: str | None = None) -> psql.Composed:
    from psycopg import sql

    if prefix:
        return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _row_hash(names: Sequence[str], prefix: str, binary: bool = False) -> psql.Composed:
    """A 64-bit hash of a row, order-independent when summed.

    ``binary``: ``hash_record_extended`` over the values' own hash functions (no text output;
    measured ~40% cheaper, and independent of the session's TimeZone); otherwise
    ``hashtextextended(ROW(..)::text)``, which works for any type.
    """
    from psycopg import sql

    if binary:
        return sql.SQL("hash_record_extended(ROW({}), 0)").format(_cols(names, prefix))
    return sql.SQL("hashtextextended(ROW({})::text, 0)").format(_cols(names, prefix))


def binary_hashable(conn: Any, table: str) -> bool:
    """Whether every column of ``table`` has a default hash operator class (so records hash binary)."""
    row = conn.execute(
        "SELECT coalesce(bool_and(EXISTS (SELECT 1 FROM pg_opclass AS o JOIN pg_am AS m ON m.oid = o.opcmethod"
        "   WHERE m.amname = 'hash' AND o.opcdefault AND (o.opcintype = a.atttypid"
        "   OR (o.opcintype = 'text'::regtype AND a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype))))), false)"
        " FROM pg_attribute AS a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        (_ident(table).as_string(None),),
    ).fetchone()
    return bool(row and row[0])


def grid_insert_sql(plan: MigrationPlan, group: str, table: str, binary: bool = False) -> psql.Composed:
    """Insert the snapshots at ``%(times)s`` and return (rows, checksum) of what was inserted."""
    from psycopg import sql

    cols = definition_columns(plan, group)
    body = sql.SQL(as_of_sql(plan, group, "fsmig_g.as_of"))  # type: ignore[arg-type]
    return sql.SQL(
        "WITH ins AS (INSERT INTO {t} (run_id, as_of, {cols})"
        " SELECT %(run_id)s, fsmig_g.as_of, {dcols}"
        " FROM unnest(%(times)s::timestamptz[]) AS fsmig_g(as_of) CROSS JOIN LATERAL ({body}) AS fsmig_d"
        " RETURNING as_of, {cols})"
        " SELECT count(*), coalesce(sum({h}), 0) FROM ins"
    ).format(
        t=_ident(table),
        cols=_cols(cols),
        dcols=_cols(cols, "fsmig_d"),
        body=body,
        h=_row_hash(["as_of", *cols], "ins", binary),
    )


def spine_select_sql(
    plan: MigrationPlan, group: str, spine: SpineSpec, strategy: str, *, found: bool = False
) -> psql.Composed:
    """SELECT (label_ts, entity, features) for the labels with ``%(lo)s <= ts < %(hi)s``.

    Aliases carry a ``fsmig_`` prefix so they never collide with the definition's own. With
    ``found``, a last column ``fsmig_found`` is true when the definition returned the entity at
    that time (null when the label only survived the LEFT JOIN).
    """
    from psycopg import sql

    g = plan.groups[group]
    cols = definition_columns(plan, group)
    feats = [c for c in cols if c != g.entity_key]
    s_ts = sql.Identifier("fsmig_s", spine.time_column)
    s_ent = sql.Identifier("fsmig_s", spine.entity_column)
    ts_ref = s_ts.as_string(None)
    where = sql.SQL("{ts} >= %(lo)s AND {ts} < %(hi)s").format(ts=s_ts)
    common = {
        "ts": s_ts,
        "ent": s_ent,
        "key": sql.Identifier(g.entity_key),
        "dcols": _cols([*feats, "fsmig_found"] if found else feats, "fsmig_d"),
        "spine": _ident(spine.table),
        "where": where,
    }
    if strategy == "lateral":
        body = entity_filtered_sql(plan, group, ts_ref, s_ent.as_string(None))
        return sql.SQL(
            "SELECT {ts} AS label_ts, {ent} AS {key}, {dcols} FROM {spine} AS fsmig_s"
            " LEFT JOIN LATERAL (SELECT *, true AS fsmig_found FROM ({body}) AS fsmig_d0 WHERE {d0key} = {ent})"
            " AS fsmig_d ON true"
            " WHERE {where}"
        ).format(body=sql.SQL(body), d0key=sql.Identifier("fsmig_d0", g.entity_key), **common)  # type: ignore[arg-type]
    if strategy == "per_timestamp":
        body = as_of_sql(plan, group, "fsmig_g.fsmig_ts")
        return sql.SQL(
            "SELECT {ts} AS label_ts, {ent} AS {key}, {dcols} FROM {spine} AS fsmig_s"
            " LEFT JOIN (SELECT fsmig_g.fsmig_ts, fsmig_d0.*, true AS fsmig_found FROM (SELECT DISTINCT {ts} AS fsmig_ts"
            " FROM {spine} AS fsmig_s WHERE {where}) AS fsmig_g CROSS JOIN LATERAL ({body}) AS fsmig_d0) AS fsmig_d"
            " ON fsmig_d.fsmig_ts = {ts} AND {dkey} = {ent}"
            " WHERE {where}"
        ).format(body=sql.SQL(body), dkey=sql.Identifier("fsmig_d", g.entity_key), **common)  # type: ignore[arg-type]
    if strategy == "set":
        from airflow_fsmigration.backfill.setbased import LABELS_MARK, lifted_sql

        lifted = lifted_sql(plan, group, found=found)
        if lifted is None:
            raise ValueError(f"group '{group}': its definition cannot be evaluated as a set")
        labels = sql.SQL(
            "(SELECT DISTINCT {ent} AS fsmig_e, {ts} AS fsmig_ts FROM {spine} AS fsmig_s WHERE {where})"
        ).format(**common)
        # the label relation replaces each of its markers (a name the lifted SQL renders bare)
        parts: list[psql.Composable] = []
        for i, part in enumerate(lifted.split(LABELS_MARK)):
            parts += [labels, sql.SQL(part)] if i else [sql.SQL(part)]  # type: ignore[arg-type]
        return sql.SQL(
            "SELECT {ts} AS label_ts, {ent} AS {key}, {dcols} FROM {spine} AS fsmig_s"
            " LEFT JOIN ({body}\n) AS fsmig_d ON fsmig_d.fsmig_e = {ent} AND fsmig_d.fsmig_ts = {ts}"
            " WHERE {where}"
        ).format(body=sql.Composed(parts), **common)
    raise ValueError(f"unknown spine strategy {strategy!r}: use lateral, per_timestamp or set")


def spine_insert_sql(
    plan: MigrationPlan, group: str, spine: SpineSpec, table: str, strategy: str, binary: bool = False
) -> psql.Composed:
    from psycopg import sql

    cols = ["label_ts", *definition_columns(plan, group)]
    return sql.SQL(
        "WITH ins AS (INSERT INTO {t} (run_id, {cols}) SELECT %(run_id)s, {qcols} FROM ({sel}) AS q"
        " RETURNING {cols}) SELECT count(*), coalesce(sum({h}), 0) FROM ins"
    ).format(
        t=_ident(table),
        cols=_cols(cols),
        qcols=_cols(cols, "q"),
        sel=spine_select_sql(plan, group, spine, strategy),
        h=_row_hash(cols, "ins", binary),
    )


def ensure_output_table(conn: Any, plan: MigrationPlan, group: str, mode: Mode, table: str) -> None:
    """Create the output table (typed by the definition itself) and its (run_id, time) index."""
    from psycopg import sql

    cols = definition_columns(plan, group)
    time_col = "as_of" if mode == "grid" else "label_ts"
    schema, name = table.split(".")
    body = sql.SQL(as_of_sql(plan, group, "NULL::timestamptz").replace("%%", "%"))  # type: ignore[arg-type]
    with conn.transaction():
        # two runs starting at once would race on CREATE ... IF NOT EXISTS (a duplicate-key error)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("output-table", table),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {t} AS SELECT ''::text AS run_id, NULL::timestamptz AS {tc}, {dcols}"
                " FROM ({body}) AS fsmig_d WITH NO DATA"
            ).format(t=_ident(table), tc=sql.Identifier(time_col), dcols=_cols(cols, "fsmig_d"), body=body)
        )
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (run_id, {tc})").format(
                i=sql.Identifier(f"{name}_run_time_idx"), t=_ident(table), tc=sql.Identifier(time_col)
            )
        )


# ---------------------------------------------------------------------------------------------
# the chunk plan's bounds


def grid_times(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    """``start, start + every, ...`` up to and including ``end``."""
    if every <= timedelta(0):
        raise BackfillError(f"--every must be positive, got {every}")
    count = int((end - start) / every) + 1
    return [start + i * every for i in range(count) if start + i * every <= end]


def detect_spine(conn: Any, plan: MigrationPlan, group: str, table: str, entity_column: str | None,
                 time_column: str | None) -> SpineSpec:  # fmt: skip
    """Resolve the spine's entity and time columns (defaults: the group's entity key, the one timestamp column)."""
    parts = table.split(".")
    schema, name = (parts[0], parts[1]) if len(parts) == 2 else ("public", parts[0])
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
        (schema, name),
    ).fetchall()
    if not rows:
        raise BackfillError(f"spine table {table} does not exist in the new store (group '{group}')")
    types = dict(rows)
    entity = entity_column or plan.groups[group].entity_key
    if entity not in types:
        raise BackfillError(
            f"spine table {table} has no column {entity!r}; pass --spine-entity-column (columns: {', '.join(types)})"
        )
    if time_column is None:
        stamps = [c for c, t in rows if t.startswith("timestamp")]
        if len(stamps) != 1:
            raise BackfillError(
                f"spine table {table}: cannot tell the label time column among {stamps or 'no timestamp columns'}; "
                "pass --spine-time-column"
            )
        time_column = stamps[0]
    elif time_column not in types:
        raise BackfillError(f"spine table {table} has no column {time_column!r}")
    return SpineSpec(table=f"{schema}.{name}", entity_column=entity, time_column=time_column)


def spine_chunks(
    conn: Any, spine: SpineSpec, chunk_labels: int, min_parts: int = 1
) -> list[tuple[datetime, datetime, int]]:
    """Time ranges of about ``chunk_labels`` labels each, cut at label-time quantiles (one sort).

    At least ``min_parts`` ranges when there are ``SPLIT_MIN_LABELS`` labels per part, so
    parallel workers share a spine smaller than two chunks.
    """
    from psycopg import sql

    ts = sql.Identifier(spine.time_column)
    n, lo, hi = conn.execute(
        sql.SQL("SELECT count(*), min({ts}), max({ts}) FROM {t}").format(ts=ts, t=_ident(spine.table))
    ).fetchone()
    if not n:
        return []
    parts = max(1, math.ceil(n / chunk_labels), min(min_parts, n // SPLIT_MIN_LABELS))
    cuts: list[datetime] = []
    if parts > 1:
        fractions = [i / parts for i in range(1, parts)]
        (cuts,) = conn.execute(
            sql.SQL("SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY {ts}) FROM {t}").format(
                ts=ts, t=_ident(spine.table)
            ),
            (fractions,),
        ).fetchone()
    bounds = sorted({_utc(lo), *(_utc(c) for c in cuts)})
    bounds.append(_utc(hi) + timedelta(microseconds=1))
    return [(a, b, 0) for a, b in itertools.pairwise(bounds)]


def lock_key(*parts: object) -> int:
    """A signed 64-bit advisory lock key for ``parts`` (stable across processes and versions)."""
    digest = hashlib.blake2b(":".join(["fsmig-backfill", *map(str, parts)]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
