"""Backfill replay on real Postgres: SIGKILL and resume, spine exactness, retention refusal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from airflow_fsmigration.backfill import replay
from airflow_fsmigration.backfill.retention import RetentionGapError
from airflow_fsmigration.plan.definitions import render_as_of
from bench.bench_backfill import grid_plain_sql
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
GROUP = "user_txn_stats"


@pytest.fixture
def events(pg_conn):
    synthetic.create_transactions(pg_conn, events=20_000, users=150, start=T0, end=T0 + timedelta(days=20))
    return pg_conn


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
def test_sigkilled_backfill_resumes_to_the_same_table(demo_plan, events, pg_url):
    conn = events
    start, end, every = T0 + timedelta(days=8), T0 + timedelta(days=17), timedelta(days=1)
    run = replay.plan_run(demo_plan, GROUP, conn, conn, start=start, end=end, every=every, run_id="killed")
    assert len(run.chunks) == 10
    # Hold chunk 4's checkpoint row: the child writes chunks 0-4 and blocks marking 4 done, where we
    # SIGKILL it: the worst moment, output written but not checkpointed. With the registry in the
    # store's database both are one transaction, so chunk 4's rows go with its checkpoint.
    locker = psycopg.connect(pg_url)
    locker.execute("SELECT 1 FROM fsmig.backfill_chunks WHERE run_id = 'killed' AND chunk_no = 4 FOR UPDATE")
    child = textwrap.dedent(
        f"""
        import psycopg
        from datetime import datetime, timedelta
        from airflow_fsmigration.plan import load_plan
        from airflow_fsmigration.backfill import replay
        plan = load_plan({str(demo_plan.source_dir)!r})
        conn = psycopg.connect({pg_url!r}, autocommit=True, application_name="fsmig-kill-test")
        replay.run_backfill(plan, {GROUP!r}, conn, conn, start=datetime.fromisoformat({start.isoformat()!r}),
            end=datetime.fromisoformat({end.isoformat()!r}), every=timedelta(days=1), run_id="killed")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def blocked() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fsmig-kill-test'"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            return row[0] == 1

        _wait(blocked, what="the child to block on chunk 4's checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fsmig-kill-test'"
        )
        locker.rollback()
        locker.close()
    assert proc.returncode == -signal.SIGKILL
    _wait(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fsmig-kill-test'"
            ).fetchone()[0]
            == 0
        ),
        what="the killed child's backend to go",
    )
    stored = replay.load_run(conn, "killed")
    assert [c.chunk_no for c in stored.chunks if c.status == "done"] == [0, 1, 2, 3]
    written = conn.execute(
        "SELECT count(DISTINCT as_of) FROM features_history.user_txn_stats_snapshots WHERE run_id = 'killed'"
    ).fetchone()[0]
    assert written == 4  # chunk 4's rows rolled back with its checkpoint

    resumed = replay.run_backfill(
        demo_plan, GROUP, conn, conn, start=start, end=end, every=every, run_id="killed"
    )
    assert (resumed.chunks_resumed, resumed.chunks_run) == (4, 6)
    clean = replay.run_backfill(
        demo_plan, GROUP, conn, conn, start=start, end=end, every=every, run_id="clean"
    )
    assert clean.chunks_run == 10

    killed_table = replay.table_checksum(conn, demo_plan, replay.load_run(conn, "killed"))
    clean_table = replay.table_checksum(conn, demo_plan, replay.load_run(conn, "clean"))
    assert killed_table == clean_table == (clean.rows, clean.checksum) == (resumed.rows, resumed.checksum)
    # and the same as the definition run as one plain statement (the floor of the benchmark)
    conn.execute(
        grid_plain_sql(demo_plan, GROUP, "features_history.user_txn_stats_snapshots"),
        {"run_id": "plain", "times": replay.grid_times(start, end, every)},
    )
    plain = replay.BackfillRun("plain", GROUP, "grid", "features_history.user_txn_stats_snapshots", {}, ())
    assert replay.table_checksum(conn, demo_plan, plain) == clean_table
    assert (
        clean.rows
        == conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT user_id, d FROM raw.transactions,"
            " unnest(%s::timestamptz[]) AS d WHERE event_ts > d - interval '7 days' AND event_ts <= d) AS x",
            (replay.grid_times(start, end, every),),
        ).fetchone()[0]
    )
    # a finished run started again does nothing
    again = replay.run_backfill(
        demo_plan, GROUP, conn, conn, start=start, end=end, every=every, run_id="killed"
    )
    assert (again.chunks_run, again.rows, again.checksum) == (0, clean.rows, clean.checksum)


@pytest.mark.integration
def test_rerunning_a_chunk_replaces_it(demo_plan, events):
    conn = events
    start, end = T0 + timedelta(days=8), T0 + timedelta(days=9)
    res = replay.run_backfill(demo_plan, GROUP, conn, conn, start=start, end=end, every=timedelta(days=1))
    run = replay.load_run(conn, res.run_id)
    assert replay.run_chunk(conn, demo_plan, run, run.chunks[0]) == (
        run.chunks[0].rows,
        run.chunks[0].checksum,
    )
    assert replay.table_checksum(conn, demo_plan, run) == (res.rows, res.checksum)


