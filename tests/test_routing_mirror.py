"""A routing mirror in a Redis of its own (plan connection ``routing_mirror``, issue 13).

The point of a separate mirror: ramps and rollbacks reach routers while the legacy Redis is
down. Each test takes the legacy Redis away for real (a port nothing listens on, or a stopped
server) and checks that routing still flows through the mirror's Redis.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import pytest

from airflow_fsmigration.cli import main
from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.registry.mirror import RoutingMirror, routing_key
from airflow_fsmigration.registry.routing import Registry
from airflow_fsmigration.serving.router import build_router
from fsmig_dev.devservices import airflow_conn_env, free_port, start_redis

REPO = pathlib.Path(__file__).resolve().parent.parent
GROUP = "user_txn_stats"


@pytest.fixture
def mirror_plan(tmp_path) -> pathlib.Path:
    """The demo plan with ``routing_mirror: fsmig_routing`` added to its connections."""
    plan_dir = tmp_path / "plan"
    shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
    text = (plan_dir / "plan.yaml").read_text()
    text = text.replace(
        "  model_metrics: fsmig_model_metrics\n",
        "  model_metrics: fsmig_model_metrics\n  routing_mirror: fsmig_routing\n",
        1,
    )
    (plan_dir / "plan.yaml").write_text(text)
    return plan_dir


@pytest.mark.unit
def test_routing_mirror_defaults_to_the_legacy_redis(mirror_plan, demo_plan):
    assert demo_plan.connections.routing_mirror is None
    assert demo_plan.connections.mirror == "fsmig_legacy_redis"
    assert demo_plan.connections.conn_id("routing_mirror") == "fsmig_legacy_redis"
    plan = load_plan(mirror_plan)
    assert plan.connections.mirror == plan.connections.conn_id("routing_mirror") == "fsmig_routing"
    assert plan.connections.conn_id("legacy_online") == "fsmig_legacy_redis"


@pytest.mark.integration
def test_rollback_reaches_the_mirror_while_the_legacy_redis_is_down(
    mirror_plan, pg_url, redis_url, redis_client, monkeypatch, capsys
):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # the legacy store: nothing listens there
    env = {
        **airflow_conn_env("fsmig_registry", pg_url),
        **airflow_conn_env("fsmig_legacy_offline", pg_url),
        **airflow_conn_env("fsmig_legacy_redis", dead),
        **airflow_conn_env("fsmig_routing", redis_url),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    plan = load_plan(mirror_plan)
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=plan)
    try:
        reg.ensure_schema()
        reg.register_plan(plan)
        reg.transition(GROUP, "shadow", actor="t", reason="deployed")
        reg.ramp(GROUP, 5, actor="t", reason="soak", soak_passed=True)
        reg.ramp(GROUP, 50, actor="t", reason="bake")
    finally:
        reg.close()
    rc = main(["rollback", str(mirror_plan), GROUP, "--reason", "legacy Redis down", "--actor", "oncall"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "published to Redis" in out and "WARNING" not in out, out
    assert json.loads(redis_client.get(routing_key(GROUP)))["active_backend"] == "old"


@pytest.mark.integration
def test_router_hears_a_ramp_through_its_own_mirror_with_the_legacy_redis_stopped(
    mirror_plan, pg_url, redis_url, redis_client
):
    plan = load_plan(mirror_plan)
    legacy = start_redis()
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=plan)
    try:
        reg.ensure_schema()
        reg.register_plan(plan)
        reg.transition(GROUP, "shadow", actor="t", reason="deployed")
        router = build_router(plan, legacy.url, pg_url, mirror_url=redis_url, refresh_s=0.2)
        with router:
            assert router.wait_ready()
            legacy.stop()  # the legacy store is gone; the routing mirror is not
            reg.ramp(GROUP, 5, actor="t", reason="soak", soak_passed=True)
            deadline = time.monotonic() + 5.0
            while router.ramp_pct(GROUP) != 5.0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert router.ramp_pct(GROUP) == 5.0
    finally:
        reg.close()
        legacy.stop()


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        ["shadow", "{plan}", GROUP],
        ["status", "{plan}"],
        ["rollback", "{plan}", GROUP, "--reason", "registry down", "--actor", "oncall"],
    ],
    ids=["shadow", "status", "rollback"],
)
def test_an_unreachable_registry_is_inconclusive_with_its_connection_id(
    argv, mirror_plan, pg_url, redis_url, monkeypatch, capsys
):
    """The registry Postgres down: exit 3 naming ``fsmig_registry``, never a pass or a traceback."""
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/registry"
    env = {
        **airflow_conn_env("fsmig_registry", dead),
        **airflow_conn_env("fsmig_legacy_offline", pg_url),
        **airflow_conn_env("fsmig_new_store", pg_url),
        **airflow_conn_env("fsmig_legacy_redis", redis_url),
        **airflow_conn_env("fsmig_routing", redis_url),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main([a.format(plan=mirror_plan) for a in argv])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 3, text
    assert "fsmig_registry" in text and "Traceback" not in text, text
