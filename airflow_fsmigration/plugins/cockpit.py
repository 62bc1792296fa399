"""The migration cockpit as an Airflow 3 plugin page at ``/fsmig/cockpit``.

Airflow mounts a plugin's FastAPI app without its own login, so every route here depends on
Airflow's ``get_user`` (the UI's JWT cookie or a bearer token) and shows only the groups whose
DAGs the user may read; with none, the answer is 403. The page is read-only.

The plan is the one the DAG file reads, ``$FSMIG_PLAN``, and nothing else (no default: a path
into a source checkout would show a demo plan in production); without it the page says so.
It is loaded through :func:`~airflow_fsmigration.plan.cache.load_plan_cached`, so a request
costs one ``stat`` per plan file until a file changes. Every request opens one registry
connection and closes it before answering.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow.sdk.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

URL_PREFIX = "/fsmig"
PLAN_ENV = "FSMIG_PLAN"
NOT_CONFIGURED = (
    f"The cockpit has no plan to show: set the environment variable {PLAN_ENV} of the Airflow API "
    "server to the plan file or folder, the same one the DAG file reads, and restart it."
)


class PlanNotConfigured(RuntimeError):
    """``$FSMIG_PLAN`` is not set."""


def plan_path() -> str | None:
    """The configured plan path (``$FSMIG_PLAN``), or None."""
    return (os.environ.get(PLAN_ENV) or "").strip() or None


def load_cockpit_plan() -> MigrationPlan:
    """The configured plan, validated once and then served from the mtime-keyed plan cache."""
    from airflow_fsmigration.plan.cache import load_plan_cached

    path = plan_path()
    if path is None:
        raise PlanNotConfigured(NOT_CONFIGURED)
    return load_plan_cached(path, isolate=False)


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
    from airflow_fsmigration.dag_context import BACKFILL, MIGRATE, ROLLBACK, dag_id

    return {kind: dag_id(kind, group) for kind in (MIGRATE, ROLLBACK, BACKFILL)}


def _airflow_authorized(user: Any) -> Callable[[str], bool]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    auth = get_auth_manager()
    return lambda dag: bool(auth.is_authorized_dag(method="GET", details=DagDetails(id=dag), user=user))


def collect(
    user: Any, *, authorized: Callable[[str], bool] | None = None
) -> tuple[MigrationPlan, list[Any], list[str]]:
    """The plan, the cockpit rows this user may see, and what could not be read.

    :param authorized: may the user read this DAG id? (default: Airflow's auth manager)
    :raises PlanNotConfigured: no plan path is configured.
    """
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.registry.routing import Registry
    from airflow_fsmigration.reports.cockpit import gather

    plan = load_cockpit_plan()
    path = plan_path() or ""
    allowed = authorized or _airflow_authorized(user)
    visible = [g for g in plan.groups if allowed(dag_ids(g)["migrate"])]
    if not visible:
        return plan, [], []
    states: dict[str, Any] = {}
    errors: list[str] = []
    where = plan.connections.registry
    # One connection for the registry and the shadow results (same database), closed on return.
    with Registry(_registry_url(where), plan=plan) as registry:
        audit: Callable[[str], Any] | None = None
        series: Callable[[str], Any] | None = None
        try:
            states = registry.states()
            audit = registry.audit
        except Exception as exc:
            errors.append(f"registry ({where}): {type(exc).__name__}: {exc}")
        try:
            series = ResultStore(registry.connection()).series
        except Exception as exc:
            errors.append(f"shadow results ({where}): {type(exc).__name__}: {exc}")

        def guarded(read: Callable[[str], Any] | None, what: str) -> Callable[[str], Any] | None:
            if read is None:
                return None

            def call(group: str) -> Any:
                try:
                    return read(group)
                except Exception as exc:
                    errors.append(f"{what} of {group} ({where}): {type(exc).__name__}: {exc}")
                    return []

            return call

        rows = gather(
            plan,
            plan_path=path,
            states=states,
            series=guarded(series, "shadow results"),
            audit=guarded(audit, "audit log"),
            dag_ids=dag_ids,
        )
    return plan, [r for r in rows if r.group in visible], errors


def cockpit_page(user: Any, *, authorized: Callable[[str], bool] | None = None) -> tuple[int, str]:
    """(HTTP status, HTML) of the cockpit for ``user``: 503 unconfigured, 403 nothing visible."""
    from airflow_fsmigration.reports.cockpit import render, render_unconfigured

    try:
        plan, rows, errors = collect(user, authorized=authorized)
    except PlanNotConfigured as exc:
        return 503, render_unconfigured(str(exc))
    if not rows:
        return 403, render_unconfigured("you may not read the DAGs of any feature group in this plan")
    return 200, render(plan, rows, dag_url=lambda dag_id: f"/dags/{dag_id}", errors=errors)


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="Feature store migration cockpit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/cockpit", response_class=HTMLResponse)
    def cockpit(user: Any = Depends(get_user)) -> HTMLResponse:
        status, page = cockpit_page(user)
        return HTMLResponse(page, status_code=status)

    @app.get("/cockpit.json")
    def cockpit_json(user: Any = Depends(get_user)) -> JSONResponse:
        try:
            _, rows, errors = collect(user)
        except PlanNotConfigured as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        if not rows:
            raise HTTPException(
                status_code=403, detail="you may not read the DAGs of any feature group in this plan"
            )
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
