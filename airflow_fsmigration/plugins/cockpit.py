"""The migration cockpit and the task reports as an Airflow 3 plugin app under ``/fsmig``.

Routes: ``/fsmig/cockpit`` (the page), ``/fsmig/cockpit.json`` (the same for scripts) and
``/fsmig/reports/<group>/...`` (the HTML reports the tasks wrote, which the tasks' "Report"
extra links point at). Airflow mounts a plugin's FastAPI app without its own login, so every
route resolves Airflow's user (the UI's JWT cookie or a bearer token) and asks Airflow's auth
manager for read access to each group's DAGs: the cockpit shows only those groups (403 with
none), and a group's reports are served only to users who may read its migrate DAG. A browser
that is not logged in is redirected to Airflow's login page (the JSON route answers 401).

Per group the page joins the registry (phase, ramp, audit log with every transition's reason),
the shadow results (match-rate series against the objective, root causes of a failing run) and
Airflow's metadata database (the latest runs of its DAGs, which task failed and since when), so a
group whose run just failed never reads as "planned, deploy the definition".

The plan is the one the DAG file reads, ``$FSMIG_PLAN``, and nothing else (no default: a path
into a source checkout would show a demo plan in production); without it the page says so.
It is loaded through :func:`~airflow_fsmigration.plan.cache.load_plan_cached`, so a request
costs one ``stat`` per plan file until a file changes. Every request opens one registry
connection and closes it before answering.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk.plugins_manager import AirflowPlugin
from starlette.requests import Request  # at module level: FastAPI resolves route annotations here

from airflow_fsmigration.links import URL_PREFIX

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.plugins.cockpit_view import GroupView

PLAN_ENV = "FSMIG_PLAN"
REPORT_CSP = "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-top-navigation-by-user-activation"
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
    user: Any,
    *,
    authorized: Callable[[str], bool] | None = None,
    runs_reader: Callable[[list[str]], dict[str, list[Any]]] | None = None,
) -> tuple[MigrationPlan, list[GroupView], list[str]]:
    """The plan, the groups this user may see (registry, audit log, shadow series, DAG runs), and
    what could not be read.

    :param authorized: may the user read this DAG id? (default: Airflow's auth manager)
    :param runs_reader: DAG ids -> their newest runs (default: Airflow's metadata database)
    :raises PlanNotConfigured: no plan path is configured.
    """
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.plugins.cockpit_reports import newest_report
    from airflow_fsmigration.plugins.cockpit_view import GroupView
    from airflow_fsmigration.registry.routing import Registry
    from airflow_fsmigration.reports.cockpit import gather

    plan = load_cockpit_plan()
    path = plan_path() or ""
    allowed = authorized or _airflow_authorized(user)
    visible = [g for g in plan.groups if allowed(dag_ids(g)["migrate"])]
    if not visible:
        return plan, [], []
    errors: list[str] = []
    where = plan.connections.registry
    states: dict[str, Any] = {}
    audits: dict[str, list[Any]] = {}
    series: dict[str, list[Any]] = {}
    soaks: dict[str, Any] = {}
    # One connection for the registry and the shadow results (same database), closed on return.
    with Registry(_registry_url(where), plan=plan) as registry:
        try:
            states = registry.states()
        except Exception as exc:
            errors.append(f"registry ({where}): {type(exc).__name__}: {exc}")
        for what, read, into in (
            ("audit log", registry.audit, audits),
            ("shadow results", lambda g: ResultStore(registry.connection()).series(g), series),
        ):
            for g in visible:
                try:
                    into[g] = list(read(g))
                except Exception as exc:
                    errors.append(f"{what} of {g} ({where}): {type(exc).__name__}: {exc}")
                    break
        for g in visible:
            phase = getattr(getattr(states.get(g), "phase", None), "value", None)
            if phase == "shadow":
                try:
                    soaks[g] = ResultStore(registry.connection()).soak_status(plan, g)
                except Exception as exc:
                    errors.append(f"soak status of {g} ({where}): {type(exc).__name__}: {exc}")
    rows = gather(
        plan,
        plan_path=path,
        states=states,
        series=lambda g: series.get(g, []),
        audit=lambda g: audits.get(g, []),
        dag_ids=dag_ids,
        soak_note=lambda g: soaks[g].reason if g in soaks else None,
    )
    ids = {g: dag_ids(g) for g in visible}
    runs: dict[str, list[Any]] = {}
    try:
        runs = (runs_reader or _metadata_runs)([d for m in ids.values() for d in m.values()])
    except Exception as exc:
        errors.append(f"DAG runs (Airflow metadata database): {type(exc).__name__}: {exc}")
    views = [
        GroupView(
            status=r,
            runs={kind: runs.get(d, []) for kind, d in ids[r.group].items()},
            audit=audits.get(r.group, []),
            series=series.get(r.group, []),
            soak=soaks.get(r.group),
            report=newest_report(r.group),
        )
        for r in rows
        if r.group in ids
    ]
    return plan, views, errors


def _metadata_runs(ids: list[str]) -> dict[str, list[Any]]:
    from airflow_fsmigration.plugins.cockpit_runs import latest_runs

    return latest_runs(ids)


def view_dict(view: GroupView) -> dict[str, Any]:
    """A group's row for ``cockpit.json``: the registry row plus runs, audit reasons and causes."""
    return {
        **view.status.to_dict(),
        "runs": {kind: [r.to_dict() for r in runs] for kind, runs in view.runs.items()},
        "audit": [
            {
                "at": e.at.isoformat(),
                "from": getattr(e.from_phase, "value", e.from_phase),
                "to": getattr(e.to_phase, "value", e.to_phase),
                "to_pct": e.to_pct,
                "reason": e.reason,
                "actor": e.actor,
            }
            for e in view.audit
        ],
        "causes": view.causes(),
        "next_gate": view.next_gate(datetime.now(UTC)),
        "report": view.report,
    }


def cockpit_page(
    user: Any,
    *,
    authorized: Callable[[str], bool] | None = None,
    runs_reader: Callable[[list[str]], dict[str, list[Any]]] | None = None,
) -> tuple[int, str]:
    """(HTTP status, HTML) of the cockpit for ``user``: 503 unconfigured, 403 nothing visible."""
    from airflow_fsmigration.plugins.cockpit_view import render
    from airflow_fsmigration.reports.cockpit import render_unconfigured

    try:
        plan, views, errors = collect(user, authorized=authorized, runs_reader=runs_reader)
    except PlanNotConfigured as exc:
        return 503, render_unconfigured(str(exc))
    if not views:
        return 403, render_unconfigured("you may not read the DAGs of any feature group in this plan")
    return 200, render(plan, views, errors=errors, assessment=_assessment(plan, user, authorized))


def _assessment(plan: MigrationPlan, user: Any, authorized: Callable[[str], bool] | None) -> str | None:
    """The newest ``fsmigrate assess --out $FSMIG_REPORTS_DIR/plan/assess`` page, for who may read it."""
    from airflow_fsmigration.dag_context import NIGHTLY, dag_id
    from airflow_fsmigration.plugins.cockpit_reports import PLAN_WIDE, newest_report

    href = newest_report(PLAN_WIDE, "assess")
    if href is None or not (authorized or _airflow_authorized(user))(dag_id(NIGHTLY, plan=plan)):
        return None
    return href


def report_file(user: Any, rel: str, *, authorized: Callable[[str], bool] | None = None) -> Any:
    """The report file ``rel`` for ``user`` (see :mod:`.cockpit_reports`); raises ``ReportRefused``."""
    from airflow_fsmigration.dag_context import NIGHTLY, dag_id
    from airflow_fsmigration.plugins.cockpit_reports import ReportRefused, resolve_report

    try:
        plan = load_cockpit_plan()
    except PlanNotConfigured as exc:
        raise ReportRefused(503, str(exc)) from None
    allowed = authorized or _airflow_authorized(user)

    def may_read(group: str | None) -> bool:
        return allowed(dag_id(NIGHTLY, plan=plan) if group is None else dag_ids(group)["migrate"])

    return resolve_report(rel, groups=set(plan.groups), may_read=may_read)


async def browser_user(request: Request) -> Any:
    """Airflow's user, or None when the browser is not logged in (pages send it to the login).

    The same checks as Airflow's ``get_user`` (bearer token first, then the UI's cookie); only a
    missing or invalid login becomes None, any other refusal is raised as Airflow raised it.
    """
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user
    from fastapi import HTTPException

    creds = await bearer_scheme(request)
    try:
        return await get_user(request, None, creds)
    except HTTPException as exc:
        if exc.status_code == 401:
            return None
        raise


def create_app() -> Any:
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

    from airflow_fsmigration.links import REPORTS_ROUTE
    from airflow_fsmigration.plugins.cockpit_reports import ReportRefused
    from airflow_fsmigration.reports.cockpit import render_unconfigured

    app = FastAPI(title="Feature store migration cockpit", docs_url=None, redoc_url=None, openapi_url=None)

    def to_login(request: Request) -> RedirectResponse:
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)

    @app.get("/cockpit", response_class=HTMLResponse)
    def cockpit(request: Request, user: Any = Depends(browser_user)) -> Any:
        if user is None:
            return to_login(request)
        status, page = cockpit_page(user)
        return HTMLResponse(page, status_code=status, headers={"Cache-Control": "no-store"})

    @app.get("/cockpit.json")
    def cockpit_json(user: Any = Depends(get_user)) -> JSONResponse:
        try:
            _, views, errors = collect(user)
        except PlanNotConfigured as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        if not views:
            raise HTTPException(
                status_code=403, detail="you may not read the DAGs of any feature group in this plan"
            )
        return JSONResponse({"groups": [view_dict(v) for v in views], "errors": errors})

    @app.get(REPORTS_ROUTE + "/{rel:path}")
    def report(rel: str, request: Request, user: Any = Depends(browser_user)) -> Any:
        if user is None:
            return to_login(request)
        try:
            found = report_file(user, rel)
        except ReportRefused as exc:
            return HTMLResponse(render_unconfigured(str(exc)), status_code=exc.status)
        return FileResponse(
            found.path,
            media_type=found.media_type,
            headers={
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "private, no-cache",
                # Served on Airflow's origin: a report (GX data docs carry scripts) runs in an
                # opaque origin, so nothing in it can read the UI's token or call the API as the user.
                "Content-Security-Policy": REPORT_CSP,
            },
        )

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
