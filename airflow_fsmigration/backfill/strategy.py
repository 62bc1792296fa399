"""How a spine chunk is evaluated, chosen per chunk with the reason logged, and the session it runs in.

Three exact strategies give the same rows (``tests/test_backfill_setbased.py`` holds them to it):

- ``set``: one range join of the chunk's distinct labels with the events, grouped once per label
  (:mod:`.setbased`); only for a definition of the lifted shape (one grouped SELECT over one table).
- ``lateral``: the definition once per label, the label's entity pushed in (:mod:`.pushdown`).
- ``per_timestamp``: the definition once per distinct label time over every entity, joined back;
  the only cheap path when a definition computes across entities, or when a time's labels cover
  the entities anyway.

``auto`` takes ``per_timestamp`` when labels share times densely or the entity filter reaches no
table, else ``set`` when the shape allows it and labels repeat (entity, time) pairs often,
else ``lateral``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.pushdown import filter_reaches_tables
from airflow_fsmigration.backfill.sql import SpineSpec, _ident

if TYPE_CHECKING:
    from airflow_fsmigration.backfill.checkpoints import Chunk
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.backfill")

# a label is evaluated once per label (lateral/set) unless this many labels share a timestamp on average
PER_TIMESTAMP_MIN_LABELS = 50
# ``set`` when at most this share of the labels are distinct (entity, time) pairs. In Postgres
# the set form runs the same index probe per distinct label as the per-label form (its nested
# loop is the range join) plus the joins back: measured 1.0-1.5x the per-label CPU on 100k
# labels over 1M events, so it pays only where it saves evaluations.
SET_MAX_DISTINCT_SHARE = 0.8


def density(conn: Any, spine: SpineSpec, chunk: Chunk) -> tuple[int, int, int]:
    """(labels, distinct times, distinct entities) of the chunk's labels."""
    labels, times, entities, _ = _counts(conn, spine, chunk)
    return labels, times, entities


def _counts(conn: Any, spine: SpineSpec, chunk: Chunk) -> tuple[int, int, int, int]:
    """(labels, distinct times, distinct entities, distinct (entity, time) pairs) of the chunk."""
    from psycopg import sql

    ts, ent = sql.Identifier(spine.time_column), sql.Identifier(spine.entity_column)
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), count(DISTINCT {ts}), count(DISTINCT {ent}), count(DISTINCT ({ent}, {ts}))"
            " FROM {t} WHERE {ts} >= %s AND {ts} < %s"
        ).format(ts=ts, ent=ent, t=_ident(spine.table)),
        (chunk.lo, chunk.hi),
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def dense_times(labels: int, times: int, entities: int) -> bool:
    """One evaluation per distinct time when a time's labels cover a large share of the entities.

    A whole-group evaluation costs about what one per-label evaluation costs for every entity, so
    it pays off only when the labels sharing a time outnumber the entities (measured at 1M events
    with the covering (entity, time) index: 10k labels per daily time over 10k users took 75 us a
    label per label and 120 us an entity per time, so the break-even is ~1.6 labels per entity).
    The spine's distinct entities stand in for the group's.
    """
    return bool(times) and labels / times >= max(PER_TIMESTAMP_MIN_LABELS, 2 * entities)


def choose(
    conn: Any, plan: MigrationPlan, group: str, spine: SpineSpec, chunk: Chunk, requested: str
) -> tuple[str, str]:
    """(strategy, reason) for one chunk; a requested ``set`` the shape cannot take falls back per label."""
    from airflow_fsmigration.backfill.setbased import set_shape

    if requested == "set":
        why = set_shape(plan, group)
        return ("set", "requested") if not why else ("lateral", f"set requested, but {why}")
    if requested != "auto":
        return requested, "requested"
    labels, times, entities, pairs = _counts(conn, spine, chunk)
    if dense_times(labels, times, entities):
        return "per_timestamp", f"{labels / times:,.0f} labels per distinct time over {entities:,} entities"
    if not filter_reaches_tables(plan, group):
        return (
            "per_timestamp",
            "the entity filter cannot be pushed into a table read (it computes across entities)",
        )
    why = set_shape(plan, group)
    if not why and pairs <= SET_MAX_DISTINCT_SHARE * labels:
        return (
            "set",
            f"{labels - pairs:,} of {labels:,} labels repeat an (entity, time): each pair is evaluated once",
        )
    if why:
        return "lateral", f"not set-shaped ({why}); the entity filter reaches the table: one probe per label"
    return "lateral", "labels rarely repeat: per label, the entity filter reaches the table's index"


def session_settings(conn: Any, strategy: str) -> None:
    """Planner settings for a spine statement, local to the caller's transaction.

    - ``enable_presorted_aggregate = off`` (Postgres 16+): otherwise a ``count(DISTINCT x)``
      makes the planner sort each group's rows by ``x`` first, so float sums add up in that
      sort's order, which differs between one sort per label and one per chunk. Off, every
      aggregate sees a label's rows in scan (index) order and a ``DISTINCT`` sorts its own
      input, so ``set`` and ``lateral`` agree bit for bit; it was also 15-25% less CPU here.
    - ``lateral``: ``enable_memoize = off``: Postgres' Memoize node, keyed on (entity, time)
      pairs that almost never repeat in a spine, measured 4-5x slower per label.
    - ``set``: ``enable_hashagg = off``: the labels' nested loop already yields each label's
      rows together; a hash aggregate over them measured 2x slower than the streamed group.
    """
    if int(getattr(conn.info, "server_version", 0) or 0) >= 160000:
        conn.execute("SET LOCAL enable_presorted_aggregate = off")
    if strategy == "lateral":
        conn.execute("SET LOCAL enable_memoize = off")
    elif strategy == "set":
        conn.execute("SET LOCAL enable_hashagg = off")
