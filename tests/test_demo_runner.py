"""``make demo`` end to end at a tiny size: servers start and stop, the assessment is printed."""

from __future__ import annotations

import json
import logging

import pytest


@pytest.mark.integration
def test_demo_runner_prints_assessment_and_reuses_data(tmp_path, capsys, caplog, monkeypatch):
    from airflow_fsmigration.demo.__main__ import main

    caplog.set_level(logging.INFO, logger="airflow_fsmigration.demo")

    for key in ("AIRFLOW_CONN_FSMIG_EVENTS", "AIRFLOW_CONN_FSMIG_LEGACY_REDIS"):
        monkeypatch.delenv(key, raising=False)
    args = [
        "--entities",
        "120",
        "--history-entities",
        "30",
        "--data-dir",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "r"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "OK: plan 'fraud_recs_platform': 8 groups" in out
    # The audit ran on the generated event log. (At this tiny size user_events may also miss the few
    # minutes between the purge boundary and the first event; the clickstream gap is there at any size.)
    assert "Retention audit (connection 'fsmig_events'): " in out
    assert "GAP user_session_stats: raw.clickstream holds events from" in out
    assert "HTML report: " in out and (tmp_path / "r" / "assessment_fraud_recs_platform.html").exists()
    stamp = json.loads((tmp_path / "d" / "env.json").read_text())
    assert stamp["env"]["entities"]["user_id"] == 120
    assert stamp["env"]["bug"]["group"] == "user_session_stats"

    # A rerun with the same sizes reuses the data: Redis reloads its snapshot, Postgres keeps its files.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reusing demo data generated as of " + stamp["env"]["now"] in caplog.text
    assert "GAP user_session_stats: raw.clickstream holds events from" in out
