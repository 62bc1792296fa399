"""Bake gates: after each ramp step, hold the plan's rollback triggers against what happened.

Two kinds of evidence, both compared with the plan's ``rollback_triggers`` of the group:

* model metrics (``fsmig.model_metrics``: model, metric, value, ts, cohort) of the models that use
  the group, AUC and precision at threshold, mean over the bake window vs the pre-ramp baseline,
  as a relative drop in percent;
* the router's serving stats (``airflow_fsmigration.serving.stats.read_window``): p99 of the new
  store vs the old one, and the new store's error rate.

Any breach is a ``fail`` (roll back). Otherwise anything missing (no metrics yet, labels not
arrived, too few requests, a store that did not answer) is ``inconclusive``: wait, then call a
person. A gate never passes on evidence it did not see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.db import SCHEMA, ensure_schema

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.registry")

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


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Breach:
    """One rollback trigger that fired: what was measured against which limit."""

    trigger: str
    observed: float
    threshold: float
    message: str
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    outcome: Outcome
    breaches: list[Breach] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """Why the gate could not decide (empty when it could)."""
        return list(self.details.get("missing", []))

    def summary(self) -> str:
        group = self.details.get("group", "?")
        if self.outcome is Outcome.FAIL:
            return f"bake of group '{group}' FAILED: " + "; ".join(b.message for b in self.breaches)
        if self.outcome is Outcome.INCONCLUSIVE:
            return f"bake of group '{group}' is INCONCLUSIVE (wait, then ask a person): " + "; ".join(
                self.missing
            )
        return f"bake of group '{group}' passed: every rollback trigger held"

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "breaches": [b.as_dict() for b in self.breaches],
            "details": self.details,
        }


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


def _window_means(
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


def evaluate_bake(
    plan: MigrationPlan,
    group: str,
    *,
    metrics_conn: Any,
    redis_client: Any,
    bake_start: datetime,
    bake_end: datetime,
    baseline_start: datetime,
    baseline_end: datetime,
    bake_cohort: str | None = None,
    baseline_cohort: str | None = None,
    min_requests: int = 100,
    min_metric_points: int = 1,
    read_stats: Callable[..., dict[str, Any]] | None = None,
) -> GateResult:
    """Evaluate the group's rollback triggers over the bake window against the pre-ramp baseline.

    :param metrics_conn: psycopg connection holding ``fsmig.model_metrics`` (plan connection
        ``model_metrics``).
    :param redis_client: the Redis the routers flush their stats to.
    :param bake_cohort: only metric rows of this cohort in the bake window (None: all cohorts).
    :param baseline_cohort: same for the baseline window.
    :param min_requests: fewer new-store reads than this in the window is inconclusive for p99.
    :param min_metric_points: fewer labelled metric points than this in a window is inconclusive.
    :param read_stats: override of ``serving.stats.read_window`` (failure injection in tests).
    """
    if group not in plan.groups:
        raise KeyError(
            f"group '{group}' is not in plan '{plan.name}': check the group name (fsmigrate status PLAN)"
        )
    g = plan.groups[group]
    triggers = plan.settings_for(group).rollback_triggers
    breaches: list[Breach] = []
    missing: list[str] = []
    details: dict[str, Any] = {
        "group": group,
        "bake_window": [bake_start.isoformat(), bake_end.isoformat()],
        "baseline_window": [baseline_start.isoformat(), baseline_end.isoformat()],
        "triggers": triggers.model_dump(),
    }

    # -- model metrics ----------------------------------------------------------------------
    models = list(g.models)
    metric_names = [AUC, PRECISION]
    model_details: dict[str, Any] = {}
    details["models"] = model_details
    if not models:
        details["models_note"] = "no models use this group: model metrics are not part of its gate"
    else:
        try:
            ensure_metrics_schema(metrics_conn)
            bake = _window_means(metrics_conn, models, metric_names, bake_start, bake_end, bake_cohort)
            base = _window_means(
                metrics_conn, models, metric_names, baseline_start, baseline_end, baseline_cohort
            )
        except Exception as exc:
            missing.append(
                f"model metrics could not be read (connection '{plan.connections.model_metrics}'): "
                f"{type(exc).__name__}: {exc}"
            )
            bake, base = {}, {}
            models = []
        for model in models:
            md: dict[str, Any] = {}
            model_details[model] = md
            for metric, limit in ((AUC, triggers.auc_drop_pct), (PRECISION, triggers.precision_drop_pct)):
                b_mean, b_n, b_all = bake.get((model, metric), (None, 0, 0))
                r_mean, r_n, _ = base.get((model, metric), (None, 0, 0))
                md[metric] = {
                    "bake": b_mean,
                    "bake_points": b_n,
                    "bake_pending_labels": b_all - b_n,
                    "baseline": r_mean,
                    "baseline_points": r_n,
                    "limit_drop_pct": limit,
                }
                if limit is None:
                    continue  # not a trigger for this plan; shown for information
                if b_n < min_metric_points or b_mean is None:
                    pending = f", {b_all - b_n} scored but not labelled yet" if b_all > b_n else ""
                    missing.append(
                        f"model {model}: {b_n} labelled {metric} point(s) in the bake window "
                        f"(need {min_metric_points}{pending}): labels have not arrived"
                    )
                    continue
                if r_n < min_metric_points or r_mean is None or r_mean <= 0:
                    missing.append(
                        f"model {model}: no usable pre-ramp {metric} baseline ({r_n} point(s)); "
                        "record baseline metrics before ramping"
                    )
                    continue
                drop = (r_mean - b_mean) / r_mean * 100.0
                md[metric]["drop_pct"] = drop
                if drop > limit:
                    breaches.append(
                        Breach(
                            trigger=f"{metric}_drop_pct",
                            observed=drop,
                            threshold=limit,
                            model=model,
                            message=(
                                f"model {model}: {metric} fell {drop:.3f}% ({r_mean:.5f} -> {b_mean:.5f}), "
                                f"over the {limit}% trigger"
                            ),
                        )
                    )

    # -- serving stats ----------------------------------------------------------------------
    serving: dict[str, Any] = {}
    details["serving"] = serving
    stats: dict[str, Any] | None = None
    baseline_stats: dict[str, Any] | None = None
    try:
        reader: Callable[..., dict[str, Any]]
        if read_stats is None:
            from airflow_fsmigration.serving.stats import read_window

            reader = read_window
        else:
            reader = read_stats
        stats = reader(redis_client, group, bake_start, bake_end)
        if stats["old"].count < min_requests:
            baseline_stats = reader(redis_client, group, baseline_start, baseline_end)
    except Exception as exc:
        missing.append(f"serving stats could not be read: {type(exc).__name__}: {exc}")
    if stats is not None:
        new = stats["new"]
        old = stats["old"]
        serving["new"] = _stats_dict(new)
        serving["old"] = _stats_dict(old)
        # Errors are evidence at any volume: one failed read in fifty is already a 2% error rate.
        if new.count > 0:
            rate = new.errors / new.count * 100.0
            serving["new_error_rate_pct"] = rate
            if rate > triggers.error_rate_pct:
                breaches.append(
                    Breach(
                        trigger="error_rate_pct",
                        observed=rate,
                        threshold=triggers.error_rate_pct,
                        message=(
                            f"new store error rate {rate:.3f}% ({new.errors} of {new.count} reads), "
                            f"over the {triggers.error_rate_pct}% trigger"
                        ),
                    )
                )
        if new.count < min_requests or new.p99_ms is None:
            missing.append(
                f"only {new.count} read(s) from the new store in the bake window (need {min_requests} for a p99)"
            )
        else:
            ref, ref_name = old, "bake window"
            if old.count < min_requests and baseline_stats is not None:
                ref, ref_name = baseline_stats["old"], "pre-ramp baseline"
                serving["old_baseline"] = _stats_dict(ref)
            if ref.count < min_requests or ref.p99_ms is None:
                missing.append(
                    f"only {ref.count} read(s) from the old store in the {ref_name} "
                    f"(need {min_requests} to compare p99)"
                )
            else:
                increase = new.p99_ms - ref.p99_ms
                serving["p99_increase_ms"] = increase
                serving["p99_reference"] = ref_name
                if increase > triggers.p99_latency_increase_ms:
                    breaches.append(
                        Breach(
                            trigger="p99_latency_increase_ms",
                            observed=increase,
                            threshold=triggers.p99_latency_increase_ms,
                            message=(
                                f"new store p99 {new.p99_ms:.2f} ms is {increase:.2f} ms above the old store's "
                                f"{ref.p99_ms:.2f} ms ({ref_name}), over the {triggers.p99_latency_increase_ms} ms trigger"
                            ),
                        )
                    )

    details["missing"] = missing
    if breaches:
        outcome = Outcome.FAIL
    elif missing:
        outcome = Outcome.INCONCLUSIVE
    else:
        outcome = Outcome.PASS
    result = GateResult(outcome=outcome, breaches=breaches, details=details)
    (log.info if outcome is Outcome.PASS else log.warning)("%s", result.summary())
    return result


def _stats_dict(st: Any) -> dict[str, Any]:
    if hasattr(st, "as_dict"):
        return dict(st.as_dict())
    return {k: getattr(st, k, None) for k in ("count", "errors", "p50_ms", "p99_ms")}
