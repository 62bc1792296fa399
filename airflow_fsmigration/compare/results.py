"""Shadow results kept in the registry Postgres: one row per run, read back as a time series.

The soak gate (:mod:`airflow_fsmigration.gates.soak`, which decides) and the reports read this
table; the nightly consistency DAG writes it. Rows are
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
from airflow_fsmigration.gates.soak import SoakStatus, soak_from_runs

__all__ = ["COMPONENT", "MIGRATIONS", "ResultStore", "ShadowRun", "SoakStatus", "soak_from_runs"]

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
    causes: list[dict[str, Any]] = field(default_factory=list)  # root causes (compare.causes)

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
            "causes": self.causes,
            "shard": self.shard,
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
                " started_at, finished_at, recorded_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, pg_catalog.clock_timestamp())",
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
            " entities_compared, feature_rates, explanations, shard, recorded_at,"
            f" coalesce(result->'causes', '[]'::jsonb) FROM \"{SCHEMA}\".shadow_runs"
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
                causes=r[12],
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
        """Green for the plan's ``shadow_soak``? See :func:`~airflow_fsmigration.gates.soak.soak_from_runs`.

        Counts only the runs since the group last entered ``shadow`` in the registry's audit log
        (which lives in the same database); none at all while the group is rolled back.
        """
        from airflow_fsmigration.registry.audit import soak_start

        since = rolled_back_at = None
        start = soak_start(self.conn, group)
        if start is not None:
            at, phase = start
            if phase.value == "rolled_back":
                rolled_back_at = at
            else:
                since = at
        return soak_from_runs(
            group,
            self.series(group),
            plan.settings_for(group).shadow_soak,
            now=now,
            max_gap=max_gap,
            since=since,
            rolled_back_at=rolled_back_at,
        )
