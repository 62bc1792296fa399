"""The assessment: an inventory of the plan before anything moves (``fsmigrate assess``).

It answers the questions a migration review asks first: what is in each group, who reads it, how
fast and how often it must answer, how risky it is, in which order the groups move, which features
nobody uses any more, and whether the raw events still cover the backfill each group promises.

The data is gathered once into a plain dict (also written as JSON, for the cockpit and scripts),
then rendered twice: Markdown for review in a pull request, a self-contained HTML page for people.
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

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.reports.html import Markup

log = logging.getLogger("airflow_fsmigration.reports")

UNUSED_AFTER = timedelta(days=182)  # "unused for 6 months"
TIER_COLORS = {"low": "#dafbe1", "medium": "#fff8c5", "high": "#ffcecb"}
_TIER_BAR = {"low": "#1a7f37", "medium": "#bf8700", "high": "#cf222e"}


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


# --- rendering: text summary -------------------------------------------------------------------


def render_summary(data: dict[str, Any]) -> str:
    """One screen of text: what ``fsmigrate assess`` prints."""
    p = data["plan"]
    lines = [
        f"Assessment of plan '{p['name']}': {p['groups']} groups, {p['features']} features, "
        f"{p['models']} models, {p['waves']} waves",
        "",
        f"  {'wave':<5}{'group':<26}{'tier':<8}{'crit':<10}{'peak qps':>9}{'p99 ms':>8}  {'retention':<10}models",
    ]
    for g in data["groups"]:
        lines.append(
            f"  {g['wave']:<5}{g['name']:<26}{g['risk_tier']:<8}{g['criticality']:<10}"
            f"{g['qps_peak']:>9,.0f}{g['sla_p99_ms']:>8g}  {g['retention']:<10}{', '.join(g['models'])}"
        )
    lines.append("")
    if data["unused_features"]:
        lines.append(f"Unused for 6 months (last used before {data['unused_cutoff']}):")
        for u in data["unused_features"]:
            lines.append(
                f"  {u['group']}.{u['feature']}: last used {u['last_used']} ({u['days_since']} days ago)"
            )
    else:
        lines.append(f"No feature is known to be unused since {data['unused_cutoff']}.")
    if data["unknown_last_used"]:
        lines.append(
            f"Last use unknown for {len(data['unknown_last_used'])} of {p['features']} features "
            "(not counted as used: record last_used in the plan)."
        )
    audit = data["retention"]
    lines.append("")
    if audit["ran"]:
        lines.append(
            f"Retention audit (connection '{audit['conn_id']}'): {audit['covered']} of "
            f"{len(audit['reports'])} groups covered, {audit['gaps']} with gaps"
        )
        for r in audit["reports"]:
            if not r["covered"]:
                lines.append(f"  GAP {r['group']}: {'; '.join(r['gaps'])}")
    else:
        lines.append(f"Retention audit not run: {audit['reason']}")
    if data["dependency_findings"]:
        lines.append("")
        lines.append("Dependency findings:")
        lines.extend(f"  - {f}" for f in data["dependency_findings"])
    paths = [t for t in data["training"] if t["path"] not in ("unaffected",)]
    if paths:
        lines.append("")
        lines.append("Training data per model: " + ", ".join(f"{t['model']} {t['path']}" for t in paths))
    return "\n".join(lines)


# --- rendering: Markdown -----------------------------------------------------------------------


def _md_escape(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if value == int(value) and abs(value) >= 1000 else f"{value:g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "_none_\n"
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def render_markdown(data: dict[str, Any]) -> str:
    p = data["plan"]
    md = [
        f"# Assessment: {p['name']}",
        "",
        f"{p['description'] or ''}",
        "",
        f"Generated {data['generated_at']}. {p['groups']} groups, {p['features']} features, "
        f"{p['models']} models, {p['waves']} waves.",
        "",
        "## Migration order",
        "",
    ]
    for i, wave in enumerate(data["waves"], start=1):
        md.append(f"{i}. wave {i}: {', '.join(wave)}")
    md += ["", "## Groups", ""]
    md.append(
        _md_table(
            [
                "wave",
                "group",
                "risk tier",
                "criticality",
                "models",
                "p99 SLA ms",
                "max staleness",
                "peak QPS",
                "avg QPS",
                "load test",
                "depends on",
                "backfill",
                "retention",
            ],
            [
                [
                    g["wave"],
                    g["name"],
                    g["risk_tier"],
                    g["criticality"],
                    ", ".join(g["models"]),
                    g["sla_p99_ms"],
                    g["sla_max_staleness"],
                    g["qps_peak"],
                    g["qps_average"],
                    f"{g['load_test_qps']:,.0f} QPS" if g["load_test"] else "no",
                    ", ".join(g["depends_on"]) or "-",
                    g["backfill_window"],
                    g["retention"],
                ]
                for g in data["groups"]
            ],
        )
    )
    for g in data["groups"]:
        md += [
            f"### {g['name']}",
            "",
            f"{g['description'] or ''} Owner: {g['owner'] or '-'}. Entity key `{g['entity_key']}`; "
            f"definition `{g['definition']}`; legacy online `{g['legacy_online']}`, offline `{g['legacy_offline']}`. "
            f"Consistency threshold {g['consistency_threshold']:.3%}, ramp {'/'.join(map(str, g['ramp_steps']))}.",
            "",
            _md_table(
                ["feature", "dtype", "atol", "rtol", "null policy", "last used"],
                [
                    [
                        f["name"],
                        f["dtype"],
                        f["atol"],
                        f["rtol"],
                        f["null_policy"],
                        f"{f['last_used']} ({f['usage']})" if f["last_used"] else "unknown",
                    ]
                    for f in g["features"]
                ],
            ),
        ]
    md += ["## Features unused for 6 months", "", f"Last used before {data['unused_cutoff']}.", ""]
    md.append(
        _md_table(
            ["group", "feature", "last used", "days since", "models of the group"],
            [
                [u["group"], u["feature"], u["last_used"], u["days_since"], ", ".join(u["models"])]
                for u in data["unused_features"]
            ],
        )
    )
    if data["unknown_last_used"]:
        md += [
            "",
            f"Last use unknown (not counted as used) for {len(data['unknown_last_used'])} features: "
            + ", ".join(f"`{n}`" for n in data["unknown_last_used"]),
            "",
        ]
    md += ["## Models", ""]
    md.append(
        _md_table(
            ["model", "owner", "groups", "features read", "highest risk tier", "training datasets"],
            [
                [
                    m["model"] + ("" if m["declared"] else " (not declared under models:)"),
                    m["owner"],
                    ", ".join(m["groups"]) or "-",
                    m["features"],
                    m["highest_tier"],
                    len(m["training_datasets"]),
                ]
                for m in data["models"]
            ],
        )
    )
    md += ["", "## Dependency findings", ""]
    md += [f"- {f}" for f in data["dependency_findings"]] or [
        "Declared dependencies match what the SQL reads."
    ]
    md += ["", "## Retention audit", ""]
    audit = data["retention"]
    if audit["ran"]:
        md.append(
            f"Event log connection `{audit['conn_id']}`: {audit['covered']} of {len(audit['reports'])} "
            f"groups covered, {audit['gaps']} with gaps."
        )
        md.append("")
        md.append(
            _md_table(
                ["group", "window", "covered", "gaps", "warnings"],
                [
                    [
                        r["group"],
                        f"{r['start']} .. {r['end']}",
                        r["covered"],
                        "; ".join(r["gaps"]) or "-",
                        "; ".join(r["warnings"]) or "-",
                    ]
                    for r in audit["reports"]
                ],
            )
        )
    else:
        md.append(f"**Retention audit not run:** {audit['reason']}")
    md += ["", "## Training data per model", ""]
    md.append(
        _md_table(
            ["model", "path", "groups", "reason"],
            [[t["model"], t["path"], ", ".join(t["groups"]) or "-", t["reason"]] for t in data["training"]],
        )
    )
    return "\n".join(md) + "\n"


# --- rendering: HTML ---------------------------------------------------------------------------


def render_html(data: dict[str, Any]) -> Markup:
    from airflow_fsmigration.reports import html as h

    p = data["plan"]
    tier_badge = {t: h.badge(t) for t in ("low", "medium", "high")}
    parts: list[Any] = []
    parts.append(
        h.kv_table(
            [
                ("plan", p["name"]),
                ("groups / features / models", f"{p['groups']} / {p['features']} / {p['models']}"),
                ("waves", " -> ".join(f"[{', '.join(w)}]" for w in data["waves"])),
                ("new store", p["new_store_dialect"]),
                ("features unused 6 months", len(data["unused_features"])),
                ("retention audit", _retention_badge(data["retention"])),
            ]
        )
    )
    parts.append(
        h.section(
            "Dependency graph",
            h.layered_graph(
                data["waves"],
                [tuple(e) for e in data["edges"]],
                colors={g["name"]: TIER_COLORS[g["risk_tier"]] for g in data["groups"]},
                column_labels=[f"wave {i}" for i in range(1, len(data["waves"]) + 1)],
                legend={f"{t} risk": c for t, c in TIER_COLORS.items()},
                title="Groups by wave (arrows: upstream -> downstream)",
            ),
            anchor="graph",
        )
    )
    rows = [
        [
            g["wave"],
            h.Markup('<a href="#g-{0}">{0}</a>').format(g["name"]),
            tier_badge[g["risk_tier"]],
            g["criticality"],
            ", ".join(g["models"]),
            g["sla_p99_ms"],
            g["sla_max_staleness"],
            g["qps_peak"],
            g["qps_average"],
            f"{g['load_test_qps']:,.0f} QPS" if g["load_test"] else "no",
            ", ".join(g["depends_on"]) or None,
            g["backfill_window"],
            h.badge(g["retention"]),
        ]
        for g in data["groups"]
    ]
    parts.append(
        h.section(
            "Groups",
            h.table(
                [
                    "wave",
                    "group",
                    "risk",
                    "criticality",
                    "models",
                    "p99 ms",
                    "staleness",
                    "peak QPS",
                    "avg QPS",
                    "load test",
                    "depends on",
                    "backfill",
                    "retention",
                ],
                rows,
            ),
            h.bar_chart(
                [g["name"] for g in data["groups"]],
                [g["qps_peak"] for g in data["groups"]],
                title="Peak QPS per group (dashed: load-test threshold)",
                ylabel="QPS",
                threshold=p["high_traffic_qps"],
                threshold_label=f"load-tested from {p['high_traffic_qps']:,.0f} QPS",
                colors=[_TIER_BAR[g["risk_tier"]] for g in data["groups"]],
            ),
            anchor="groups",
        )
    )
    for g in data["groups"]:
        feats = h.table(
            ["feature", "dtype", "atol", "rtol", "null policy", "last used"],
            [
                [
                    f["name"],
                    f["dtype"],
                    f["atol"],
                    f["rtol"],
                    f["null_policy"],
                    h.badge("unknown", "unknown")
                    if f["usage"] == "unknown"
                    else h.Markup("{} {}").format(
                        f["last_used"], h.badge("fail", "unused") if f["usage"] == "unused" else ""
                    ),
                ]
                for f in g["features"]
            ],
        )
        meta = h.paragraph(
            h.Markup(
                "{desc} Owner {owner}. Entity key {key}; definition {defn}; legacy online {online}; "
                "offline {offline}. Consistency threshold {thr}, ramp {ramp}. Downstream: {down}."
            ).format(
                desc=g["description"] or "",
                owner=g["owner"] or "-",
                key=h.code(g["entity_key"]),
                defn=h.code(g["definition"]),
                online=h.code(g["legacy_online"]),
                offline=h.code(g["legacy_offline"]),
                thr=f"{g['consistency_threshold']:.3%}",
                ramp="/".join(map(str, g["ramp_steps"])),
                down=", ".join(g["downstream"]) or "none",
            )
        )
        sources = (
            h.table(
                ["event source", "time column", "declared retention", "longest window"],
                [
                    [s["table"], s["time_column"], s["retention"], s["longest_window"]]
                    for s in g["event_sources"]
                ],
            )
            if g["event_sources"]
            else h.paragraph("No raw event source of its own (derived from upstream groups).")
        )
        parts.append(
            h.section(
                h.Markup("{} {}").format(g["name"], tier_badge[g["risk_tier"]]),
                meta,
                h.details(f"{len(g['features'])} features", feats),
                sources,
                anchor=f"g-{g['name']}",
                level=3,
            )
        )
    parts.append(
        h.section(
            "Features unused for 6 months",
            h.paragraph(
                f"Last used before {data['unused_cutoff']}: candidates to drop instead of migrating."
            ),
            h.table(
                ["group", "feature", "last used", "days since", "models of the group"],
                [
                    [u["group"], u["feature"], u["last_used"], u["days_since"], ", ".join(u["models"])]
                    for u in data["unused_features"]
                ],
            ),
            h.paragraph(
                f"Last use unknown for {len(data['unknown_last_used'])} features (listed as unknown, not as used): "
                + ", ".join(data["unknown_last_used"]),
                kind="warn",
            )
            if data["unknown_last_used"]
            else h.Markup(""),
            anchor="unused",
        )
    )
    parts.append(
        h.section(
            "Models",
            h.table(
                ["model", "owner", "groups", "features read", "highest risk", "training datasets"],
                [
                    [
                        m["model"]
                        if m["declared"]
                        else h.Markup("{} {}").format(m["model"], h.badge("warn", "not declared")),
                        m["owner"],
                        ", ".join(m["groups"]) or None,
                        m["features"],
                        tier_badge[m["highest_tier"]] if m["highest_tier"] else None,
                        "; ".join(f"{d['location']} (cutoff {d['cutoff']})" for d in m["training_datasets"])
                        or None,
                    ]
                    for m in data["models"]
                ],
            ),
            anchor="models",
        )
    )
    findings = data["dependency_findings"]
    parts.append(
        h.section(
            "Dependency findings",
            h.bullet_list(findings)
            if findings
            else h.paragraph("Declared dependencies match what the SQL reads."),
            anchor="findings",
        )
    )
    parts.append(h.section("Retention audit", *_retention_html(data["retention"]), anchor="retention"))
    parts.append(
        h.section(
            "Training data per model",
            h.table(
                ["model", "path", "groups", "reason", "ready at"],
                [
                    [
                        t["model"],
                        h.badge(_path_status(t["path"]), t["path"]),
                        ", ".join(t["groups"]) or None,
                        t["reason"],
                        t["ready_at"],
                    ]
                    for t in data["training"]
                ],
            ),
            anchor="training",
        )
    )
    return h.page(
        f"Migration assessment: {p['name']}",
        h.Markup("\n").join(parts),
        subtitle=p["description"],
        generated_at=datetime.fromisoformat(data["generated_at"]),
        footer="airflow-fsmigration assessment",
    )


def _path_status(path: str) -> str:
    return {"recompute": "pass", "transition": "warn", "freeze": "fail", "unknown": "inconclusive"}.get(
        path, "skipped"
    )


def _retention_badge(audit: dict[str, Any]) -> Markup:
    from airflow_fsmigration.reports import html as h

    if not audit["ran"]:
        return h.badge("inconclusive", "not run")
    if audit["gaps"]:
        return h.badge("fail", f"{audit['gaps']} group(s) with gaps")
    return h.badge("pass", f"all {audit['covered']} groups covered")


def _retention_html(audit: dict[str, Any]) -> list[Any]:
    from airflow_fsmigration.reports import html as h

    if not audit["ran"]:
        return [h.paragraph(f"Retention audit not run: {audit['reason']}", kind="warn")]
    out: list[Any] = [
        h.paragraph(
            f"Event log connection '{audit['conn_id']}': is each group's backfill window (plus its longest "
            f"feature window) covered by the raw events? {audit['covered']} of {len(audit['reports'])} covered."
        )
    ]
    rows = []
    for r in audit["reports"]:
        for s in r["sources"] or [None]:
            rows.append(
                [
                    r["group"],
                    h.badge("pass", "covered") if r["covered"] else h.badge("fail", "gap"),
                    f"{r['start'][:10]} .. {r['end'][:10]}",
                    s["table"] if s else "(no event source)",
                    s["required_start"] if s else None,
                    s["oldest"] if s else None,
                    (s["gap"] or "-") if s else "-",
                ]
            )
    out.append(
        h.table(["group", "status", "window", "source", "needs events from", "oldest event", "gap"], rows)
    )
    warnings = [f"{r['group']}: {w}" for r in audit["reports"] for w in r["warnings"]]
    if warnings:
        out.append(h.details(f"{len(warnings)} warnings", h.bullet_list(warnings)))
    return out
