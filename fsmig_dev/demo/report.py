"""What the demo migration did, per group, read back from where the product records it.

Phases, ramp steps and rollback reasons come from the registry's audit log, the match-rate trend
from the shadow results series (:meth:`~airflow_fsmigration.compare.results.ResultStore.series`),
latency from the serving stats the router flushed to Redis. Nothing here is taken from the demo's
own bookkeeping, so the summary shows what an operator would see afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.reports.html import Markup


@dataclass
class GroupStory:
    """One group's migration as recorded: registry state and audit, shadow series, serving stats."""

    group: str
    wave: int
    phase: str
    ramp_pct: float
    audit: list[Any]
    series: list[Any]
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_state: str | None = None
    blocked_by: list[str] = field(default_factory=list)
    threshold: float | None = None
    failed_task: str | None = None

    @property
    def latest_match_rate(self) -> float | None:
        rated = [r for r in self.series if r.match_rate is not None]
        return rated[-1].match_rate if rated else None

    @property
    def latest_verdict(self) -> str | None:
        return self.series[-1].verdict if self.series else None

    @property
    def ramp_steps(self) -> list[float]:
        """Traffic percentages the group was moved to, in order (a rollback shows as 0)."""
        steps: list[float] = []
        for e in self.audit:
            if e.to_phase.value in ("ramping", "cutover", "rolled_back") and (
                not steps or steps[-1] != e.to_pct
            ):
                steps.append(float(e.to_pct))
        return steps

    @property
    def rollback(self) -> Any | None:
        """The latest audit entry that rolled the group back, if any."""
        for e in reversed(self.audit):
            if e.to_phase.value == "rolled_back":
                return e
        return None

    @property
    def held_reason(self) -> str | None:
        """Why a group never left shadow: its latest failing comparison, or its blocked upstream."""
        if self.phase not in ("planned", "shadow"):
            return None
        if self.blocked_by:
            return f"waits for upstream {', '.join(self.blocked_by)} to cut over"
        stopped = f"{self.failed_task} failed" if self.failed_task else None
        if self.series and self.latest_verdict != "pass":
            last = self.series[-1]
            if last.causes:  # the root cause, with the features it moves and its fix
                top = last.causes[0]
                proof = "proven by replay" if top.get("proven") else "value pattern"
                what = f"root cause {top['kind']} on {', '.join(top.get('features', {}))} ({proof}): {top.get('fix')}"
            else:
                main = max(last.explanations or [{}], key=lambda e: e.get("rows", 0))
                what = f"{main.get('kind')}: {main.get('evidence')}" if main.get("kind") else ""
            shadow = f"shadow comparison {last.verdict} {_rate(last.match_rate)}" + (
                f" ({what})" if what else ""
            )
            return f"{stopped}; {shadow}" if stopped else shadow
        return stopped


