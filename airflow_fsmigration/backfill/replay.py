"""Replay a group's definition as of historical times inside the new store, in resumable chunks.

One definition, three uses: the backfill runs the very SQL text of the live view with ``:as_of``
bound to each historical time (:mod:`.sql`). Two shapes:

- **grid**: a snapshot of every entity at ``start, start + every, ... <= end``. Each chunk is a
  run of consecutive snapshot times evaluated by one statement: ``unnest(times) CROSS JOIN
  LATERAL (definition as of fsmig_g.as_of)``.
- **spine**: a label table of (entity, timestamp) rows, the training case. Each label row gets
  exactly what the definition returns for its entity at its timestamp (a LEFT JOIN, so a label
  whose entity the definition does not return keeps its row with null features), never a later
  value: the definition's own ``<= :as_of`` bounds are evaluated at the label's time. Chunks are
  ranges of label time. Per chunk the statement is one range join of the labels with the events
  grouped once per label (``set``, :mod:`.setbased`, for one grouped SELECT over one table), one
  evaluation per label (``lateral``: the entity filter is pushed into the definition where that
  is exact, :mod:`.pushdown`, so an index on the raw table's entity and time serves each label)
  or one evaluation per distinct timestamp joined back to its labels (``per_timestamp``: cheaper
  when many labels share a time); ``auto`` picks per chunk and logs why (:mod:`.strategy`).
  Spine chunks run on two store connections at once by default (:mod:`.parallel`).

Writes are idempotent: a chunk deletes its run's rows in its range and inserts them again in one
transaction, under the chunk's advisory lock, returning its row count and an order-independent
checksum (the sum of a 64-bit hash of each row's text, so chunk checksums add up to the table's).
Checkpoints, the run's owner and heartbeat, and the locks that make starting one run id twice
safe live in :mod:`.checkpoints`. Snapshot times and label times are compared in UTC (each
transaction sets ``TimeZone`` to UTC), so checksums do not depend on the server's zone.

This module is the execution; the names of :mod:`.sql` and :mod:`.checkpoints` stay importable
from here, where callers have always imported them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.checkpoints import (
    COMPONENT,
    MIGRATIONS,
    BackfillRun,
    Chunk,
    RunActiveError,
    chunk_checkpoint,
    claim_run,
    default_run_id,
    ensure_registry,
    load_run,
    lock_chunk,
    mark_chunk_done,
    mark_failed,
    mark_run_done,
    plan_run,
    release_run,
    shares_database,
)
from airflow_fsmigration.backfill.parallel import clone_connection, default_workers, run_parallel
from airflow_fsmigration.backfill.retention import (
    RetentionGapError,
    RetentionReport,
    audit_retention,
    human_duration,
    iso_utc,
)
from airflow_fsmigration.backfill.sql import (
    BackfillError,
    Mode,
    SpineSpec,
    Strategy,
    _ident,
    _row_hash,
    _utc,
    as_of_sql,
    binary_hashable,
    definition_columns,
    detect_spine,
    ensure_output_table,
    entity_filtered_sql,
    grid_insert_sql,
    grid_times,
    output_table_name,
    spine_chunks,
    spine_insert_sql,
    spine_select_sql,
)
from airflow_fsmigration.backfill.strategy import choose as choose_strategy
from airflow_fsmigration.backfill.strategy import (
    session_settings,
)

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

__all__ = [
    "COMPONENT",
    "MIGRATIONS",
    "BackfillError",
    "BackfillResult",
    "BackfillRun",
    "Chunk",
    "ChunkOutcome",
    "Mode",
    "RetentionGapError",
    "RunActiveError",
    "SpineSpec",
    "Strategy",
    "as_of_sql",
    "binary_hashable",
    "default_run_id",
    "definition_columns",
    "detect_spine",
    "ensure_output_table",
    "ensure_registry",
    "entity_filtered_sql",
    "execute_chunk",
    "execute_run",
    "grid_insert_sql",
    "grid_times",
    "load_run",
    "output_table_name",
    "plan_run",
    "run_backfill",
    "run_chunk",
    "spine_chunks",
    "spine_insert_sql",
    "spine_select_sql",
    "table_checksum",
]

log = logging.getLogger("airflow_fsmigration.backfill")


@dataclass(frozen=True)
class BackfillResult:
    run_id: str
    group: str
    mode: Mode
    output_table: str
    chunks: int
    chunks_run: int  # chunks computed by this call
    chunks_resumed: int  # chunks already done by an earlier, interrupted call
    rows: int
    checksum: int
    seconds: float
    retention: RetentionReport | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retention"] = self.retention.to_dict() if self.retention else None
        data["checksum"] = str(self.checksum)
        return data


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk's execution did: its rows and checksum, and whether it found the chunk done."""

    rows: int
    checksum: int
    seconds: float
    skipped: bool = False  # already checkpointed (by another start of the same run) under its lock


