"""``fsmigrate status/rollback/freeze/reconcile/register/keepwarm`` against real Postgres and Redis."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from airflow_fsmigration.cli import main
from airflow_fsmigration.registry.mirror import RoutingMirror, routing_key
from airflow_fsmigration.registry.model import Phase
from airflow_fsmigration.registry.routing import Registry
from fsmig_dev.devservices import airflow_conn_env

REPO = pathlib.Path(__file__).resolve().parent.parent
DEMO_PLAN = REPO / "include" / "demo_plan"

GROUP = "user_txn_stats"


@pytest.fixture
def conn_env(pg_url, redis_url, monkeypatch):
    env = {
        **airflow_conn_env("fsmig_registry", pg_url),
        **airflow_conn_env("fsmig_legacy_offline", pg_url),
        **airflow_conn_env("fsmig_legacy_redis", redis_url),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def ramping(conn_env, pg_url, redis_client, demo_plan):
    """The demo plan registered, user_txn_stats at 50%."""
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=demo_plan)
    reg.ensure_schema()
    reg.register_plan(demo_plan)
    reg.transition(GROUP, "shadow", actor="t", reason="deployed")
    reg.ramp(GROUP, 5, actor="t", reason="soak", soak_passed=True)
    reg.ramp(GROUP, 50, actor="t", reason="bake")
    yield reg
    reg.close()


@pytest.mark.integration
def test_register_then_status(conn_env, capsys):
    assert main(["register", str(DEMO_PLAN), "--actor", "ci"]) == 0
    assert "registered 8 new group(s)" in capsys.readouterr().out
    assert main(["status", str(DEMO_PLAN), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["groups"]) == 8
    assert {(g["phase"], g["version"], g["mirror"]) for g in doc["groups"]} == {("planned", 1, "ok")}


@pytest.mark.integration
def test_rollback_command(ramping, redis_client, capsys):
    rc = main(["rollback", str(DEMO_PLAN), GROUP, "--reason", "AUC dropped 0.8%", "--actor", "alice"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "is now rolled_back at 0% (version 5), backend old" in out
    assert json.loads(redis_client.get(routing_key(GROUP)))["active_backend"] == "old"
    last = ramping.audit(GROUP)[-1]
    assert (last.actor, last.reason, last.from_pct, last.to_phase) == (
        "alice",
        "AUC dropped 0.8%",
        50.0,
        Phase.ROLLED_BACK,
    )
    # Again: nothing to do, still exit 0.
    assert main(["rollback", str(DEMO_PLAN), GROUP, "--reason", "again"]) == 0
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.integration
def test_freeze_and_status_audit(ramping, capsys):
    assert main(["freeze", str(DEMO_PLAN), GROUP, "--reason", "hold over the weekend"]) == 0
    capsys.readouterr()
    assert main(["status", str(DEMO_PLAN), "--audit", GROUP]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(GROUP))
    assert row.split()[:5] == [GROUP, "frozen", "50", "new", "5"]
    assert "v5" in out and "ramping 50% -> frozen 50%" in out and "hold over the weekend" in out


@pytest.mark.integration
def test_bad_input_and_refusals(ramping, capsys):
    assert main(["rollback", str(DEMO_PLAN), "no_such_group", "--reason", "x"]) == 2
    assert "group 'no_such_group' is not in plan 'fraud_recs_platform'" in capsys.readouterr().err
    assert main(["freeze", str(DEMO_PLAN), "user_profile", "--reason", "x"]) == 1
    assert "only a ramp in progress" in capsys.readouterr().err


@pytest.mark.integration
def test_reconcile_command_and_status_drift(ramping, redis_client, capsys):
    redis_client.delete(routing_key(GROUP))
    redis_client.set(routing_key("user_profile"), "{broken")
    assert main(["status", str(DEMO_PLAN)]) == 3  # drift is reported, not hidden
    out = capsys.readouterr().out
    assert "missing" in out and "unreadable" in out
    assert main(["reconcile", str(DEMO_PLAN)]) == 0
    out = capsys.readouterr().out
    assert "6 in sync, 2 repaired" in out
    assert json.loads(redis_client.get(routing_key(GROUP)))["ramp_pct"] == 50.0
    assert main(["status", str(DEMO_PLAN)]) == 0


@pytest.mark.integration
def test_keepwarm_command_fails_on_an_empty_old_store(ramping, capsys):
    assert main(["keepwarm", str(DEMO_PLAN), "merchant_stats"]) == 1
    out = capsys.readouterr().out
    assert "old store NOT verified warm" in out and "never entered the warm phase" in out


@pytest.mark.integration
def test_rollback_works_without_airflow(ramping, conn_env):
    """The one command must work when Airflow is down: here it cannot even be imported."""
    code = (
        "import sys; sys.modules['airflow'] = None\n"
        "from airflow_fsmigration.cli import main\n"
        f"sys.exit(main(['rollback', {str(DEMO_PLAN)!r}, {GROUP!r}, '--reason', 'airflow is down']))\n"
    )
    env = {**os.environ, **conn_env}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "rolled_back" in proc.stdout
    assert ramping.state(GROUP).phase is Phase.ROLLED_BACK
