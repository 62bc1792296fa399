"""The cockpit page: per group what the registry says *and* what the DAG runs did, and why.

Plain rendering (no Airflow import, no database): :mod:`airflow_fsmigration.plugins.cockpit`
reads the registry, the shadow results, the audit log and the metadata database's DAG runs into
:class:`GroupView` objects, and :func:`render` draws them. Every value from outside is escaped by
:mod:`markupsafe`; charts are inline SVG drawn by hand (no CDN, no JavaScript, no matplotlib per
request). Links open at the top level (``target="_top"``): the page lives in Airflow's iframe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from airflow_fsmigration.plan.durations import format_duration

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.plugins.cockpit_runs import RunInfo
    from airflow_fsmigration.reports.cockpit import GroupStatus

KINDS = ("migrate", "rollback", "backfill")
# A few rules on top of the report style sheet (which the page shares with every report).
_CSS = (
    "<style>table.facts th { width: 170px; background: var(--bg-alt); font-weight: 600; }"
    " table.facts td { background: #fff; } svg.soak { display: block; margin: 4px 0 8px; }"
    " #summary td:last-child { min-width: 360px; }</style>"
)
RUN_BADGE = {"success": "pass", "failed": "fail", "running": "inconclusive", "queued": "muted"}


@dataclass
class GroupView:
    """Everything the cockpit shows for one group."""

    status: GroupStatus
    runs: dict[str, list[RunInfo]] = field(default_factory=dict)  # kind -> newest first
    audit: list[Any] = field(default_factory=list)  # registry AuditEntry, oldest first
    series: list[Any] = field(default_factory=list)  # compare.results.ShadowRun, oldest first
    soak: Any = None  # gates.soak.SoakStatus while in shadow
    report: str | None = None  # href of the newest shadow report

    @property
    def group(self) -> str:
        return self.status.group

    @property
    def latest_migrate(self) -> RunInfo | None:
        runs = self.runs.get("migrate") or []
        return runs[0] if runs else None

    def causes(self, limit: int = 3) -> list[dict[str, Any]]:
        """Root causes the newest failing shadow comparison found (feature, rows, evidence, fix)."""
        if not self.series or str(self.series[-1].verdict) != "fail":
            return []
        last = self.series[-1]
        if getattr(last, "causes", None):  # root causes (one per defect, proven by replay) first
            out = []
            for c in last.causes[:limit]:
                feats = c.get("features") or {}
                proof = "proven by replay" if c.get("proven") else "value pattern, not proven"
                out.append(
                    {
                        "kind": c.get("kind"),
                        "feature": f"{str(c.get('kind')).replace('_', ' ')} on {', '.join(feats)}",
                        "rows": sum(int(v) for v in feats.values()),
                        "share": max((float(v) for v in (c.get("shares") or {}).values()), default=0.0),
                        "evidence": f"{c.get('evidence')} ({proof})",  # it names the change
                        "fix": c.get("fix"),
                    }
                )
            return out
        return list(last.explanations or [])[:limit]

    def next_gate(self, now: datetime) -> str:
        """The registry's next gate, unless a run says otherwise: a failed run is never "deploy"."""
        run = self.latest_migrate
        gate = self.status.next_gate
        if run is not None and run.state == "failed":
            task = run.first_failed
            what = f"task {task.task_id}" if task else "a task"
            cause = self.causes(1)
            why = (
                f": {cause[0].get('feature') or 'group'}: {cause[0].get('evidence')}; fix: {cause[0].get('fix')}"
                if cause
                else ": open the task's log and report"
            )
            return f"the migrate run failed at {what} {ago(run.since, now)}{why}. Fix it, then trigger the migrate DAG again"
        if run is not None and run.state in ("running", "queued"):
            doing = ", ".join(f"{t.task_id} ({t.state} since {ago(t.since, now)})" for t in run.active)
            if self.soak is not None and not self.soak.satisfied and self.status.phase == "shadow":
                gate = (
                    f"{gate}; waiting for {format_duration(self.soak.missing)} more green shadow comparisons"
                )
            started = f"the migrate run {run.state} since {ago(run.since, now)}"
            return f"{gate}. Now: {doing}; {started}" if doing else f"{gate}. Now: {started}"
        if self.status.phase == "planned" and run is None:
            return "trigger the migrate DAG: it deploys the definition, checks the schema and starts the shadow comparison"
        return gate


