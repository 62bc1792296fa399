"""The bake gate on concurrent control: labelled predictions per cohort in real Postgres, real stats.

Streams are synthetic with known truth (binormal scores): the ramped cohort's model is as good as
its control, or worse by a known AUC. A drift shared by both cohorts fools before/after but not
the concurrent comparison.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import pytest

from airflow_fsmigration.gates.bake import Outcome, evaluate_bake
from airflow_fsmigration.gates.metrics import AUC, CONTROL, RAMPED, record_metric, record_scores
from airflow_fsmigration.serving.stats import StatsRecorder, read_window

pytestmark = pytest.mark.integration

GROUP = "merchant_stats"  # one model, merchant_risk_v2; auc_drop_pct 0.5
MODEL = "merchant_risk_v2"
NOW = datetime.now(UTC)
BASELINE = (NOW - timedelta(hours=3), NOW - timedelta(hours=2))
BAKE = (NOW - timedelta(hours=1), NOW + timedelta(hours=1))


def _scores(conn, *, n: int, drop_sep: float = 0.0, paired: bool = True, seed: int = 0, prevalence=0.25):
    """``n`` predictions per cohort; the ramped model's separation is lower by ``drop_sep``."""
    rng = np.random.default_rng(seed)
    for cohort in (RAMPED, CONTROL):
        y = rng.random(n) < prevalence
        base = 1.8 * y + rng.normal(size=n)  # AUC ~0.90
        if cohort == RAMPED:
            score = base - drop_sep * y + rng.normal(scale=0.15, size=n)
            control = base if paired else None
        else:
            score, control = base, None
        ts = [BAKE[0] + timedelta(seconds=i % 3000) for i in range(n)]
        rows = [
            (t, int(lab), float(s), None if control is None else float(c))
            for t, lab, s, c in zip(ts, y, score, control if control is not None else score, strict=True)
        ]
        record_scores(conn, MODEL, cohort, rows)


def _traffic(redis_client, *, old_us=2_000, new_us=2_500, n=400):
    rec = StatsRecorder(redis_client, bucket_s=10, flush_interval_s=0)
    for i in range(n):
        rec.record(GROUP, "old", old_us + (i * 37) % 400)
        rec.record(GROUP, "new", new_us + (i * 37) % 400)
    rec.flush()
    rec.close()


def _evaluate(plan, conn, redis_client):
    return evaluate_bake(
        plan,
        GROUP,
        metrics_conn=conn,
        read_stats=partial(read_window, redis_client),
        bake_start=BAKE[0],
        bake_end=BAKE[1],
        baseline_start=BASELINE[0],
        baseline_end=BASELINE[1],
    )


def _auc(result):
    return result.details["models"][MODEL][AUC]


def test_healthy_paired_bake_passes_with_interval_and_cohort_sizes(demo_plan, pg_conn, redis_client):
    _scores(pg_conn, n=12_000)
    _traffic(redis_client)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.PASS, result.summary()
    dec = _auc(result)["concurrent"]
    assert dec["decision"] == "pass" and dec["method"] == "paired shadow, DeLong"
    assert dec["interval"][1] < dec["margin"] < 0.005
    assert dec["cohorts"]["paired"]["positives"] > 2000
    summary = result.summary()
    assert "model merchant_risk_v2: auc drop" in summary and "vs margin" in summary
    assert "new store latency shift" in summary


def test_drop_of_twice_the_margin_fails_with_its_interval(demo_plan, pg_conn, redis_client):
    _scores(pg_conn, n=12_000, drop_sep=0.12)  # AUC ~0.90 -> ~0.89: about 2x the 0.45-point margin
    _traffic(redis_client)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.FAIL, result.summary()
    (breach,) = result.breaches
    assert breach.trigger == "auc_drop_pct" and breach.threshold == 0.5 and breach.observed > 0.5
    dec = _auc(result)["concurrent"]
    assert dec["interval"][0] > dec["margin"]
    assert f"[{dec['interval'][0]:.4g}, {dec['interval'][1]:.4g}]" in breach.message


