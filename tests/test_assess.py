"""``fsmigrate assess``: the inventory report, with and without a reachable event log."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from airflow_fsmigration.backfill.retention import human_duration
from airflow_fsmigration.reports.assess import write_assessment

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
GROUPS = [
    "merchant_stats",
    "item_popularity",
    "user_session_stats",
    "user_profile",
    "user_txn_stats",
    "user_recs_affinity",
    "user_risk_profile",
    "fraud_decision_features",
]
MODELS = [
    "account_takeover_v3",
    "fraud_gbdt_v7",
    "fraud_rules_shadow",
    "merchant_risk_v2",
    "recs_candidate_gen_v4",
    "recs_ranker_v12",
]


@pytest.fixture
def no_event_log(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_FSMIG_EVENTS", raising=False)


@pytest.mark.unit
def test_inventory_without_event_log(demo_plan, tmp_path, no_event_log):
    result = write_assessment(demo_plan, tmp_path, now=NOW)
    data = result.data
    assert [g["name"] for g in data["groups"]] == GROUPS  # wave order, lowest blast radius first
    assert data["waves"] == [GROUPS[:5], GROUPS[5:7], GROUPS[7:]]
    by_name = {g["name"]: g for g in data["groups"]}
    assert by_name["user_txn_stats"]["risk_tier"] == "high"
    assert by_name["merchant_stats"]["risk_tier"] == "low"
    assert by_name["fraud_decision_features"]["wave"] == 3
    assert by_name["user_txn_stats"]["models"] == ["fraud_gbdt_v7", "fraud_rules_shadow"]
    assert by_name["item_popularity"]["load_test_qps"] == 50_000
    assert by_name["merchant_stats"]["load_test"] is False
    # Features unused for 6 months, and unknown last use listed as unknown (not as used).
    assert [(u["group"], u["feature"]) for u in data["unused_features"]] == [
        ("user_profile", "failed_login_count_24h"),
        ("user_recs_affinity", "preferred_surface"),
    ]
    features = sum(len(g.features) for g in demo_plan.groups.values())
    assert len(data["unknown_last_used"]) == features - 2
    assert "user_txn_stats.txn_count_1h" in data["unknown_last_used"]
    # Model -> group table.
    models = {m["model"]: m["groups"] for m in data["models"]}
    assert sorted(models) == MODELS
    assert models["fraud_gbdt_v7"] == [
        "fraud_decision_features",
        "user_profile",
        "user_risk_profile",
        "user_txn_stats",
    ]
    assert models["recs_ranker_v12"] == ["item_popularity", "user_recs_affinity", "user_session_stats"]
    # No event log configured: said so, never a pass.
    assert data["retention"]["ran"] is False
    assert "AIRFLOW_CONN_FSMIG_EVENTS" in data["retention"]["reason"]
    assert {g["retention"] for g in data["groups"]} == {"not run"}
    assert {t["path"] for t in data["training"]} == {"unknown"}
    assert "Retention audit not run: connection 'fsmig_events' is not configured" in result.summary

    html = result.html_path.read_text()
    md = result.markdown_path.read_text()
    for name in GROUPS + MODELS:
        assert name in html and name in md
    assert html.count("<svg") == 2  # dependency graph and QPS chart, inline
    assert re.search(r"<(link|script)\b", html) is None  # self-contained
    assert "Retention audit not run:" in html and "**Retention audit not run:**" in md
    assert "failed_login_count_24h" in md.split("## Features unused for 6 months")[1].split("## Models")[0]
    assert json.loads(result.json_path.read_text())["plan"]["groups"] == 8


@pytest.mark.unit
def test_html_escapes_plan_text(demo_plan, tmp_path, no_event_log):
    group = demo_plan.groups["merchant_stats"].model_copy(update={"description": "<script>alert(1)</script>"})
    plan = demo_plan.model_copy(update={"groups": {**demo_plan.groups, "merchant_stats": group}})
    html = write_assessment(plan, tmp_path, now=NOW, retention=False).html_path.read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.integration
def test_event_log_that_does_not_answer_is_reported_not_passed(demo_plan, tmp_path, monkeypatch):
    from fsmig_dev.devservices import airflow_conn_env, free_port

    monkeypatch.setenv(
        *next(
            iter(airflow_conn_env("fsmig_events", f"postgresql://postgres@127.0.0.1:{free_port()}/x").items())
        )
    )
    result = write_assessment(demo_plan, tmp_path, now=NOW)
    assert result.data["retention"]["ran"] is False
    assert "connection 'fsmig_events' (Postgres) did not answer" in result.data["retention"]["reason"]
    assert "Retention audit not run: connection 'fsmig_events' (Postgres) did not answer" in result.summary


@pytest.mark.integration
def test_retention_audit_on_generated_demo_data(demo_plan, pg_url, redis_url, tmp_path, monkeypatch):
    from fsmig_dev.demo.data import generate_demo

    env = generate_demo(
        pg_url,
        pg_url,
        pg_url,
        redis_url,
        demo_plan,
        entities=200,
        days=90,
        history_entities=20,
        now=NOW,
        plan_dir=tmp_path / "plan",
    )
    for key, value in env.conn_env.items():
        monkeypatch.setenv(key, value)
    result = write_assessment(env.load_plan(), tmp_path / "out", now=env.now)
    audit = result.data["retention"]
    assert audit["ran"] is True and audit["conn_id"] == "fsmig_events"
    # raw.clickstream keeps 30 days; user_session_stats needs 14 + 30 (and its downstream inherits it).
    gaps = sorted(r["group"] for r in audit["reports"] if not r["covered"])
    assert gaps == ["user_recs_affinity", "user_session_stats"]
    assert (audit["covered"], audit["gaps"]) == (6, 2)
    session = next(r for r in audit["reports"] if r["group"] == "user_session_stats")
    assert session["gaps"] == [
        "raw.clickstream holds events from "
        + session["sources"][0]["oldest"]
        + "; the window needs them from 2026-10-07T12:00Z: "
        + session["gaps"][0].rsplit(": ", 1)[1]
    ]
    assert "13 days" in session["gaps"][0]
    training = {t["model"]: t["path"] for t in result.data["training"]}
    assert training["recs_ranker_v12"] == "transition"  # reads the gapped groups, has old snapshots
    assert training["fraud_gbdt_v7"] == "recompute"
    assert "6 of 8 groups covered, 2 with gaps" in result.summary
    html = result.html_path.read_text()
    assert "raw.clickstream holds events from" in html
    assert "retention audit not run" not in html.lower()


@pytest.mark.integration
def test_event_log_without_history_reports_every_gap(demo_plan, pg_url, tmp_path, monkeypatch):
    """Ten days of events cannot back 14- to 60-day backfills: every group has a gap, with its size."""
    import psycopg

    from fsmig_dev.demo.data import generate_raw
    from fsmig_dev.devservices import airflow_conn_env

    with psycopg.connect(pg_url, autocommit=True) as conn:
        generate_raw(conn, demo_plan, entities=50, days=10, seed=0.1, now=NOW)
    monkeypatch.setenv(*next(iter(airflow_conn_env("fsmig_events", pg_url).items())))
    result = write_assessment(demo_plan, tmp_path, now=NOW)
    audit = result.data["retention"]
    assert audit["ran"] is True
    assert (audit["covered"], audit["gaps"]) == (0, 8)
    txn = next(r for r in audit["reports"] if r["group"] == "user_txn_stats")
    oldest = txn["sources"][0]["oldest"]
    assert oldest.startswith("2026-11-10T")  # 10 days of events, from the start of that day
    missing = datetime.fromisoformat(oldest) - datetime(
        2026, 9, 14, 12, 0, tzinfo=UTC
    )  # 60 d backfill + 7 d window
    assert txn["gaps"] == [
        f"raw.transactions holds events from {oldest}; the window needs them from 2026-09-14T12:00Z: "
        f"{human_duration(missing)} missing"
    ]
    training = {t["model"]: t["path"] for t in result.data["training"]}
    assert training["merchant_risk_v2"] == "freeze"  # no old snapshot listed either
    assert training["fraud_gbdt_v7"] == "transition"
    assert result.summary.count("GAP ") == 8


@pytest.mark.integration
def test_event_log_without_raw_tables(demo_plan, pg_url, tmp_path, monkeypatch):
    from fsmig_dev.devservices import airflow_conn_env

    monkeypatch.setenv(*next(iter(airflow_conn_env("fsmig_events", pg_url).items())))
    result = write_assessment(demo_plan, tmp_path, now=NOW)
    audit = result.data["retention"]
    assert (audit["covered"], audit["gaps"]) == (0, 8)
    assert "raw.transactions does not exist in the event log" in result.summary
