"""The latest DAG runs of each group, read from Airflow's metadata database for the cockpit.

The cockpit runs inside the api-server, which owns the metadata database and its ORM, so the
runs are read there directly (two queries for the whole page, whatever the number of groups)
rather than through the REST API with a second login. Task code must never do this (the task
SDK forbids the ORM); this module is imported only by the plugin's routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Task states that say where a run is stuck or what it is doing, in the order they matter.
PROBLEM_STATES = ("failed", "upstream_failed")
ACTIVE_STATES = ("running", "deferred", "up_for_reschedule", "up_for_retry", "queued", "awaiting_input")


@dataclass(frozen=True)
class TaskRef:
    """One task instance of a run that the cockpit names (failed, or running now)."""

    task_id: str
    state: str
    since: datetime | None
    map_index: int = -1


@dataclass(frozen=True)
class RunInfo:
    """A DAG run as the cockpit shows it: state, since when, which task failed or is running."""

    dag_id: str
    run_id: str
    state: str
    started: datetime | None
    ended: datetime | None
    run_after: datetime | None
    failed: tuple[TaskRef, ...] = ()
    active: tuple[TaskRef, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def since(self) -> datetime | None:
        """When the run reached its current state (the failing task's end for a failed run)."""
        if self.state == "failed":
            ends = [t.since for t in self.failed if t.since is not None and t.state == "failed"]
            return min(ends) if ends else self.ended
        if self.state == "success":
            return self.ended
        return self.started or self.run_after

    @property
    def first_failed(self) -> TaskRef | None:
        """The task that failed first (not the ``upstream_failed`` ones it dragged along)."""
        own = [t for t in self.failed if t.state == "failed"]
        return (
            min(own, key=lambda t: (t.since is None, t.since.timestamp() if t.since else 0.0))
            if own
            else None
        )

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        failed = self.first_failed
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "state": self.state,
            "since": iso(self.since),
            "failed_task": failed.task_id if failed else None,
            "active_tasks": [t.task_id for t in self.active],
        }


def latest_runs(dag_ids: Iterable[str], *, per_dag: int = 3, session: Any = None) -> dict[str, list[RunInfo]]:
    """dag_id -> its newest ``per_dag`` runs, newest first, with their failed and active tasks."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    ids = sorted(set(dag_ids))
    if not ids:
        return {}
    ranked = (
        select(
            DagRun.dag_id,
            DagRun.run_id,
            DagRun._state,
            DagRun.start_date,
            DagRun.end_date,
            DagRun.run_after,
            func.row_number().over(partition_by=DagRun.dag_id, order_by=DagRun.id.desc()).label("n"),
        )
        .where(DagRun.dag_id.in_(ids))
        .subquery()
    )
    out: dict[str, list[RunInfo]] = {}

    def read(s: Any) -> None:
        rows = s.execute(select(ranked).where(ranked.c.n <= per_dag).order_by(ranked.c.dag_id, ranked.c.n))
        runs = [tuple(r)[:6] for r in rows]
        if not runs:
            return
        wanted = {(r[0], r[1]) for r in runs}
        tis = s.execute(
            select(
                TaskInstance.dag_id,
                TaskInstance.run_id,
                TaskInstance.task_id,
                TaskInstance.map_index,
                TaskInstance.state,
                TaskInstance.start_date,
                TaskInstance.end_date,
            ).where(
                TaskInstance.dag_id.in_({d for d, _ in wanted}),
                TaskInstance.run_id.in_({r for _, r in wanted}),
                TaskInstance.state.in_((*PROBLEM_STATES, *ACTIVE_STATES)),
            )
        )
        by_run: dict[tuple[str, str], list[TaskRef]] = {}
        for dag, run, task, idx, state, start, end in tis:
            if (dag, run) in wanted:
                since = end if state in PROBLEM_STATES else start
                by_run.setdefault((dag, run), []).append(TaskRef(task, str(state), since, int(idx)))
        for dag, run, state, start, end, after in runs:
            refs = by_run.get((dag, run), [])
            out.setdefault(dag, []).append(
                RunInfo(
                    dag_id=dag,
                    run_id=run,
                    state=str(state or "queued"),
                    started=start,
                    ended=end,
                    run_after=after,
                    failed=tuple(t for t in refs if t.state in PROBLEM_STATES),
                    active=tuple(t for t in refs if t.state in ACTIVE_STATES),
                )
            )

    if session is not None:
        read(session)
    else:
        with create_session() as s:
            read(s)
    return out
