"""Keep-warm checks against a real legacy Redis and Postgres; decommission refused until verified."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.plan.model import SettingsOverride
from airflow_fsmigration.registry.keepwarm import (
    WarmCheck,
    check_warmth,
    parse_source_ts,
    record_check,
    warm_window_status,
)
from airflow_fsmigration.registry.mirror import RoutingMirror
from airflow_fsmigration.registry.model import IllegalTransition, Phase
from airflow_fsmigration.registry.routing import Registry

GROUP = "merchant_stats"  # legacy online fs:merchant_stats:{entity}, offline legacy.merchant_stats_history
STALENESS = timedelta(hours=1)  # merchant_stats sla.max_staleness


def _plan_with_keep_warm(plan, seconds: float):
    g = plan.groups[GROUP].model_copy(
        update={"overrides": SettingsOverride(keep_warm=timedelta(seconds=seconds))}
    )
    return plan.model_copy(update={"groups": {**plan.groups, GROUP: g}})


def _legacy(redis_client, pg_conn, *, online_age: timedelta, offline_age: timedelta, keys: int = 40) -> None:
    now = time.time()
    pipe = redis_client.pipeline()
    for i in range(keys):
        # One entity is much older than the rest: the newest across the sample decides.
        age = online_age.total_seconds() + (86_400 if i == 0 else i)
        pipe.hset(f"fs:merchant_stats:m{i}", mapping={"merchant_txn_count_24h": i, "_ts": f"{now - age:.3f}"})
    pipe.set("fs:user_profile:u1", "other group")
    pipe.execute()
    pg_conn.execute("CREATE SCHEMA IF NOT EXISTS legacy")
    pg_conn.execute("CREATE TABLE legacy.merchant_stats_history (merchant_id text, event_ts timestamptz)")
    pg_conn.execute(
        "INSERT INTO legacy.merchant_stats_history SELECT 'm' || g, now() - %s - g * interval '1 minute'"
        " FROM generate_series(0, 9) g",
        (offline_age,),
    )


def _fresh_check(plan, redis_client, pg_conn, **kw) -> WarmCheck:
    return check_warmth(
        plan, GROUP, online_client=redis_client, offline_conn=pg_conn, registry_conn=pg_conn, **kw
    )


@pytest.mark.unit
def test_parse_source_ts_forms():
    want = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    for raw in (
        b"1795568400",
        "1795568400.0",
        "1795568400000",
        "2026-11-25T01:00:00Z",
        '"2026-11-25T01:00:00+00:00"',
    ):
        assert parse_source_ts(raw) == want, raw
    assert parse_source_ts(b"") is None and parse_source_ts("soon") is None and parse_source_ts(None) is None


@pytest.mark.integration
def test_warm_store_passes_and_is_recorded(demo_plan, redis_client, pg_conn):
    _legacy(redis_client, pg_conn, online_age=timedelta(seconds=30), offline_age=timedelta(minutes=5))
    check = _fresh_check(demo_plan, redis_client, pg_conn, sample_size=25)
    assert check.passed, check.problems
    assert (check.online_sampled, check.online_with_ts) == (25, 25)
    assert check.offline_newest is not None
    assert datetime.now(UTC) - check.offline_newest < timedelta(minutes=6)
    as_json = json.loads(json.dumps(check.as_dict()))
    assert (as_json["passed"], as_json["online_sampled"], as_json["max_staleness_s"]) == (True, 25, 3600.0)
    rows = pg_conn.execute("SELECT group_name, passed, online_sampled FROM fsmig.keepwarm_checks").fetchall()
    assert rows == [(GROUP, True, 25)]


@pytest.mark.integration
def test_stale_online_store_fails(demo_plan, redis_client, pg_conn):
    _legacy(redis_client, pg_conn, online_age=timedelta(hours=3), offline_age=timedelta(minutes=5))
    check = _fresh_check(demo_plan, redis_client, pg_conn)
    assert not check.passed
    assert len(check.problems) == 1
    assert check.problems[0].startswith("online newest source time")
    assert "over the max_staleness 1:00:00" in check.problems[0]


@pytest.mark.integration
def test_stale_offline_store_fails(demo_plan, redis_client, pg_conn):
    _legacy(redis_client, pg_conn, online_age=timedelta(seconds=1), offline_age=timedelta(hours=2))
    check = _fresh_check(demo_plan, redis_client, pg_conn)
    assert not check.passed
    assert [p.split(" newest")[0] for p in check.problems] == ["offline"]


@pytest.mark.integration
def test_unreadable_or_empty_stores_never_pass(demo_plan, redis_client, pg_conn):
    check = _fresh_check(demo_plan, redis_client, pg_conn)  # no keys, no table
    assert not check.passed
    assert "no legacy online keys match 'fs:merchant_stats:{entity}'" in check.problems[0]
    assert "connection 'fsmig_legacy_offline'" in check.problems[1]
    assert pg_conn.execute("SELECT count(*) FROM fsmig.keepwarm_checks WHERE NOT passed").fetchone()[0] == 1


@pytest.mark.integration
def test_window_buckets_need_a_passing_last_check(demo_plan, pg_conn):
    plan = _plan_with_keep_warm(demo_plan, 4)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def rec(offset: float, passed: bool) -> None:
        record_check(
            pg_conn,
            WarmCheck(GROUP, t0 + timedelta(seconds=offset), passed, 1, 1, None, None, STALENESS, ()),
        )

    rec(0.2, True)  # bucket 0 verified
    rec(1.1, True)
    rec(1.9, False)  # bucket 1: went cold and stayed cold
    rec(2.5, True)  # bucket 2 verified; bucket 3 never checked
    status = warm_window_status(
        plan, GROUP, conn=pg_conn, bucket=timedelta(seconds=1), warm_since=t0, now=t0 + timedelta(seconds=10)
    )
    assert status.ended and not status.passed
    assert (status.buckets, status.verified, status.failed_checks) == (4, 2, 1)
    assert [s - t0 for s, _ in status.unverified] == [timedelta(seconds=1), timedelta(seconds=3)]
    assert "warmth was not verified in 2 of 4 day(s)" in status.explain()
    rec(1.95, True)
    rec(3.5, True)
    status = warm_window_status(
        plan, GROUP, conn=pg_conn, bucket=timedelta(seconds=1), warm_since=t0, now=t0 + timedelta(seconds=10)
    )
    assert status.passed and status.verified == 4
    early = warm_window_status(
        plan, GROUP, conn=pg_conn, bucket=timedelta(seconds=1), warm_since=t0, now=t0 + timedelta(seconds=2)
    )
    assert not early.passed and "from now" in early.explain()


@pytest.mark.integration
def test_decommission_refused_until_warm_window_verified(demo_plan, pg_url, pg_conn, redis_client):
    plan = _plan_with_keep_warm(demo_plan, 2)
    _legacy(redis_client, pg_conn, online_age=timedelta(seconds=1), offline_age=timedelta(minutes=1))
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=plan, warm_bucket=timedelta(seconds=1))
    reg.ensure_schema()
    reg.register_plan(plan)
    with pytest.raises(
        IllegalTransition, match=r"keep-warm window has not started|can only be entered from warm"
    ):
        reg.transition(GROUP, "ready_to_decommission", actor="t", reason="too early")
    reg.transition(GROUP, "shadow", actor="t", reason="deployed")
    reg.ramp(GROUP, 5, actor="t", reason="soak", soak_passed=True)
    reg.ramp(GROUP, 50, actor="t", reason="bake")
    reg.ramp(GROUP, 100, actor="t", reason="bake")
    warm = reg.transition(GROUP, "warm", actor="t", reason="cut over")

    assert _fresh_check(plan, redis_client, pg_conn).passed  # day 0 verified
    with pytest.raises(IllegalTransition) as exc:
        reg.transition(GROUP, "ready_to_decommission", actor="t", reason="too early")
    assert "the keep-warm window (0:00:02 from" in str(exc.value) and "from now" in str(exc.value)

    time.sleep(max(0.0, (warm.updated_at + timedelta(seconds=2.05) - datetime.now(UTC)).total_seconds()))
    with pytest.raises(IllegalTransition, match=r"not verified in 1 of 2 day\(s\)"):
        reg.transition(GROUP, "ready_to_decommission", actor="t", reason="day 1 unchecked")
    assert reg.state(GROUP).phase is Phase.WARM

    # The check of day 1 that ran (recorded late here, as a nightly job's row would be).
    record_check(
        pg_conn,
        WarmCheck(GROUP, warm.updated_at + timedelta(seconds=1.5), True, 40, 40, None, None, STALENESS, ()),
    )
    ready = reg.transition(GROUP, "ready_to_decommission", actor="t", reason="window passed")
    assert ready.phase is Phase.READY_TO_DECOMMISSION
    evidence = reg.audit(GROUP)[-1].evidence
    assert evidence["warm_window"]["passed"] is True and evidence["warm_window"]["buckets"] == 2
    done = reg.transition(GROUP, "decommissioned", actor="t", reason="old store removed")
    with pytest.raises(IllegalTransition, match="nothing to roll back to"):
        reg.rollback(GROUP, reason="too late", actor="t")
    assert reg.state(GROUP).version == done.version
    reg.close()
