"""Build the migration DAGs from a plan: per group migrate / rollback / backfill, plus one nightly DAG.

Runs at DAG-parse time for every group of the plan, every few seconds, so it only builds
objects: no database call, no core import, nothing heavier than the plan model. The operators
load the plan and open connections when their task runs.

DAG ids are stable (``fsmig__<group>__migrate``) so history survives plan edits; the display
name carries the wave (``w1 · user_txn_stats · migrate``) so the UI lists groups upstream-first.

Upstream-first: each group's cutover task (ramp to 100 %) emits the asset
``x-fsmig://<plan>/<group>/cutover``. With ``schedule_on_upstream=True`` a downstream migrate DAG
is scheduled on its upstreams' cutover assets; either way its first task checks the registry.
"""

from __future__ import annotations

import gc
import itertools
import shlex
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.plan.durations import format_duration
from airflow_fsmigration.runbook import rollback_command
from airflow_fsmigration.triggers.checks import poll_interval

if TYPE_CHECKING:
    from airflow.sdk import DAG, Asset

    from airflow_fsmigration.plan import FeatureGroup, MigrationPlan, Settings

MIGRATE, ROLLBACK, BACKFILL, NIGHTLY = "migrate", "rollback", "backfill", "nightly_consistency"
CADENCE_CHOICES = ("1h", "6h", "12h", "1d", "7d")
# JSON schema's "format" is a UI hint only (not validated by Airflow), so dates also get a pattern.
ISO_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"
# Soaks shorter than this are kept fed by the soak sensor itself (demo and test time scales);
# longer ones rely on the nightly DAG, which already compares once a day.
SOAK_SELF_REFRESH_BELOW = timedelta(hours=1)


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


# -- docs ----------------------------------------------------------------------------------------


class _Context:
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


def group_doc(ctx: _Context, group: str, kind: str) -> str:
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


# -- builders ------------------------------------------------------------------------------------


def _link(up: Any, down: Any) -> None:
    """``up >> down`` for two plain tasks built in the same ``with DAG`` block.

    ``>>`` re-validates that both tasks share one DAG by hashing the DAG object (a hash over
    all its attributes) on every edge; for a factory building thousands of edges per parse that
    check costs more than the edge. Mapped tasks take the normal path.
    """
    from airflow.sdk import BaseOperator

    if isinstance(up, BaseOperator) and isinstance(down, BaseOperator) and up.dag is down.dag:
        up.downstream_task_ids.add(down.node_id)
        down.upstream_task_ids.add(up.node_id)
    else:
        up >> down


