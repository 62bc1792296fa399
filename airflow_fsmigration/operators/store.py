"""New-store operators: deploy a group's definition, check schema parity with the old store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.links import ReportLink
from airflow_fsmigration.operators.base import FsMigrationBaseOperator, init_base

if TYPE_CHECKING:
    from airflow.sdk import Context


class DeployDefinitionOperator(FsMigrationBaseOperator):
    """Create (idempotently) the group's live view in the new store from its SQL definition.

    Refuses, naming the group, when an upstream group's view is not deployed yet.
    """

    ui_color = "#d6eaf8"

    def run(self, context: Context) -> Any:
        from airflow_fsmigration.operators._runtime import deploy

        return deploy(self.plan, self.group, self.hook)  # type: ignore[arg-type]


class SchemaParityOperator(FsMigrationBaseOperator):
    """Check that the new store's view has the plan's columns with compatible types and null handling.

    Fails (after pushing the result) when the schemas differ; writes a report (extra link "Report").
    On success it can open the shadow phase in the registry (from ``planned`` or ``rolled_back``):
    parity is the gate into shadow, and one task fewer per group keeps DAG parsing fast.

    :param sample_size: entities read from each side to check types and nulls (templated).
    :param enter_shadow: on success, move the group to the ``shadow`` phase.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "sample_size")
    operator_extra_links = (ReportLink(),)
    ui_color = "#d6eaf8"

    def __init__(self, *, sample_size: int | str = 1000, enter_shadow: bool = False, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.sample_size = sample_size
        self.enter_shadow = enter_shadow
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import report_url, schema_parity, write_report

        result = schema_parity(
            self.plan,
            self.feature_group.name,
            self.hook,
            sample_size=int(self.sample_size),
            run_id=context["ti"].run_id,  # type: ignore[arg-type]
        )
        path = write_report(
            "schema_parity", self.group, context["ti"].run_id, f"Schema parity: {self.group}", result
        )
        self.report_url = report_url(path)
        if not result.get("passed"):
            context["ti"].xcom_push(key="schema_parity", value=result)
            raise AirflowFailException(
                f"group {self.group}: the new store's schema differs from the plan/old store: "
                f"{result.get('summary') or result.get('problems')}"
            )
        if self.enter_shadow:
            from airflow_fsmigration.operators.routing import move_to_phase

            result["registry"] = move_to_phase(
                self, context, "shadow", "definition deployed, schema parity passed"
            )
        return result