def collect(
    plan: MigrationPlan,
    *,
    registry_url: str,
    redis_url: str,
    since: datetime,
    until: datetime,
    runs: dict[str, Any] | None = None,
) -> list[GroupStory]:
    """Every group's story, wave order; ``runs`` (group -> GroupRun) adds DAG run state and blocks."""
    import psycopg
    import redis

    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.plan.graph import compute_waves
    from airflow_fsmigration.registry.routing import Registry
    from airflow_fsmigration.serving.stats import read_window

    waves = compute_waves(plan)
    stories = []
    client = redis.Redis.from_url(redis_url)
    try:
        with (
            Registry(registry_url, plan=plan) as registry,
            psycopg.connect(registry_url, autocommit=True) as conn,
        ):
            registry.ensure_schema()
            states = registry.states()
            results = ResultStore(conn)
            for name in waves.order:
                state = states.get(name)
                run = (runs or {}).get(name)
                try:
                    window = read_window(client, name, since, until)
                    latency = {b: s.as_dict() for b, s in window.items()}
                except Exception as exc:  # the summary still shows the rest
                    latency = {"error": {"message": f"{type(exc).__name__}: {exc}"}}
                stories.append(
                    GroupStory(
                        group=name,
                        wave=waves.wave_of(name),
                        phase=state.phase.value if state else "unregistered",
                        ramp_pct=float(state.ramp_pct) if state else 0.0,
                        audit=registry.audit(name) if state else [],
                        series=results.series(name),
                        latency=latency,
                        run_state=getattr(run, "state", None),
                        blocked_by=list(getattr(run, "blocked_by", []) or []),
                        threshold=plan.settings_for(name).consistency_threshold,
                        failed_task=next(
                            (t for t, st, _ in getattr(run, "tasks", []) if st == "failed"), None
                        ),
                    )
                )
    finally:
        client.close()
    return stories


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.4%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def summary_lines(stories: list[GroupStory], *, width: int = 110) -> list[str]:
    """The one-screen summary: per group final phase, ramp %, latest match rate, what stopped it."""
    import textwrap

    head = f"  {'w':<2}{'group':<25}{'phase':<22}{'ramp':>6}  {'match rate':>11}  {'p99 old/new ms':>15}"
    lines = [head, "  " + "-" * (len(head) - 2)]
    for s in stories:
        rb = s.rollback
        why = ""
        if rb is not None:
            why = f"rolled back from {rb.from_pct:g}%: {rb.reason}"
        elif s.held_reason:
            why = f"held: {s.held_reason}"
        old, new = s.latency.get("old", {}), s.latency.get("new", {})
        p99 = f"{_ms(old.get('p99_ms'))}/{_ms(new.get('p99_ms'))}"
        lines.append(
            f"  {s.wave:<2}{s.group:<25}{s.phase:<22}{s.ramp_pct:>5g}%  {_rate(s.latest_match_rate):>11}  {p99:>15}"
        )
        if why:
            wrapped = textwrap.wrap(why, width=width - 6, max_lines=3, placeholder=" …")
            lines.extend("      " + w for w in wrapped)
    return lines


def migration_sections(
    stories: list[GroupStory], *, started: datetime, outcome: Any = None, link_base: Path | None = None
) -> Markup:
    """HTML for the demo report: an overview table, then per group its timeline, trend, ramp and latency.

    With ``outcome`` (a :class:`~fsmig_dev.demo.migrate.MigrationOutcome`) and
    ``link_base`` (the report's folder), each group links the reports its DAG tasks wrote.
    """
    from airflow_fsmigration.reports import html as h

    rows = []
    for s in stories:
        rb = s.rollback
        rows.append(
            [
                s.wave,
                h.Markup('<a href="#mig-{0}">{0}</a>').format(s.group),
                h.badge(_phase_badge(s.phase), s.phase),
                f"{s.ramp_pct:g}%",
                " → ".join(f"{p:g}%" for p in s.ramp_steps) or None,
                _rate(s.latest_match_rate),
                len(s.series),
                _ms(s.latency.get("old", {}).get("p99_ms")),
                _ms(s.latency.get("new", {}).get("p99_ms")),
                (f"rolled back: {rb.reason}" if rb else s.held_reason),
            ]
        )
    parts: list[Any] = [
        h.paragraph(
            "Each group's generated migrate DAG ran under dag.test() on a seconds-scale copy of the plan, "
            "wave by wave. Phases, ramp steps and reasons are read back from the registry's audit log, "
            "match rates from the shadow results series, latency from the router's serving stats."
        ),
        h.table(
            [
                "wave",
                "group",
                "phase",
                "ramp",
                "ramp steps",
                "latest match rate",
                "shadow runs",
                "p99 old ms",
                "p99 new ms",
                "rollback / hold reason",
            ],
            rows,
        ),
    ]
    if outcome is not None and getattr(outcome, "injection", None) is not None:
        inj = outcome.injection
        parts.append(
            h.paragraph(
                f"Injected breach: the AUC of {inj.group}'s models was dropped from 0.90 to 0.80 once the "
                f"group reached {inj.at_pct:g}% (at {inj.dropped_at.isoformat() if inj.dropped_at else 'never'}); "
                "the bake gate saw it and the DAG's rollback task moved all traffic back.",
                kind="warn",
            )
        )
    task_reports = getattr(outcome, "reports_dir", None)
    for s in stories:
        links = _task_report_links(task_reports, s.group, link_base) if task_reports and link_base else None
        parts.append(_group_section(s, started, links))
    return h.section("Migration through the Airflow DAGs", *parts, anchor="migration")


