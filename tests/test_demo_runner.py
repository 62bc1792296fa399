"""``make demo`` end to end at a tiny size: servers start and stop, the assessment is printed.

The shadow step of the runner is tested in ``test_demo_data.py`` on the module's shared data.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def own_dir():
    """A private folder: pytest's shared tmp_path base can be pruned by a concurrent pytest run,
    which would delete the embedded server's data under it mid-test."""
    path = Path(tempfile.mkdtemp(prefix="fsmig_demo_test_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
def test_demo_runner_prints_assessment_and_reuses_data(own_dir, capsys, caplog, monkeypatch):
    tmp_path = own_dir
    from fsmig_dev.demo.__main__ import main

    caplog.set_level(logging.INFO, logger="fsmig_dev.demo")

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
        "--no-migrate",  # the migration step has its own test (test_demo_migrate.py)
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