def ago(when: datetime | None, now: datetime) -> str:
    """``12m ago`` (in the plan's duration units), or ``-``."""
    if when is None:
        return "-"
    delta = now - (when if when.tzinfo else when.replace(tzinfo=UTC))
    if delta < timedelta(seconds=1):
        return "just now"
    return f"{format_duration(timedelta(seconds=int(delta.total_seconds())))} ago"


def _a(href: str, text: Any, *, title: str | None = None) -> Markup:
    extra = Markup(' title="{}"').format(title) if title else Markup("")
    return Markup('<a href="{}" target="_top"{}>{}</a>').format(href, extra, text)


def soak_chart(
    series: Sequence[Any],
    *,
    threshold: float,
    soak: timedelta,
    counted_since: datetime | None,
    now: datetime,
    width: int = 520,
    height: int = 150,
) -> Markup:
    """Match rate per shadow comparison against the objective, over the soak window (inline SVG).

    The x axis spans the soak (or the runs, if they go further back); the dashed line is the
    threshold; the shaded band is the part of the window counted for the soak since the group
    last entered shadow. Red dots are failing comparisons.
    """
    from airflow_fsmigration.reports.html import COLORS

    points: list[tuple[datetime, float, str]] = []
    for r in series:
        when = _when(r)
        if r.match_rate is not None and when is not None:
            points.append((when, float(r.match_rate), str(r.verdict)))
    points.sort(key=lambda p: p[0])
    if not points:
        return Markup('<p class="meta">no shadow comparison recorded yet</p>')
    start = min(points[0][0], now - soak)
    span = max((now - start).total_seconds(), 1.0)
    lo = min([p[1] for p in points] + [threshold - (1 - threshold)])
    lo = max(0.0, lo - (1 - lo) * 0.1)
    left, right, top, bottom = 44, 8, 8, 20
    w, h = width - left - right, height - top - bottom

    def x(t: datetime) -> float:
        return left + (t - start).total_seconds() / span * w

    def y(v: float) -> float:
        return top + (1.0 - v) / ((1.0 - lo) or 1.0) * h

    parts = [
        Markup('<rect x="{}" y="{}" width="{}" height="{}" fill="#fff" stroke="{}"/>').format(
            left, top, w, h, COLORS["grid"]
        )
    ]
    if counted_since is not None:
        cx = max(left, x(counted_since))
        parts.append(
            Markup(
                '<rect x="{:.1f}" y="{}" width="{:.1f}" height="{}" fill="#dafbe1" opacity="0.6"/>'
            ).format(cx, top, left + w - cx, h)
        )
    ty = y(threshold)
    parts.append(
        Markup(
            '<line x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" stroke-dasharray="4,3"/>'
            '<text x="{l2}" y="{ty:.1f}" font-size="10" text-anchor="end" fill="{c}">{label}</text>'
        ).format(
            l=left, r=left + w, y=ty, c=COLORS["muted"], l2=left - 3, ty=ty + 3, label=f"{threshold:.1%}"
        )
    )
    for v, anchor in ((1.0, top + 3), (lo, top + h)):
        if abs(y(v) - ty) < 12:
            continue  # would overlap the threshold's label
        parts.append(
            Markup('<text x="{}" y="{:.1f}" font-size="10" text-anchor="end" fill="{}">{}</text>').format(
                left - 3, anchor, COLORS["muted"], f"{v:.1%}"
            )
        )
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v, _ in points)
    parts.append(
        Markup('<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>').format(
            COLORS["accent"], line
        )
    )
    for t, v, verdict in points:
        color = COLORS["bad"] if verdict == "fail" or v < threshold else COLORS["ok"]
        parts.append(
            Markup('<circle cx="{:.1f}" cy="{:.1f}" r="3" fill="{}"><title>{} {}</title></circle>').format(
                x(t), y(v), color, t.isoformat(timespec="seconds"), f"{v:.3%}"
            )
        )
    parts.append(
        Markup(
            '<text x="{}" y="{}" font-size="10" fill="{c}">{}</text>'
            '<text x="{}" y="{}" font-size="10" text-anchor="end" fill="{c}">now</text>'
        ).format(
            left, height - 5, f"-{format_duration(now - start)}", left + w, height - 5, c=COLORS["muted"]
        )
    )
    return Markup(
        '<svg class="soak" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="match rate per shadow comparison against the objective">{}</svg>'
    ).format(width, height, width, height, Markup("").join(parts))


