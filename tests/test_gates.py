"""Bake gates on real Postgres metrics and real router stats in Redis (written by serving.stats)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest

from airflow_fsmigration.gates.bake import Outcome, evaluate_bake
from airflow_fsmigration.gates.metrics import AUC, PRECISION, record_metric
from airflow_fsmigration.plan.model import RollbackTriggers
from airflow_fsmigration.serving.stats import StatsRecorder, StatsUnavailable, read_window

GROUP = "merchant_stats"  # used by one model, merchant_risk_v2
MODEL = "merchant_risk_v2"
NOW = datetime.now(UTC)
BASELINE = (NOW - timedelta(hours=3), NOW - timedelta(hours=2))
BAKE = (NOW - timedelta(hours=1), NOW + timedelta(hours=1))


def _windows() -> dict[str, datetime]:
    return {
        "baseline_start": BASELINE[0],
        "baseline_end": BASELINE[1],
        "bake_start": BAKE[0],
        "bake_end": BAKE[1],
    }


def _metrics(conn, metric: str, baseline: list[float | None], bake: list[float | None]) -> None:
    for i, v in enumerate(baseline):
        record_metric(conn, MODEL, metric, v, ts=BASELINE[0] + timedelta(minutes=i + 1))
    for i, v in enumerate(bake):
        record_metric(conn, MODEL, metric, v, ts=BAKE[0] + timedelta(minutes=i + 1), cohort="new")


def _traffic(redis_client, *, old_us: int, new_us: int, n: int = 300, new_errors: int = 0) -> None:
    rec = StatsRecorder(redis_client, bucket_s=10, flush_interval_s=0)
    for i in range(n):
        rec.record(GROUP, "old", old_us + i % 50)
        rec.record(GROUP, "new", new_us + i % 50, error=i < new_errors)
    rec.flush()
    rec.close()


def _evaluate(plan, pg_conn, redis_client, **kw):
    kw.setdefault("read_stats", partial(read_window, redis_client))
    return evaluate_bake(plan, GROUP, metrics_conn=pg_conn, **_windows(), **kw)


@pytest.mark.integration
def test_healthy_bake_passes(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [0.900, 0.902], [0.899, 0.900])  # -0.17%: within the 0.5% trigger
    _traffic(redis_client, old_us=2_000, new_us=4_000)  # p99 +2 ms: within the 20 ms trigger
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.PASS, result.summary()
    assert result.breaches == []
    auc = result.details["models"][MODEL][AUC]
    assert (auc["bake_points"], auc["baseline_points"]) == (2, 2)
    assert auc["drop_pct"] == pytest.approx((0.901 - 0.8995) / 0.901 * 100)
    assert result.details["serving"]["new"]["count"] == 300
    assert 1.9 < result.details["serving"]["p99_increase_ms"] < 2.2


@pytest.mark.integration
def test_injected_auc_drop_fails(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [0.900, 0.900], [0.893, 0.893])  # -0.78%
    _traffic(redis_client, old_us=2_000, new_us=2_500)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL
    assert [(b.trigger, b.model) for b in result.breaches] == [("auc_drop_pct", MODEL)]
    assert result.breaches[0].observed == pytest.approx(0.7777, abs=1e-3)
    assert result.breaches[0].threshold == 0.5
    assert "merchant_risk_v2: auc fell 0.778%" in result.summary()


@pytest.mark.integration
def test_injected_p99_rise_fails(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [0.900], [0.901])
    _traffic(redis_client, old_us=2_000, new_us=30_000)  # +28 ms
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL
    assert [b.trigger for b in result.breaches] == ["p99_latency_increase_ms"]
    assert 27.5 < result.breaches[0].observed < 28.5
    assert result.details["serving"]["p99_reference"] == "bake window"


@pytest.mark.integration
def test_error_rate_breach_fails_and_fail_beats_missing(demo_plan, pg_conn, redis_client):
    # No model metrics at all (would be inconclusive), but 1 error in 300 reads = 0.33% > 0.1%.
    _traffic(redis_client, old_us=2_000, new_us=2_100, new_errors=1)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL
    assert [b.trigger for b in result.breaches] == ["error_rate_pct"]
    assert result.breaches[0].observed == pytest.approx(100 / 300)
    assert any("labels have not arrived" in m for m in result.missing)


@pytest.mark.integration
def test_missing_metrics_are_inconclusive_never_pass(demo_plan, pg_conn, redis_client):
    _traffic(redis_client, old_us=2_000, new_us=2_100)
    nothing = _evaluate(demo_plan, pg_conn, redis_client)
    assert nothing.outcome is Outcome.INCONCLUSIVE
    assert nothing.missing == [
        "model merchant_risk_v2: 0 labelled auc point(s) in the bake window (need 1): labels have not arrived"
    ]
    # Scored but not labelled yet: still inconclusive, and it says so.
    _metrics(pg_conn, AUC, [0.9], [None, None, None])
    pending = _evaluate(demo_plan, pg_conn, redis_client)
    assert pending.outcome is Outcome.INCONCLUSIVE
    assert "3 scored but not labelled yet" in pending.missing[0]


@pytest.mark.integration
def test_missing_baseline_or_traffic_is_inconclusive(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [], [0.9])
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.INCONCLUSIVE
    assert result.missing == [
        "model merchant_risk_v2: no usable pre-ramp auc baseline (0 point(s)); record baseline metrics before ramping",
        "only 0 read(s) from the new store in the bake window (need 100 for a p99)",
    ]


@pytest.mark.integration
def test_cutover_compares_with_old_store_baseline_window(demo_plan, pg_conn, redis_client):
    # At 100% the old store serves nothing in the bake window: its p99 comes from the baseline window.
    _metrics(pg_conn, AUC, [0.9], [0.9])
    rec = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0)
    for i in range(200):
        rec.record(GROUP, "old", 2_000 + i % 10)
    rec.flush()
    ramp_at = datetime.fromtimestamp(int(time.time()) + 1, tz=UTC)  # the next 1 s bucket
    time.sleep(max(0.0, ramp_at.timestamp() - time.time()) + 0.01)
    for i in range(200):
        rec.record(GROUP, "new", 30_000 + i % 10)
    rec.flush()
    rec.close()
    result = evaluate_bake(
        demo_plan,
        GROUP,
        metrics_conn=pg_conn,
        read_stats=partial(read_window, redis_client),
        bake_start=ramp_at,
        bake_end=BAKE[1],
        baseline_start=BASELINE[0],
        baseline_end=ramp_at,
    )
    assert result.details["serving"]["old"]["count"] == 0
    assert result.details["serving"]["old_baseline"]["count"] == 200
    assert result.details["serving"]["p99_reference"] == "pre-ramp baseline"
    assert result.outcome is Outcome.FAIL
    assert [b.trigger for b in result.breaches] == ["p99_latency_increase_ms"]
    assert 27.5 < result.breaches[0].observed < 28.5


@pytest.mark.integration
def test_unreadable_stats_are_inconclusive(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [0.9], [0.9])

    def down(*_a, **_k):
        raise StatsUnavailable("group 'merchant_stats': serving stats could not be read from Redis")

    result = _evaluate(demo_plan, pg_conn, redis_client, read_stats=down)
    assert result.outcome is Outcome.INCONCLUSIVE
    assert result.missing == [
        "serving stats could not be read: StatsUnavailable: group 'merchant_stats': serving stats could not be read from Redis"
    ]


@pytest.mark.integration
def test_precision_trigger_when_the_plan_sets_it(demo_plan, pg_conn, redis_client):
    triggers = RollbackTriggers(auc_drop_pct=0.5, precision_drop_pct=2.0)
    plan = demo_plan.model_copy(
        update={"defaults": demo_plan.defaults.model_copy(update={"rollback_triggers": triggers})}
    )
    _metrics(pg_conn, AUC, [0.9], [0.9])
    _metrics(pg_conn, PRECISION, [0.80], [0.76])  # -5%
    _traffic(redis_client, old_us=2_000, new_us=2_100)
    result = _evaluate(plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL
    assert [b.trigger for b in result.breaches] == ["precision_at_threshold_drop_pct"]
    # Without a precision trigger the same drop is shown but does not gate.
    assert _evaluate(demo_plan, pg_conn, redis_client).outcome is Outcome.PASS


@pytest.mark.integration
def test_bake_cohort_filter(demo_plan, pg_conn, redis_client):
    _metrics(pg_conn, AUC, [0.9], [0.85])  # the bad rows are cohort "new"
    record_metric(pg_conn, MODEL, AUC, 0.9, ts=BAKE[0] + timedelta(minutes=5), cohort="old")
    _traffic(redis_client, old_us=2_000, new_us=2_100)
    assert _evaluate(demo_plan, pg_conn, redis_client, bake_cohort="old").outcome is Outcome.PASS
    assert _evaluate(demo_plan, pg_conn, redis_client, bake_cohort="new").outcome is Outcome.FAIL


@pytest.mark.integration
def test_reads_turned_away_by_the_breaker_are_not_a_pass(demo_plan, pg_conn, redis_client):
    # The new store served its first 1000 reads well, then broke: its circuit breaker opened and
    # turned the next 20000 reads routed to it over to the old store. Those reads never reached the
    # new store, so they are neither in its count nor its errors; the bake must not pass on the
    # reads from before the breaker opened.
    _metrics(pg_conn, AUC, [0.900], [0.900])
    _traffic(redis_client, old_us=2_000, new_us=2_100, n=1000)
    rec = StatsRecorder(redis_client, bucket_s=10, flush_interval_s=0)
    for _ in range(20_000):
        rec.record_rejected(GROUP)
    rec.flush()
    rec.close()
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL, result.summary()
    assert [b.trigger for b in result.breaches] == ["error_rate_pct"]
    assert result.breaches[0].observed == pytest.approx(20_000 / 21_000 * 100)
    assert "20000 turned away by its open circuit breaker" in result.breaches[0].message
    assert result.details["serving"]["new_rejected"] == 20_000
