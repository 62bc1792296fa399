"""Shadow results kept in the registry Postgres: one row per run, read back as a time series.

The soak gate and the reports read this table; the nightly consistency DAG writes it. Rows are
only ever inserted: a run that could not read a store records nothing (see
:func:`airflow_fsmigration.compare.shadow.run_shadow`), so a gap in the series is visible as a
gap, never as a green day.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.db import SCHEMA, ensure_schema

if TYPE_CHECKING:
    from airflow_fsmigration.compare.engine import ComparisonResult
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.compare")

COMPONENT = "shadow"
MIGRATIONS = (
    f"""
    CREATE TABLE "{SCHEMA}".shadow_runs (
        run_id             text PRIMARY KEY,
        group_name         text NOT NULL,
        logical_time       timestamptz NOT NULL,
        shard              text,
        verdict            text NOT NULL CHECK (verdict IN ('pass', 'fail', 'inconclusive')),
        threshold          double precision NOT NULL,
        match_rate         double precision,
        entities_requested bigint,
        entities_compared  bigint NOT NULL,
        feature_rates      jsonb NOT NULL,
        explanations       jsonb NOT NULL,
        result             jsonb NOT NULL,
        started_at         timestamptz,
        finished_at        timestamptz,
        recorded_at        timestamptz NOT NULL DEFAULT now()
    )
    """,
    f'CREATE INDEX shadow_runs_group_time ON "{SCHEMA}".shadow_runs (group_name, logical_time)',
)


@dataclass(frozen=True)
class ShadowRun:
    """One recorded comparison (a row of ``fsmig.shadow_runs``)."""

    run_id: str
    group: str
    logical_time: datetime
    verdict: str
    threshold: float
    match_rate: float | None
    entities_requested: int | None
    entities_compared: int
    feature_rates: dict[str, float | None]
    explanations: list[dict[str, Any]]
    shard: str | None = None
    recorded_at: datetime | None = None

    @property
    def mismatch_rate(self) -> float | None:
        return None if self.match_rate is None else 1.0 - self.match_rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "group": self.group,
            "logical_time": self.logical_time.isoformat(),
            "verdict": self.verdict,
            "threshold": self.threshold,
            "match_rate": self.match_rate,
            "entities_requested": self.entities_requested,
            "entities_compared": self.entities_compared,
            "feature_rates": self.feature_rates,
            "explanations": self.explanations,
            "shard": self.shard,
        }


@dataclass(frozen=True)
class SoakStatus:
    """Whether a group has been green long enough: the soak gate's answer, with what is missing."""

    group: str
    required: timedelta
    green_for: timedelta
    satisfied: bool
    reason: str
    green_since: datetime | None = None
    last_run_at: datetime | None = None
    last_verdict: str | None = None
    last_fail_at: datetime | None = None
    passing_runs: int = 0
    max_gap: timedelta | None = None
    missing: timedelta = field(default=timedelta(0))

    @property
    def seconds_green(self) -> float:
        return self.green_for.total_seconds()

    @property
    def days_green(self) -> float:
        return self.green_for.total_seconds() / 86400

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "group": self.group,
            "required_s": self.required.total_seconds(),
            "green_s": self.seconds_green,
            "missing_s": self.missing.total_seconds(),
            "satisfied": self.satisfied,
            "reason": self.reason,
            "green_since": iso(self.green_since),
            "last_run_at": iso(self.last_run_at),
            "last_verdict": self.last_verdict,
            "last_fail_at": iso(self.last_fail_at),
            "passing_runs": self.passing_runs,
            "max_gap_s": self.max_gap.total_seconds() if self.max_gap else None,
        }


