"""Model metrics the bake gate reads: ``fsmig.model_metrics`` (model, metric, value, ts, cohort).

Written by whoever scores the models (the demo, a metrics job); a row with ``value`` NULL is a
scored window whose labels have not arrived yet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow_fsmigration.db import SCHEMA, ensure_schema

AUC = "auc"
PRECISION = "precision_at_threshold"

MIGRATIONS: tuple[str, ...] = (
    f"""CREATE TABLE "{SCHEMA}".model_metrics (
        model text NOT NULL,
        metric text NOT NULL,
        value double precision,
        ts timestamptz NOT NULL,
        cohort text NOT NULL DEFAULT 'all'
    )""",
    f'CREATE INDEX model_metrics_model_metric_ts ON "{SCHEMA}".model_metrics (model, metric, ts)',
)


def ensure_metrics_schema(conn: Any) -> int:
    return ensure_schema(conn, "model_metrics", MIGRATIONS)


def record_metric(
    conn: Any,
    model: str,
    metric: str,
    value: float | None,
    *,
    ts: datetime | None = None,
    cohort: str = "all",
) -> None:
    """Append one model metric observation (``value=None``: scored, labels not arrived yet)."""
    ensure_metrics_schema(conn)
    with conn.transaction():
        conn.execute(
            f'INSERT INTO "{SCHEMA}".model_metrics (model, metric, value, ts, cohort) VALUES (%s, %s, %s, %s, %s)',
            (model, metric, value, ts or datetime.now(UTC), cohort),
        )


def window_means(
    conn: Any, models: list[str], metrics: list[str], start: datetime, end: datetime, cohort: str | None
) -> dict[tuple[str, str], tuple[float | None, int, int]]:
    """(model, metric) -> (mean of labelled values, labelled points, all points) over [start, end)."""
    sql = (
        f'SELECT model, metric, avg(value), count(value), count(*) FROM "{SCHEMA}".model_metrics'
        " WHERE model = ANY(%s) AND metric = ANY(%s) AND ts >= %s AND ts < %s"
    )
    params: list[Any] = [models, metrics, start, end]
    if cohort is not None:
        sql += " AND cohort = %s"
        params.append(cohort)
    rows = conn.execute(sql + " GROUP BY model, metric", params).fetchall()
    return {(r[0], r[1]): (float(r[2]) if r[2] is not None else None, int(r[3]), int(r[4])) for r in rows}