# ---------------------------------------------------------------------------------------------
# execution


def run_chunk(
    conn: Any, plan: MigrationPlan, run: BackfillRun, chunk: Chunk, strategy: str | None = None
) -> tuple[int, int]:
    """Replace one chunk's rows in one transaction, under the chunk's lock; return (rows, checksum).

    The lock serializes two writers of the same chunk: without it both would delete nothing
    (neither sees the other's uncommitted rows) and both insert, doubling the chunk.
    """
    with conn.transaction():
        lock_chunk(conn, run.run_id, chunk.chunk_no)
        return _write_chunk(conn, plan, run, chunk, strategy)


def execute_chunk(
    plan: MigrationPlan, run: BackfillRun, chunk: Chunk, store_conn: Any, registry_conn: Any,
    *, shared: bool | None = None,
) -> ChunkOutcome:  # fmt: skip
    """Run and checkpoint one chunk, or skip it when it is found done under its lock.

    ``shared`` (default: detected) means the registry is the store's database: the checkpoint is
    then written in the chunk's own transaction, so data and checkpoint commit together.
    Otherwise the checkpoint follows the data's commit (a crash in between re-runs the chunk,
    which replaces its rows).
    """
    shared = shares_database(store_conn, registry_conn) if shared is None else shared
    t0 = time.monotonic()
    with store_conn.transaction():
        lock_chunk(store_conn, run.run_id, chunk.chunk_no)
        done = chunk_checkpoint(store_conn if shared else registry_conn, run.run_id, chunk.chunk_no)
        if done is not None:
            return ChunkOutcome(done[0], done[1], 0.0, skipped=True)
        n, h = _write_chunk(store_conn, plan, run, chunk)
        seconds = time.monotonic() - t0
        if shared:
            mark_chunk_done(store_conn, run.run_id, chunk.chunk_no, n, h, seconds)
    if not shared:
        mark_chunk_done(registry_conn, run.run_id, chunk.chunk_no, n, h, seconds)
    return ChunkOutcome(n, h, seconds)


def _write_chunk(
    conn: Any, plan: MigrationPlan, run: BackfillRun, chunk: Chunk, strategy: str | None = None
) -> tuple[int, int]:
    """Delete and insert one chunk's rows, inside the caller's transaction."""
    from psycopg import sql

    table = run.output_table
    time_col = "as_of" if run.mode == "grid" else "label_ts"
    binary = binary_hashable(conn, table)
    conn.execute("SET LOCAL TimeZone = 'UTC'")
    conn.execute(
        sql.SQL("DELETE FROM {t} WHERE run_id = %s AND {tc} >= %s AND {tc} < %s").format(
            t=_ident(table), tc=sql.Identifier(time_col)
        ),
        (run.run_id, chunk.lo, chunk.hi),
    )
    if run.mode == "grid":
        every = timedelta(seconds=run.params["every"])
        start = datetime.fromisoformat(run.params["start"])
        end = datetime.fromisoformat(run.params["end"])
        times = [t for t in grid_times(start, end, every) if chunk.lo <= t < chunk.hi]
        row = conn.execute(
            grid_insert_sql(plan, run.group, table, binary), {"run_id": run.run_id, "times": times}
        ).fetchone()
    else:
        spine = SpineSpec(run.params["spine"], run.params["entity_column"], run.params["time_column"])
        chosen, reason = choose_strategy(
            conn, plan, run.group, spine, chunk, strategy or run.params.get("strategy", "auto")
        )
        log.info("backfill %s: chunk %d evaluated %s: %s", run.group, chunk.chunk_no, chosen, reason)
        session_settings(conn, chosen)
        row = conn.execute(
            spine_insert_sql(plan, run.group, spine, table, chosen, binary),
            {"run_id": run.run_id, "lo": chunk.lo, "hi": chunk.hi},
        ).fetchone()
    return int(row[0]), int(row[1])


