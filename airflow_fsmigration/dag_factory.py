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
from collections.abc import MutableMapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.dag_context import (
    BACKFILL,
    MIGRATE,
    NIGHTLY,
    ROLLBACK,
    DagContext,
    FactoryOptions,
    cutover_asset,
    cutover_uri,
    dag_id,
    dag_ids,
    group_doc,
)
from airflow_fsmigration.plan.durations import format_duration
from airflow_fsmigration.triggers.checks import poll_interval

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from airflow_fsmigration.plan import MigrationPlan

# Names callers import from here (the DAG file, the cockpit, the demo, the tests).
__all__ = [
    "BACKFILL",
    "MIGRATE",
    "NIGHTLY",
    "ROLLBACK",
    "FactoryOptions",
    "build_dags",
    "cutover_asset",
    "cutover_uri",
    "dag_id",
    "dag_ids",
    "group_doc",
    "register_dags",
]

CADENCE_CHOICES = ("1h", "6h", "12h", "1d", "7d")
# What the form's dropdown shows for each choice; the UI looks ``null`` up under the key "null",
# so the empty choice reads as what it means instead of a literal "null".
CADENCE_LABELS = {
    "null": "none: replay at the spine table's timestamps",
    "1h": "1h: every hour",
    "6h": "6h: every 6 hours",
    "12h": "12h: every 12 hours",
    "1d": "1d: every day",
    "7d": "7d: every week",
}
REASON_MIN, REASON_MAX = 10, 2000
# JSON schema's "format" is a UI hint only (not validated by Airflow), so dates also get a pattern.
ISO_TIME = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"
# Soaks shorter than this are kept fed by the soak sensor itself (demo and test time scales);
# longer ones rely on the nightly DAG, which already compares once a day.
SOAK_SELF_REFRESH_BELOW = timedelta(hours=1)


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


def build_migrate_dag(ctx: DagContext, group: str) -> DAG:
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
        approvals = plan.approves_ramps(group)
        evidence = {"shadow soak": "shadow_soak", "point-in-time": "point_in_time"}
        for step in s.ramp_steps:
            if approvals:
                from airflow_fsmigration.operators.approval import RampApprovalOperator

                chain_.append(
                    RampApprovalOperator(
                        task_id=f"approve_{step}",
                        percent=step,
                        evidence_task_ids=dict(evidence),
                        response_timeout=s.approval_timeout,
                        **common,
                    )
                )
            ramp = RampStepOperator(
                task_id=f"ramp_{step}",
                percent=step,
                approval_task_id=f"approve_{step}" if approvals else None,
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
            evidence[f"bake at {step}%"] = bake.task_id
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


def build_rollback_dag(ctx: DagContext, group: str) -> DAG:
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
                minLength=REASON_MIN,
                maxLength=REASON_MAX,
                title="Reason",
                # description_md only: Airflow's form shows the plain description instead when both are set
                description_md=(
                    f"Why roll back? **At least {REASON_MIN} characters** (at most {REASON_MAX}): "
                    "Trigger refuses a shorter reason before any run starts. It goes into the routing "
                    f"audit log with who triggered the run, and the cockpit shows it. Serving of `{group}` "
                    "switches back to the old store at once."
                ),
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


def build_backfill_dag(ctx: DagContext, group: str) -> DAG:
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
                description=(
                    f"Window start (UTC), e.g. 2026-10-01T00:00:00Z. The window may span at most "
                    f"{window} (the group's backfill_window)."
                ),
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
                values_display=CADENCE_LABELS,
                title="Snapshot cadence",
                description=(
                    "One snapshot every 1h, 6h, 12h, 1d or 7d between start and end; choose none "
                    "with a spine table."
                ),
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


def build_nightly_dag(ctx: DagContext) -> DAG:
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
    ctx = DagContext(plan, str(plan_path), options or FactoryOptions())
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
