"""The migration cockpit: rows from registry state and shadow series, and the page behind Airflow's login."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from airflow_fsmigration.reports.cockpit import gather, render


@dataclass
class _State:
    phase: str
    ramp_pct: float
    version: int = 3
    updated_at: datetime = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.mark.unit
def test_rows_follow_waves_and_say_the_next_gate(demo_plan) -> None:
    states = {"user_txn_stats": _State("ramping", 5.0), "merchant_stats": _State("rolled_back", 0.0)}
    runs = {
        "user_txn_stats": [{"match_rate": 0.991, "verdict": "fail"}, {"match_rate": 0.998, "verdict": "pass"}]
    }
    audit = {"merchant_stats": [{"reason": "bake breach: p99 +31 ms"}]}
    rows = gather(
        demo_plan,
        plan_path="include/demo_plan",
        states=states,
        series=lambda g: runs.get(g, []),
        audit=lambda g: audit.get(g, []),
        dag_ids=lambda g: {"migrate": f"{g}_migrate", "rollback": f"{g}_rollback"},
    )
    assert [r.group for r in rows][:1] == ["merchant_stats"] and rows[-1].group == "fraud_decision_features"
    by = {r.group: r for r in rows}
    txn = by["user_txn_stats"]
    assert (txn.phase, txn.ramp_pct, txn.latest_match_rate, txn.trend, txn.latest_verdict) == (
        "ramping",
        5.0,
        0.998,
        "up",
        "pass",
    )
    assert txn.next_gate == "bake 2d at 5% within rollback triggers, then ramp to 50%"
    assert by["merchant_stats"].last_reason == "bake breach: p99 +31 ms"
    assert by["user_profile"].phase == "planned"  # not registered yet: shown as planned, never as migrated
    assert by["user_profile"].next_gate.startswith("deploy the definition")
    fraud = by["fraud_decision_features"]
    assert (
        fraud.rollback_command
        == "fsmigrate rollback include/demo_plan fraud_decision_features --reason '...'"
    )

    page = render(demo_plan, rows)
    assert page.count("<tr>") >= len(demo_plan.groups)
    assert "99.800%" in page and 'href="/dags/user_txn_stats_rollback"' in page
    assert "bake breach: p99 +31 ms" in page
