"""Backfill checkpoints in the registry Postgres: runs, chunks, who runs them, and their locks.

The chunk plan is written once when a run starts; each finished chunk is marked done with its row
count and checksum, so a killed run started again with the same run id resumes at the first
unfinished chunk. Two guards make a run id safe to start from two places at once:

- **the run**: the process executing a run holds a session advisory lock on the run id in the
  registry and records itself (``owner``) and a heartbeat (refreshed with every chunk). A second
  start while that lock is held is refused with :class:`RunActiveError` naming the owner and the
  heartbeat's age. A process that dies loses its registry session and with it the lock, so the
  same command resumes a killed run at once, however fresh its last heartbeat.
- **the chunk**: each chunk's store transaction takes a transaction advisory lock on (run id,
  chunk) and re-reads the chunk's checkpoint under it, so a chunk finished meanwhile is skipped
  and two writers of one chunk are serialized (its delete-and-insert is then idempotent). When
  the registry is the store's own database the checkpoint is written in the chunk's transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.retention import iso_utc
from airflow_fsmigration.backfill.sql import (
    BackfillError,
    Mode,
    SpineSpec,
    Strategy,
    _utc,
    detect_spine,
    ensure_output_table,
    grid_times,
    lock_key,
    output_table_name,
    spine_chunks,
)

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.backfill")

COMPONENT = "backfill"
MIGRATIONS = [
    """
    CREATE TABLE fsmig.backfill_runs (
        run_id        text PRIMARY KEY,
        group_name    text NOT NULL,
        mode          text NOT NULL CHECK (mode IN ('grid', 'spine')),
        output_table  text NOT NULL,
        params        jsonb NOT NULL,
        status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
        chunks        int NOT NULL,
        rows          bigint,
        checksum      numeric,
        created_at    timestamptz NOT NULL DEFAULT now(),
        updated_at    timestamptz NOT NULL DEFAULT now(),
        error         text
    )
    """,
    """
    CREATE TABLE fsmig.backfill_chunks (
        run_id      text NOT NULL REFERENCES fsmig.backfill_runs (run_id) ON DELETE CASCADE,
        chunk_no    int NOT NULL,
        lo          timestamptz NOT NULL,
        hi          timestamptz NOT NULL,
        status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
        rows        bigint,
        checksum    numeric,
        seconds     double precision,
        attempts    int NOT NULL DEFAULT 0,
        finished_at timestamptz,
        PRIMARY KEY (run_id, chunk_no)
    )
    """,
    "ALTER TABLE fsmig.backfill_runs ADD COLUMN owner text, ADD COLUMN heartbeat_at timestamptz",
]


class RunActiveError(BackfillError):
    """The run is being executed by another live process right now."""


@dataclass(frozen=True)
class Chunk:
    chunk_no: int
    lo: datetime
    hi: datetime  # exclusive
    status: str = "pending"
    rows: int | None = None
    checksum: int | None = None


@dataclass(frozen=True)
class BackfillRun:
    """A planned (or resumed) run: its id, output table and chunk plan, as stored in the registry."""

    run_id: str
    group: str
    mode: Mode
    output_table: str  # schema.table in the new store
    params: dict[str, Any]
    chunks: tuple[Chunk, ...]
    resumed: bool = False

    @property
    def pending(self) -> list[Chunk]:
        return [c for c in self.chunks if c.status != "done"]


def ensure_registry(registry_conn: Any) -> None:
    from airflow_fsmigration.db import ensure_schema

    ensure_schema(registry_conn, COMPONENT, MIGRATIONS)


def load_run(registry_conn: Any, run_id: str) -> BackfillRun | None:
    ensure_registry(registry_conn)
    with registry_conn.transaction():
        row = registry_conn.execute(
            "SELECT group_name, mode, output_table, params FROM fsmig.backfill_runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        chunks = registry_conn.execute(
            "SELECT chunk_no, lo, hi, status, rows, checksum FROM fsmig.backfill_chunks"
            " WHERE run_id = %s ORDER BY chunk_no",
            (run_id,),
        ).fetchall()
    return BackfillRun(
        run_id=run_id,
        group=row[0],
        mode=row[1],
        output_table=row[2],
        params=row[3],
        chunks=tuple(
            Chunk(c[0], _utc(c[1]), _utc(c[2]), c[3], c[4], None if c[5] is None else int(c[5]))
            for c in chunks
        ),
        resumed=True,
    )


def record_plan(
    registry_conn: Any, run_id: str, group: str, mode: Mode, table: str, params: dict[str, Any],
    bounds: Sequence[tuple[datetime, datetime]],
) -> None:  # fmt: skip
    """Write a new run and its chunk plan (a no-op for a run id that exists already)."""
    with registry_conn.transaction():
        registry_conn.execute(
            "INSERT INTO fsmig.backfill_runs (run_id, group_name, mode, output_table, params, chunks)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
            (run_id, group, mode, table, json.dumps(params), len(bounds)),
        )
        with registry_conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO fsmig.backfill_chunks (run_id, chunk_no, lo, hi) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(run_id, i, lo, hi) for i, (lo, hi) in enumerate(bounds)],
            )


# ---------------------------------------------------------------------------------------------
# the run's owner and heartbeat


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_run(registry_conn: Any, run_id: str) -> None:
    """Take the run's session lock and record this process as its owner, or refuse.

    Raises :class:`RunActiveError` (one line: the run id, its owner, the heartbeat's age, what to
    do) when another live session holds the run. Pair with :func:`release_run`.
    """
    ensure_registry(registry_conn)
    (got,) = registry_conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key("run", run_id),)).fetchone()
    if not got:
        row = registry_conn.execute(
            "SELECT owner, extract(epoch FROM now() - heartbeat_at) FROM fsmig.backfill_runs WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        owner, age = (row[0], row[1]) if row else (None, None)
        beat = "no heartbeat yet" if age is None else f"last heartbeat {float(age):.0f} s ago"
        raise RunActiveError(
            f"backfill run '{run_id}' is already running (owner {owner or 'unknown'}, {beat}); "
            "wait for it to finish (the same command then returns its result), or stop that process: "
            "once it is gone the same command resumes the run"
        )
    try:
        with registry_conn.transaction():
            registry_conn.execute(
                "UPDATE fsmig.backfill_runs SET owner = %s, heartbeat_at = now(), updated_at = now(),"
                " status = CASE WHEN status = 'done' THEN status ELSE 'running' END WHERE run_id = %s",
                (owner_name(), run_id),
            )
    except BaseException:
        release_run(registry_conn, run_id)
        raise


def release_run(registry_conn: Any, run_id: str) -> None:
    try:
        registry_conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("run", run_id),))
    except Exception:  # the session may be gone, and the lock with it
        log.warning("could not release the lock of backfill run %s", run_id, exc_info=True)


# ---------------------------------------------------------------------------------------------
# chunk checkpoints


def lock_chunk(conn: Any, run_id: str, chunk_no: int) -> None:
    """Wait for, then hold until the end of the current transaction, the lock on one chunk."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("chunk", run_id, chunk_no),))


