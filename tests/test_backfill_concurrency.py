"""One backfill run id started twice at once, on real Postgres: no duplicate rows, a clear refusal.

Both starts are forced to overlap: a test connection holds the output table in SHARE mode (which
blocks the chunk's DELETE and INSERT), both writers are started, and the lock is released only
once both are waiting on it, or one has already finished.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from airflow_fsmigration.backfill import replay
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
GROUP = "user_txn_stats"
TABLE = "features_history.user_txn_stats_snapshots"
START, END, EVERY = T0 + timedelta(days=8), T0 + timedelta(days=11), timedelta(days=1)
APP = "fsmig-concurrency-test"


@pytest.fixture
def events(pg_conn):
    synthetic.create_transactions(pg_conn, events=6_000, users=80, start=T0, end=T0 + timedelta(days=12))
    return pg_conn


def _connect(pg_url: str) -> psycopg.Connection:
    return psycopg.connect(pg_url, autocommit=True, application_name=APP)


def _waiting(conn) -> int:
    """Backends of this test waiting on a lock (a table lock or an advisory lock)."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        (APP,),
    ).fetchone()[0]


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class _Worker(threading.Thread):
    """Runs ``fn(conn)`` on its own connection; keeps the result or the exception."""

    def __init__(self, pg_url: str, fn) -> None:
        super().__init__(daemon=True)
        self.pg_url, self.fn = pg_url, fn
        self.result = self.error = None

    def run(self) -> None:
        with _connect(self.pg_url) as conn:
            try:
                self.result = self.fn(conn)
            except BaseException as exc:  # reported by the test
                self.error = exc


def _overlap(conn, pg_url: str, fns) -> list[_Worker]:
    """Start one worker per fn while the output table is locked; release when all have collided."""
    locker = psycopg.connect(pg_url)
    locker.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
    workers = [_Worker(pg_url, fn) for fn in fns]
    try:
        for w in workers:
            w.start()

        def collided() -> bool:
            finished = sum(not w.is_alive() for w in workers)
            return finished == len(workers) or _waiting(conn) + finished >= len(workers)

        _wait(collided, "both starts to reach the chunk")
    finally:
        locker.rollback()
        locker.close()
    for w in workers:
        w.join(timeout=120)
        assert not w.is_alive(), "a worker did not finish"
    return workers


def _no_duplicates(conn, run_id: str) -> int:
    rows, distinct = conn.execute(
        f"SELECT count(*), count(DISTINCT (as_of, user_id)) FROM {TABLE} WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert rows == distinct, f"{rows - distinct} duplicate rows in run {run_id}"
    return rows


def _backfill(plan, run_id: str):
    def fn(conn):
        return replay.run_backfill(
            plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id=run_id, check_retention=False
        )

    return fn


@pytest.mark.integration
def test_two_starts_of_one_run_write_no_duplicates(demo_plan, events, pg_url):
    conn = events
    replay.plan_run(demo_plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id="twice")
    workers = _overlap(conn, pg_url, [_backfill(demo_plan, "twice"), _backfill(demo_plan, "twice")])
    rows = _no_duplicates(conn, "twice")
    clean = replay.run_backfill(
        demo_plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id="clean", check_retention=False
    )
    assert replay.table_checksum(conn, demo_plan, replay.load_run(conn, "twice")) == (
        clean.rows,
        clean.checksum,
    )
    assert rows == clean.rows
    done = [w for w in workers if w.error is None]
    refused = [w for w in workers if w.error is not None]
    assert len(done) == 1 and (done[0].result.rows, done[0].result.checksum) == (clean.rows, clean.checksum)
    assert len(refused) == 1 and "already running" in str(refused[0].error), refused[0].error


@pytest.mark.integration
def test_second_start_while_the_heartbeat_is_fresh_is_refused(demo_plan, events, pg_url):
    conn = events
    replay.plan_run(demo_plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id="busy")
    locker = psycopg.connect(pg_url)
    locker.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
    first = _Worker(pg_url, _backfill(demo_plan, "busy"))
    try:
        first.start()
        _wait(lambda: _waiting(conn) == 1, "the first start to block in its first chunk")
        with _connect(pg_url) as second:
            second.execute("SET lock_timeout = '5s'")  # the old code would wait on the chunk instead
            with pytest.raises(replay.BackfillError) as err:
                _backfill(demo_plan, "busy")(second)
    finally:
        locker.rollback()
        locker.close()
    message = str(err.value)
    assert "'busy'" in message and "already running" in message and "\n" not in message, message
    assert "heartbeat" in message and " s ago" in message, message
    first.join(timeout=120)
    assert first.error is None, first.error
    # once the first has finished, the same command returns the finished run
    again = _backfill(demo_plan, "busy")(conn)
    assert (again.chunks_run, again.rows, again.checksum) == (0, first.result.rows, first.result.checksum)
    _no_duplicates(conn, "busy")


@pytest.mark.integration
def test_two_writers_of_one_chunk_are_serialized(demo_plan, events, pg_url):
    conn = events
    run = replay.plan_run(demo_plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id="chunk")
    chunk = run.chunks[0]
    workers = _overlap(conn, pg_url, [lambda c: replay.run_chunk(c, demo_plan, run, chunk) for _ in range(2)])
    assert [w.error for w in workers] == [None, None]
    assert workers[0].result == workers[1].result
    assert _no_duplicates(conn, "chunk") == workers[0].result[0]


@pytest.mark.integration
@pytest.mark.parametrize("shared", [True, False])
def test_a_chunk_finished_meanwhile_is_skipped_under_its_lock(demo_plan, events, pg_url, shared):
    conn = events
    run = replay.plan_run(demo_plan, GROUP, conn, conn, start=START, end=END, every=EVERY, run_id="skip")
    chunk = run.chunks[1]
    workers = _overlap(
        conn,
        pg_url,
        [lambda c: replay.execute_chunk(demo_plan, run, chunk, c, c, shared=shared) for _ in range(2)],
    )
    assert [w.error for w in workers] == [None, None]
    outcomes = [w.result for w in workers]
    assert outcomes[0].rows == outcomes[1].rows and outcomes[0].checksum == outcomes[1].checksum
    if shared:  # data and checkpoint commit together: the second finds the chunk done
        assert sorted(o.skipped for o in outcomes) == [False, True]
    rows = _no_duplicates(conn, "skip")
    stored = replay.load_run(conn, "skip").chunks[1]
    assert (stored.status, stored.rows, stored.checksum) == ("done", rows, outcomes[0].checksum)
