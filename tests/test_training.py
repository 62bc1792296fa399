"""Training paths per model (from a real retention audit) and retraining verdicts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.backfill.training import (
    FeatureAgreement,
    RetrainVerdict,
    TrainingPath,
    agreements_from_result,
    model_groups,
    plan_training_paths,
    retraining_verdicts,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _table(conn, table: str, column: str, oldest: datetime) -> None:
    schema, name = table.split(".")
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.execute(f'CREATE TABLE "{schema}"."{name}" ("{column}" timestamptz)')
    conn.execute(f'INSERT INTO "{schema}"."{name}" VALUES (%s), (%s)', (oldest, NOW))


@pytest.mark.unit
def test_model_groups(demo_plan):
    groups = model_groups(demo_plan)
    assert groups["fraud_gbdt_v7"] == (
        "fraud_decision_features",
        "user_profile",
        "user_risk_profile",
        "user_txn_stats",
    )
    assert groups["merchant_risk_v2"] == ("merchant_stats",)


@pytest.mark.integration
def test_paths_follow_retention(demo_plan, pg_conn):
    long_ago = NOW - timedelta(days=400)
    _table(pg_conn, "raw.transactions", "event_ts", long_ago)  # covers every window
    _table(pg_conn, "raw.merchants", "updated_at", long_ago)
    _table(pg_conn, "raw.users", "created_at", long_ago)
    _table(pg_conn, "raw.user_events", "event_ts", NOW - timedelta(days=20))  # needs 60d + 30d
    _table(pg_conn, "raw.clickstream", "event_ts", NOW - timedelta(days=10))  # needs 21d + 7d
    _table(pg_conn, "raw.items", "updated_at", long_ago)
    paths = {p.model: p for p in plan_training_paths(demo_plan, pg_conn, now=NOW)}
    assert paths["merchant_risk_v2"].path is TrainingPath.RECOMPUTE
    fraud = paths["fraud_gbdt_v7"]
    assert fraud.path is TrainingPath.TRANSITION  # user_profile's raw.user_events is short, snapshots exist
    assert fraud.ready_at == NOW - timedelta(days=20) + timedelta(days=90)
    assert "trained on old-store features" in fraud.training_serving_gap
    assert any("raw.user_events holds events from" in g for g in fraud.gaps)
    # recs_candidate_gen_v4 reads item_popularity (clickstream short) and has no snapshot: freeze
    gen = paths["recs_candidate_gen_v4"]
    assert gen.path is TrainingPath.FREEZE
    assert gen.ready_at == NOW - timedelta(days=10) + timedelta(days=28)
    assert gen.to_dict()["path"] == "freeze"
    assert {p.path for p in plan_training_paths(demo_plan, None, now=NOW)} == {TrainingPath.UNKNOWN}


@pytest.mark.unit
def test_retraining_verdicts(demo_plan):
    exact = [
        FeatureAgreement("merchant_stats", f.name, 100, 0)
        for f in demo_plan.groups["merchant_stats"].features
    ]
    verdicts = {v.model: v for v in retraining_verdicts(demo_plan, exact)}
    assert verdicts["merchant_risk_v2"].verdict is RetrainVerdict.NO_RETRAINING_NEEDED
    assert verdicts["fraud_gbdt_v7"].verdict is RetrainVerdict.INCONCLUSIVE
    off = [*exact[:-1], FeatureAgreement("merchant_stats", "merchant_static_risk", 100, 7, 0.5, 0.1, "scale")]
    (v,) = retraining_verdicts(demo_plan, off, models=["merchant_risk_v2"])
    assert v.verdict is RetrainVerdict.RETRAIN
    assert [d.feature for d in v.differing] == ["merchant_static_risk"]
    assert "7 of 100 values (7.00%), max |delta| 0.5: scale" in v.reason


@pytest.mark.unit
def test_agreements_from_result_dict():
    result = {
        "features": {
            "a": {"compared": 10, "matched": 9, "max_abs_delta": 2},
            "b": {"compared": 10, "mismatched": 0},
        },
        "explanations": [{"feature": "a", "summary": "off-by-one at window edge"}],
    }
    got = {a.feature: a for a in agreements_from_result("g", result)}
    assert got["a"].mismatched == 1 and got["a"].explanation == "off-by-one at window edge"
    assert got["b"].mismatched == 0 and got["b"].match_rate == 1.0