def chunk_checkpoint(conn: Any, run_id: str, chunk_no: int) -> tuple[int, int] | None:
    """(rows, checksum) of a chunk already marked done, else None."""
    row = conn.execute(
        "SELECT rows, checksum FROM fsmig.backfill_chunks WHERE run_id = %s AND chunk_no = %s AND status = 'done'",
        (run_id, chunk_no),
    ).fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def mark_chunk_done(conn: Any, run_id: str, chunk_no: int, rows: int, checksum: int, seconds: float) -> None:
    """Checkpoint a chunk and refresh the run's heartbeat (in the caller's transaction, if any)."""
    with conn.transaction():
        conn.execute(
            "UPDATE fsmig.backfill_chunks SET status = 'done', rows = %s, checksum = %s, seconds = %s,"
            " attempts = attempts + 1, finished_at = now() WHERE run_id = %s AND chunk_no = %s",
            (rows, checksum, seconds, run_id, chunk_no),
        )
        conn.execute("UPDATE fsmig.backfill_runs SET heartbeat_at = now() WHERE run_id = %s", (run_id,))


def mark_run_done(registry_conn: Any, run_id: str, rows: int, checksum: int) -> None:
    with registry_conn.transaction():
        registry_conn.execute(
            "UPDATE fsmig.backfill_runs SET status = 'done', rows = %s, checksum = %s, updated_at = now(),"
            " heartbeat_at = now(), error = NULL WHERE run_id = %s",
            (rows, checksum, run_id),
        )


