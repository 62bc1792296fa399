"""Backfill operators: validate the trigger form, replay the definition, validate point in time."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.links import ReportLink
from airflow_fsmigration.operators.base import FsMigrationBaseOperator, init_base

if TYPE_CHECKING:
    from airflow.sdk import Context

CADENCES = ("1h", "6h", "12h", "1d", "7d")


def parse_when(value: Any, field: str) -> datetime | None:
    """ISO date or date-time from the trigger form (naive means UTC)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field} {value!r} is not an ISO date or date-time (e.g. 2026-10-01)") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def check_backfill_form(
    plan: Any,
    group: str,
    *,
    start: Any,
    end: Any,
    cadence: Any,
    spine_table: Any,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Cross-field rules the Param schema cannot express; returns the normalised form or raises ValueError.

    Exactly one of cadence (a snapshot grid) or spine table (labels) is given; a grid needs
    start < end, not in the future, within the group's ``backfill_window``.
    """
    from airflow_fsmigration.plan.durations import format_duration, parse_duration

    problems: list[str] = []
    has_cadence = cadence not in (None, "")
    has_spine = spine_table not in (None, "")
    if has_cadence == has_spine:
        problems.append("give exactly one of 'cadence' (snapshot grid) or 'spine_table' (label spine)")
    s = e = None
    try:
        s = parse_when(start, "start")
        e = parse_when(end, "end")
    except ValueError as exc:
        problems.append(str(exc))
    every = None
    if has_cadence:
        try:
            every = parse_duration(cadence)
        except ValueError as exc:
            problems.append(f"cadence: {exc}")
        if s is None or e is None:
            problems.append("a snapshot grid needs both 'start' and 'end'")
    now = now or datetime.now(UTC)
    if s is not None and e is not None:
        if e <= s:
            problems.append(f"end ({e.isoformat()}) must be after start ({s.isoformat()})")
        if e > now:
            problems.append(f"end ({e.isoformat()}) is in the future: a backfill replays the past")
        window = plan.groups[group].backfill_window
        if e - s > window:
            problems.append(
                f"the window {format_duration(e - s)} is longer than group {group}'s backfill_window "
                f"{format_duration(window)}: "
                "split the backfill or raise backfill_window in the plan"
            )
        if every is not None and every.total_seconds() > 0 and (e - s) / every > 10_000:
            problems.append(f"{(e - s) / every:.0f} snapshots: choose a coarser cadence")
    if problems:
        raise ValueError(f"backfill form for group {group} is invalid: " + "; ".join(problems))
    return {
        "group": group,
        "start": s.isoformat() if s else None,
        "end": e.isoformat() if e else None,
        "cadence": cadence if has_cadence else None,
        "every_s": every.total_seconds() if every is not None else None,
        "spine_table": spine_table if has_spine else None,
    }


class ValidateBackfillFormOperator(FsMigrationBaseOperator):
    """The backfill DAG's first task: reject a form the Param schema let through (end <= start, ...).

    :param start: window start (templated, usually ``{{ params.start }}``).
    :param end: window end (templated).
    :param cadence: snapshot cadence such as ``1d`` (templated), or empty with a spine table.
    :param spine_table: label spine table (templated), or empty with a cadence.
    """

    template_fields: Sequence[str] = (
        *FsMigrationBaseOperator.template_fields,
        "start",
        "end",
        "cadence",
        "spine_table",
    )
    ui_color = "#fdf2d0"

    def __init__(
        self, *, start: Any, end: Any, cadence: Any = None, spine_table: Any = None, **kwargs: Any
    ) -> None:
        init_base(self, kwargs)
        self.start, self.end, self.cadence, self.spine_table = start, end, cadence, spine_table

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        try:
            return check_backfill_form(
                self.plan,
                self.feature_group.name,
                start=self.start,
                end=self.end,
                cadence=self.cadence,
                spine_table=self.spine_table,  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None


class BackfillReplayOperator(FsMigrationBaseOperator):
    """Replay the group's definition as of historical times in the new store (resumable, chunked).

    Reads the validated form from the ``validate_form`` task (XCom) unless given directly.
    Refuses, with the exact gap, a window the raw events no longer cover.

    :param form_task_id: task whose return value is the validated form.
    :param run_id: backfill run id for checkpoints (templated); default derived from the form,
        so re-running the same form resumes it.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "run_id")
    operator_extra_links = (ReportLink(),)
    ui_color = "#d7f0dd"

    def __init__(
        self, *, form_task_id: str = "validate_form", run_id: str | None = None, **kwargs: Any
    ) -> None:
        init_base(self, kwargs)
        self.form_task_id = form_task_id
        self.run_id = run_id
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from datetime import timedelta

        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.backfill.replay import run_backfill
        from airflow_fsmigration.backfill.retention import RetentionGapError
        from airflow_fsmigration.operators._runtime import report_url, write_report

        form = context["ti"].xcom_pull(task_ids=self.form_task_id)
        if not form:
            raise AirflowFailException(f"no validated backfill form from task {self.form_task_id}")
        store = self.hook.connect("new_store")
        registry = self.hook.connect("registry")
        events = self.hook.connect("event_log")
        try:
            result = run_backfill(
                self.plan,
                self.feature_group.name,
                store,
                registry,
                event_conn=events,
                start=parse_when(form.get("start"), "start"),
                end=parse_when(form.get("end"), "end"),
                every=timedelta(seconds=form["every_s"]) if form.get("every_s") else None,
                spine=form.get("spine_table"),
                run_id=self.run_id or None,
                progress=lambda p: self.log.info("backfill %s: %s", self.group, p),
            )
        except RetentionGapError as exc:
            raise AirflowFailException(str(exc)) from None
        finally:
            for conn in (store, registry, events):
                conn.close()
        data = result.to_dict()
        path = write_report("backfill", self.group, data["run_id"], f"Backfill: {self.group}", data)
        self.report_url = report_url(path)
        return data


class PointInTimeValidationOperator(FsMigrationBaseOperator):
    """Compare the new store's as-of values with the old offline store's history for sampled times.

    Fails on a ``fail``/``inconclusive`` verdict after pushing the result; writes a report.

    :param samples: (entity, time) pairs to check (templated).
    :param days: how far back to sample times (templated); default the group's backfill window.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "samples", "days")
    operator_extra_links = (ReportLink(),)
    ui_color = "#e0d7f5"

    def __init__(self, *, samples: int | str = 1000, days: float | str | None = None, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.samples = samples
        self.days = days
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import point_in_time, report_url, write_report

        result = point_in_time(
            self.plan,
            self.feature_group.name,
            self.hook,
            samples=int(self.samples),
            days=float(self.days) if self.days not in (None, "") else None,
        )
        path = write_report(
            "point_in_time", self.group, context["ti"].run_id, f"Point-in-time: {self.group}", result
        )
        self.report_url = report_url(path)
        if result.get("verdict") != "pass":
            context["ti"].xcom_push(key="pit_result", value=result)
            raise AirflowFailException(
                f"group {self.group}: point-in-time validation {result.get('verdict')}: "
                + "; ".join(result.get("reasons") or [])
            )
        return result