class ResultStore:
    """Shadow runs in schema ``fsmig`` of the registry Postgres (``conn``: a psycopg connection)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self._ready = False

    def ensure(self) -> None:
        if not self._ready:
            ensure_schema(self.conn, COMPONENT, MIGRATIONS)
            self._ready = True

    def record(self, result: ComparisonResult, *, logical_time: datetime | None = None) -> str:
        """Insert one run; returns its run id. The logical time defaults to the result's, else now."""
        self.ensure()
        when = logical_time or result.logical_time or result.finished_at or datetime.now(UTC)
        if when.tzinfo is None:
            raise ValueError(f"logical time {when.isoformat()} of group '{result.group}' has no time zone")
        result.logical_time = when
        data = result.to_dict()
        with self.conn.transaction():
            self.conn.execute(
                f'INSERT INTO "{SCHEMA}".shadow_runs (run_id, group_name, logical_time, shard, verdict, threshold,'
                " match_rate, entities_requested, entities_compared, feature_rates, explanations, result,"
                " started_at, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    result.run_id,
                    result.group,
                    when,
                    result.shard,
                    str(result.verdict),
                    result.threshold,
                    result.match_rate,
                    result.entities_requested,
                    result.entities_compared,
                    json.dumps(result.feature_rates()),
                    json.dumps(data["explanations"]),
                    json.dumps(data),
                    result.started_at,
                    result.finished_at,
                ),
            )
        log.info(
            "recorded shadow run %s of %s at %s: %s",
            result.run_id,
            result.group,
            when.isoformat(),
            result.verdict,
        )
        return result.run_id

    def series(self, group: str, since: datetime | None = None) -> list[ShadowRun]:
        """The runs of ``group`` in logical-time order (from ``since`` on, if given)."""
        self.ensure()
        rows = self.conn.execute(
            "SELECT run_id, group_name, logical_time, verdict, threshold, match_rate, entities_requested,"
            f' entities_compared, feature_rates, explanations, shard, recorded_at FROM "{SCHEMA}".shadow_runs'
            " WHERE group_name = %s AND (%s::timestamptz IS NULL OR logical_time >= %s::timestamptz)"
            " ORDER BY logical_time, recorded_at",
            (group, since, since),
        ).fetchall()
        return [
            ShadowRun(
                run_id=r[0],
                group=r[1],
                logical_time=r[2],
                verdict=r[3],
                threshold=r[4],
                match_rate=r[5],
                entities_requested=r[6],
                entities_compared=r[7],
                feature_rates=r[8],
                explanations=r[9],
                shard=r[10],
                recorded_at=r[11],
            )
            for r in rows
        ]

    def result(self, run_id: str) -> ComparisonResult | None:
        """The full stored result of one run (for re-rendering a report)."""
        from airflow_fsmigration.compare.engine import ComparisonResult

        self.ensure()
        row = self.conn.execute(
            f'SELECT result FROM "{SCHEMA}".shadow_runs WHERE run_id = %s', (run_id,)
        ).fetchone()
        return ComparisonResult.from_dict(row[0]) if row else None

    def soak_status(
        self,
        plan: MigrationPlan,
        group: str,
        now: datetime | None = None,
        *,
        max_gap: timedelta | None = None,
    ) -> SoakStatus:
        """Green for the plan's ``shadow_soak``? See :func:`soak_from_runs`."""
        return soak_from_runs(
            group, self.series(group), plan.settings_for(group).shadow_soak, now=now, max_gap=max_gap
        )


def soak_from_runs(
    group: str,
    runs: list[ShadowRun],
    required: timedelta,
    *,
    now: datetime | None = None,
    max_gap: timedelta | None = None,
) -> SoakStatus:
    """The soak answer from a series: consecutive passing runs covering ``required``, no fail since.

    Runs at the same logical time (shards of one run) count together: one fail fails that time,
    one inconclusive makes it inconclusive. An inconclusive time neither counts as green nor
    resets the streak, but two passing times further apart than ``max_gap`` (default
    ``required / 7``, i.e. two days for a 14-day soak) break it: a window nobody checked is not
    green. The streak is also stale if the last pass is more than ``max_gap`` before ``now``.
    """
    now = now or datetime.now(UTC)
    gap = max_gap if max_gap is not None else required / 7
    by_time: dict[datetime, str] = {}
    for run in runs:
        prev = by_time.get(run.logical_time)
        rank = {"fail": 2, "inconclusive": 1, "pass": 0}
        if prev is None or rank[run.verdict] > rank[prev]:
            by_time[run.logical_time] = run.verdict
    points = sorted(by_time.items())
    points = [(t, v) for t, v in points if t <= now]
    last_run_at, last_verdict = points[-1] if points else (None, None)
    fails = [t for t, v in points if v == "fail"]
    last_fail = fails[-1] if fails else None
    streak: list[datetime] = []
    for t, v in points:
        if last_fail is not None and t <= last_fail:
            continue
        if v != "pass":
            continue
        if streak and t - streak[-1] > gap:
            streak = []  # an unchecked hole: start again
        streak.append(t)

    def status(green_for: timedelta, satisfied: bool, reason: str) -> SoakStatus:
        return SoakStatus(
            group=group,
            required=required,
            green_for=green_for,
            satisfied=satisfied,
            reason=reason,
            green_since=streak[0] if streak else None,
            last_run_at=last_run_at,
            last_verdict=last_verdict,
            last_fail_at=last_fail,
            passing_runs=len(streak),
            max_gap=gap,
            missing=max(timedelta(0), required - green_for),
        )

    if not streak:
        why = "no passing shadow run" + (
            f" since the failure at {last_fail.isoformat()}" if last_fail else " yet"
        )
        return status(timedelta(0), False, why)
    green_for = streak[-1] - streak[0]
    if now - streak[-1] > gap:
        return status(
            green_for,
            False,
            f"the last passing run ({streak[-1].isoformat()}) is older than the allowed gap of {gap}: "
            "run the shadow comparison again",
        )
    if green_for >= required:
        return status(
            green_for, True, f"green for {green_for} over {len(streak)} passing runs (needs {required})"
        )
    return status(
        green_for,
        False,
        f"green for {green_for} over {len(streak)} passing runs; {required - green_for} more needed",
    )
