"""Bake gate: after each ramp step, hold the plan's rollback triggers against what happened.

Concurrent control first (issue 16): the ramp itself gives a control, the entities still on the
old store, served over the same window, so time-of-day and drift hit both sides alike.

* model AUC (:mod:`.metrics` ``model_scores``: labelled predictions per cohort): the ramped
  cohort against its control over the bake window, paired on the same labels when the
  predictions carry the old-store shadow score (DeLong), else ramped vs not-ramped cohorts;
  the interval is a confidence sequence (:mod:`.stats`), so the sensor may check it every poll;
  the margin is the plan's ``auc_drop_pct`` of the control's AUC; fail only when the drop is
  above the margin with confidence, pass only when it is below, with at least the minimum
  evidence the margin needs (:func:`.stats.auc_min_positives`);
* serving latency (the routers' stats, ``read_stats``): the new store's reads against the old
  store's in the same window (the not-ramped entities), a Hodges-Lehmann shift and a p99
  increase with intervals against the plan's ``p99_latency_increase_ms`` tolerance;
* the new store's error rate, counting reads its open circuit breaker turned away as failed:
  any rate above the trigger fails (errors are evidence at any volume).

Before/after stays as the secondary check: model metrics without a cohort (``model_metrics``
rows, cohort ``'all'``) compare the bake window's mean with the pre-ramp baseline as a relative
drop; at 100% with no old-store reads in the window, latency is compared with the pre-ramp
window. Every decision (metric, cohort sizes, estimate, interval, margin, decision) is in
``details["decisions"]`` and in the reason. Anything missing (no metrics yet, labels not
arrived, too few requests, a store that did not answer) is ``inconclusive``: wait, then call a
person. A gate never passes on evidence it did not see, and :func:`bake_decision` passes only
once the whole bake window has elapsed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.gates.check import FAIL, PASS, WAIT, GateCheck
from airflow_fsmigration.gates.metrics import (
    AUC,
    PRECISION,
    ensure_metrics_schema,
    window_means,
    window_scores,
)
from airflow_fsmigration.gates.stats import DEFAULT_ALPHA, Decision
from airflow_fsmigration.gates.stats_gate import MetricDecision, auc_check, hist_sample, latency_check

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.gates")

__all__ = [
    "AUC",
    "PRECISION",
    "Breach",
    "GateResult",
    "Outcome",
    "bake_decision",
    "bake_windows",
    "evaluate_bake",
]


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
        lines = [d["line"] for d in self.details.get("decisions", [])]
        return f"bake of group '{group}' passed: every rollback trigger held" + (
            ": " + "; ".join(lines) if lines else ""
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "breaches": [b.as_dict() for b in self.breaches],
            "details": self.details,
        }


def evaluate_bake(
    plan: MigrationPlan,
    group: str,
    *,
    metrics_conn: Any,
    read_stats: Callable[[str, datetime, datetime], Mapping[str, Any]],
    bake_start: datetime,
    bake_end: datetime,
    baseline_start: datetime,
    baseline_end: datetime,
    bake_cohort: str | None = None,
    baseline_cohort: str | None = None,
    min_requests: int = 100,
    min_metric_points: int = 1,
    alpha: float = DEFAULT_ALPHA,
) -> GateResult:
    """Evaluate the group's rollback triggers over the bake window against the pre-ramp baseline.

    :param metrics_conn: psycopg connection holding ``fsmig.model_metrics`` (plan connection
        ``model_metrics``).
    :param read_stats: ``(group, start, end) -> {"old": stats, "new": stats}``, the routers' serving
        stats over a window (``functools.partial(serving.stats.read_window, redis_client)``); the
        gate takes them as input so that it does not depend on serving. An exception is
        "could not be read" (inconclusive), never a pass.
    :param bake_cohort: only metric rows of this cohort in the bake window (None: all cohorts).
    :param baseline_cohort: same for the baseline window.
    :param min_requests: fewer new-store reads than this in the window is inconclusive for p99.
    :param min_metric_points: fewer labelled metric points than this in a window is inconclusive.
    :param alpha: error rate of the always-valid intervals (they hold at every check at once).
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

    decisions: list[MetricDecision] = []
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
            bake = window_means(metrics_conn, models, metric_names, bake_start, bake_end, bake_cohort)
            base = window_means(
                metrics_conn, models, metric_names, baseline_start, baseline_end, baseline_cohort
            )
        except Exception as exc:
            missing.append(
                f"model metrics could not be read (connection '{plan.connections.model_metrics}'): "
                f"{type(exc).__name__}: {exc}"
            )
            bake, base = {}, {}
            models = []
        try:
            scores = window_scores(metrics_conn, models, bake_start, bake_end) if models else {}
        except Exception as exc:
            missing.append(f"model scores could not be read: {type(exc).__name__}: {exc}")
            scores = {}
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
                if metric == AUC:
                    cohorts = {c: v for (m, c), v in scores.items() if m == model}
                    dec = auc_check(model, cohorts, limit, alpha=alpha) if cohorts else None
                    if dec is not None:
                        _concurrent(
                            md[metric], dec, model, limit, b_mean, r_mean, decisions, breaches, missing
                        )
                        continue
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
        stats = dict(read_stats(group, bake_start, bake_end))
        if stats["old"].count < min_requests:
            baseline_stats = dict(read_stats(group, baseline_start, baseline_end))
    except Exception as exc:
        missing.append(f"serving stats could not be read: {type(exc).__name__}: {exc}")
    if stats is not None:
        new = stats["new"]
        old = stats["old"]
        serving["new"] = _stats_dict(new)
        serving["old"] = _stats_dict(old)
        # Errors are evidence at any volume: one failed read in fifty is already a 2% error rate.
        # A read routed to the new store that its open circuit breaker turned away (served by the
        # old store) is a read the new store failed to serve: without it, a store that broke an
        # hour into a 48 h bake would pass on the reads from before the breaker opened.
        rejected = int(getattr(new, "rejected", 0) or 0)
        routed = new.count + rejected
        if routed > 0:
            failed = new.errors + rejected
            rate = failed / routed * 100.0
            serving["new_error_rate_pct"] = rate
            serving["new_rejected"] = rejected
            if rate > triggers.error_rate_pct:
                turned = f", {rejected} turned away by its open circuit breaker" if rejected else ""
                breaches.append(
                    Breach(
                        trigger="error_rate_pct",
                        observed=rate,
                        threshold=triggers.error_rate_pct,
                        message=(
                            f"new store error rate {rate:.3f}% ({new.errors} failed{turned}, of {routed} "
                            f"reads routed to it), over the {triggers.error_rate_pct}% trigger"
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
                new_s, ref_s = hist_sample(new), hist_sample(ref)
                if new_s is not None and ref_s is not None:
                    dec = latency_check(
                        new_s,
                        ref_s,
                        triggers.p99_latency_increase_ms,
                        reference=ref_name,
                        min_requests=min_requests,
                        alpha=alpha,
                    )
                    decisions.append(dec)
                    serving["latency"] = dec.as_dict()
                    if dec.decision is Decision.FAIL:
                        breaches.append(
                            Breach(
                                trigger="p99_latency_increase_ms",
                                observed=increase,
                                threshold=triggers.p99_latency_increase_ms,
                                message=(
                                    f"new store p99 {new.p99_ms:.2f} ms is {increase:.2f} ms above the old store's "
                                    f"{ref.p99_ms:.2f} ms ({ref_name}): {dec.line()}"
                                ),
                            )
                        )
                    elif dec.decision is Decision.INCONCLUSIVE:
                        missing.append(dec.line())
                elif increase > triggers.p99_latency_increase_ms:
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
    details["decisions"] = [d.as_dict() for d in decisions]
    if breaches:
        outcome = Outcome.FAIL
    elif missing:
        outcome = Outcome.INCONCLUSIVE
    else:
        outcome = Outcome.PASS
    result = GateResult(outcome=outcome, breaches=breaches, details=details)
    (log.info if outcome is Outcome.PASS else log.warning)("%s", result.summary())
    return result


def _concurrent(
    md: dict[str, Any],
    dec: MetricDecision,
    model: str,
    limit: float,
    b_mean: float | None,
    r_mean: float | None,
    decisions: list[MetricDecision],
    breaches: list[Breach],
    missing: list[str],
) -> None:
    """Record a concurrent-control AUC decision; before/after stays beside it, not deciding."""
    md["concurrent"] = dec.as_dict()
    md["decided_by"] = "concurrent control"
    if b_mean is not None and r_mean:
        md["drop_pct"] = (r_mean - b_mean) / r_mean * 100.0
        md["before_after_note"] = "secondary check (time changes metrics too): shown, not deciding"
    decisions.append(dec)
    if dec.decision is Decision.FAIL:
        ref = float(dec.extra.get("auc_control") or 1.0)
        breaches.append(
            Breach(
                trigger="auc_drop_pct",
                observed=dec.interval.estimate / ref * 100.0 if dec.interval else math.nan,
                threshold=limit,
                model=model,
                message=dec.line(),
            )
        )
    elif dec.decision is Decision.INCONCLUSIVE:
        missing.append(dec.line())


def _stats_dict(st: Any) -> dict[str, Any]:
    if hasattr(st, "as_dict"):
        return dict(st.as_dict())
    return {k: getattr(st, k, None) for k in ("count", "errors", "p50_ms", "p99_ms")}


def parse_time(value: str | datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def bake_windows(plan: MigrationPlan, group: str, registry: Any, step_pct: float) -> dict[str, str]:
    """The bake window of a ramp step and the pre-ramp baseline window, from the audit log.

    The bake starts when the registry recorded the step; the baseline is the ``bake``-long window
    just before the group last left ``shadow`` (metrics with no new-store traffic at all).
    ``registry``: anything with ``state(group)`` and ``audit(group)`` (a ``Registry``).
    """
    bake = plan.settings_for(group).bake
    state = registry.state(group)
    if float(state.ramp_pct) != float(step_pct):
        raise RuntimeError(
            f"group {group} is at {state.describe()}, not at the {step_pct:g}% step this bake watches: "
            "the ramp did not happen or another writer changed it; check the audit log"
        )
    bake_start = state.updated_at
    left_shadow = None
    for entry in reversed(registry.audit(group)):
        if entry.from_phase is not None and entry.from_phase.value == "shadow":
            left_shadow = entry.at
            break
    baseline_end = left_shadow or bake_start
    return {
        "bake_start": bake_start.isoformat(),
        "bake_end": (bake_start + bake).isoformat(),
        "baseline_start": (baseline_end - bake).isoformat(),
        "baseline_end": baseline_end.isoformat(),
    }


def bake_decision(
    result: GateResult,
    group: str,
    windows: Mapping[str, str],
    now: datetime,
    *,
    inconclusive_grace: float = 0.0,
) -> GateCheck:
    """Turn one evaluation of the bake so far into pass, fail or wait.

    A breach fails at once (no reason to keep traffic on a bad store); a pass only counts once the
    whole bake window has elapsed; an inconclusive gate waits, and fails ``inconclusive_grace``
    seconds after the window ended (labels never arrived: a person must look).
    """
    end = parse_time(windows["bake_end"])
    assert end is not None
    details = {**result.as_dict(), "windows": dict(windows), "checked_at": now.isoformat()}
    if result.outcome is Outcome.FAIL:
        return GateCheck(FAIL, result.summary(), details)
    if now < end:
        return GateCheck(
            WAIT, f"bake of {group} runs until {end.isoformat()} ({result.outcome.value} so far)", details
        )
    if result.outcome is Outcome.PASS:
        return GateCheck(PASS, result.summary(), details)
    if (now - end).total_seconds() >= inconclusive_grace:
        return GateCheck(FAIL, result.summary() + " (grace period over: a person must decide)", details)
    return GateCheck(WAIT, result.summary(), details)


def sequential_bake_check(
    check: Callable[[Mapping[str, str], datetime], GateCheck],
    windows: Mapping[str, str],
    now: datetime,
    *,
    inconclusive_grace: float = 0.0,
) -> GateCheck:
    """One bake check; after the window, an inconclusive bake keeps gathering evidence.

    ``check(windows, now)`` is one evaluation (``triggers.checks.check_bake``). The bake window
    is the bake's minimum length, not a cap on its evidence: during the grace period after it,
    the gate also evaluates ``[bake_start, now)`` and takes that answer when it decides. The
    intervals are confidence sequences, valid at whatever time the gate stops, so looking past
    the window does not raise the error rate; a bake that is still inconclusive when the grace
    is over fails as before (a person must decide).
    """
    first = check(windows, now)
    end = parse_time(windows["bake_end"])
    assert end is not None
    outcome = first.details.get("outcome")
    late = (now - end).total_seconds()
    if outcome != Outcome.INCONCLUSIVE.value or late < 0 or late >= inconclusive_grace:
        return first
    longer = check({**windows, "bake_end": now.isoformat()}, now)
    if longer.status in (PASS, FAIL):
        longer.details["extended_to"] = now.isoformat()
        longer.reason += f" (evidence up to {late:.1f}s after the {windows['bake_end']} window end)"
        longer.details["windows"] = dict(windows)
        return longer
    return first
