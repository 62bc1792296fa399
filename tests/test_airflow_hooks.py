"""Hooks against the real servers, and operator construction details that parse speed depends on."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "include" / "demo_plan")


@pytest.mark.integration
def test_postgres_hook_gives_a_working_libpq_url_for_a_unix_socket_host(pg_url, monkeypatch):
    from airflow_fsmigration.hooks.stores import FsMigrationPostgresHook
    from fsmig_dev.devservices import airflow_conn_env

    env = airflow_conn_env("fsmig_sock", pg_url)
    host = json.loads(env["AIRFLOW_CONN_FSMIG_SOCK"])["host"]
    assert host.startswith("/"), "the embedded test server listens on a Unix socket"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    hook = FsMigrationPostgresHook(postgres_conn_id="fsmig_sock")
    url = hook.libpq_url()
    assert "host=" in url
    with hook.connect() as conn:
        assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42
        assert conn.autocommit is True
    # the plain PostgresHook path still works with the same connection
    assert hook.get_first("SELECT 1")[0] == 1


@pytest.mark.integration
def test_postgres_hook_reads_a_socket_host_from_a_uri_connection(pg_url, monkeypatch):
    from urllib.parse import parse_qs, urlsplit

    from airflow_fsmigration.hooks.stores import FsMigrationPostgresHook

    parts = urlsplit(pg_url)
    socket_dir = parse_qs(parts.query)["host"][0]
    monkeypatch.setenv(
        "AIRFLOW_CONN_FSMIG_URI",
        f"postgresql://{parts.username or 'postgres'}@/{parts.path.lstrip('/')}?host={socket_dir}",
    )
    hook = FsMigrationPostgresHook(postgres_conn_id="fsmig_uri")
    assert hook.info.host == socket_dir
    with hook.connect() as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == parts.path.lstrip("/")


@pytest.mark.integration
def test_redis_hook_client_and_db_from_extra(redis_url, monkeypatch):
    from airflow_fsmigration.hooks.stores import FsMigrationRedisHook
    from fsmig_dev.devservices import airflow_conn_env

    env = airflow_conn_env("fsmig_r", redis_url)
    conn = json.loads(env["AIRFLOW_CONN_FSMIG_R"])
    conn["extra"] = {"db": 3}
    monkeypatch.setenv("AIRFLOW_CONN_FSMIG_R", json.dumps(conn))
    hook = FsMigrationRedisHook(redis_conn_id="fsmig_r")
    assert hook.redis_url().endswith("/3")
    client = hook.client()
    try:
        client.set("fsmig:hook-test", "1")
        assert client.connection_pool.connection_kwargs["db"] == 3
        assert client.get("fsmig:hook-test") == b"1"
    finally:
        client.delete("fsmig:hook-test")
        client.close()


@pytest.mark.integration
def test_unreachable_store_names_the_connection_and_hides_the_password(monkeypatch):
    from airflow_fsmigration.connections import StoreUnavailable
    from airflow_fsmigration.hooks.stores import FsMigrationPostgresHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_FSMIG_DOWN",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "/nonexistent-dir",
                "login": "u",
                "password": "pw-XYZ-123",
                "schema": "db",
            }
        ),
    )
    hook = FsMigrationPostgresHook(postgres_conn_id="fsmig_down")
    with pytest.raises(StoreUnavailable) as err:
        hook.connect()
    assert "connection 'fsmig_down'" in str(err.value)
    assert "pw-XYZ-123" not in str(err.value)
    assert "pw-XYZ-123" not in repr(hook.info)


@pytest.mark.unit
def test_migration_hook_maps_roles_and_redacts_what_it_resolved(demo_plan, monkeypatch):
    from airflow_fsmigration.hooks.migration import MigrationHook

    c = demo_plan.connections
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{c.registry.upper()}",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "login": "fsmig",
                "password": "S3cret-Reg",
                "schema": "registry",
            }
        ),
    )
    hook = MigrationHook(demo_plan)
    assert hook.conn_id("registry") == c.registry
    url = hook.postgres_url("registry")
    assert url == "postgresql://fsmig:S3cret-Reg@db.internal/registry"
    assert hook.redact(f"failed on {url}") == "failed on postgresql://fsmig:***@db.internal/registry"
    with pytest.raises(ValueError, match="not a Postgres-wire store"):
        hook.postgres("legacy_online")
    with pytest.raises(ValueError, match="unknown connection role"):
        hook.conn_id("warehouse")


@pytest.mark.unit
def test_operators_take_default_args_templates_and_name_bad_groups(demo_plan):
    from airflow.sdk import DAG

    from airflow_fsmigration.operators.base import to_json
    from airflow_fsmigration.operators.routing import RampStepOperator, RollbackOperator
    from airflow_fsmigration.sensors.gates import BakeSensor

    with DAG(
        "t_defaults",
        schedule=None,
        default_args={
            "retries": 3,
            "owner": "ml-platform",
            "poke_interval": 7,
            "retry_delay": timedelta(seconds=9),
        },
        params={"step": 50},
    ):
        ramp = RampStepOperator(
            task_id="ramp", plan_path=DEMO, group="user_profile", percent="{{ params.step }}"
        )
        bake = BakeSensor(task_id="bake", plan_path=DEMO, group="user_profile", percent=50, deferrable=True)
        rollback = RollbackOperator(task_id="rb", plan_path=DEMO, group="no_such_group", reason="r")
    # the one-layer construction still applies default_args to base-operator and sensor arguments
    assert (ramp.retries, ramp.owner, ramp.retry_delay) == (3, "ml-platform", timedelta(seconds=9))
    assert (bake.retries, bake.poke_interval, bake.deferrable) == (3, 7, True)
    assert ramp.params["step"] == 50 and bake.params["step"] == 50
    ramp.render_template_fields({"params": {"step": 50}})
    assert ramp.percent == "50"
    with pytest.raises(ValueError, match="'no_such_group' is not in plan 'fraud_recs_platform'"):
        _ = rollback.feature_group
    with pytest.raises(TypeError, match="plan_path"):
        RampStepOperator(task_id="x", group="g", percent=5)
    assert to_json({"at": timedelta(seconds=3), "s": {"b", "a"}}) == {"at": 3.0, "s": ["a", "b"]}