def execute_run(
    plan: MigrationPlan,
    run: BackfillRun,
    store_conn: Any,
    registry_conn: Any,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    retention: RetentionReport | None = None,
    workers: int | None = None,
) -> BackfillResult:
    """Run every unfinished chunk of ``run``, checkpointing each; log progress and ETA.

    ``workers`` > 1 runs chunks on that many cloned store connections at once (:mod:`.parallel`;
    default :func:`~.parallel.default_workers`: two for a spine). Refuses with
    :class:`RunActiveError` while another live process executes the same run.
    """
    claim_run(registry_conn, run.run_id)
    try:
        return _execute_claimed(plan, run, store_conn, registry_conn, progress, retention, workers)
    finally:
        release_run(registry_conn, run.run_id)


def _execute_claimed(
    plan: MigrationPlan, run: BackfillRun, store_conn: Any, registry_conn: Any,
    progress: Callable[[dict[str, Any]], None] | None, retention: RetentionReport | None,
    workers: int | None = None,
) -> BackfillResult:  # fmt: skip
    started = time.monotonic()
    done_before = [c for c in run.chunks if c.status == "done"]
    rows = sum(c.rows or 0 for c in done_before)
    checksum = sum(c.checksum or 0 for c in done_before)
    total = len(run.chunks)
    if done_before:
        log.info(
            "backfill %s: resuming run %s at chunk %d of %d (%d rows already written)",
            run.group,
            run.run_id,
            len(done_before) + 1,
            total,
            rows,
        )
    shared = shares_database(store_conn, registry_conn)
    new_rows = computed = skipped = 0
    pending = run.pending
    n_workers = (
        default_workers(run.mode, len(pending)) if workers is None else max(1, min(workers, len(pending)))
    )
    if n_workers > 1 and not hasattr(store_conn, "info"):
        n_workers = 1  # not a psycopg connection: it cannot be cloned
    if n_workers > 1:
        log.info("backfill %s: %d chunks on %d store connections at once", run.group, len(pending), n_workers)

        def open_conns() -> tuple[Any, Any]:
            store = clone_connection(store_conn)
            return store, (store if shared else clone_connection(registry_conn))

        def work(chunk: Chunk, store: Any, registry: Any) -> ChunkOutcome:
            return execute_chunk(plan, run, chunk, store, registry, shared=shared)

        outcomes: Any = run_parallel(pending, n_workers, open_conns, work)
    else:
        outcomes = _sequential(plan, run, pending, store_conn, registry_conn, shared)
    for i, (chunk, out, error) in enumerate(outcomes, start=1):
        if error is not None:
            exc = error
            mark_failed(registry_conn, run.run_id, f"chunk {chunk.chunk_no}: {type(exc).__name__}: {exc}")
            raise BackfillError(
                f"group '{run.group}': backfill run '{run.run_id}' failed in chunk {chunk.chunk_no} "
                f"({iso_utc(chunk.lo)} .. {iso_utc(chunk.hi)}): {type(exc).__name__}: {exc}. "
                "Fix the cause and run the same command again: it resumes at this chunk."
            ) from exc
        rows += out.rows
        checksum += out.checksum
        if out.skipped:
            skipped += 1
            log.info(
                "backfill %s: chunk %d was finished meanwhile by another start", run.group, chunk.chunk_no
            )
            continue
        computed += 1
        new_rows += out.rows
        elapsed = time.monotonic() - started
        rate = new_rows / elapsed if elapsed > 0 else 0.0
        eta = elapsed / i * (len(pending) - i)
        info = {
            "run_id": run.run_id,
            "group": run.group,
            "chunk": chunk.chunk_no,
            "chunks_done": len(done_before) + i,
            "chunks": total,
            "rows": rows,
            "rows_per_second": rate,
            "eta_seconds": eta,
        }
        log.info(
            "backfill %s: chunk %d/%d done (%s .. %s): %d rows; %d rows total, %.0f rows/s, ETA %s",
            run.group,
            len(done_before) + i,
            total,
            iso_utc(chunk.lo),
            iso_utc(chunk.hi),
            out.rows,
            rows,
            rate,
            human_duration(timedelta(seconds=eta)) if eta >= 1 else "<1 s",
        )
        if progress:
            progress(info)
    seconds = time.monotonic() - started
    mark_run_done(registry_conn, run.run_id, rows, checksum)
    log.info(
        "backfill %s: run %s done: %d chunks (%d resumed), %d rows in %.2f s",
        run.group,
        run.run_id,
        total,
        len(done_before) + skipped,
        rows,
        seconds,
    )
    return BackfillResult(
        run_id=run.run_id,
        group=run.group,
        mode=run.mode,
        output_table=run.output_table,
        chunks=total,
        chunks_run=computed,
        chunks_resumed=len(done_before) + skipped,
        rows=rows,
        checksum=checksum,
        seconds=seconds,
        retention=retention,
    )


