"""What every DAG of one parse shares: ids, factory options, per-plan facts and each DAG's doc text.

Split from :mod:`airflow_fsmigration.dag_factory`, which builds the DAG objects. Like the factory
it runs at DAG-parse time, so it imports nothing heavier than the plan model at module level;
the few Airflow objects it needs (an asset, the config) are imported where they are used.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.plan.durations import format_duration
from airflow_fsmigration.runbook import rollback_command

if TYPE_CHECKING:
    from airflow.sdk import Asset

    from airflow_fsmigration.plan import FeatureGroup, MigrationPlan, Settings

MIGRATE, ROLLBACK, BACKFILL, NIGHTLY = "migrate", "rollback", "backfill", "nightly_consistency"


@dataclass(frozen=True)
class FactoryOptions:
    """How the factory renders DAGs.

    :param schedule_on_upstream: schedule a downstream group's migrate DAG on its upstream groups'
        cutover assets (default: manual trigger; the first task checks the registry either way).
    :param shadow_shards: number of mapped shadow-comparison tasks, for all groups (int) or per
        group (mapping); 1 runs one unmapped task.
    :param deferrable: long gates (soak, bake, keep-warm) wait in the triggerer.
    :param default_owner: owner of DAGs whose group names none.
    :param tags: tags on every DAG (plan, kind, wave and risk tags are added).
    :param start_date: start date of the nightly DAG.
    """

    schedule_on_upstream: bool = False
    shadow_shards: int | Mapping[str, int] = 1
    deferrable: bool = True
    default_owner: str = "fsmigration"
    tags: tuple[str, ...] = ("fsmigration",)
    start_date: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def shards_for(self, group: str) -> int:
        if isinstance(self.shadow_shards, int):
            return max(1, self.shadow_shards)
        return max(1, int(self.shadow_shards.get(group, 1)))


def dag_id(kind: str, group: str | None = None, plan: MigrationPlan | None = None) -> str:
    if kind == NIGHTLY:
        return f"fsmig__{plan.name}__{NIGHTLY}" if plan is not None else f"fsmig__{NIGHTLY}"
    return f"fsmig__{group}__{kind}"


def cutover_uri(plan: MigrationPlan, group: str) -> str:
    return f"x-fsmig://{plan.name}/{group}/cutover"


def cutover_asset(plan: MigrationPlan, group: str) -> Asset:
    from airflow.sdk import Asset

    return Asset(cutover_uri(plan, group))


def dag_ids(plan: MigrationPlan) -> dict[str, tuple[str, str | None]]:
    """Every DAG id the plan yields -> (kind, group); cheap, for building only the DAG being run."""
    ids: dict[str, tuple[str, str | None]] = {dag_id(NIGHTLY, plan=plan): (NIGHTLY, None)}
    for group in plan.groups:
        for kind in (MIGRATE, ROLLBACK, BACKFILL):
            ids[dag_id(kind, group)] = (kind, group)
    return ids


class DagContext:
    """Per-plan facts shared by every DAG of one parse (waves, downstreams, DAG kwargs)."""

    def __init__(self, plan: MigrationPlan, plan_path: str, options: FactoryOptions) -> None:
        from airflow_fsmigration.plan.graph import compute_waves

        self.plan = plan
        self.plan_path = plan_path
        self.options = options
        waves = compute_waves(plan)
        self.wave = {g: i + 1 for i, wave in enumerate(waves.waves) for g in wave}
        self.downstream: dict[str, list[str]] = {g: [] for g in plan.groups}
        for name, g in plan.groups.items():
            for up in g.depends_on:
                self.downstream.setdefault(up, []).append(name)
        # Effective settings re-validate the overrides with pydantic on every call: once per group.
        self._settings: dict[str, Settings] = {}
        self._risk: dict[str, str] = {}
        # Explicit values: the DAG constructor would otherwise read each from the config per DAG,
        # which costs more than the rest of a small DAG together.
        from airflow.sdk import conf

        self.dag_kwargs: dict[str, Any] = {
            "max_active_tasks": conf.getint("core", "max_active_tasks_per_dag", fallback=16),
            "max_consecutive_failed_dag_runs": conf.getint(
                "core", "max_consecutive_failed_dag_runs_per_dag", fallback=0
            ),
            "catchup": False,
            "disable_bundle_versioning": conf.getboolean(
                "dag_processor", "disable_bundle_versioning", fallback=False
            ),
        }

    def settings(self, group: str) -> Settings:
        if group not in self._settings:
            self._settings[group] = self.plan.settings_for(group)
        return self._settings[group]

    def high_traffic(self, group: str) -> bool:
        return self.plan.groups[group].qps.peak >= self.settings(group).high_traffic_qps

    def tags(self, kind: str, group: str | None = None) -> list[str]:
        tags = [*self.options.tags, f"plan:{self.plan.name}", kind]
        if group is not None:
            if group not in self._risk:
                from airflow_fsmigration.plan.graph import risk_tier

                self._risk[group] = risk_tier(self.plan, self.plan.groups[group])
            tags += [f"wave:{self.wave[group]}", f"risk:{self._risk[group]}"]
        return tags

    def owner(self, group: FeatureGroup | None) -> str:
        return (group.owner if group is not None and group.owner else None) or self.options.default_owner

    def display(self, kind: str, group: str) -> str:
        return f"w{self.wave[group]} · {group} · {kind}"


def group_doc(ctx: DagContext, group: str, kind: str) -> str:
    """Markdown shown on each DAG's page: what the group is, who depends on it, how to roll back."""
    plan = ctx.plan
    g = plan.groups[group]
    s = ctx.settings(group)
    t = s.rollback_triggers
    models = []
    for m in g.models:
        owner = plan.models[m].owner if m in plan.models else None
        models.append(f"`{m}`" + (f" ({owner})" if owner else ""))
    lines = [
        f"## {group}: {kind}",
        "",
        g.description or "",
        "",
        f"- **Plan**: `{plan.name}` (`{ctx.plan_path}`), wave {ctx.wave[group]}",
        f"- **Owner**: {g.owner or 'not set'}; criticality **{g.criticality.value}**",
        f"- **Models**: {', '.join(models) or 'none'}",
        f"- **Serving SLA**: p99 {g.sla.p99_ms:g} ms, max staleness {format_duration(g.sla.max_staleness)}",
        f"- **QPS**: peak {g.qps.peak:g}, average {g.qps.average:g}"
        + (
            f" (high traffic: load test at {s.load_test_multiplier:g}x peak)"
            if ctx.high_traffic(group)
            else ""
        ),
        f"- **Upstream groups**: {', '.join(g.depends_on) or 'none'}; "
        f"**downstream**: {', '.join(sorted(ctx.downstream.get(group, []))) or 'none'}",
        f"- **Shadow**: {s.consistency_threshold:.2%} of values agree for {format_duration(s.shadow_soak)}",
        f"- **Ramp**: {' → '.join(f'{p}%' for p in s.ramp_steps)}, bake {format_duration(s.bake)} after each step; "
        f"old store kept warm {format_duration(s.keep_warm)}",
        f"- **Rollback triggers**: AUC drop > {t.auc_drop_pct:g}%"
        + (f", precision drop > {t.precision_drop_pct:g}%" if t.precision_drop_pct is not None else "")
        + f", p99 up > {t.p99_latency_increase_ms:g} ms, error rate > {t.error_rate_pct:g}%",
        "",
        "### Rollback runbook",
        "",
        f"1. In Airflow: trigger **`{dag_id(ROLLBACK, group)}`** and type the reason.",
        "2. With Airflow down, from any host with the plan and the connection environment variables:",
        "",
        f"       {rollback_command(ctx.plan_path, group)}",
        "",
        "3. Rolling back is always allowed from a serving phase and takes effect for serving "
        "processes at once (Redis mirror). To stop a ramp where it stands instead, freeze the group "
        f"(`fsmigrate freeze {shlex.quote(ctx.plan_path)} {shlex.quote(group)} --reason ...`).",
    ]
    return "\n".join(lines) + "\n"
