"""RisingWave deploys: golden SQL, progress parsing, and the progress trigger on a fake rw_ddl_progress.

The fake is a Postgres table shaped as RisingWave documents ``rw_catalog.rw_ddl_progress``
(``ddl_id bigint, ddl_statement varchar, progress varchar``, the progress an estimate such as
``69.02%``; a build's row disappears when it is done). What RisingWave itself does with these
statements is only tested by the ``risingwave`` suite (``tests/test_risingwave_live.py``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest
from psycopg import sql

from airflow_fsmigration.stores.dialect import (
    POSTGRES,
    RISINGWAVE,
    build_name,
    index_name,
    parse_progress,
    previous_name,
    statement_builds,
)
from airflow_fsmigration.stores.risingwave_ddl import (
    DONE,
    MISSING,
    ProgressSample,
    ProgressTracker,
    check_build,
)

REPO = Path(__file__).resolve().parent.parent
LIVE = sql.Identifier("features", "user_txn_stats")
BUILD = sql.Identifier("features", build_name("user_txn_stats"))
BODY = "SELECT 1 AS x FROM raw.t WHERE t.ts > now() - interval '1 hour'"


@pytest.mark.unit
def test_golden_risingwave_deploy_statements():
    assert RISINGWAVE.background_ddl() == "SET BACKGROUND_DDL = true"
    assert RISINGWAVE.create_build(BUILD, BODY).as_string(None) == (
        'CREATE MATERIALIZED VIEW "features"."user_txn_stats__fsmig_build" AS\n' + BODY + "\n"
    )
    assert RISINGWAVE.swap(LIVE, BUILD).as_string(None) == (
        'ALTER MATERIALIZED VIEW "features"."user_txn_stats" SWAP WITH "features"."user_txn_stats__fsmig_build"'
    )
    assert RISINGWAVE.rename(BUILD, previous_name("user_txn_stats")).as_string(None) == (
        'ALTER MATERIALIZED VIEW "features"."user_txn_stats__fsmig_build" RENAME TO "user_txn_stats__fsmig_previous"'
    )
    stmt = RISINGWAVE.entity_index(LIVE, index_name("user_txn_stats", "user_id"), "user_id")
    assert stmt is not None and stmt.as_string(None) == (
        'CREATE INDEX IF NOT EXISTS "user_txn_stats__by_user_id" ON "features"."user_txn_stats" ("user_id")'
    )
    assert RISINGWAVE.progress_sql == (
        "SELECT ddl_id, ddl_statement, progress FROM rw_catalog.rw_ddl_progress ORDER BY ddl_id"
    )
    assert RISINGWAVE.drop_view(BUILD).as_string(None) == (
        'DROP MATERIALIZED VIEW IF EXISTS "features"."user_txn_stats__fsmig_build"'
    )
    # a hostile name stays one quoted identifier
    odd = sql.Identifier("features", 'g"; DROP TABLE x; --')
    assert (
        RISINGWAVE.swap(odd, BUILD)
        .as_string(None)
        .startswith('ALTER MATERIALIZED VIEW "features"."g""; DROP')
    )


@pytest.mark.unit
def test_postgres_has_no_background_builds():
    assert not POSTGRES.background_builds and RISINGWAVE.background_builds
    assert POSTGRES.background_ddl() is None
    assert POSTGRES.entity_index(LIVE, "i", "user_id") is None
    with pytest.raises(NotImplementedError):
        POSTGRES.swap(LIVE, BUILD)
    with pytest.raises(NotImplementedError):
        POSTGRES.create_build(BUILD, BODY)


@pytest.mark.unit
def test_progress_text_and_statement_matching():
    assert parse_progress("69.02%") == (69.02, None, None)
    assert parse_progress("12.5% (1,250/10,000)") == (12.5, 1250, 10000)
    assert parse_progress("") == (None, None, None)
    assert parse_progress("snapshot") == (None, None, None)
    stmt = 'CREATE MATERIALIZED VIEW "features"."g__fsmig_build" AS\nSELECT 1'
    assert statement_builds(stmt, "features", "g__fsmig_build")
    assert not statement_builds(stmt, "features", "g")
    assert statement_builds("create materialized view FEATURES.G as select 1", "features", "g")


@pytest.mark.unit
def test_tracker_reports_rate_and_eta():
    tracker = ProgressTracker()
    first = tracker.observe(ProgressSample(100.0, 7, "s", "10.00%", 10.0, None, None))
    assert first == "10.00%, ETA unknown (one sample so far)"
    line = tracker.observe(ProgressSample(110.0, 7, "s", "20.00%", 20.0, None, None))
    assert line == "20.00%, 1.000%/s, ETA 80s"
    rows = ProgressTracker()
    rows.observe(ProgressSample(0.0, 8, "s", "", 10.0, 1000, 10000))
    assert rows.observe(ProgressSample(10.0, 8, "s", "", 20.0, 2000, 10000)) == (
        "rows 2,000/10,000, 20.00%, 100 rows/s, ETA 80s"
    )


def _fake_progress(conn) -> None:
    conn.execute("CREATE SCHEMA IF NOT EXISTS rw_catalog")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS rw_catalog.rw_ddl_progress "
        "(ddl_id bigint, ddl_statement varchar, progress varchar)"
    )
    conn.execute("CREATE SCHEMA IF NOT EXISTS features")


@pytest.mark.integration
def test_check_build_on_a_fake_progress_table(pg_conn):
    _fake_progress(pg_conn)
    stmt = 'CREATE MATERIALIZED VIEW "features"."g" AS SELECT 1 AS x'
    pg_conn.execute("INSERT INTO rw_catalog.rw_ddl_progress VALUES (1001, %s, '35.50%%')", (stmt,))
    pg_conn.execute(
        "INSERT INTO rw_catalog.rw_ddl_progress VALUES (1002, 'CREATE INDEX i ON other(x)', '1%%')"
    )
    tracker = ProgressTracker()
    state = check_build(pg_conn, "features", "g", tracker)
    assert state.status == "building" and state.sample is not None and state.sample.ddl_id == 1001
    assert "building features.g: 35.50%" in state.message
    pg_conn.execute("DELETE FROM rw_catalog.rw_ddl_progress WHERE ddl_id = 1001")
    assert check_build(pg_conn, "features", "g", tracker).status == MISSING  # no row, no view: not a pass
    pg_conn.execute("CREATE MATERIALIZED VIEW features.g AS SELECT 1 AS x")
    assert check_build(pg_conn, "features", "g", tracker).status == DONE


@pytest.fixture
def rw_plan(tmp_path, pg_url, monkeypatch):
    from fsmig_dev.devservices import airflow_conn_env

    plan_dir = tmp_path / "plan"
    shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
    (plan_dir / "new_store.yaml").write_text("new_store: {dialect: risingwave, schema: features}\n")
    for k, v in airflow_conn_env("fsmig_new_store", pg_url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FSMIG_CACHE_DIR", str(tmp_path / "cache"))
    return plan_dir


@pytest.mark.integration
def test_trigger_logs_progress_rate_and_eta_then_fires_once_built(rw_plan, pg_conn):
    from airflow_fsmigration.triggers.ddl_progress import DdlProgressTrigger

    _fake_progress(pg_conn)
    target = build_name("user_txn_stats")
    stmt = f'CREATE MATERIALIZED VIEW "features"."{target}" AS SELECT 1'
    pg_conn.execute("INSERT INTO rw_catalog.rw_ddl_progress VALUES (42, %s, '10.00%%')", (stmt,))
    trigger = DdlProgressTrigger(str(rw_plan), "user_txn_stats", target, poll_interval=0.2)
    assert DdlProgressTrigger(**trigger.serialize()[1]).serialize() == trigger.serialize()
    # the task log in a triggerer is Airflow's structlog logger; a stdlib one here, for caplog
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    trigger._log = logging.getLogger("fsmig.test.ddl_progress")
    trigger._log.setLevel(logging.INFO)
    trigger._log.addHandler(handler)

    async def seen(n: int) -> None:  # the trigger's n-th poll has been logged (plan loading may be slow)
        for _ in range(400):
            if len(lines) >= n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {len(lines)} polls logged")

    async def drive():
        task = asyncio.create_task(trigger.run().__anext__())
        await seen(2)
        assert not task.done()
        await asyncio.to_thread(pg_conn.execute, "UPDATE rw_catalog.rw_ddl_progress SET progress = '60.00%'")
        n = len(lines)
        await seen(n + 1)
        await asyncio.to_thread(pg_conn.execute, "DELETE FROM rw_catalog.rw_ddl_progress")
        await asyncio.to_thread(
            pg_conn.execute, f'CREATE MATERIALIZED VIEW "features"."{target}" AS SELECT 1'
        )
        return (await asyncio.wait_for(task, timeout=20)).payload

    event = asyncio.run(drive())
    assert event["status"] == "done" and event["target"] == target and event["polls"] >= 3
    logged = "\n".join(lines)
    assert "10.00%, ETA unknown (one sample so far)" in logged
    assert "60.00%" in logged and "%/s, ETA " in logged


@pytest.mark.integration
def test_trigger_reports_a_vanished_build_as_an_error(rw_plan, pg_conn):
    from airflow_fsmigration.triggers.ddl_progress import DdlProgressTrigger

    _fake_progress(pg_conn)
    trigger = DdlProgressTrigger(
        str(rw_plan), "user_txn_stats", build_name("user_txn_stats"), poll_interval=0.1
    )
    event = asyncio.run(trigger.run().__anext__()).payload
    assert event["status"] == "error" and "cancelled or failed" in event["reason"]


@pytest.mark.unit
def test_plain_views_for_clock_dependent_groups_and_refusals_before_sending(tmp_path):
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import DeployError, NewStore

    assert (
        RISINGWAVE.create_view(LIVE, BODY, plain=True)
        .as_string(None)
        .startswith('CREATE VIEW IF NOT EXISTS "features"."user_txn_stats" AS\n')
    )
    assert (
        RISINGWAVE.drop_view(LIVE, plain=True).as_string(None)
        == 'DROP VIEW IF EXISTS "features"."user_txn_stats"'
    )
    assert [s.as_string(None).split(" AS")[0] for s in RISINGWAVE.replace_view(LIVE, BODY, plain=True)] == [
        'DROP VIEW IF EXISTS "features"."user_txn_stats"',
        'CREATE VIEW "features"."user_txn_stats"',
    ]
    plan_dir = tmp_path / "plan"
    shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
    (plan_dir / "new_store.yaml").write_text("new_store: {dialect: risingwave, schema: features}\n")
    path = plan_dir / "sql" / "merchant_stats.sql"
    text = path.read_text().replace(
        "count(*) AS merchant_txn_count_24h",
        "count(*) FILTER (WHERE t.event_ts > :as_of - interval '1 hour') AS merchant_txn_count_24h",
    )
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "FILTER (WHERE t.event_ts" in t)
    store = NewStore("postgresql://never-connected.invalid/x", load_plan(plan_dir), "fsmig_new_store")
    assert store.plain(store.plan.groups["user_profile"]) and not store.plain(
        store.plan.groups["user_txn_stats"]
    )
    with pytest.raises(DeployError, match=rf"{path}:{line}: :as_of inside an aggregate FILTER"):
        store.deploy("merchant_stats")  # refused before any connection is opened
    with pytest.raises(DeployError, match="RisingWave would refuse"):
        store.start_deploy("merchant_stats")


@pytest.mark.integration
def test_a_rebuilt_view_is_swapped_only_when_it_agrees_with_the_old_store(pg_url, redis_url, tmp_path):
    """The pre-swap shadow comparison, on Postgres: the build is read as <group>__fsmig_build."""
    from datetime import UTC, datetime

    import psycopg
    import redis

    from airflow_fsmigration.operators.store import compare_build
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from fsmig_dev.demo.data import freeze_clock, generate_raw, write_online_store

    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    plan = load_plan(REPO / "include" / "demo_plan")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        generate_raw(conn, plan, entities=100, days=35, seed=0.3, now=now)
        client = redis.Redis.from_url(redis_url)
        try:
            write_online_store(conn, client, plan, now=now)
        finally:
            client.close()
        freeze_clock(conn, now)
    group = "merchant_stats"
    with NewStore(pg_url, plan, "fsmig_new_store") as store:
        store.deploy(group)
    body = plan.definition_sql(group).replace(":as_of", "now()")
    build = sql.Identifier("features", build_name(group))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE VIEW {} AS {}").format(build, sql.SQL(body)))
    same = compare_build(plan, group, online_url=redis_url, new_url=pg_url)
    assert same["swap"] and same["against_old"] == "pass" and same["against_live"] == "pass", same["summary"]
    wrong = body.replace(
        "coalesce(x24.merchant_txn_count_24h, 0)", "coalesce(x24.merchant_txn_count_24h, 0) + 1"
    )
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS {}").format(build, sql.SQL(wrong)))
    moved = compare_build(plan, group, online_url=redis_url, new_url=pg_url)
    assert not moved["swap"] and moved["against_old"] == "fail" and moved["against_live"] == "fail", moved
