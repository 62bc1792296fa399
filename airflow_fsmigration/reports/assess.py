"""The assessment: an inventory of the plan before anything moves (``fsmigrate assess``).

It answers the questions a migration review asks first: what is in each group, who reads it, how
fast and how often it must answer, how risky it is, in which order the groups move, which features
nobody uses any more, and whether the raw events still cover the backfill each group promises.

The data is gathered once into a plain dict (also written as JSON, for the cockpit and scripts),
then rendered twice: Markdown for review in a pull request (:mod:`.assess_markdown`, with the
one-screen summary), a self-contained HTML page for people (:mod:`.assess_html`).
The retention audit and the training paths come from :mod:`airflow_fsmigration.backfill`; when the
event log cannot be read the report says "retention audit not run: <why>", which is not a pass.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.reports.assess_html import render_html
from airflow_fsmigration.reports.assess_markdown import render_markdown, render_summary

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.reports")

UNUSED_AFTER = timedelta(days=182)  # "unused for 6 months"


@dataclass(frozen=True)
class AssessmentResult:
    """What ``fsmigrate assess`` prints and where it wrote the report."""

    summary: str
    html_path: Path
    markdown_path: Path
    data: dict[str, Any] = field(repr=False)
    json_path: Path | None = None


def write_assessment(
    plan: MigrationPlan,
    out_dir: str | Path,
    *,
    retention: bool = True,
    now: datetime | None = None,
) -> AssessmentResult:
    """Assess ``plan`` and write ``assessment_<plan>.{md,html,json}`` into ``out_dir``.

    :param retention: audit the event log (the plan's ``event_log`` connection); when False the
        report says the audit was not run.
    :param now: the reference time for "unused for 6 months" and the backfill windows (default: now).
    """
    data = build_assessment(plan, retention=retention, now=now)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"assessment_{plan.name}"
    md_path = out / f"{stem}.md"
    html_path = out / f"{stem}.html"
    json_path = out / f"{stem}.json"
    md_path.write_text(render_markdown(data), encoding="utf-8")
    from airflow_fsmigration.reports.html import write_page

    write_page(html_path, render_html(data))
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    log.info("assessment of plan '%s' written to %s", plan.name, html_path)
    return AssessmentResult(render_summary(data), html_path, md_path, data, json_path)


# --- gathering -------------------------------------------------------------------------------


def build_assessment(
    plan: MigrationPlan, *, retention: bool = True, now: datetime | None = None
) -> dict[str, Any]:
    """Everything the report shows, as JSON-ready plain data."""
    from airflow_fsmigration.backfill.training import model_groups
    from airflow_fsmigration.plan.definitions import dependency_findings
    from airflow_fsmigration.plan.durations import format_duration
    from airflow_fsmigration.plan.graph import compute_waves, downstream_of, risk_tier

    now = (now or datetime.now(UTC)).astimezone(UTC)
    waves = compute_waves(plan)
    cutoff = now.date() - UNUSED_AFTER

    groups = []
    unused, unknown = [], []
    for name in waves.order:
        g = plan.groups[name]
        settings = plan.settings_for(g)
        features = []
        for f in g.features:
            status = _usage(f.last_used, cutoff)
            features.append(
                {
                    "name": f.name,
                    "dtype": str(f.dtype),
                    "atol": f.atol,
                    "rtol": f.rtol,
                    "null_policy": str(f.null_policy),
                    "last_used": f.last_used.isoformat() if f.last_used else None,
                    "usage": status,
                }
            )
            if status == "unused":
                assert f.last_used is not None
                unused.append(
                    {
                        "group": name,
                        "feature": f.name,
                        "last_used": f.last_used.isoformat(),
                        "days_since": (now.date() - f.last_used).days,
                        "models": list(g.models),
                    }
                )
            elif status == "unknown":
                unknown.append(f"{name}.{f.name}")
        groups.append(
            {
                "name": name,
                "description": g.description,
                "owner": g.owner,
                "entity_key": g.entity_key,
                "wave": waves.wave_of(name),
                "risk_tier": risk_tier(plan, g),
                "criticality": str(g.criticality),
                "models": list(g.models),
                "sla_p99_ms": g.sla.p99_ms,
                "sla_max_staleness": format_duration(g.sla.max_staleness),
                "qps_peak": g.qps.peak,
                "qps_average": g.qps.average,
                "load_test": plan.is_high_traffic(g),
                "load_test_qps": g.qps.peak * settings.load_test_multiplier
                if plan.is_high_traffic(g)
                else None,
                "depends_on": list(g.depends_on),
                "downstream": downstream_of(plan, name),
                "backfill_window": format_duration(g.backfill_window),
                "consistency_threshold": settings.consistency_threshold,
                "ramp_steps": list(settings.ramp_steps),
                "definition": g.definition,
                "legacy_online": g.legacy_online.key_template,
                "legacy_offline": g.legacy_offline.table,
                "event_sources": [
                    {
                        "table": s.table,
                        "time_column": s.time_column,
                        "retention": format_duration(s.retention),
                        "longest_window": format_duration(s.longest_window),
                    }
                    for s in g.event_sources
                ],
                "features": features,
            }
        )

    models = []
    for model, gs in sorted(model_groups(plan).items()):
        spec = plan.models.get(model)
        models.append(
            {
                "model": model,
                "declared": spec is not None,
                "owner": spec.owner if spec else None,
                "description": spec.description if spec else None,
                "groups": list(gs),
                "features": sum(len(plan.groups[g].features) for g in gs),
                "highest_tier": max(
                    (risk_tier(plan, plan.groups[g]) for g in gs),
                    key=["low", "medium", "high"].index,
                    default=None,
                ),
                "training_datasets": [
                    {
                        "location": d.location,
                        "format": d.format,
                        "cutoff": d.cutoff.isoformat(),
                        "rows": d.rows,
                    }
                    for d in (spec.training_datasets if spec else ())
                ],
            }
        )

    audit: dict[str, Any] = (
        _retention_audit(plan, now) if retention else {"ran": False, "reason": "skipped (--no-retention)"}
    )
    training = _training_paths(plan, now, audit)
    by_group = {r["group"]: r for r in audit["reports"]} if audit["ran"] else {}
    for row in groups:
        report = by_group.get(row["name"])
        row["retention"] = (
            "not run" if not audit["ran"] else "covered" if report and report["covered"] else "gap"
        )

    return {
        "plan": {
            "name": plan.name,
            "description": plan.description,
            "source_dir": str(plan.source_dir),
            "groups": len(plan.groups),
            "features": sum(len(g.features) for g in plan.groups.values()),
            "models": len(models),
            "waves": len(waves.waves),
            "new_store_dialect": str(plan.new_store.dialect),
            "high_traffic_qps": plan.defaults.high_traffic_qps,
            "connections": plan.connections.model_dump(),
        },
        "generated_at": now.isoformat(timespec="seconds"),
        "unused_cutoff": cutoff.isoformat(),
        "waves": [list(w) for w in waves.waves],
        "groups": groups,
        "edges": [[up, name] for name, g in plan.groups.items() for up in g.depends_on],
        "unused_features": unused,
        "unknown_last_used": unknown,
        "models": models,
        "dependency_findings": dependency_findings(plan),
        "retention": audit,
        "training": training,
    }


def _usage(last_used: date | None, cutoff: date) -> str:
    if last_used is None:
        return "unknown"
    return "unused" if last_used < cutoff else "used"


def _retention_audit(plan: MigrationPlan, now: datetime) -> dict[str, Any]:
    """Audit the event log, or say exactly why it could not be audited."""
    from airflow_fsmigration.backfill.retention import audit_plan_retention
    from airflow_fsmigration.connections import ConnectionNotFound, StoreUnavailable, connect_postgres

    conn_id = plan.connections.event_log
    try:
        conn = connect_postgres(conn_id, autocommit=True)
    except (ConnectionNotFound, StoreUnavailable) as exc:
        log.info("retention audit not run: %s", exc)
        return {"ran": False, "reason": str(exc), "conn_id": conn_id}
    try:
        with conn:
            reports = audit_plan_retention(plan, conn, now=now)
    except Exception as exc:  # the server answered but the audit broke: report it, never a pass
        log.warning("retention audit failed: %s", exc)
        return {"ran": False, "reason": f"{type(exc).__name__}: {exc}", "conn_id": conn_id}
    data = [r.to_dict() for r in reports]
    return {
        "ran": True,
        "conn_id": conn_id,
        "reports": data,
        "covered": sum(1 for r in data if r["covered"]),
        "gaps": sum(1 for r in data if not r["covered"]),
        "_objects": reports,
    }


def _training_paths(plan: MigrationPlan, now: datetime, audit: dict[str, Any]) -> list[dict[str, Any]]:
    from airflow_fsmigration.backfill.training import plan_training_paths

    reports = audit.pop("_objects", None)
    paths = plan_training_paths(plan, None, now=now, retention=reports)
    return [p.to_dict() for p in paths]
