"""The assessment as text: the one screen ``fsmigrate assess`` prints, and Markdown for a pull request.

Both render the plain dict :func:`airflow_fsmigration.reports.assess.build_assessment` gathered.
"""

from __future__ import annotations

from typing import Any


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
