"""New-store operators: deploy a group's definition, check schema parity with the old store."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.links import ReportLink
from airflow_fsmigration.operators.base import FsMigrationBaseOperator, init_base

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_fsmigration.hooks.migration import MigrationHook
    from airflow_fsmigration.plan import MigrationPlan

log = logging.getLogger("airflow_fsmigration.operators")


class DeployDefinitionOperator(FsMigrationBaseOperator):
    """Create (idempotently) the group's live view in the new store from its SQL definition.

    Refuses, naming the group, when an upstream group's view is not deployed yet. On Postgres the
    view is created inline, as before. On RisingWave the build runs in the background
    (``SET BACKGROUND_DDL = true``) and the task defers to
    :class:`~airflow_fsmigration.triggers.ddl_progress.DdlProgressTrigger`, which logs rows, rate
    and ETA from ``rw_ddl_progress`` without holding a worker slot; with ``redefine`` a live view
    is rebuilt beside itself and swapped in (``SWAP WITH``) once built, the previous definition
    kept as ``<group>__fsmig_previous``.

    :param redefine: rebuild an existing live view from the current definition (RisingWave).
    :param poll_interval: seconds between progress polls while a build runs.
    :param build_timeout: seconds a build may take before the task fails (None: no limit).
    """

    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        redefine: bool = False,
        poll_interval: float = 30.0,
        build_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        init_base(self, kwargs)
        self.redefine = redefine
        self.poll_interval = poll_interval
        self.build_timeout = build_timeout

    def run(self, context: Context) -> Any:
        from airflow_fsmigration.operators._runtime import deploy, new_store
        from airflow_fsmigration.stores.dialect import dialect_for

        if not dialect_for(self.plan.new_store.dialect).background_builds:
            return deploy(self.plan, self.group, self.hook)  # type: ignore[arg-type]
        with new_store(self.plan, self.hook) as store:
            target = store.start_deploy(self.group, redefine=self.redefine)
            if target is None:
                store.finish_deploy(self.group, None)
                return self._result(store)
        from datetime import timedelta

        from airflow_fsmigration.triggers.ddl_progress import DdlProgressTrigger

        log.info("group %s: building %s in the background; deferring", self.group, target)
        self.defer(
            trigger=DdlProgressTrigger(self.plan_path, self.feature_group.name, target, self.poll_interval),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.build_timeout) if self.build_timeout else None,
        )

    def _result(self, store: Any) -> dict[str, Any]:
        return {
            "group": self.group,
            "view": self.plan.view_name(self.feature_group.name),
            "columns": store.columns(self.group),
        }

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Back from the trigger: shadow-check a rebuilt view, swap it in, index, check the columns."""
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import new_store
        from airflow_fsmigration.stores.dialect import build_name

        if not event or event.get("status") != "done":
            reason = (event or {}).get("reason", "the progress trigger ended without an event")
            raise AirflowFailException(f"group {self.group}: the new store's build did not finish: {reason}")
        pre_swap: dict[str, Any] = {}
        if event.get("target") == build_name(self.feature_group.name):
            checks = compare_build(
                self.plan,
                self.feature_group.name,
                online_url=self.hook.redis_url(),
                new_url=self.hook.postgres_url("new_store"),
            )
            log.info("group %s: %s", self.group, checks["summary"])
            if not checks["swap"]:
                self._close()
                raise AirflowFailException(
                    f"group {self.group}: the rebuilt view {build_name(self.feature_group.name)} was not swapped in, the live "
                    f"view keeps serving: {checks['summary']}. Fix the definition and deploy again with redefine."
                )
            pre_swap = {"pre_swap": checks}
        from airflow_fsmigration.operators.base import to_json

        try:
            with new_store(self.plan, self.hook) as store:
                store.finish_deploy(self.group, event.get("target"))
                result = self._result(store)
        finally:
            self._close()
        log.info("group %s: %s", self.group, event.get("reason"))
        return to_json({**result, **pre_swap, "polls": event.get("polls")}, self.hook)