def build_migrate_dag(ctx: _Context, group: str) -> DAG:
    """gate → deploy → schema parity (enters shadow) → shadow → soak → point in time → [load test] →
    (ramp → bake)* → keep warm (enters warm) → ready to decommission; rollback on a failed bake."""
    from airflow.sdk import DAG, AssetAll, TriggerRule

    from airflow_fsmigration.operators.backfill import PointInTimeValidationOperator
    from airflow_fsmigration.operators.routing import (
        LoadTestOperator,
        RampStepOperator,
        RegistryTransitionOperator,
        RollbackOperator,
    )
    from airflow_fsmigration.operators.shadow import ShadowCompareOperator
    from airflow_fsmigration.operators.store import DeployDefinitionOperator, SchemaParityOperator
    from airflow_fsmigration.sensors.gates import (
        BakeSensor,
        KeepWarmSensor,
        ShadowSoakSensor,
        UpstreamCutoverSensor,
    )

    plan, opts = ctx.plan, ctx.options
    g = plan.groups[group]
    s = ctx.settings(group)
    upstream_assets = [cutover_asset(plan, u) for u in g.depends_on]
    schedule: Any = None
    if opts.schedule_on_upstream and upstream_assets:
        schedule = AssetAll(*upstream_assets)
    common: dict[str, Any] = {"plan_path": ctx.plan_path, "group": group, "owner": ctx.owner(g)}
    gate_poll = poll_interval(s.shadow_soak, divisions=50)
    soak_poll = poll_interval(s.shadow_soak)
    # The series may have no hole longer than soak/7 (compare.results.soak_from_runs): short soaks
    # are fed by the sensor itself, a fresh comparison once the newest is soak/14 old.
    refresh_after = s.shadow_soak.total_seconds() / 14 if s.shadow_soak < SOAK_SELF_REFRESH_BELOW else None
    bake_poll = poll_interval(s.bake)
    warm_poll = min(
        poll_interval(s.keep_warm), poll_interval(min(s.keep_warm, timedelta(days=1)), divisions=4)
    )
    bake_s = s.bake.total_seconds()

    with DAG(
        dag_id(MIGRATE, group),
        dag_display_name=ctx.display(MIGRATE, group),
        schedule=schedule,
        start_date=opts.start_date,
        max_active_runs=1,
        tags=ctx.tags(MIGRATE, group),
        doc_md=group_doc(ctx, group, MIGRATE),
        description=f"Migrate {group} to the new store (wave {ctx.wave[group]})",
        **ctx.dag_kwargs,
    ) as dag:
        gate = UpstreamCutoverSensor(
            task_id="upstream_gate",
            mode="reschedule",
            poke_interval=gate_poll,
            timeout=30 * 86400,
            inlets=upstream_assets,
            **common,
        )
        deploy = DeployDefinitionOperator(task_id="deploy", **common)
        parity = SchemaParityOperator(task_id="schema_parity", enter_shadow=True, **common)
        shards = opts.shards_for(group)
        if shards > 1:
            shadow: Any = ShadowCompareOperator.partial(
                task_id="shadow_compare", num_shards=shards, **common
            ).expand(shard=list(range(shards)))
        else:
            shadow = ShadowCompareOperator(task_id="shadow_compare", **common)
        soak = ShadowSoakSensor(
            task_id="shadow_soak",
            poke_interval=soak_poll,
            refresh_after=refresh_after,
            timeout=max(3 * s.shadow_soak.total_seconds(), s.shadow_soak.total_seconds() + 120),
            deferrable=opts.deferrable,
            **common,
        )
        pit = PointInTimeValidationOperator(task_id="point_in_time", **common)
        chain_ = [gate, deploy, parity, shadow, soak, pit]
        if ctx.high_traffic(group):
            chain_.append(LoadTestOperator(task_id="load_test", **common))
        bakes = []
        for step in s.ramp_steps:
            ramp = RampStepOperator(
                task_id=f"ramp_{step}",
                percent=step,
                outlets=[cutover_asset(plan, group)] if step == 100 else [],
                **common,
            )
            bake = BakeSensor(
                task_id=f"bake_{step}",
                percent=step,
                poke_interval=bake_poll,
                inconclusive_grace=bake_s / 2,
                timeout=2 * bake_s + 120,
                deferrable=opts.deferrable,
                **common,
            )
            chain_ += [ramp, bake]
            bakes.append(bake)
        keep_warm = KeepWarmSensor(
            task_id="keep_warm",
            poke_interval=warm_poll,
            timeout=1.5 * s.keep_warm.total_seconds() + 120,
            deferrable=opts.deferrable,
            **common,
        )
        ready = RegistryTransitionOperator(
            task_id="ready_to_decommission",
            phase="ready_to_decommission",
            reason="keep-warm window passed with warmth verified every day",
            **common,
        )
        chain_ += [keep_warm, ready]
        for up, down in itertools.pairwise(chain_):
            _link(up, down)
        rollback = RollbackOperator(
            task_id="rollback",
            trigger_rule=TriggerRule.ONE_FAILED,
            breach_task_ids=[b.task_id for b in bakes],
            **common,
        )
        for bake in bakes:
            _link(bake, rollback)
    return dag


def build_rollback_dag(ctx: _Context, group: str) -> DAG:
    from airflow.sdk import DAG, Param

    from airflow_fsmigration.operators.routing import RollbackOperator

    g = ctx.plan.groups[group]
    with DAG(
        dag_id(ROLLBACK, group),
        dag_display_name=ctx.display(ROLLBACK, group),
        schedule=None,
        start_date=ctx.options.start_date,
        max_active_runs=1,
        tags=ctx.tags(ROLLBACK, group),
        doc_md=group_doc(ctx, group, ROLLBACK),
        description=f"Roll {group} back to the old store now (asks for a reason)",
        params={
            "reason": Param(
                type="string",
                minLength=10,
                maxLength=2000,
                title="Reason",
                description="Why roll back? Goes into the routing audit log (at least 10 characters).",
            )
        },
        **ctx.dag_kwargs,
    ) as dag:
        RollbackOperator(
            task_id="rollback",
            plan_path=ctx.plan_path,
            group=group,
            owner=ctx.owner(g),
            reason="{{ params.reason }}",
        )
    return dag