def _sequential(
    plan: MigrationPlan,
    run: BackfillRun,
    pending: list[Chunk],
    store_conn: Any,
    registry_conn: Any,
    shared: bool,
) -> Iterator[tuple[Chunk, ChunkOutcome | None, BaseException | None]]:
    """The chunks one after another on the caller's connections; stops at the first error."""
    for chunk in pending:
        try:
            out = execute_chunk(plan, run, chunk, store_conn, registry_conn, shared=shared)
        except Exception as exc:
            yield chunk, None, exc
            return
        yield chunk, out, None


def table_checksum(conn: Any, plan: MigrationPlan, run: BackfillRun) -> tuple[int, int]:
    """(rows, checksum) of a run's rows as they are in the output table, computed like the chunks'."""
    from psycopg import sql

    cols = definition_columns(plan, run.group)
    cols = ["as_of", *cols] if run.mode == "grid" else ["label_ts", *cols]
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        row = conn.execute(
            sql.SQL("SELECT count(*), coalesce(sum({h}), 0) FROM {t} AS t WHERE run_id = %s").format(
                h=_row_hash(cols, "t", binary_hashable(conn, run.output_table)), t=_ident(run.output_table)
            ),
            (run.run_id,),
        ).fetchone()
    return int(row[0]), int(row[1])


def run_backfill(
    plan: MigrationPlan,
    group: str,
    store_conn: Any,
    registry_conn: Any,
    *,
    event_conn: Any | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    every: timedelta | None = None,
    spine: str | None = None,
    spine_entity_column: str | None = None,
    spine_time_column: str | None = None,
    run_id: str | None = None,
    snapshots_per_chunk: int = 1,
    labels_per_chunk: int = 100_000,
    strategy: Strategy = "auto",
    check_retention: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
    workers: int | None = None,
) -> BackfillResult:
    """Audit retention, plan (or resume) the run, and execute its unfinished chunks.

    ``workers``: chunks run on that many store connections at once (default: two for a spine,
    one for a grid; see :mod:`.parallel`). ``store_conn`` is the new store (where the definition
    and the raw tables it reads are),
    ``registry_conn`` holds the checkpoints, ``event_conn`` is audited for retention (defaults to
    ``store_conn``). Raises :class:`RetentionGapError` before writing anything when the raw events
    do not cover the window.
    """
    report = None
    if check_retention:
        if spine is not None:
            spec = detect_spine(store_conn, plan, group, spine, spine_entity_column, spine_time_column)
            from psycopg import sql

            lo, hi = store_conn.execute(
                sql.SQL("SELECT min({ts}), max({ts}) FROM {t}").format(
                    ts=sql.Identifier(spec.time_column), t=_ident(spec.table)
                )
            ).fetchone()
            if lo is None:
                raise BackfillError(f"spine table {spec.table} is empty (group '{group}')")
            window = (_utc(lo), _utc(hi))
        else:
            if start is None or end is None:
                raise BackfillError(f"group '{group}': a snapshot backfill needs --start and --end")
            window = (_utc(start), _utc(end))
        report = audit_retention(plan, group, event_conn or store_conn, start=window[0], end=window[1])
        if not report.covered:
            raise RetentionGapError(report)
    run = plan_run(
        plan,
        group,
        store_conn,
        registry_conn,
        start=start,
        end=end,
        every=every,
        spine=spine,
        spine_entity_column=spine_entity_column,
        spine_time_column=spine_time_column,
        run_id=run_id,
        snapshots_per_chunk=snapshots_per_chunk,
        labels_per_chunk=labels_per_chunk,
        strategy=strategy,
    )
    return execute_run(
        plan, run, store_conn, registry_conn, progress=progress, retention=report, workers=workers
    )
