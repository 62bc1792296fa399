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
pytestmark = pytest.mark.unit

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


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


def test_risingwave_override_swaps_the_dialect(compose: dict) -> None:
    mounts = compose["services"]["airflow-scheduler"]["volumes"]
    override = next(m for m in mounts if m.endswith("new_store.yaml:ro"))
    source, target, _ = override.split(":")
    assert target == "/opt/airflow/include/demo_plan/new_store.yaml"
    assert (REPO / "include" / "demo_plan" / "new_store.yaml").exists()
    assert yaml.safe_load((REPO / source).read_text())["new_store"]["dialect"] == "risingwave"
    new_store_conn = compose["services"]["airflow-scheduler"]["environment"]["AIRFLOW_CONN_FSMIG_NEW_STORE"]
    assert urlsplit(new_store_conn).hostname == "risingwave" and urlsplit(new_store_conn).port == 4566


def test_login_documented_and_password_file_valid(compose: dict) -> None:
    env = compose["services"]["airflow-apiserver"]["environment"]
    users = dict(u.split(":")[:2] for u in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    passwords = json.loads((REPO / "docker" / "simple_auth_manager_passwords.json").read_text())
    assert set(users) == set(passwords)