def compare_build(
    plan: MigrationPlan, group: str, *, online_url: str, new_url: str, sample_size: int | None = None
) -> dict[str, Any]:
    """Shadow-compare a rebuilt view (``<group>__fsmig_build``) with the old store, and with the live view.

    ``swap`` only when the comparison with the legacy online store passed (a fail or an
    inconclusive run keeps the live view). The comparison with the live view measures how far the
    new definition moves the values; it is reported, not gated on (moving values is the point of
    a redefinition). Neither is recorded in the soak series: the build is not what serves yet.
    """
    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.stores.feast_online import online_source_for
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.risingwave_shadow import BuildView

    conn_id = plan.connections.new_store
    old = online_source_for(plan, online_url, plan.connections.legacy_online)
    try:
        with BuildView(new_url, plan, group, conn_id) as build, NewStore(new_url, plan, conn_id) as live:
            against_old = run_shadow(plan, group, old, build, sample_size=sample_size)
            against_live = run_shadow(plan, group, live, build, sample_size=sample_size, diagnose=False)
    finally:
        close = getattr(old, "close", None)
        if close is not None:
            close()
    swap = str(against_old.verdict) == "pass"
    return {
        "swap": swap,
        "against_old": str(against_old.verdict),
        "against_live": str(against_live.verdict),
        "summary": (
            f"rebuilt view vs the old store: {against_old.verdict} ({against_old.summary()}); "
            f"vs the live view: {against_live.verdict} ({against_live.summary()})"
        ),
    }


def schema_parity(plan: MigrationPlan, group: str, hook: MigrationHook, *, run_id: str) -> dict[str, Any]:
    """GX schema-parity suite on the deployed view: names, types and declared nullability.

    Schema only, no data read: differences in the values (null counts among them) are the shadow
    comparison's, which runs next and explains them per feature. A data difference reported here
    as "the schema differs" would stop the group before the one task that can say why.
    """
    from airflow_fsmigration.compare.gx import schema_parity as gx_schema_parity
    from airflow_fsmigration.operators._runtime import new_store, reports_dir

    g = plan.groups[group]
    with new_store(plan, hook) as store:
        columns = store.columns(group)
        nullable = store.nullability(group)
    safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    verdict = gx_schema_parity(
        g, columns, nullable=nullable, docs_dir=reports_dir() / group / "gx" / safe_run
    )
    data = verdict.to_dict()
    failed = [r for r in data["results"] if not r.get("success")]
    problems = [
        f"{r.get('column')}: {r.get('observed_value')}"
        for r in failed
        if r.get("expectation") == "fsmig_column_parity"
    ]
    return {
        "group": group,
        "passed": bool(verdict.success),
        "verdict": data["verdict"],
        "columns": columns,
        "nullable": nullable,
        "problems": problems,
        "summary": (
            f"{len(problems)} column(s) differ: " + "; ".join(problems)
            if problems
            else f"{len(failed)} failed expectation(s)"
            if failed
            else f"schema parity passed: {len(columns)} columns, names, types and nullability as planned"
        ),
        "gx": data,
    }


class SchemaParityOperator(FsMigrationBaseOperator):
    """Check that the new store's view has the plan's columns with compatible types and nullability.

    Schema only (see :func:`schema_parity`); fails (after pushing the result) when the schemas
    differ, and writes a report (extra link "Report"). On success it can open the shadow phase in
    the registry (from ``planned`` or ``rolled_back``): parity is the gate into shadow, and one
    task fewer per group keeps DAG parsing fast.

    :param sample_size: kept for DAGs written against earlier versions; no data are read any more.
    :param enter_shadow: on success, move the group to the ``shadow`` phase.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "sample_size")
    operator_extra_links = (ReportLink(),)
    ui_color = "#d6eaf8"

    def __init__(self, *, sample_size: int | str = 0, enter_shadow: bool = False, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.sample_size = sample_size
        self.enter_shadow = enter_shadow
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import report_url, write_report

        run_id = str(context["ti"].run_id)
        result = schema_parity(self.plan, self.feature_group.name, self.hook, run_id=run_id)
        path = write_report("schema_parity", self.group, run_id, f"Schema parity: {self.group}", result)
        self.report_url = report_url(path)
        if not result.get("passed"):
            context["ti"].xcom_push(key="schema_parity", value=result)
            raise AirflowFailException(
                f"group {self.group}: the new store's schema differs from the plan: {result['summary']}"
            )
        log.info("group %s: %s", self.group, result["summary"])
        if self.enter_shadow:
            from airflow_fsmigration.operators.routing import move_to_phase

            result["registry"] = move_to_phase(
                self, context, "shadow", "definition deployed, schema parity passed"
            )
        return result
