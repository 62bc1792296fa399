"""Retention audit against a real Postgres event log: exact gaps, promise vs reality, refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.backfill.retention import (
    RetentionGapError,
    audit_plan_retention,
    audit_retention,
    group_event_sources,
    human_duration,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _events(conn, table: str, column: str, oldest: datetime, newest: datetime) -> None:
    schema, name = table.split(".")
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    conn.execute(f'CREATE TABLE "{schema}"."{name}" (id bigint, "{column}" timestamptz)')
    conn.execute(f'INSERT INTO "{schema}"."{name}" VALUES (1, %s), (2, %s)', (oldest, newest))


@pytest.mark.unit
def test_human_duration():
    assert human_duration(timedelta(days=7)) == "7 days"
    assert human_duration(timedelta(days=1, hours=3, minutes=5)) == "1 day 3 hours"
    assert human_duration(timedelta(minutes=45)) == "45 minutes"


@pytest.mark.unit
def test_derived_group_reads_upstream_sources(demo_plan):
    sources = {(src.table, via) for via, src in group_event_sources(demo_plan, "fraud_decision_features")}
    assert sources == {
        ("raw.transactions", "user_txn_stats"),
        ("raw.users", "user_profile"),
        ("raw.user_events", "user_profile"),
    }


@pytest.mark.integration
def test_gap_is_named_exactly(demo_plan, pg_conn):
    _events(pg_conn, "raw.transactions", "event_ts", datetime(2026, 9, 1, tzinfo=UTC), NOW)
    report = audit_retention(
        demo_plan, "user_txn_stats", pg_conn, start=datetime(2026, 9, 1, tzinfo=UTC), end=NOW, now=NOW
    )
    assert not report.covered
    assert report.gaps == [
        "raw.transactions holds events from 2026-09-01T00:00Z; the window needs them from "
        "2026-08-25T00:00Z: 7 days missing"
    ]
    (src,) = report.sources
    assert src.missing == timedelta(days=7)
    # declared 90d, held 61d: the promise is not kept
    assert src.retention_honoured(NOW) is False
    assert any("declared retention 90 days but it holds only 61 days" in w for w in report.warnings)
    with pytest.raises(RetentionGapError, match="7 days missing"):
        report.raise_if_gap()


@pytest.mark.integration
def test_covered_window_and_missing_table(demo_plan, pg_conn):
    _events(pg_conn, "raw.transactions", "event_ts", datetime(2026, 8, 1, tzinfo=UTC), NOW)
    report = audit_retention(
        demo_plan, "user_txn_stats", pg_conn, start=datetime(2026, 8, 8, tzinfo=UTC), end=NOW, now=NOW
    )
    assert report.covered and report.gaps == []
    merchant = audit_retention(
        demo_plan, "merchant_stats", pg_conn, start=datetime(2026, 10, 1, tzinfo=UTC), end=NOW, now=NOW
    )
    assert not merchant.covered
    assert merchant.gaps == ["raw.merchants does not exist in the event log"]


@pytest.mark.integration
def test_plan_wide_audit_uses_backfill_window(demo_plan, pg_conn):
    _events(pg_conn, "raw.transactions", "event_ts", NOW - timedelta(days=90), NOW)
    reports = {r.group: r for r in audit_plan_retention(demo_plan, pg_conn, now=NOW)}
    assert set(reports) == set(demo_plan.groups)
    txn = reports["user_txn_stats"]
    assert txn.covered and txn.start == NOW - timedelta(days=60)
    assert txn.to_dict()["sources"][0]["required_start"] == "2026-08-26T00:00Z"
    assert not reports["user_profile"].covered  # raw.users / raw.user_events absent here