def _when(run: Any) -> datetime | None:
    t = getattr(run, "recorded_at", None) or getattr(run, "logical_time", None)
    return t if t is None or t.tzinfo else t.replace(tzinfo=UTC)


def objective_line(view: GroupView, threshold: float, soak: timedelta) -> str:
    """How much of the soak is done and how much error budget the counted runs used."""
    counted = view.series
    parts = []
    if view.soak is not None:
        done = min(view.soak.green_for / soak, 1.0) if soak.total_seconds() else 1.0
        parts.append(
            f"soak {format_duration(view.soak.green_for)} green of {format_duration(soak)} ({done:.0%} done)"
        )
        since = view.soak.counted_since
        if since is not None:
            counted = [r for r in view.series if (_when(r) or since) >= since]
    rates = [float(r.match_rate) for r in counted if r.match_rate is not None]
    allowed = 1.0 - threshold
    if rates and allowed > 0:
        used = (sum(1.0 - v for v in rates) / len(rates)) / allowed
        parts.append(
            f"error budget {max(0.0, 1.0 - used):.0%} left (mean mismatch {1 - sum(rates) / len(rates):.2%} "
            f"of the {allowed:.2%} allowed, {len(rates)} comparisons)"
        )
    return "; ".join(parts) or f"objective: {threshold:.1%} of values agree for {format_duration(soak)}"


def _run_cell(kind: str, runs: Sequence[RunInfo], now: datetime) -> Markup:
    from airflow_fsmigration.reports import html

    if not runs:
        return Markup('<span class="meta">{}: no runs</span>').format(kind)
    run = runs[0]
    out = Markup("{} {} ").format(kind, html.badge(RUN_BADGE.get(run.state, "muted"), run.state))
    base = f"/dags/{run.dag_id}/runs/{run.run_id}"
    failed = run.first_failed
    if failed is not None:
        out += Markup("at ") + _a(f"{base}/tasks/{failed.task_id}", failed.task_id, title="the failed task")
    elif run.active:
        out += Markup(", ").join(
            _a(f"{base}/tasks/{t.task_id}", f"{t.task_id} ({t.state})") for t in run.active[:3]
        )
    out += Markup(' <span class="meta">{}</span> ').format(ago(run.since, now))
    return out + _a(base, "run")


def _audit_table(entries: Sequence[Any], now: datetime) -> Markup:
    from airflow_fsmigration.reports import html

    rows = []
    for e in reversed(entries):  # newest first
        src = f"{getattr(e.from_phase, 'value', e.from_phase) or '-'} {e.from_pct or 0:g}%"
        dst = f"{getattr(e.to_phase, 'value', e.to_phase)} {e.to_pct:g}%"
        run = _a(f"/dags/{e.dag_id}/runs/{e.run_id}", "run") if e.dag_id and e.run_id else Markup("")
        rows.append(
            [
                Markup("{}<br>{}").format(e.at.isoformat(timespec="seconds"), ago(e.at, now)),
                f"{src} → {dst}",
                e.reason,
                Markup("{} {}").format(e.actor, run),
            ]
        )
    return html.table(["when", "transition", "reason", "who"], rows, empty="no transition yet")


def _facts(pairs: Sequence[tuple[str, Any]]) -> Markup:
    """A two-column table of labelled facts (no empty header row)."""
    rows = Markup("").join(
        Markup('<tr><th scope="row">{}</th><td>{}</td></tr>').format(k, v) for k, v in pairs
    )
    return Markup('<table class="facts"><tbody>{}</tbody></table>').format(rows)