def build_backfill_dag(ctx: _Context, group: str) -> DAG:
    from airflow.sdk import DAG, Param

    from airflow_fsmigration.operators.backfill import BackfillReplayOperator, ValidateBackfillFormOperator

    g = ctx.plan.groups[group]
    common = {"plan_path": ctx.plan_path, "group": group, "owner": ctx.owner(g)}
    window = format_duration(g.backfill_window)
    with DAG(
        dag_id(BACKFILL, group),
        dag_display_name=ctx.display(BACKFILL, group),
        schedule=None,
        start_date=ctx.options.start_date,
        max_active_runs=1,
        tags=ctx.tags(BACKFILL, group),
        doc_md=group_doc(ctx, group, BACKFILL),
        description=f"Replay {group} as of historical times (snapshot grid or label spine)",
        params={
            "start": Param(
                None,
                type=["null", "string"],
                format="date-time",
                pattern=ISO_TIME,
                title="Start",
                description=f"Window start (UTC). The window may span at most {window}.",
                section="Window",
            ),
            "end": Param(
                None,
                type=["null", "string"],
                format="date-time",
                pattern=ISO_TIME,
                title="End",
                description="Window end (UTC), after start and not in the future.",
                section="Window",
            ),
            "cadence": Param(
                None,
                type=["null", "string"],
                enum=[None, *CADENCE_CHOICES],
                title="Snapshot cadence",
                description="One snapshot every ... between start and end. Leave empty with a spine table.",
                section="What to compute",
            ),
            "spine_table": Param(
                None,
                type=["null", "string"],
                pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$",
                title="Label spine table",
                description="schema.table of (entity, timestamp) labels in the new store. Leave empty with a cadence.",
                section="What to compute",
            ),
        },
        **ctx.dag_kwargs,
    ) as dag:
        validate = ValidateBackfillFormOperator(
            task_id="validate_form",
            start="{{ params.start or '' }}",
            end="{{ params.end or '' }}",
            cadence="{{ params.cadence or '' }}",
            spine_table="{{ params.spine_table or '' }}",
            **common,
        )
        replay = BackfillReplayOperator(task_id="replay", form_task_id="validate_form", **common)
        _link(validate, replay)
    return dag


def build_nightly_dag(ctx: _Context) -> DAG:
    """Compare every group in shadow, ramping, cutover or warm; phases are read when the DAG runs."""
    from airflow.sdk import DAG

    from airflow_fsmigration.operators.shadow import ActiveGroupsOperator, ShadowCompareOperator

    plan = ctx.plan
    doc = (
        f"## Nightly consistency: {plan.name}\n\n"
        "Compares every group whose registry phase is shadow, ramping, cutover or warm (read when the "
        "DAG runs, not when it is parsed), one mapped task per group, and records each run in the "
        "shadow results series that the soak gates and the reports read.\n\n"
        f"Schedule: `{plan.nightly_schedule}`; plan `{ctx.plan_path}`; groups: {len(plan.groups)}.\n"
    )
    with DAG(
        dag_id(NIGHTLY, plan=plan),
        dag_display_name=f"{plan.name} · nightly consistency",
        schedule=plan.nightly_schedule,
        start_date=ctx.options.start_date,
        max_active_runs=1,
        tags=ctx.tags(NIGHTLY),
        doc_md=doc,
        description="Shadow-compare every active group once a night",
        **ctx.dag_kwargs,
    ) as dag:
        groups = ActiveGroupsOperator(
            task_id="active_groups", plan_path=ctx.plan_path, owner=ctx.options.default_owner
        )
        ShadowCompareOperator.partial(
            task_id="shadow_compare", plan_path=ctx.plan_path, owner=ctx.options.default_owner
        ).expand(group=groups.output)
    return dag


_BUILDERS = {MIGRATE: build_migrate_dag, ROLLBACK: build_rollback_dag, BACKFILL: build_backfill_dag}


def build_dags(
    plan: MigrationPlan,
    plan_path: str,
    *,
    options: FactoryOptions | None = None,
    only: str | None = None,
) -> dict[str, DAG]:
    """Every DAG of the plan by id; with ``only`` (a DAG id of this plan), just that one.

    An ``only`` that is not one of the plan's DAG ids builds everything (the caller may be
    parsing for a DAG that another file defines).
    """
    ctx = _Context(plan, str(plan_path), options or FactoryOptions())
    ids = dag_ids(plan)
    wanted = {only: ids[only]} if only in ids else ids
    dags: dict[str, DAG] = {}
    # Thousands of operators are allocated in one go and all stay alive: the cyclic collector would
    # rescan them again and again for nothing (about 5% of a 200-group parse). Restored afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for did, (kind, group) in wanted.items():
            if kind == NIGHTLY:
                dags[did] = build_nightly_dag(ctx)
            else:
                dags[did] = _BUILDERS[kind](ctx, group)  # type: ignore[arg-type]
    finally:
        if gc_was_enabled:
            gc.enable()
    return dags


def register_dags(
    namespace: MutableMapping[str, Any], plan_path: str, *, options: FactoryOptions | None = None
) -> dict[str, DAG]:
    """Load the plan (cached on file mtimes) and put its DAGs into ``namespace`` (a DAG file's globals).

    Builds only the DAG being run when Airflow says which one (``get_parsing_context``).

    :raises PlanError: the plan is invalid; Airflow shows it as the DAG file's import error,
        naming the plan file and line.
    """
    from airflow.sdk import get_parsing_context

    from airflow_fsmigration.plan.cache import load_plan_cached

    plan = load_plan_cached(plan_path)
    dags = build_dags(plan, plan_path, options=options, only=get_parsing_context().dag_id)
    namespace.update(dags)
    return dags
