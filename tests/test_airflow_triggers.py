"""Gate triggers: exact serialization, and async runs against real Postgres and Redis.

pytest-asyncio is not installed: each async test drives the trigger with ``asyncio.run``. The
"not done yet, then done" pattern follows the standard provider's trigger tests: start the
trigger's first ``__anext__`` as a task, check it is still waiting, make the gate pass, then wait.
"""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.semantics import format_key
from airflow_fsmigration.triggers.gates import BakeTrigger, KeepWarmTrigger, ShadowSoakTrigger

REPO = Path(__file__).resolve().parent.parent
GROUP = "merchant_stats"


@pytest.mark.unit
def test_serialize_returns_classpath_and_every_argument():
    windows = {"bake_start": "a", "bake_end": "b", "baseline_start": "c", "baseline_end": "d"}
    assert ShadowSoakTrigger("/p", "g", poll_interval=0.5, refresh_after=2.0).serialize() == (
        "airflow_fsmigration.triggers.gates.ShadowSoakTrigger",
        {"plan_path": "/p", "group": "g", "poll_interval": 0.5, "refresh_after": 2.0},
    )
    assert BakeTrigger("/p", "g", windows, poll_interval=3, inconclusive_grace=7).serialize() == (
        "airflow_fsmigration.triggers.gates.BakeTrigger",
        {
            "plan_path": "/p",
            "group": "g",
            "poll_interval": 3.0,
            "windows": windows,
            "inconclusive_grace": 7.0,
        },
    )
    assert KeepWarmTrigger("/p", "g", poll_interval=60).serialize() == (
        "airflow_fsmigration.triggers.gates.KeepWarmTrigger",
        {"plan_path": "/p", "group": "g", "poll_interval": 60.0},
    )
    # a trigger rebuilt from its serialized form serializes identically (what the triggerer does)
    classpath, kwargs = BakeTrigger("/p", "g", windows).serialize()
    assert BakeTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.unit
def test_poll_interval_is_proportional_to_the_gate():
    from airflow_fsmigration.triggers.checks import poll_interval

    assert poll_interval(timedelta(hours=48)) == 600
    assert poll_interval(timedelta(seconds=5)) == 0.25
    assert poll_interval(timedelta(seconds=1)) == 0.2
    assert poll_interval(timedelta(minutes=20)) == 60


@pytest.fixture
def seconds_plan(tmp_path, pg_url, redis_url, monkeypatch):
    """The demo plan with a 3 s soak, 2 s bake and 1 s keep-warm, every connection on the test servers."""
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.devservices import airflow_conn_env

    plan_dir = tmp_path / "plan"
    shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
    text = (plan_dir / "plan.yaml").read_text()
    text = text.replace("shadow_soak: 14d", "shadow_soak: 3s").replace("bake: 48h", "bake: 2s")
    (plan_dir / "plan.yaml").write_text(text.replace("keep_warm: 30d", "keep_warm: 1s"))
    plan = load_plan(plan_dir)
    c = plan.connections
    for conn_id, url in {
        c.legacy_online: redis_url,
        c.legacy_offline: pg_url,
        c.event_log: pg_url,
        c.new_store: pg_url,
        c.registry: pg_url,
        c.model_metrics: pg_url,
    }.items():
        for k, v in airflow_conn_env(conn_id, url).items():
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("FSMIG_CACHE_DIR", str(tmp_path / "cache"))
    return plan, plan_dir


def _record_pass(conn, logical_time):
    from airflow_fsmigration.compare.engine import ComparisonResult, Verdict
    from airflow_fsmigration.compare.results import ResultStore

    result = ComparisonResult(group=GROUP, verdict=Verdict.PASS, threshold=0.995, features={})
    ResultStore(conn).record(result, logical_time=logical_time)


async def _first_event(trigger, before_done=None, wait: float = 0.6, timeout: float = 20.0):
    task = asyncio.create_task(trigger.run().__anext__())
    await asyncio.sleep(wait)
    if before_done is not None:
        assert not task.done(), task.result() if task.done() else None
        await asyncio.to_thread(before_done)
    return (await asyncio.wait_for(task, timeout=timeout)).payload


@pytest.mark.integration
def test_soak_trigger_waits_for_green_runs_covering_the_soak(seconds_plan, pg_conn):
    _plan, plan_dir = seconds_plan
    start = datetime.now(UTC)
    _record_pass(pg_conn, start - timedelta(seconds=1))  # green for 1 s of 3: must wait
    trigger = ShadowSoakTrigger(str(plan_dir), GROUP, poll_interval=0.1)

    def more_green_runs():
        # passing runs every 0.3 s from start-1s to start+2.9s (the later ones become visible as time
        # passes); no gap above soak/7 = 0.43 s, so the streak reaches 3 s at about start+2s
        for i in range(14):
            _record_pass(pg_conn, start - timedelta(seconds=1) + timedelta(seconds=0.3 * i))

    event = asyncio.run(_first_event(trigger, more_green_runs))
    assert event["status"] == "pass"
    assert event["details"]["satisfied"] is True
    assert event["details"]["passing_runs"] >= 11
    assert event["checks"] >= 2
    assert datetime.now(UTC) >= start + timedelta(seconds=2)