@pytest.mark.integration
def test_window_beyond_retention_is_refused(demo_plan, events):
    conn = events
    conn.execute("INSERT INTO raw.transactions (user_id, event_ts) VALUES ('u0', %s)", (T0,))
    with pytest.raises(RetentionGapError) as err:
        replay.run_backfill(
            demo_plan,
            GROUP,
            conn,
            conn,
            start=T0 + timedelta(days=3),
            end=T0 + timedelta(days=10),
            every=timedelta(days=1),
        )
    assert "raw.transactions holds events from 2026-09-01T00:00Z; the window needs them from " in str(
        err.value
    )
    assert "2026-08-28T00:00Z: 4 days missing" in str(err.value)
    # refused before anything was planned or written
    assert conn.execute("SELECT to_regclass('fsmig.backfill_runs')").fetchone()[0] is None


def _spine_events(conn) -> datetime:
    """Events around label times, including events after each label that would change its value."""
    t = datetime(2026, 10, 10, 12, tzinfo=UTC)
    conn.execute("CREATE SCHEMA raw")
    conn.execute(
        "CREATE TABLE raw.transactions (user_id text, merchant_id text, amount float8, status text,"
        " is_foreign bool, event_ts timestamptz)"
    )
    rows = [
        ("u1", "m1", 10.0, "approved", False, t - timedelta(days=8)),  # outside 7d
        ("u1", "m1", 20.0, "approved", False, t - timedelta(days=7)),  # exactly 7d before: excluded (>)
        ("u1", "m2", 30.0, "declined", True, t - timedelta(hours=2)),
        ("u1", "m3", 40.0, "approved", False, t - timedelta(minutes=30)),
        ("u1", "m1", 50.0, "approved", False, t),  # exactly at the label: included (<=)
        ("u1", "m9", 999.0, "declined", True, t + timedelta(microseconds=1)),  # after: never seen
        ("u1", "m9", 999.0, "declined", True, t + timedelta(hours=1)),
        ("u2", "m1", 5.0, "approved", False, t - timedelta(days=1)),
        ("u2", "m1", 7.0, "approved", False, t + timedelta(minutes=1)),
    ]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO raw.transactions VALUES (%s, %s, %s, %s, %s, %s)", rows)
    conn.execute("CREATE INDEX ON raw.transactions (user_id, event_ts)")
    conn.execute("CREATE SCHEMA ml")
    conn.execute("CREATE TABLE ml.labels (label_id int, user_id text, label_ts timestamptz, y bool)")
    labels = [
        (1, "u1", t, True),
        (2, "u1", t + timedelta(hours=1), False),  # sees the two later events
        (3, "u1", t - timedelta(hours=1), False),  # sees the 7d-before and 2h-before events
        (4, "u2", t, False),  # must not see u2's event one minute later
        (5, "u3", t, False),  # no events at all: row kept, features null
        (6, "u2", t + timedelta(minutes=1), True),
    ]
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO ml.labels VALUES (%s, %s, %s, %s)", labels)
    return t


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["lateral", "per_timestamp"])
def test_spine_gets_values_as_of_each_label_never_later(demo_plan, pg_conn, strategy):
    conn = pg_conn
    t = _spine_events(conn)
    conn.execute("SET TimeZone = 'UTC'")
    res = replay.run_backfill(
        demo_plan,
        GROUP,
        conn,
        conn,
        spine="ml.labels",
        strategy=strategy,
        labels_per_chunk=2,
        check_retention=False,
    )
    assert res.rows == 6
    got = {
        (r[0], r[1]): r[2:]
        for r in conn.execute(
            "SELECT user_id, label_ts, txn_count_1h, txn_count_24h, txn_count_7d, txn_amount_max_7d,"
            " distinct_merchants_7d, declined_count_24h, last_txn_ts FROM features_history.user_txn_stats_labels"
            " WHERE run_id = %s",
            (res.run_id,),
        ).fetchall()
    }
    assert got[("u1", t)] == (2, 3, 3, 50.0, 3, 1, t)
    assert got[("u1", t + timedelta(hours=1))] == (2, 5, 5, 999.0, 4, 3, t + timedelta(hours=1))
    # (t-1h-7d, t-1h] includes the event exactly 7d before t
    assert got[("u1", t - timedelta(hours=1))] == (0, 1, 2, 30.0, 2, 1, t - timedelta(hours=2))
    assert got[("u2", t)] == (0, 0, 1, 5.0, 1, 0, t - timedelta(days=1))  # exactly 24h before: excluded
    assert got[("u3", t)] == (None,) * 7
    assert got[("u2", t + timedelta(minutes=1))] == (1, 1, 2, 7.0, 1, 0, t + timedelta(minutes=1))
    # every row equals the definition evaluated alone at the label's time, and never sees a later event
    one = render_as_of(demo_plan, GROUP)
    for (user, ts), values in got.items():
        direct = [r for r in conn.execute(one, {"as_of": ts}).fetchall() if r[0] == user]
        expected = direct[0][1:] if direct else None
        stored = conn.execute(
            "SELECT txn_count_1h, txn_count_24h, txn_count_7d, txn_amount_sum_24h, txn_amount_avg_7d,"
            " txn_amount_max_7d, distinct_merchants_7d, declined_count_24h, foreign_txn_ratio_7d, last_txn_ts,"
            " source_ts FROM features_history.user_txn_stats_labels WHERE run_id = %s AND user_id = %s"
            " AND label_ts = %s",
            (res.run_id, user, ts),
        ).fetchone()
        assert stored == (expected or (None,) * 11), (user, ts)
        assert values[-1] is None or values[-1] <= ts