def test_too_few_positives_is_inconclusive_and_names_the_minimum(demo_plan, pg_conn, redis_client):
    _scores(pg_conn, n=400, drop_sep=0.5)
    _traffic(redis_client)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.INCONCLUSIVE, result.summary()
    (line,) = [m for m in result.missing if "auc drop" in m]
    assert "below the minimum evidence: need" in line and "labelled positives" in line


def test_unpaired_cohorts_when_no_shadow_score(demo_plan, pg_conn, redis_client):
    _scores(pg_conn, n=3000, paired=False, drop_sep=1.0)  # a large drop: visible unpaired too
    _traffic(redis_client)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    dec = _auc(result)["concurrent"]
    assert dec["method"] == "ramped vs control cohort, DeLong"
    assert set(dec["cohorts"]) == {RAMPED, CONTROL}


def test_common_drift_fools_before_after_but_not_the_concurrent_control(demo_plan, pg_conn, redis_client):
    # The aggregate AUC points fell 2% from the baseline (a drift that hit every entity), but
    # the ramped cohort is as good as its control over the same window.
    for i, v in enumerate([0.90, 0.90]):
        record_metric(pg_conn, MODEL, AUC, v, ts=BASELINE[0] + timedelta(minutes=i + 1))
    for i, v in enumerate([0.882, 0.882]):
        record_metric(pg_conn, MODEL, AUC, v, ts=BAKE[0] + timedelta(minutes=i + 1))
    _scores(pg_conn, n=12_000)
    _traffic(redis_client)
    result = _evaluate(demo_plan, pg_conn, redis_client)
    assert result.outcome is Outcome.PASS, result.summary()
    auc = _auc(result)
    assert auc["drop_pct"] == pytest.approx(2.0)  # before/after: shown as the secondary check
    assert auc["decided_by"] == "concurrent control"


def test_latency_over_the_band_without_confidence_is_inconclusive(demo_plan, pg_conn, redis_client):
    _scores(pg_conn, n=12_000)
    rec = StatsRecorder(redis_client, bucket_s=10, flush_interval_s=0)
    for i in range(400):
        rec.record(GROUP, "old", 2_000 + (i * 37) % 400)
        # same body, a tail of 6 slow reads in 400: the p99 is up 25 ms, on 6 reads' evidence
        rec.record(GROUP, "new", 2_000 + (i * 37) % 400 + (25_000 if i % 70 == 0 else 0))
    rec.flush()
    rec.close()
    result = _evaluate(demo_plan, pg_conn, redis_client)
    lat = result.details["serving"]["latency"]
    assert lat["shift_decision"] == "pass"
    assert result.outcome is Outcome.INCONCLUSIVE, result.summary()
    assert any("over the 20 ms band but not with confidence" in m for m in result.missing)


@pytest.mark.unit
def test_an_inconclusive_bake_keeps_gathering_evidence_until_the_grace_is_over():
    from airflow_fsmigration.gates.bake import sequential_bake_check
    from airflow_fsmigration.gates.check import FAIL, PASS, WAIT, GateCheck

    end = datetime(2026, 1, 1, 12, tzinfo=UTC)
    windows = {"bake_start": (end - timedelta(hours=48)).isoformat(), "bake_end": end.isoformat()}
    seen: list[str] = []

    def check(w, now):  # inconclusive over the nominal window, decided once it is longer
        seen.append(w["bake_end"])
        longer = w["bake_end"] != windows["bake_end"]
        if not longer:
            status = WAIT if (now - end).total_seconds() < 600 else FAIL
            return GateCheck(status, "only 80 read(s)", {"outcome": "inconclusive"})
        return GateCheck(PASS, "passed", {"outcome": "pass"})

    during = sequential_bake_check(check, windows, end + timedelta(seconds=60), inconclusive_grace=600)
    assert (
        during.status == PASS and during.details["extended_to"] == (end + timedelta(seconds=60)).isoformat()
    )
    assert "after the" in during.reason and len(seen) == 2
    # before the window ends, and once the grace is over, the nominal window's answer stands
    assert (
        sequential_bake_check(check, windows, end - timedelta(seconds=1), inconclusive_grace=600).status
        == WAIT
    )
    assert (
        sequential_bake_check(check, windows, end + timedelta(seconds=601), inconclusive_grace=600).status
        == FAIL
    )
