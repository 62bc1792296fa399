"""Model evidence the bake gate reads, written by whoever scores the models (the demo, a metrics job).

* ``fsmig.model_metrics`` (model, metric, value, ts, cohort): one aggregate point per window
  (AUC, precision at threshold); ``value`` NULL is a scored window whose labels have not arrived.
  Rows without a cohort (``'all'``, every row written before cohorts existed) are compared
  before/after: bake window against the pre-ramp baseline.
* ``fsmig.model_scores`` (model, ts, cohort, label, score, control_score): a sample of labelled
  predictions per cohort, ``ramped`` (entities the router's bucketing sends to the new store) or
  ``control`` (not yet ramped, served by the old store over the same window), optionally with
  ``control_score``: the same model scored on the entity's *old-store* feature vector (the paired
  shadow, the only control at 100%). From these the gate computes DeLong intervals
  (:mod:`.stats`); ``label`` NULL is a prediction whose label has not arrived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from airflow_fsmigration.db import SCHEMA, ensure_schema

AUC = "auc"
PRECISION = "precision_at_threshold"
RAMPED = "ramped"
CONTROL = "control"
UNKNOWN_COHORT = "all"

MIGRATIONS: tuple[str, ...] = (
    f"""CREATE TABLE "{SCHEMA}".model_metrics (
        model text NOT NULL,
        metric text NOT NULL,
        value double precision,
        ts timestamptz NOT NULL,
        cohort text NOT NULL DEFAULT 'all'
    )""",
    f'CREATE INDEX model_metrics_model_metric_ts ON "{SCHEMA}".model_metrics (model, metric, ts)',
    f"""CREATE TABLE "{SCHEMA}".model_scores (
        model text NOT NULL,
        ts timestamptz NOT NULL,
        cohort text NOT NULL,
        label smallint,
        score double precision NOT NULL,
        control_score double precision
    )""",
    f'CREATE INDEX model_scores_model_ts ON "{SCHEMA}".model_scores (model, ts)',
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


def record_scores(
    conn: Any,
    model: str,
    cohort: str,
    rows: Iterable[tuple[datetime, int | None, float, float | None]],
) -> int:
    """Append labelled (or not yet labelled) predictions: ``(ts, label, score, control_score)``.

    ``cohort``: :data:`RAMPED` or :data:`CONTROL` (``serving.bucketing.routes_to_new`` at the
    prediction's ramp). Returns the rows written (one COPY).
    """
    ensure_metrics_schema(conn)
    n = 0
    with (
        conn.transaction(),
        conn.cursor().copy(
            f'COPY "{SCHEMA}".model_scores (model, ts, cohort, label, score, control_score) FROM STDIN'
        ) as copy,
    ):
        for ts, label, score, control in rows:
            copy.write_row((model, ts, cohort, label, score, control))
            n += 1
    return n


@dataclass
class CohortScores:
    """One model's labelled predictions of one cohort in a window (numpy arrays), and the unlabelled."""

    labels: np.ndarray
    scores: np.ndarray
    control: np.ndarray  # NaN where no paired shadow score was recorded
    unlabelled: int = 0

    @property
    def positives(self) -> int:
        return int(self.labels.sum())

    @property
    def negatives(self) -> int:
        return int(len(self.labels) - self.labels.sum())


def window_scores(
    conn: Any, models: list[str], start: datetime, end: datetime
) -> dict[tuple[str, str], CohortScores]:
    """(model, cohort) -> its predictions over [start, end)."""
    rows = conn.execute(
        f'SELECT model, cohort, label, score, control_score FROM "{SCHEMA}".model_scores'
        " WHERE model = ANY(%s) AND ts >= %s AND ts < %s",
        (models, start, end),
    ).fetchall()
    grouped: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for model, cohort, label, score, control in rows:
        grouped.setdefault((model, cohort), []).append((label, score, control))
    out: dict[tuple[str, str], CohortScores] = {}
    for key, items in grouped.items():
        labelled = [r for r in items if r[0] is not None]
        out[key] = CohortScores(
            labels=np.array([int(r[0]) for r in labelled], dtype=float),
            scores=np.array([float(r[1]) for r in labelled], dtype=float),
            control=np.array([np.nan if r[2] is None else float(r[2]) for r in labelled], dtype=float),
            unlabelled=len(items) - len(labelled),
        )
    return out