def mark_failed(registry_conn: Any, run_id: str, error: str) -> None:
    try:
        with registry_conn.transaction():
            registry_conn.execute(
                "UPDATE fsmig.backfill_runs SET status = 'failed', error = %s, updated_at = now() WHERE run_id = %s",
                (error[:2000], run_id),
            )
    except Exception:  # the registry itself may be what failed; the raised error says the rest
        log.exception("could not record the failure of backfill run %s", run_id)


def shares_database(store_conn: Any, registry_conn: Any) -> bool:
    """Whether checkpoints can be written through the store connection, in a chunk's transaction.

    True for one connection, or two psycopg connections to the same server, database and user.
    """
    if store_conn is registry_conn:
        return True
    try:
        a, b = store_conn.info, registry_conn.info
        return (a.host, a.port, a.dbname, a.user) == (b.host, b.port, b.dbname, b.user)
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------
# the run plan


def default_run_id(group: str, params: dict[str, Any]) -> str:
    """A run id derived from the parameters, so the same command run again resumes the same run."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return f"{group}-{digest}"


def plan_run(
    plan: MigrationPlan,
    group: str,
    store_conn: Any,
    registry_conn: Any,
    *,
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
    output_table: str | None = None,
) -> BackfillRun:
    """Create the run and its chunk plan in the registry, or load it when the run id already exists.

    An existing run is resumed only with the same parameters; anything else is an error, since
    mixing two plans in one output would make the table meaningless.
    """
    if group not in plan.groups:
        raise BackfillError(
            f"plan '{plan.name}' has no group {group!r}; known: {', '.join(sorted(plan.groups))}"
        )
    if (spine is None) == (every is None):
        raise BackfillError(
            f"group '{group}': give either a snapshot cadence (--every) or a label spine (--spine)"
        )
    mode: Mode = "grid" if spine is None else "spine"
    params: dict[str, Any] = {"group": group, "mode": mode, "strategy": strategy}
    spine_spec: SpineSpec | None = None
    if mode == "grid":
        if start is None or end is None:
            raise BackfillError(f"group '{group}': a snapshot backfill needs --start and --end")
        start, end = _utc(start), _utc(end)
        if end < start:
            raise BackfillError(f"group '{group}': --end {iso_utc(end)} is before --start {iso_utc(start)}")
        assert every is not None
        params.update(
            start=start.isoformat(),
            end=end.isoformat(),
            every=every.total_seconds(),
            per_chunk=snapshots_per_chunk,
        )
    else:
        assert spine is not None
        spine_spec = detect_spine(store_conn, plan, group, spine, spine_entity_column, spine_time_column)
        params.update(
            spine=spine_spec.table,
            entity_column=spine_spec.entity_column,
            time_column=spine_spec.time_column,
            per_chunk=labels_per_chunk,
        )
    table = output_table or output_table_name(plan, group, mode)
    params["output_table"] = table
    run_id = run_id or default_run_id(group, params)
    existing = load_run(registry_conn, run_id)
    if existing is not None:
        if existing.params != params:
            raise BackfillError(
                f"run '{run_id}' already exists with other parameters ({json.dumps(existing.params, sort_keys=True)}); "
                "use another --run-id, or the same parameters to resume it"
            )
        return existing
    if mode == "grid":
        assert start is not None and end is not None and every is not None
        times = grid_times(start, end, every)
        step = max(1, snapshots_per_chunk)
        bounds = []
        for i in range(0, len(times), step):
            lo = times[i]
            hi = times[i + step] if i + step < len(times) else times[-1] + timedelta(microseconds=1)
            bounds.append((lo, hi))
    else:
        assert spine_spec is not None
        # four parts at least (when big enough), so two parallel workers stay busy to the end
        bounds = [
            (lo, hi) for lo, hi, _ in spine_chunks(store_conn, spine_spec, labels_per_chunk, min_parts=4)
        ]
    ensure_output_table(store_conn, plan, group, mode, table)
    record_plan(registry_conn, run_id, group, mode, table, params, bounds)
    run = load_run(registry_conn, run_id)
    assert run is not None
    log.info("backfill %s: planned run %s: %d chunks into %s", group, run_id, len(run.chunks), table)
    return BackfillRun(
        run.run_id, run.group, run.mode, run.output_table, run.params, run.chunks, resumed=False
    )
