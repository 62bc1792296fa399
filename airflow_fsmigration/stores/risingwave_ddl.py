"""Following a RisingWave background build: rows, rate and ETA from ``rw_ddl_progress``.

A materialized view created with ``SET BACKGROUND_DDL = true`` is listed in
``rw_catalog.rw_ddl_progress`` (``ddl_id bigint, ddl_statement varchar, progress varchar``,
``progress`` an estimate such as ``69.02%``) while it backfills, and leaves that table when the
build is done (https://docs.risingwave.com/docs/1.9/view-statement-progress,
https://docs.risingwave.com/sql/system-catalogs/rw-catalog). :func:`check_build` reads it once;
the deploy trigger (``triggers/ddl_progress.py``) calls it until the build is done, logging one
line per poll. Plain Python over psycopg: no Airflow import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from airflow_fsmigration.stores.dialect import RISINGWAVE, StoreDialect, parse_progress, statement_builds

BUILDING, DONE, MISSING = "building", "done", "missing"


@dataclass(frozen=True)
class ProgressSample:
    """One read of the build's progress row."""

    at: float
    ddl_id: int
    statement: str
    raw: str
    percent: float | None
    rows_done: int | None
    rows_total: int | None


@dataclass
class ProgressTracker:
    """Rate and ETA from the first and the latest sample of one build (a fresh tracker per task try)."""

    first: ProgressSample | None = None
    last: ProgressSample | None = None
    samples: int = field(default=0)

    def observe(self, sample: ProgressSample) -> str:
        """Record a sample and describe it: ``rows 125/1,000 (12.50%), 41 rows/s, ETA 21s``."""
        if self.first is None or self.first.ddl_id != sample.ddl_id:
            self.first = sample
        self.last = sample
        self.samples += 1
        parts = []
        if sample.rows_done is not None and sample.rows_total is not None:
            parts.append(f"rows {sample.rows_done:,}/{sample.rows_total:,}")
        parts.append(f"{sample.percent:.2f}%" if sample.percent is not None else f"progress {sample.raw!r}")
        rate, eta = self.rate_and_eta()
        if rate is not None:
            parts.append(rate)
        if eta:
            parts.append(f"ETA {eta}")
        else:
            parts.append(
                "ETA unknown (one sample so far)" if rate is None else "ETA unknown (no progress yet)"
            )
        return ", ".join(parts)

    def rate_and_eta(self) -> tuple[str | None, str | None]:
        first, last = self.first, self.last
        if first is None or last is None or last.at <= first.at:
            return None, None
        span = last.at - first.at
        if first.rows_done is not None and last.rows_done is not None and last.rows_total:
            per_s = (last.rows_done - first.rows_done) / span
            left = last.rows_total - last.rows_done
            rate = f"{per_s:,.0f} rows/s"
            return rate, _duration(left / per_s) if per_s > 0 else None
        if first.percent is not None and last.percent is not None:
            per_s = (last.percent - first.percent) / span
            return f"{per_s:.3f}%/s", _duration((100.0 - last.percent) / per_s) if per_s > 0 else None
        return None, None


def _duration(value: float) -> str:
    seconds = max(0, round(value))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


@dataclass(frozen=True)
class BuildState:
    """Where a background build stands: ``building`` (with its sample), ``done`` or ``missing``."""

    status: str
    message: str
    sample: ProgressSample | None = None


def read_progress(
    conn: Any, schema: str, name: str, dialect: StoreDialect = RISINGWAVE
) -> ProgressSample | None:
    """The progress row of the statement that builds ``schema.name``, or None when there is none."""
    for ddl_id, statement, progress in conn.execute(dialect.progress_sql).fetchall():
        if statement and statement_builds(str(statement), schema, name):
            pct, done, total = parse_progress(progress)
            return ProgressSample(
                time.monotonic(), int(ddl_id), str(statement), str(progress), pct, done, total
            )
    return None


def check_build(
    conn: Any, schema: str, name: str, tracker: ProgressTracker, dialect: StoreDialect = RISINGWAVE
) -> BuildState:
    """One look at a background build of ``schema.name``.

    ``done`` only when no progress row is left *and* the view exists; no row and no view means the
    build was cancelled or failed (``missing``), never a pass.
    """
    sample = read_progress(conn, schema, name, dialect)
    if sample is not None:
        return BuildState(BUILDING, f"building {schema}.{name}: {tracker.observe(sample)}", sample)
    exists = conn.execute(dialect.relation_exists_sql, (schema, name, schema, name)).fetchone() is not None
    if exists:
        return BuildState(DONE, f"{schema}.{name} is built (no row left in rw_ddl_progress)")
    return BuildState(
        MISSING,
        f"{schema}.{name} is neither building (no row in rw_ddl_progress) nor built: the build was "
        "cancelled or failed; see the RisingWave meta log, then deploy again",
    )


__all__ = [
    "BUILDING",
    "DONE",
    "MISSING",
    "BuildState",
    "ProgressSample",
    "ProgressTracker",
    "check_build",
    "read_progress",
]
