"""``fsmigrate backfill`` and ``fsmigrate pit`` end to end on real Postgres."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.cli import main
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
PLAN = "include/demo_plan"


@pytest.fixture
def env(monkeypatch, pg_url, pg_conn):
    for conn_id in ("fsmig_new_store", "fsmig_registry", "fsmig_events", "fsmig_legacy_offline"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", pg_url)
    synthetic.create_transactions(pg_conn, events=3_000, users=40, start=T0, end=T0 + timedelta(days=10))
    pg_conn.execute("INSERT INTO raw.transactions (user_id, event_ts) VALUES ('u0', %s)", (T0,))
    return pg_conn


@pytest.mark.integration
def test_backfill_refused_with_the_gap(env, capsys, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    code = main(
        ["backfill", PLAN, "user_txn_stats", "--start", "2026-09-05", "--end", "2026-09-09", "--every", "1d"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert (
        "raw.transactions holds events from 2026-09-01T00:00Z; the window needs them from 2026-08-29T00:00Z: "
        "3 days missing" in err
    )


@pytest.mark.integration
def test_backfill_then_pit(env, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).parent.parent)
    args = ["backfill", PLAN, "user_txn_stats", "--start", "2026-09-08", "--end", "2026-09-10T00:00Z"]
    code = main([*args, "--every", "1d", "--run-id", "cli", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = env.execute(
        "SELECT count(*) FROM features_history.user_txn_stats_snapshots WHERE run_id = 'cli'"
    ).fetchone()[0]
    assert f"run cli, {rows} rows in 3 chunks (0 resumed)" in out
    assert (tmp_path / "user_txn_stats" / "cli" / "part-00000.parquet").exists()
    # the old store's history is these snapshots: point-in-time validation passes
    env.execute("CREATE SCHEMA legacy")
    env.execute(
        "CREATE TABLE legacy.user_txn_stats_history AS SELECT user_id, as_of AS event_ts, txn_count_1h,"
        " txn_count_24h, txn_count_7d, txn_amount_sum_24h, txn_amount_avg_7d, txn_amount_max_7d,"
        " distinct_merchants_7d, declined_count_24h, foreign_txn_ratio_7d, last_txn_ts"
        " FROM features_history.user_txn_stats_snapshots WHERE run_id = 'cli'"
    )
    out_dir = tmp_path / "pit_reports"
    pit = ["pit", PLAN, "user_txn_stats", "--sample", "50", "--times", "3", "--out", str(out_dir)]
    assert main([*pit, "--json", str(tmp_path / "pit.json")]) == 0
    assert (
        "PASS, 100.0000% of values agree over 50 (entity, time) pairs at 3 times" in capsys.readouterr().out
    )
    # the same JSON and HTML report as the shadow comparison (issue 11)
    assert json.loads((tmp_path / "pit.json").read_text())["verdict"] == "pass"
    html = next(out_dir.glob("pit_user_txn_stats_*.html")).read_text()
    assert "Point-in-time validation: user_txn_stats" in html and "Root causes" in html
    assert (
        main(["backfill", PLAN, "nope", "--start", "2026-09-08", "--end", "2026-09-09", "--every", "1d"]) == 2
    )
