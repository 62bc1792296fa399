"""The migration cockpit as an Airflow 3 plugin page at ``/fsmig/cockpit``.

Airflow mounts a plugin's FastAPI app without its own login, so every route here depends on
Airflow's ``get_user`` (the UI's JWT cookie or a bearer token) and shows only the groups whose
DAGs the user may read; with none, the answer is 403. The page is read-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk.plugins_manager import AirflowPlugin

URL_PREFIX = "/fsmig"
DEFAULT_PLAN = Path(__file__).resolve().parents[2] / "include" / "demo_plan"


def plan_path() -> str:
    return os.environ.get("FSMIG_PLAN") or str(DEFAULT_PLAN)


def _registry_url(conn_id: str) -> str:
    """The registry's libpq URL from Airflow's connections (DB or secrets backend), else the env."""
    try:
        from airflow.models.connection import Connection

        conn = Connection.get_connection_from_secrets(conn_id)
        from airflow_fsmigration.connections import ConnInfo

        return ConnInfo(
            conn_id=conn_id,
            conn_type=conn.conn_type or "postgres",
            host=conn.host,
            port=conn.port,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            extra=conn.extra_dejson,
        ).postgres_url()
    except Exception:
        from airflow_fsmigration.connections import postgres_url

        return postgres_url(conn_id)


def dag_ids(group: str) -> dict[str, str]:
    """The group's DAG ids, as the DAG factory names them."""
    from airflow_fsmigration.dag_factory import BACKFILL, MIGRATE, ROLLBACK, dag_id

    return {kind: dag_id(kind, group) for kind in (MIGRATE, ROLLBACK, BACKFILL)}


def collect(user: Any) -> tuple[Any, list[Any], list[str]]:
    """The plan, the cockpit rows this user may see, and what could not be read."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.cockpit import gather

    plan = load_plan(plan_path())
    auth = get_auth_manager()
    visible = [
        g
        for g in plan.groups
        if auth.is_authorized_dag(method="GET", details=DagDetails(id=dag_ids(g)["migrate"]), user=user)
    ]
    if not visible:
        return plan, [], []
    states: dict[str, Any] = {}
    series = audit = None
    errors: list[str] = []
    try:
        from airflow_fsmigration.registry import Registry

        registry = Registry(_registry_url(plan.connections.registry), plan=plan)
        states = registry.states()
        audit = registry.audit
    except Exception as exc:
        errors.append(f"registry ({plan.connections.registry}): {type(exc).__name__}: {exc}")
    try:
        import psycopg

        from airflow_fsmigration.compare.results import ResultStore

        results = ResultStore(psycopg.connect(_registry_url(plan.connections.registry), autocommit=True))
        series = results.series
    except Exception as exc:
        errors.append(f"shadow results ({plan.connections.registry}): {type(exc).__name__}: {exc}")
    rows = gather(plan, plan_path=plan_path(), states=states, series=series, audit=audit, dag_ids=dag_ids)
    return plan, [r for r in rows if r.group in visible], errors


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="Feature store migration cockpit", docs_url=None, redoc_url=None, openapi_url=None)

    def _rows(user: Any) -> tuple[Any, list[Any], list[str]]:
        plan, rows, errors = collect(user)
        if not rows:
            raise HTTPException(
                status_code=403, detail="you may not read the DAGs of any feature group in this plan"
            )
        return plan, rows, errors

    @app.get("/cockpit", response_class=HTMLResponse)
    def cockpit(user: Any = Depends(get_user)) -> HTMLResponse:
        from airflow_fsmigration.reports.cockpit import render

        plan, rows, errors = _rows(user)
        page = render(plan, rows, dag_url=lambda dag_id: f"/dags/{dag_id}")
        if errors:
            warning = "".join(f"<p class='note bad'>could not read {e}</p>" for e in errors)
            page = page.replace("<h2", warning + "<h2", 1)
        return HTMLResponse(page)

    @app.get("/cockpit.json")
    def cockpit_json(user: Any = Depends(get_user)) -> JSONResponse:
        _, rows, errors = _rows(user)
        return JSONResponse({"groups": [r.to_dict() for r in rows], "errors": errors})

    return app


class CockpitPlugin(AirflowPlugin):
    """Adds the cockpit page and a link to it in Airflow's navigation."""

    name = "fsmigration_cockpit"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Migration cockpit"}]

    external_views = [  # noqa: RUF012 - Airflow reads this class attribute
        {
            "name": "Migration cockpit",
            "href": f"{URL_PREFIX}/cockpit",
            "destination": "nav",
            "category": "browse",
            "url_route": "fsmig-cockpit",
        }
    ]
