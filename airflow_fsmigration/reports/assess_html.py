"""The assessment as a self-contained HTML page: tables, the wave diagram and charts.

Renders the plain dict :func:`airflow_fsmigration.reports.assess.build_assessment` gathered,
with the shared building blocks of :mod:`airflow_fsmigration.reports.html`.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.reports.html import Markup

TIER_COLORS = {"low": "#dafbe1", "medium": "#fff8c5", "high": "#ffcecb"}
_TIER_BAR = {"low": "#1a7f37", "medium": "#bf8700", "high": "#cf222e"}


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
