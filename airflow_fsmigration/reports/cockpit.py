"""The migration cockpit: one screen with every group's phase, ramp, match-rate trend and next gate.

Plain core (no Airflow import): :func:`gather` reads the registry and the shadow results,
:func:`render` draws the page. The Airflow plugin in :mod:`airflow_fsmigration.plugins.cockpit`
serves it behind Airflow's own login; the page is read-only, actions go through the DAGs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from airflow_fsmigration.plan.durations import format_duration
from airflow_fsmigration.plan.graph import compute_waves, risk_tier
from airflow_fsmigration.registry.model import rollback_command

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan


@dataclass(frozen=True)
class GroupStatus:
    """What the cockpit shows for one group."""

    group: str
    wave: int
    risk: str
    phase: str
    ramp_pct: float
    active_backend: str
    version: int | None
    updated_at: datetime | None
    match_rates: tuple[float, ...]  # oldest first
    latest_verdict: str | None
    next_gate: str
    rollback_command: str
    last_reason: str | None = None
    dag_ids: dict[str, str] = field(default_factory=dict)

    @property
    def latest_match_rate(self) -> float | None:
        return self.match_rates[-1] if self.match_rates else None

    @property
    def trend(self) -> str:
        """``up`` / ``down`` / ``flat`` over the last two runs, or ``-`` with fewer runs."""
        if len(self.match_rates) < 2:
            return "-"
        delta = self.match_rates[-1] - self.match_rates[-2]
        return "up" if delta > 1e-9 else "down" if delta < -1e-9 else "flat"

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "wave": self.wave,
            "risk": self.risk,
            "phase": self.phase,
            "ramp_pct": self.ramp_pct,
            "active_backend": self.active_backend,
            "version": self.version,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "latest_match_rate": self.latest_match_rate,
            "match_rates": list(self.match_rates),
            "trend": self.trend,
            "latest_verdict": self.latest_verdict,
            "next_gate": self.next_gate,
            "rollback_command": self.rollback_command,
            "last_reason": self.last_reason,
            "dag_ids": self.dag_ids,
        }


def next_gate(
    plan: MigrationPlan, group: str, phase: str, ramp_pct: float, soak_note: str | None = None
) -> str:
    """The next thing that must be true before this group moves on, in words."""
    settings = plan.settings_for(group)
    steps = [s for s in settings.ramp_steps if s > ramp_pct]
    if phase == "planned":
        return "deploy the definition and start the shadow comparison (migrate DAG)"
    if phase == "shadow":
        soak = f"shadow soak: consistency >= {settings.consistency_threshold:.1%} for {format_duration(settings.shadow_soak)}"
        return f"{soak} ({soak_note})" if soak_note else soak
    if phase == "ramping":
        step = f"then ramp to {steps[0]:g}%" if steps else "then cut over"
        return f"bake {format_duration(settings.bake)} at {ramp_pct:g}% within rollback triggers, {step}"
    if phase == "cutover":
        return f"keep the old store warm for {format_duration(settings.keep_warm)}, verified daily"
    if phase == "warm":
        return f"keep-warm window of {format_duration(settings.keep_warm)} with warmth verified every day"
    if phase == "ready_to_decommission":
        return "decommission the old store (a person decides)"
    if phase == "rolled_back":
        return "fix the cause, then restart shadow (migrate DAG)"
    if phase == "frozen":
        return "a person decides: resume the ramp or roll back"
    return "-"


def gather(
    plan: MigrationPlan,
    *,
    plan_path: str,
    states: dict[str, Any],
    series: Callable[[str], Sequence[Any]] | None = None,
    audit: Callable[[str], Sequence[Any]] | None = None,
    dag_ids: Callable[[str], dict[str, str]] | None = None,
    soak_note: Callable[[str], str | None] | None = None,
) -> list[GroupStatus]:
    """Combine plan, routing states and shadow series into one row per group, in wave order.

    ``states`` maps group -> a registry ``RoutingState`` (a group missing there is shown as
    ``planned``: not yet registered); ``series(group)`` returns shadow runs oldest first with
    ``match_rate`` and ``verdict`` attributes or keys.
    """
    waves = compute_waves(plan)
    rows = []
    for name in waves.order:
        state = states.get(name)
        phase = str(
            getattr(getattr(state, "phase", None), "value", getattr(state, "phase", None)) or "planned"
        )
        pct = float(getattr(state, "ramp_pct", 0.0) or 0.0)
        runs = list(series(name)) if series else []
        rates = tuple(float(_get(r, "match_rate")) for r in runs if _get(r, "match_rate") is not None)[-20:]
        verdict = _get(runs[-1], "verdict") if runs else None
        reason = None
        if audit:
            entries = list(audit(name))
            if entries:
                reason = _get(entries[-1], "reason")
        rows.append(
            GroupStatus(
                group=name,
                wave=waves.wave_of(name),
                risk=risk_tier(plan, plan.groups[name]),
                phase=phase,
                ramp_pct=pct,
                active_backend=str(getattr(getattr(state, "active_backend", None), "value", "old") or "old"),
                version=getattr(state, "version", None),
                updated_at=getattr(state, "updated_at", None),
                match_rates=rates,
                latest_verdict=str(getattr(verdict, "value", verdict)) if verdict is not None else None,
                next_gate=_failing_shadow(plan, name, phase, rates, verdict)
                or next_gate(plan, name, phase, pct, soak_note(name) if soak_note else None),
                rollback_command=rollback_command(plan_path, name),
                last_reason=reason,
                dag_ids=dag_ids(name) if dag_ids else {},
            )
        )
    return rows


def _failing_shadow(
    plan: MigrationPlan, group: str, phase: str, rates: tuple[float, ...], verdict: Any
) -> str | None:
    """Before any traffic moves, a failing comparison is the gate that matters, whatever the phase says."""
    if phase not in ("planned", "shadow") or str(getattr(verdict, "value", verdict)) != "fail" or not rates:
        return None
    threshold = plan.settings_for(group).consistency_threshold
    return (
        f"shadow comparison failing ({rates[-1]:.2%} < {threshold:.1%}): read the shadow report's "
        "explanations, fix the new store's definition, redeploy and compare again"
    )


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def sparkline(
    values: Sequence[float], *, threshold: float | None = None, width: int = 120, height: int = 28
) -> Markup:
    """A tiny inline SVG of the match-rate trend (drawn by hand: this page renders per request)."""
    if not values:
        return Markup('<span class="meta">no runs yet</span>')
    lo = min([*values, threshold if threshold is not None else 1.0])
    hi = max([*values, 1.0])
    span = (hi - lo) or 1.0
    step = width / max(len(values) - 1, 1)

    def y(v: float) -> float:
        return height - 2 - (v - lo) / span * (height - 4)

    points = " ".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    line = ""
    if threshold is not None:
        line = f'<line x1="0" x2="{width}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" stroke="#888" stroke-dasharray="3,2"/>'
    ok = threshold is None or values[-1] >= threshold
    color = "#1a7f37" if ok else "#cf222e"
    return Markup(
        f'<svg width="{width}" height="{height}" role="img" aria-label="match rate trend">{line}'
        f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/></svg>'
    )


def render(
    plan: MigrationPlan,
    rows: Sequence[GroupStatus],
    *,
    dag_url: Callable[[str], str] = lambda dag_id: f"/dags/{dag_id}",
    report_url: Callable[[str], str | None] = lambda group: None,
    now: datetime | None = None,
    errors: Sequence[str] = (),
) -> str:
    """The cockpit page as self-contained HTML.

    Every value from outside (group names, audit reasons, ``errors`` such as exception text) is
    escaped by :mod:`markupsafe`; only the helpers' own markup is trusted.
    """
    from airflow_fsmigration.reports import html

    now = now or datetime.now(UTC)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.phase] = counts.get(r.phase, 0) + 1
    summary = ", ".join(f"{n} {phase}" for phase, n in sorted(counts.items()))
    header = [
        "wave",
        "group",
        "risk",
        "phase",
        "ramp",
        "match rate",
        "trend",
        "next gate",
        "DAGs",
        "rollback",
    ]
    body = []
    for r in rows:
        threshold = plan.settings_for(r.group).consistency_threshold
        rate = (
            html.badge(
                "pass" if r.latest_match_rate >= threshold else "fail",
                f"{r.latest_match_rate:.3%}",
            )
            if r.latest_match_rate is not None
            else Markup('<span class="meta">-</span>')
        )
        links = Markup(" ").join(
            Markup('<a href="{}">{}</a>').format(dag_url(dag_id), kind) for kind, dag_id in r.dag_ids.items()
        )
        report = report_url(r.group)
        if report:
            links += Markup(' <a href="{}">report</a>').format(report)
        runbook = Markup("{}<br>{}").format(
            Markup('<a href="{}">rollback DAG</a>').format(dag_url(r.dag_ids["rollback"]))
            if "rollback" in r.dag_ids
            else "",
            html.code(r.rollback_command),
        )
        phase = html.badge(_phase_status(r.phase), r.phase)
        if r.last_reason and r.phase in ("rolled_back", "frozen"):
            phase += Markup('<br><span class="meta">{}</span>').format(r.last_reason)
        body.append(
            [
                r.wave,
                Markup("<strong>{}</strong>").format(r.group),
                r.risk,
                phase,
                f"{r.ramp_pct:g}%",
                rate,
                sparkline(r.match_rates, threshold=threshold),
                r.next_gate,
                links,
                runbook,
            ]
        )
    warnings = Markup("").join(html.paragraph(f"could not read {e}", kind="bad") for e in errors)
    content = warnings + html.section(
        f"{len(rows)} feature groups: {summary}",
        html.table(header, body),
        html.paragraph(
            "Read-only. Ramps, rollbacks and backfills go through each group's DAGs, which Airflow's "
            "permissions guard; when Airflow is down, use the rollback command shown."
        ),
    )
    return str(
        html.page(
            f"Migration cockpit: {plan.name}", content, subtitle=plan.description or None, generated_at=now
        )
    )


def render_unconfigured(message: str, *, now: datetime | None = None) -> str:
    """The page shown when the cockpit has no plan to show (escaped like every other page)."""
    from airflow_fsmigration.reports import html

    return str(
        html.page(
            "Migration cockpit: no plan configured",
            html.paragraph(message, kind="bad"),
            generated_at=now or datetime.now(UTC),
        )
    )


def _phase_status(phase: str) -> str:
    return {
        "cutover": "pass",
        "warm": "pass",
        "ready_to_decommission": "pass",
        "decommissioned": "pass",
        "rolled_back": "fail",
        "frozen": "inconclusive",
        "ramping": "inconclusive",
    }.get(phase, "muted")
