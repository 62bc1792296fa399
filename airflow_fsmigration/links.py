"""Extra links from task instances to the reports their operators wrote.

In Airflow 3 a link is computed on the worker right after the task ran, with the same operator
object, and stored in XCom; so operators set ``report_url`` during ``execute`` and the link reads
it back. A task that wrote no report gets an empty link (the UI hides it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class ReportLink(BaseOperatorLink):
    """The HTML report of a comparison, validation, load test or backfill."""

    name = "Report"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "report_url", "") or "")
