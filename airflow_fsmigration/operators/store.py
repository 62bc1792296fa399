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

    Refuses, naming the group, when an upstream group's view is not deployed yet.
    """

    ui_color = "#d6eaf8"

    def run(self, context: Context) -> Any:
        from airflow_fsmigration.operators._runtime import deploy

        return deploy(self.plan, self.group, self.hook)  # type: ignore[arg-type]


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