def _group_section(plan: MigrationPlan, view: GroupView, now: datetime) -> Markup:
    from airflow_fsmigration.reports import html

    s = plan.settings_for(view.group)
    r = view.status
    runs = Markup("<br>").join(_run_cell(k, view.runs.get(k, []), now) for k in KINDS if k in r.dag_ids)
    dags = Markup(" · ").join(_a(f"/dags/{d}", k) for k, d in r.dag_ids.items())
    facts = [
        (
            "phase",
            Markup("{} at {}% (backend {})").format(
                html.badge(_phase_status(r.phase), r.phase), f"{r.ramp_pct:g}", r.active_backend
            ),
        ),
        ("latest runs", runs),
        ("next gate", view.next_gate(now)),
        (
            "DAGs",
            dags + (Markup(" · ") + _a(view.report, "latest shadow report") if view.report else Markup("")),
        ),
        ("rollback without Airflow", html.code(r.rollback_command)),
    ]
    causes = view.causes()
    parts = [_facts(facts)]
    if causes:
        parts.append(
            html.section(
                "Why the shadow comparison fails",
                html.bullet_list(
                    Markup("<strong>{}</strong>: {} rows ({}): {} <em>Fix:</em> {}").format(
                        c.get("feature") or c.get("kind"),
                        f"{int(c.get('rows') or 0):,}",
                        f"{float(c.get('share') or 0):.1%}",
                        c.get("evidence"),
                        c.get("fix"),
                    )
                    for c in causes
                ),
                level=3,
            )
        )
    parts.append(
        html.section(
            f"Match rate against the objective ({s.consistency_threshold:.1%} for {format_duration(s.shadow_soak)})",
            html.paragraph(objective_line(view, s.consistency_threshold, s.shadow_soak)),
            soak_chart(
                view.series[-200:],
                threshold=s.consistency_threshold,
                soak=s.shadow_soak,
                counted_since=getattr(view.soak, "counted_since", None),
                now=now,
            ),
            level=3,
        )
    )
    parts.append(
        html.details(
            f"Audit log: {len(view.audit)} transition(s), newest first", _audit_table(view.audit, now)
        )
    )
    title = f"w{r.wave} · {r.group} ({r.risk} risk)"
    return html.section(title, *parts, anchor=f"g-{r.group}")


def render(
    plan: MigrationPlan,
    views: Sequence[GroupView],
    *,
    now: datetime | None = None,
    errors: Sequence[str] = (),
    assessment: str | None = None,
) -> str:
    """The cockpit as one self-contained page: a summary table, then one section per group.

    :param assessment: href of the plan's newest assessment report, when there is one.
    """
    from airflow_fsmigration.reports import html

    now = now or datetime.now(UTC)
    summary = []
    for v in views:
        run = v.latest_migrate
        state = (
            html.badge(RUN_BADGE.get(run.state, "muted"), run.state)
            if run
            else Markup('<span class="meta">no runs</span>')
        )
        summary.append(
            [
                v.status.wave,
                Markup('<a href="#g-{}"><strong>{}</strong></a>').format(v.group, v.group),
                html.badge(_phase_status(v.status.phase), v.status.phase),
                f"{v.status.ramp_pct:g}%",
                state,
                f"{v.status.latest_match_rate:.3%}" if v.status.latest_match_rate is not None else None,
                v.next_gate(now),
            ]
        )
    warnings = Markup(_CSS) + Markup("").join(
        html.paragraph(f"could not read {e}", kind="bad") for e in errors
    )
    table = html.table(["wave", "group", "phase", "ramp", "migrate run", "match rate", "next gate"], summary)
    content = warnings + html.section(
        f"{len(views)} feature groups",
        Markup('<div id="summary">{}</div>').format(table),
        html.paragraph(
            "Read-only. Ramps, rollbacks and backfills go through each group's DAGs, which Airflow's "
            "permissions guard; when Airflow is down, use the rollback command shown."
        ),
    )
    if assessment:
        content += html.paragraph(Markup("Plan inventory: ") + _a(assessment, "the newest assessment report"))
    content += Markup("\n").join(_group_section(plan, v, now) for v in views)
    return str(
        html.page(
            f"Migration cockpit: {plan.name}", content, subtitle=plan.description or None, generated_at=now
        )
    )


PHASE_BADGE = {
    "cutover": "pass",
    "warm": "pass",
    "ready_to_decommission": "pass",
    "decommissioned": "pass",
    "rolled_back": "fail",
    "frozen": "inconclusive",
    "ramping": "inconclusive",
    "shadow": "inconclusive",
}


def _phase_status(phase: str) -> str:
    return PHASE_BADGE.get(phase, "muted")
