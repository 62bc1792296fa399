"""docker-compose.yaml is consistent: services, volumes, mounts and the plan's connections agree.

No Docker engine runs here, so this checks the file itself: what `docker compose config` would
reject, and the project-specific wiring (every plan connection set, pointing at a service that
exists and a database that the init script creates).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from airflow_fsmigration.connections import parse_airflow_conn
from airflow_fsmigration.plan import load_plan

REPO = Path(__file__).resolve().parent.parent


AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


@pytest.mark.unit
def test_services_present(compose: dict) -> None:
    services = compose["services"]
    assert AIRFLOW_SERVICES | {"postgres", "redis", "risingwave", "airflow-init"} <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    dockerfile = (REPO / services["airflow-scheduler"]["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.\d+", dockerfile, re.M)


@pytest.mark.unit
def test_depends_on_and_volumes_exist(compose: dict) -> None:
    services = compose["services"]
    declared_volumes = set(compose.get("volumes") or {})
    for name, spec in services.items():
        for dep in spec.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
            if services[dep].get("healthcheck") is None:
                assert spec["depends_on"][dep]["condition"] != "service_healthy", f"{dep} has no healthcheck"
        for mount in spec.get("volumes") or []:
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing path {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"


@pytest.mark.unit
def test_every_plan_connection_points_at_a_service(compose: dict) -> None:
    services = compose["services"]
    plan = load_plan(REPO / "include" / "demo_plan")
    init_sql = (REPO / "docker" / "postgres-init.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", init_sql))
    for name in AIRFLOW_SERVICES | {"airflow-init"}:
        env = services[name]["environment"]
        for field, conn_id in plan.connections.model_dump(exclude_none=True).items():
            var = f"AIRFLOW_CONN_{conn_id.upper()}"
            assert var in env, f"{name}: connection {field} ({conn_id}) is not set"
            info = parse_airflow_conn(conn_id, env[var])
            assert info.host in services, f"{var} points at unknown host {info.host}"
            if info.host == "postgres":
                assert info.schema in created, (
                    f"{var} uses database {info.schema} that postgres-init.sql never creates"
                )
        metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert metadata.hostname in services and metadata.path.lstrip("/") in created
        plan_path = env["FSMIG_PLAN"]
        mounts = dict(m.split(":")[:2] for m in services[name]["volumes"])
        assert any(plan_path.startswith(target) for target in mounts.values()), "FSMIG_PLAN is not mounted"


@pytest.mark.unit
def test_risingwave_override_swaps_the_dialect(compose: dict) -> None:
    mounts = compose["services"]["airflow-scheduler"]["volumes"]
    override = next(m for m in mounts if m.endswith("new_store.yaml:ro"))
    source, target, _ = override.split(":")
    assert target == "/opt/airflow/include/demo_plan/new_store.yaml"
    assert (REPO / "include" / "demo_plan" / "new_store.yaml").exists()
    assert yaml.safe_load((REPO / source).read_text())["new_store"]["dialect"] == "risingwave"
    new_store_conn = compose["services"]["airflow-scheduler"]["environment"]["AIRFLOW_CONN_FSMIG_NEW_STORE"]
    assert urlsplit(new_store_conn).hostname == "risingwave" and urlsplit(new_store_conn).port == 4566


@pytest.mark.unit
def test_login_documented_and_password_file_valid(compose: dict) -> None:
    env = compose["services"]["airflow-apiserver"]["environment"]
    users = dict(u.split(":")[:2] for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    passwords = json.loads((REPO / "docker" / "simple_auth_manager_passwords.json").read_text())
    assert set(users) == set(passwords)


@pytest.mark.unit
def test_images_are_pinned_and_servers_have_health_checks(compose: dict) -> None:
    for name, spec in compose["services"].items():
        image = spec.get("image")
        if image:
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest", f"{name}: image {image} is not pinned to a version"
    for name in ("postgres", "redis", "risingwave"):
        assert compose["services"][name]["healthcheck"]["test"], name


@pytest.mark.unit
def test_the_seed_job_loads_the_legacy_stores_and_feeds_risingwave_before_the_scheduler(
    compose: dict,
) -> None:
    services = compose["services"]
    seed = services["fsmig-seed"]
    assert seed["restart"] == "no"
    assert {dep: c["condition"] for dep, c in seed["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "risingwave": "service_healthy",
    }
    assert services["airflow-scheduler"]["depends_on"]["fsmig-seed"]["condition"] == (
        "service_completed_successfully"
    )
    mounts = dict(m.split(":")[:2] for m in seed["volumes"])
    script = next(t for s, t in mounts.items() if s.endswith("seed_demo.py"))
    assert seed["entrypoint"] == ["python", script]
    assert mounts["./fsmig_dev"].startswith(seed["environment"]["PYTHONPATH"])
    assert mounts["./docker/new_store.risingwave.yaml"] == "/opt/airflow/include/demo_plan/new_store.yaml"
    assert seed["environment"]["AIRFLOW_CONN_FSMIG_NEW_STORE"].startswith(
        "postgresql://root:@risingwave:4566/"
    )


@pytest.mark.integration
def test_the_seed_mirror_copies_every_raw_table_with_keys(postgres, demo_plan) -> None:
    """docker/seed_demo.py's copy, into a second Postgres database standing in for RisingWave."""
    import importlib.util
    import uuid
    from datetime import UTC, datetime

    import psycopg

    from fsmig_dev.demo.data import generate_raw

    spec = importlib.util.spec_from_file_location("seed_demo", REPO / "docker" / "seed_demo.py")
    assert spec and spec.loader
    seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seed)
    names = [f"t_seed_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    events, target = (postgres.create_database(n) for n in names)
    try:
        with psycopg.connect(events, autocommit=True) as conn:
            counts = generate_raw(
                conn, demo_plan, entities=50, days=10, seed=0.1, now=datetime(2026, 11, 20, tzinfo=UTC)
            )
            types = {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT data_type FROM information_schema.columns WHERE table_schema = 'raw'"
                ).fetchall()
            }
        assert types <= set(seed.RW_TYPES), types - set(seed.RW_TYPES)
        copied = seed.mirror_raw(events, target)
        assert copied == {k: v for k, v in counts.items() if k in copied} and len(copied) == 6
        with psycopg.connect(target, autocommit=True) as conn:
            keys = conn.execute(
                "SELECT tc.table_name FROM information_schema.table_constraints AS tc "
                "WHERE tc.table_schema = 'raw' AND tc.constraint_type = 'PRIMARY KEY' ORDER BY 1"
            ).fetchall()
        assert [k[0] for k in keys] == ["items", "merchants", "users"]
        assert seed.already_seeded(target)
    finally:
        from psycopg import sql

        with psycopg.connect(postgres.url, autocommit=True) as conn:
            for n in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n)))
