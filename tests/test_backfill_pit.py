"""Point-in-time validation against a real Postgres offline history with injected differences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.backfill import pit, replay
from airflow_fsmigration.backfill.training import RetrainVerdict, agreements_from_result, retraining_verdicts
from airflow_fsmigration.stores.postgres_offline import PostgresOfflineSource
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
GROUP = "user_txn_stats"
FEATURES = (
    "txn_count_1h, txn_count_24h, txn_count_7d, txn_amount_sum_24h, txn_amount_avg_7d, txn_amount_max_7d,"
    " distinct_merchants_7d, declined_count_24h, foreign_txn_ratio_7d, last_txn_ts"
)


@pytest.fixture
def history(demo_plan, pg_conn):
    """The old store's history = the definition's own daily snapshots (identical by construction)."""
    synthetic.create_transactions(pg_conn, events=12_000, users=80, start=T0, end=T0 + timedelta(days=14))
    res = replay.run_backfill(
        demo_plan,
        GROUP,
        pg_conn,
        pg_conn,
        start=T0 + timedelta(days=8),
        end=T0 + timedelta(days=12),
        every=timedelta(days=1),
    )
    pg_conn.execute("CREATE SCHEMA legacy")
    pg_conn.execute(
        f"CREATE TABLE legacy.user_txn_stats_history AS SELECT user_id, as_of AS event_ts, {FEATURES}"
        " FROM features_history.user_txn_stats_snapshots WHERE run_id = %s",
        (res.run_id,),
    )
    return res.rows


@pytest.mark.integration
def test_identical_history_is_consistent(demo_plan, pg_conn, pg_url, history):
    with PostgresOfflineSource(pg_url, demo_plan) as offline:
        result = pit.validate_point_in_time(
            demo_plan, GROUP, pg_conn, offline, sample_size=history, n_times=5
        )
    assert result.pairs == history and len(result.times) == 5
    assert result.verdict == "pass" and result.consistency == 1.0
    assert result.comparison.explanations == []


@pytest.mark.integration
def test_injected_differences_are_found_and_explained(demo_plan, pg_conn, pg_url, history):
    day9, day11 = T0 + timedelta(days=9), T0 + timedelta(days=11)
    # the old pipeline's 24h window excluded its right edge for 6 entities on day 9 (off by one)
    off = pg_conn.execute(
        "UPDATE legacy.user_txn_stats_history SET txn_count_24h = txn_count_24h - 1 WHERE ctid IN ("
        " SELECT ctid FROM legacy.user_txn_stats_history WHERE event_ts = %s AND txn_count_24h > 0"
        " ORDER BY user_id LIMIT 6)",
        (day9,),
    ).rowcount
    # and wrote last_txn_ts in local time (UTC+1) for 4 entities on day 11
    tz = pg_conn.execute(
        "UPDATE legacy.user_txn_stats_history SET last_txn_ts = last_txn_ts + interval '1 hour' WHERE ctid IN ("
        " SELECT ctid FROM legacy.user_txn_stats_history WHERE event_ts = %s ORDER BY user_id LIMIT 4)",
        (day11,),
    ).rowcount
    assert (off, tz) == (6, 4)
    with PostgresOfflineSource(pg_url, demo_plan) as offline:
        result = pit.validate_point_in_time(
            demo_plan, GROUP, pg_conn, offline, sample_size=history, n_times=5
        )
    comparison = result.comparison
    assert result.pairs == history
    mismatched = {name: f.mismatched for name, f in comparison.features.items() if f.mismatched}
    assert mismatched == {"txn_count_24h": 6, "last_txn_ts": 4}
    kinds = {(e.feature, str(e.kind)): e.rows for e in comparison.explanations}
    assert kinds == {("txn_count_24h", "off_by_one"): 6, ("last_txn_ts", "timezone_shift"): 4}
    assert all(
        "@2026-09-10T00:00Z" in s
        for e in comparison.explanations
        if e.feature == "txn_count_24h"
        for s in e.samples
    )
    assert result.to_dict()["consistency"] == pytest.approx(1 - 10 / (history * 10))
    # the model verdict follows: fraud_rules_shadow reads only this group
    (verdict,) = retraining_verdicts(
        demo_plan, agreements_from_result(GROUP, comparison), models=["fraud_rules_shadow"]
    )
    assert verdict.verdict is RetrainVerdict.RETRAIN
    assert [d.feature for d in verdict.differing] == ["txn_count_24h", "last_txn_ts"]
    assert verdict.differing[0].mismatched == 6 and verdict.differing[0].max_abs_delta == 1.0
    assert verdict.differing[0].explanation.startswith("off_by_one: ")
    assert verdict.differing[1].max_abs_delta == 3600.0


@pytest.mark.integration
def test_entity_missing_in_new_store_is_a_missing_key(demo_plan, pg_conn, pg_url, history):
    pg_conn.execute(
        "INSERT INTO legacy.user_txn_stats_history (user_id, event_ts, txn_count_7d) VALUES ('ghost', %s, 3)",
        (T0 + timedelta(days=10),),
    )
    pairs = [("ghost", T0 + timedelta(days=10)), ("u1", T0 + timedelta(days=10))]
    with PostgresOfflineSource(pg_url, demo_plan) as offline:
        result = pit.validate_point_in_time(demo_plan, GROUP, pg_conn, offline, pairs=pairs)
    assert result.comparison.missing_in_new == 1
    assert result.comparison.missing_in_new_samples == ["ghost@2026-09-11T00:00Z"]
