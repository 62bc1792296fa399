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
    """A self-contained HTML page for one task's result.

    A shadow comparison gets the full shadow report (root causes, SQL diff, charts), the same page
    ``fsmigrate shadow`` writes; other tasks a summary table plus the full JSON.
    """
    import json

    from airflow_fsmigration.reports import html

    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    path = reports_dir() / (group or "plan") / kind / f"{safe_run}.html"
    if kind == "shadow" and "features" in result:
        from airflow_fsmigration.compare.result import ComparisonResult
        from airflow_fsmigration.reports.shadow import render_shadow_report

        page = render_shadow_report(ComparisonResult.from_dict(result), out_dir=path.parent)
        return html.write_page(path, page)
    flat = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    body = html.section("Summary", html.kv_table(flat))
    body += html.details("Full result (JSON)", html.code(json.dumps(result, indent=2, default=str)))
    return html.write_page(path, html.page(title, body, generated_at=datetime.now(UTC)))


# -- registry -------------------------------------------------------------------------------


def open_registry(plan: MigrationPlan, hook: MigrationHook) -> Any:
    """The routing registry with its schema ensured, the plan registered and the Redis mirror on."""
    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.routing import Registry

    mirror = RoutingMirror(hook.redis_client("routing_mirror"))
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
    from airflow_fsmigration.stores.feast_online import online_source_for

    return online_source_for(plan, hook.redis_url(), plan.connections.legacy_online)


def new_store(plan: MigrationPlan, hook: MigrationHook) -> Any:
    from airflow_fsmigration.stores.new_store import NewStore

    return NewStore(hook.postgres_url("new_store"), plan, conn_id=plan.connections.new_store)


def record_shadow_run(
    plan: MigrationPlan,
    group: str,
    *,
    registry_conn: Any,
    online_url: str,
    new_url: str,
    shard: str | None = None,
    sample_size: int | None = None,
    logical_time: datetime | None = None,
) -> Any:
    """Run one shadow comparison from plain URLs and record it in the results series."""
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.stores.feast_online import online_source_for
    from airflow_fsmigration.stores.new_store import NewStore

    results = ResultStore(registry_conn)
    results.ensure()
    old = online_source_for(plan, online_url, plan.connections.legacy_online)
    try:
        with NewStore(new_url, plan, conn_id=plan.connections.new_store) as new:
            return run_shadow(
                plan,
                group,
                old,
                new,
                sample_size=sample_size,
                shard=shard,
                results=results,
                logical_time=logical_time,
            )
    finally:
        close = getattr(old, "close", None)
        if close is not None:
            close()


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
    conn = hook.connect("registry")
    try:
        result = record_shadow_run(
            plan,
            group,
            registry_conn=conn,
            online_url=hook.redis_url(),
            new_url=hook.postgres_url("new_store"),
            shard=shard,
            sample_size=sample_size,
            logical_time=logical_time,
        )
    finally:
        conn.close()
    log.info("%s", result.summary())
    return result.to_dict()


def soak_status_dict(
    plan: MigrationPlan, group: str, conn: Any, *, now: datetime | None = None, max_gap: Any = None
) -> dict[str, Any]:
    """The soak gate's answer from the shadow results series, with ``passed`` for the gate."""
    from airflow_fsmigration.compare.results import ResultStore

    store = ResultStore(conn)
    store.ensure()
    status = store.soak_status(plan, group, now=now, max_gap=max_gap)
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


def schema_parity(
    plan: MigrationPlan, group: str, hook: MigrationHook, *, run_id: str = "run"
) -> dict[str, Any]:
    """GX schema-parity suite: plan columns present in the new view with faithful types.

    The schema only: differences in the data (null counts) are the shadow comparison's to find
    and explain, so a data bug is never reported as a schema problem.
    """
    from airflow_fsmigration.compare.gx import schema_parity as gx_schema_parity

    g = plan.groups[group]
    with new_store(plan, hook) as store:
        columns = store.columns(group)
    docs = reports_dir() / group / "gx" / "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    verdict = gx_schema_parity(g, columns, docs_dir=docs)
    data = verdict.to_dict()
    failed = [r for r in data["results"] if not r.get("success")]
    return {
        "group": group,
        "passed": bool(verdict.success),
        "verdict": data["verdict"],
        "columns": columns,
        "problems": [
            f"{r.get('column') or r.get('expectation')}: {r.get('observed_value')}"
            for r in failed
            if r.get("column")
        ],
        "summary": f"{len(failed)} failed expectation(s)" if failed else "schema parity passed",
        "gx": data,
    }


def point_in_time(
    plan: MigrationPlan, group: str, hook: MigrationHook, *, samples: int = 1000, days: float | None = None
) -> dict[str, Any]:
    """New store's as-of values vs the old offline store's history at sampled (entity, time) pairs."""
    from datetime import timedelta

    from airflow_fsmigration.backfill.pit import validate_point_in_time
    from airflow_fsmigration.stores.feast_offline import offline_source_for

    offline = offline_source_for(plan, hook.postgres_url("legacy_offline"), plan.connections.legacy_offline)
    start = datetime.now(UTC) - timedelta(days=days) if days is not None else None
    store_conn = hook.connect("new_store")
    try:
        result = validate_point_in_time(plan, group, store_conn, offline, sample_size=samples, start=start)
    finally:
        store_conn.close()
        close = getattr(offline, "close", None)
        if close is not None:
            close()
    data = result.to_dict()
    comparison = data.pop("comparison")
    data.update(
        {
            "match_rate": comparison.get("match_rate"),
            "threshold": comparison.get("threshold"),
            "reasons": comparison.get("reasons", []),
            "explanations": comparison.get("explanations", []),
            "feature_match_rates": {
                n: f.get("match_rate") for n, f in comparison.get("features", {}).items()
            },
        }
    )
    return data


# -- load test ------------------------------------------------------------------------------


def load_test(
    plan: MigrationPlan,
    group: str,
    hook: MigrationHook,
    *,
    multiplier: float | None = None,
    duration_seconds: float | None = None,
    max_entities: int = 10_000,
) -> dict[str, Any]:
    """Drive the new store through the router's read path at ``multiplier`` x peak QPS.

    Reads go to the new store explicitly (``backend="new"``), so no real traffic is routed to it.
    """
    from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend
    from airflow_fsmigration.serving.loadtest import load_test_for_group, run_load_test
    from airflow_fsmigration.serving.router import FeatureRouter

    g = plan.groups[group]
    with new_store(plan, hook) as store:
        ids = store.entity_ids(g, limit=max_entities)
    if not ids:
        raise RuntimeError(
            f"group {group}: the new store's view {plan.view_name(group)} has no entities to load-test "
            f"(connection '{plan.connections.new_store}')"
        )
    client = hook.redis_client()
    control = hook.redis_client("routing_mirror") if plan.connections.routing_mirror else client
    new = PostgresBackend(hook.postgres_url("new_store"), plan)
    router = FeatureRouter(control, LegacyRedisBackend.from_plan(client, plan), new, plan=plan, listen=False)
    try:
        if multiplier is None:
            result = load_test_for_group(router, plan, group, ids, duration_s=duration_seconds)
        else:
            s = plan.settings_for(group)
            result = run_load_test(
                router,
                group,
                ids,
                target_qps=multiplier * g.qps.peak,
                duration_s=duration_seconds or s.load_test_duration.total_seconds(),
                sla_p99_ms=g.sla.p99_ms,
                max_error_rate_pct=s.rollback_triggers.error_rate_pct,
            )
    finally:
        router.close()  # closes both backends
        client.close()
    log.info("%s", result.summary())
    return result.as_dict()
