"""Glue from the Airflow faces to the plain core: one function per core call, at task run time.

Operators, sensors and the nightly DAG call these with a plan and a :class:`MigrationHook`; this
module builds the core objects (stores, registry, result store) from the hook's URLs and
returns JSON-able summaries. Imported only inside ``execute``: it pulls in pandas/Arrow through
the core, which must never happen at DAG-parse time.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.hooks.migration import MigrationHook
    from airflow_fsmigration.plan import MigrationPlan

log = logging.getLogger("airflow_fsmigration.operators")

# Phases in which the nightly DAG compares a group (traffic may still depend on the old store).
NIGHTLY_PHASES = ("shadow", "ramping", "cutover", "warm")


def reports_dir() -> Path:
    """Where task reports are written: ``$FSMIG_REPORTS_DIR``, else ``$AIRFLOW_HOME/fsmig_reports``."""
    explicit = os.environ.get("FSMIG_REPORTS_DIR")
    if explicit:
        return Path(explicit)
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return Path(home) / "fsmig_reports"


def report_url(path: Path) -> str:
    """A link to a report: under ``$FSMIG_REPORTS_BASE_URL`` when reports are served, else file://."""
    base = os.environ.get("FSMIG_REPORTS_BASE_URL")
    if base:
        return f"{base.rstrip('/')}/{path.relative_to(reports_dir()).as_posix()}"
    return path.resolve().as_uri()


def write_report(kind: str, group: str | None, run_id: str, title: str, result: dict[str, Any]) -> Path:
    """A self-contained HTML page for one task's result (summary table plus the full JSON)."""
    import json

    from airflow_fsmigration.reports import html

    flat = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    body = html.section("Summary", html.kv_table(flat))
    body += html.details("Full result (JSON)", html.code(json.dumps(result, indent=2, default=str)))
    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    path = reports_dir() / (group or "plan") / kind / f"{safe_run}.html"
    return html.write_page(path, html.page(title, body, generated_at=datetime.now(UTC)))


# -- registry -------------------------------------------------------------------------------


def open_registry(plan: MigrationPlan, hook: MigrationHook) -> Any:
    """The routing registry with its schema ensured, the plan registered and the Redis mirror on."""
    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.routing import Registry

    mirror = RoutingMirror(hook.redis_client())
    registry = Registry(hook.postgres_url("registry"), mirror, plan=plan)
    registry.ensure_schema()
    registry.register_plan(plan, actor="airflow")
    return registry


def active_groups(
    plan: MigrationPlan, hook: MigrationHook, phases: tuple[str, ...] = NIGHTLY_PHASES
) -> list[str]:
    """The plan's groups whose registry phase is one of ``phases``, in plan wave order."""
    from airflow_fsmigration.plan.graph import compute_waves

    registry = open_registry(plan, hook)
    try:
        states = registry.states(plan.name)
    finally:
        registry.close()
    order = compute_waves(plan).order
    return [g for g in order if g in states and states[g].phase.value in phases]


# -- shadow comparison ----------------------------------------------------------------------


def old_source(plan: MigrationPlan, hook: MigrationHook) -> Any:
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    return RedisOnlineSource(hook.redis_url(), plan, conn_id=plan.connections.legacy_online)


def new_store(plan: MigrationPlan, hook: MigrationHook) -> Any:
    from airflow_fsmigration.stores.new_store import NewStore

    return NewStore(hook.postgres_url("new_store"), plan, conn_id=plan.connections.new_store)


def shadow_compare(
    plan: MigrationPlan,
    group: str,
    hook: MigrationHook,
    *,
    shard: str | None = None,
    sample_size: int | None = None,
    logical_time: datetime | None = None,
) -> dict[str, Any]:
    """Run and record one shadow comparison; returns the result's JSON (without per-row flags)."""
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.compare.shadow import run_shadow

    conn = hook.connect("registry")
    try:
        results = ResultStore(conn)
        results.ensure()
        with new_store(plan, hook) as new:
            result = run_shadow(
                plan,
                group,
                old_source(plan, hook),
                new,
                sample_size=sample_size,
                shard=shard,
                results=results,
                logical_time=logical_time,
            )
    finally:
        conn.close()
    log.info("%s", result.summary())
    return result.to_dict()


def soak_status_dict(
    plan: MigrationPlan, group: str, conn: Any, *, now: datetime | None = None
) -> dict[str, Any]:
    """The soak gate's answer from the shadow results series, with ``passed`` for the gate."""
    from airflow_fsmigration.compare.results import ResultStore

    status = ResultStore(conn).soak_status(plan, group, now=now)
    return {**status.to_dict(), "passed": bool(status.satisfied)}


def soak_evidence(plan: MigrationPlan, group: str, hook: MigrationHook) -> dict[str, Any]:
    conn = hook.connect("registry")
    try:
        return soak_status_dict(plan, group, conn)
    finally:
        conn.close()


# -- new store ------------------------------------------------------------------------------


def deploy(plan: MigrationPlan, group: str, hook: MigrationHook) -> dict[str, Any]:
    with new_store(plan, hook) as store:
        store.deploy(group)
        columns = store.columns(group)
    return {"group": group, "view": plan.view_name(group), "columns": columns}


# -- load test ------------------------------------------------------------------------------


def load_test(
    plan: MigrationPlan,
    group: str,
    hook: MigrationHook,
    *,
    multiplier: float | None = None,
    duration_seconds: float | None = None,
    log: Any = log,
) -> dict[str, Any]:
    from airflow_fsmigration.serving.loadtest import run_load_test

    report = run_load_test(
        plan,
        group,
        old_url=hook.redis_url(),
        new_url=hook.postgres_url("new_store"),
        multiplier=multiplier,
        duration=duration_seconds,
    )
    return report.as_dict() if hasattr(report, "as_dict") else dict(report)