def _phase_badge(phase: str) -> str:
    if phase in ("cutover", "warm", "ready_to_decommission", "decommissioned"):
        return "pass"
    if phase == "rolled_back":
        return "fail"
    if phase in ("ramping", "frozen"):
        return "inconclusive"
    return "muted"


def _task_report_links(reports_dir: Path, group: str, base: Path) -> Markup | None:
    """Links to the HTML reports the group's DAG tasks wrote (shadow, point in time, GX docs)."""
    import os

    from airflow_fsmigration.reports import html as h

    folder = reports_dir / group
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.rglob("*.html") if p.parent.name != "expectations")
    if not files:
        return None
    items = [
        h.Markup('<a href="{}">{}</a>').format(
            os.path.relpath(p.resolve(), base), p.relative_to(folder).as_posix()
        )
        for p in files
    ]
    return h.details(f"reports written by the DAG's tasks ({len(items)})", h.bullet_list(items))


def _group_section(s: GroupStory, started: datetime, links: Markup | None = None) -> Markup:
    from airflow_fsmigration.reports import html as h

    timeline = [
        [
            e.at.strftime("%H:%M:%S.%f")[:-3],
            f"{e.from_phase.value if e.from_phase else '-'} {'' if e.from_pct is None else f'{e.from_pct:g}%'}",
            f"{e.to_phase.value} {e.to_pct:g}%",
            e.actor,
            e.reason,
        ]
        for e in s.audit
    ]
    parts: list[Any] = [
        h.kv_table(
            [
                ("final phase", h.badge(_phase_badge(s.phase), s.phase)),
                ("traffic on the new store", f"{s.ramp_pct:g}%"),
                ("ramp steps", " → ".join(f"{p:g}%" for p in s.ramp_steps) or "none"),
                ("latest match rate", _rate(s.latest_match_rate)),
                ("DAG run", s.run_state or "not run"),
            ]
        )
    ]
    rb = s.rollback
    if rb is not None:
        parts.append(h.paragraph(f"Rolled back from {rb.from_pct:g}% by {rb.actor}: {rb.reason}", kind="bad"))
    elif s.held_reason:
        parts.append(h.paragraph(f"Held: {s.held_reason}", kind="warn"))
    recent = [r for r in s.series if r.match_rate is not None]
    if recent:
        parts.append(
            h.line_chart(
                [r.logical_time for r in recent],
                {"match rate %": [r.match_rate * 100 for r in recent]},
                title=f"{s.group}: shadow match rate per run ({len(recent)} runs)",
                ylabel="% of values that agree",
                threshold=None if s.threshold is None else s.threshold * 100,
                threshold_label="consistency threshold",
                ylim=(min([r.match_rate * 100 for r in recent] + [(s.threshold or 1) * 100]) - 1, 100.5),
                height=2.6,
            )
        )
    if s.audit:
        parts.append(
            h.line_chart(
                [e.at for e in s.audit],
                {"% on new store": [float(e.to_pct) for e in s.audit]},
                title=f"{s.group}: traffic on the new store over time",
                ylabel="%",
                ylim=(-5, 105),
                height=2.2,
            )
        )
    lat_rows = [
        [b, st.get("count"), st.get("errors"), _ms(st.get("p50_ms")), _ms(st.get("p99_ms"))]
        for b, st in s.latency.items()
        if b in ("old", "new")
    ]
    if lat_rows:
        parts.append(h.table(["backend", "reads", "errors", "p50 ms", "p99 ms"], lat_rows))
    parts.append(
        h.details(
            f"audit log ({len(timeline)} entries)", h.table(["at", "from", "to", "actor", "reason"], timeline)
        )
    )
    if links is not None:
        parts.append(links)
    return h.section(s.group, *parts, anchor=f"mig-{s.group}", level=3)
