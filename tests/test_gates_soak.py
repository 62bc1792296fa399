"""The soak gate counts only evidence it earned: after the last entry to shadow, every shard present.

Real Postgres registry and result store; runs are inserted as rows of ``fsmig.shadow_runs`` (what
``ResultStore.record`` writes), so the test does not depend on the comparison engine.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.compare.results import ResultStore, ShadowRun, soak_from_runs
from airflow_fsmigration.db import SCHEMA
from airflow_fsmigration.registry.routing import Registry

GROUP = "user_txn_stats"
DAY = timedelta(days=1)


def _record(conn, when: datetime, verdict: str = "pass", shard: str | None = None) -> None:
    conn.execute(
        f'INSERT INTO "{SCHEMA}".shadow_runs (run_id, group_name, logical_time, shard, verdict, threshold,'
        " match_rate, entities_requested, entities_compared, feature_rates, explanations, result)"
        " VALUES (%s, %s, %s, %s, %s, 0.995, %s, 100, 100, '{}', '[]', %s)",
        (uuid.uuid4().hex, GROUP, when, shard, verdict, 1.0 if verdict == "pass" else 0.9, json.dumps({})),
    )


def _streak(conn, start: datetime, days: int, **kw) -> datetime:
    """One passing comparison per day from ``start`` (inclusive) for ``days`` + 1 days; returns the last."""
    for d in range(days + 1):
        _record(conn, start + d * DAY, **kw)
    return start + days * DAY


@pytest.fixture
def setup(pg_url, pg_conn, demo_plan):
    registry = Registry(pg_url, plan=demo_plan)
    registry.ensure_schema()
    registry.register_plan(demo_plan)
    results = ResultStore(pg_conn)
    results.ensure()
    yield registry, results
    registry.close()


@pytest.mark.integration
def test_soak_after_rollback_needs_a_fresh_streak(setup, pg_conn, demo_plan):
    registry, results = setup
    soak = demo_plan.settings_for(GROUP).shadow_soak
    days = int(soak / DAY)
    registry.transition(GROUP, "shadow", actor="t", reason="deployed")
    t0 = datetime.now(UTC)
    last = _streak(pg_conn, t0 + DAY, days)
    green = results.soak_status(demo_plan, GROUP, now=last + timedelta(hours=1))
    assert green.satisfied, green.reason
    registry.ramp(GROUP, 5, actor="t", reason="soak green", soak_passed=green)
    registry.rollback(GROUP, actor="t", reason="bake breach: p99 +31 ms")

    # Rolled back: the streak from before the rollback is no evidence any more.
    after_rollback = results.soak_status(demo_plan, GROUP, now=last + timedelta(hours=1))
    assert not after_rollback.satisfied
    assert "rolled back" in after_rollback.reason

    # Back in shadow: still nothing counts until comparisons made after re-entering it cover the soak.
    registry.transition(GROUP, "shadow", actor="t", reason="fixed the window boundary, shadow again")
    reentered = registry.last_entered(GROUP, "shadow")
    st = results.soak_status(demo_plan, GROUP, now=last + timedelta(hours=1))
    assert not st.satisfied and st.passing_runs == 0, st.reason
    assert st.counted_since == reentered

    fresh_start = last + 2 * DAY
    half = _streak(pg_conn, fresh_start, days // 2)
    st = results.soak_status(demo_plan, GROUP, now=half + timedelta(hours=1))
    assert not st.satisfied and st.green_for == (days // 2) * DAY, st.reason
    fresh_last = _streak(pg_conn, half + DAY, days - days // 2 - 1)
    st = results.soak_status(demo_plan, GROUP, now=fresh_last + timedelta(hours=1))
    assert st.satisfied and st.green_since == fresh_start, st.reason
    registry.ramp(GROUP, 5, actor="t", reason="fresh soak green", soak_passed=st)


@pytest.mark.integration
def test_missing_shard_makes_the_day_inconclusive_not_green(setup, pg_conn, demo_plan):
    registry, results = setup
    registry.transition(GROUP, "shadow", actor="t", reason="deployed")
    days = int(demo_plan.settings_for(GROUP).shadow_soak / DAY)
    start = datetime.now(UTC) + DAY
    for d in range(days + 1):
        for k in range(4):
            if d == days and k == 2:
                continue  # shard 2/4 of the last day could not read its store: it recorded nothing
            _record(pg_conn, start + d * DAY, shard=f"{k}/4")
    now = start + days * DAY + timedelta(hours=1)
    st = results.soak_status(demo_plan, GROUP, now=now)
    assert not st.satisfied, st.reason
    assert st.green_for == (days - 1) * DAY
    assert st.last_verdict == "inconclusive" and st.incomplete_times == 1

    # The missing shard runs late and passes: now the day is complete and the soak is green.
    _record(pg_conn, start + days * DAY, shard="2/4")
    st = results.soak_status(demo_plan, GROUP, now=now)
    assert st.satisfied and st.green_for == days * DAY, st.reason


def _run(t: datetime, verdict: str = "pass", shard: str | None = None) -> ShadowRun:
    return ShadowRun(uuid.uuid4().hex, "g", t, verdict, 0.995, 1.0, 10, 10, {}, [], shard=shard)


@pytest.mark.unit
def test_shards_of_one_time_must_all_pass():
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    req = 2 * DAY
    complete = [_run(t0 + d * DAY, shard=f"{k}/2") for d in range(3) for k in range(2)]
    assert soak_from_runs("g", complete, req, now=t0 + 2 * DAY, max_gap=DAY).satisfied
    # Only ever shard 0 of 2: never green, whatever the span.
    half = [_run(t0 + d * DAY, shard="0/2") for d in range(10)]
    st = soak_from_runs("g", half, req, now=t0 + 9 * DAY, max_gap=DAY)
    assert not st.satisfied and st.passing_runs == 0
    # An unsharded pass covers every shard; a failing shard fails the time.
    mixed = [_run(t0, shard="0/2"), _run(t0), _run(t0 + DAY), _run(t0 + 2 * DAY, shard="1/2")]
    mixed += [_run(t0 + 2 * DAY, "fail", shard="0/2")]
    st = soak_from_runs("g", mixed, req, now=t0 + 2 * DAY, max_gap=DAY)
    assert not st.satisfied and st.last_fail_at == t0 + 2 * DAY