@pytest.mark.integration
def test_bake_trigger_fails_at_once_on_an_auc_drop(seconds_plan, pg_conn):
    from airflow_fsmigration.gates.metrics import AUC, record_metric

    plan, plan_dir = seconds_plan
    now = datetime.now(UTC)
    model = plan.groups[GROUP].models[0]
    for i in range(5):
        record_metric(pg_conn, model, AUC, 0.90, ts=now - timedelta(seconds=20 - i))
        record_metric(pg_conn, model, AUC, 0.85, ts=now - timedelta(seconds=2 - i * 0.2))
    windows = {
        "bake_start": (now - timedelta(seconds=3)).isoformat(),
        "bake_end": (now + timedelta(seconds=60)).isoformat(),  # far from over: a breach must not wait
        "baseline_start": (now - timedelta(seconds=30)).isoformat(),
        "baseline_end": (now - timedelta(seconds=10)).isoformat(),
    }
    trigger = BakeTrigger(str(plan_dir), GROUP, windows, poll_interval=0.1)
    event = asyncio.run(_first_event(trigger, wait=0))
    assert event["status"] == "fail"
    assert event["checks"] == 1
    [breach] = event["details"]["breaches"]
    assert breach["trigger"] == "auc_drop_pct" and breach["model"] == model
    assert breach["observed"] == pytest.approx(100 * 0.05 / 0.90, rel=1e-6)


@pytest.mark.integration
def test_bake_trigger_passes_only_when_the_window_is_over(seconds_plan, pg_conn, redis_client):
    from airflow_fsmigration.gates.metrics import AUC, record_metric
    from airflow_fsmigration.serving.stats import StatsRecorder

    plan, plan_dir = seconds_plan
    now = datetime.now(UTC)
    model = plan.groups[GROUP].models[0]
    for i in range(5):
        record_metric(pg_conn, model, AUC, 0.90, ts=now - timedelta(seconds=20 - i))
        record_metric(pg_conn, model, AUC, 0.90, ts=now - timedelta(seconds=1.5 - i * 0.2))
    recorder = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0)
    for _ in range(300):
        recorder.record(GROUP, "old", 900)
        recorder.record(GROUP, "new", 950)
    recorder.flush()
    recorder.close()
    end = now + timedelta(seconds=1.5)
    windows = {
        "bake_start": (now - timedelta(seconds=2)).isoformat(),
        "bake_end": end.isoformat(),
        "baseline_start": (now - timedelta(seconds=30)).isoformat(),
        "baseline_end": (now - timedelta(seconds=10)).isoformat(),
    }
    trigger = BakeTrigger(str(plan_dir), GROUP, windows, poll_interval=0.1)
    event = asyncio.run(_first_event(trigger, lambda: None, wait=0.5))
    assert event["status"] == "pass", event
    assert datetime.now(UTC) >= end
    assert event["details"]["breaches"] == []


@pytest.mark.integration
def test_keep_warm_trigger_checks_warmth_until_the_window_passed(seconds_plan, pg_conn, redis_client):
    from airflow_fsmigration.registry.routing import Registry

    plan, plan_dir = seconds_plan
    g = plan.groups[GROUP]
    # a warm old store: fresh online hash and a fresh offline history row
    redis_client.hset(
        format_key(g.legacy_online.key_template, "m1"),
        mapping={"_ts": str(int(datetime.now(UTC).timestamp()))},
    )
    schema, table = g.legacy_offline.table.split(".")
    pg_conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    pg_conn.execute(
        f'CREATE TABLE "{schema}"."{table}" (merchant_id text, {g.legacy_offline.event_time_column} timestamptz)'
    )
    pg_conn.execute(f'INSERT INTO "{schema}"."{table}" VALUES (%s, now())', ("m1",))
    with Registry(pg_conn.info.dsn, plan=plan) as registry:
        registry.ensure_schema()
        registry.register_plan(plan)
        registry.transition(GROUP, "shadow", actor="test", reason="test")
        for pct in plan.settings_for(GROUP).ramp_steps:
            registry.ramp(GROUP, pct, actor="test", reason="test", soak_passed=True)
        registry.transition(GROUP, "warm", actor="test", reason="test")
    trigger = KeepWarmTrigger(str(plan_dir), GROUP, poll_interval=0.1)
    event = asyncio.run(_first_event(trigger, lambda: None, wait=0.3))
    assert event["status"] == "pass", event
    window = event["details"]["window"]
    assert window["passed"] is True and window["verified"] == window["buckets"] >= 1
    n = pg_conn.execute(
        "SELECT count(*), bool_and(passed) FROM fsmig.keepwarm_checks WHERE group_name = %s", (GROUP,)
    ).fetchone()
    assert n[0] == event["checks"] and n[1] is True


@pytest.mark.integration
def test_trigger_reports_an_unreachable_store_as_an_error_not_a_pass(seconds_plan, monkeypatch):
    plan, plan_dir = seconds_plan
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{plan.connections.registry.upper()}",
        '{"conn_type": "postgres", "host": "/nonexistent-socket-dir", "login": "x", "password": "hunter2-secret", "schema": "db"}',
    )
    event = asyncio.run(_first_event(ShadowSoakTrigger(str(plan_dir), GROUP, poll_interval=0.1), wait=0))
    assert event["status"] == "error"
    assert "ShadowSoakTrigger for group merchant_stats" in event["reason"]
    assert "hunter2-secret" not in event["reason"]
