"""One bake metric judged on concurrent evidence: what the bake gate prints and decides per metric.

:func:`auc_check` compares the ramped cohort's AUC with its control over the same window:
paired (DeLong on the same labels) when the predictions carry the paired shadow score, else
unpaired (ramped cohort vs the not-yet-ramped one). :func:`latency_check` compares the new
store's per-read latencies with the old store's in the same window (Hodges-Lehmann shift and
p99 increase, each against the plan's tolerance). Each returns a :class:`MetricDecision` that
names the metric, the cohort sizes, the estimate, the interval, the margin, the minimum
evidence and the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from airflow_fsmigration.gates.metrics import CONTROL, RAMPED, CohortScores
from airflow_fsmigration.gates.stats import (
    DEFAULT_ALPHA,
    Decision,
    Interval,
    auc_min_positives,
    decide,
    paired_auc_drop,
    unpaired_auc_drop,
)
from airflow_fsmigration.gates.stats_rank import Weighted, hodges_lehmann, quantile_increase

__all__ = ["MetricDecision", "auc_check", "hist_sample", "latency_check"]


@dataclass
class MetricDecision:
    """A metric's verdict with everything a person needs to check it."""

    metric: str
    decision: Decision
    method: str
    margin: float
    unit: str
    cohorts: dict[str, dict[str, int]]
    interval: Interval | None = None
    min_evidence: str = ""
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        sizes = ", ".join(
            f"{c} " + "/".join(f"{v} {k}" for k, v in s.items()) for c, s in self.cohorts.items()
        )
        if self.interval is not None and math.isfinite(self.interval.estimate):
            iv = self.interval
            shown = f"{iv.estimate:.4g} {self.unit} [{iv.lo:.4g}, {iv.hi:.4g}]"
        else:
            shown = "no estimate"
        text = f"{self.metric}: {shown} vs margin {self.margin:.4g} {self.unit} ({self.method}; {sizes}): {self.decision.value}"
        return text + (f" -- {self.why}" if self.why else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "decision": self.decision.value,
            "method": self.method,
            "margin": self.margin,
            "unit": self.unit,
            "cohorts": self.cohorts,
            "estimate": None if self.interval is None else _num(self.interval.estimate),
            "interval": None if self.interval is None else [_num(self.interval.lo), _num(self.interval.hi)],
            "min_evidence": self.min_evidence,
            "why": self.why,
            "line": self.line(),
            **self.extra,
        }


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _sizes(c: CohortScores) -> dict[str, int]:
    return {"labelled": len(c.labels), "positives": c.positives, "unlabelled": c.unlabelled}


def auc_check(
    model: str,
    scores: dict[str, CohortScores],
    limit_pct: float,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> MetricDecision | None:
    """AUC drop of the ramped cohort against its concurrent control; None without any scores.

    The margin is ``limit_pct`` of the control's AUC (the plan's relative trigger). Paired when
    at least the minimum evidence carries a control score; else ramped vs control cohorts.
    """
    ramped = scores.get(RAMPED)
    control = scores.get(CONTROL)
    if ramped is None and control is None:
        return None
    name = f"model {model}: auc drop"
    cohorts = {k: _sizes(v) for k, v in ((RAMPED, ramped), (CONTROL, control)) if v is not None}
    if ramped is None or len(ramped.labels) == 0:
        pending = f" ({ramped.unlabelled} scored, labels not arrived)" if ramped and ramped.unlabelled else ""
        return MetricDecision(
            name,
            Decision.INCONCLUSIVE,
            "none",
            math.nan,
            "AUC",
            cohorts,
            why=f"no labelled ramped predictions{pending}",
        )
    has_pair = ~np.isnan(ramped.control)
    pair = CohortScores(ramped.labels[has_pair], ramped.scores[has_pair], ramped.control[has_pair])
    if pair.positives >= 2 and pair.negatives >= 2:
        interval, a_c, a_r = paired_auc_drop(
            pair.labels, pair.control, pair.scores, relative_margin=limit_pct / 100.0, alpha=alpha
        )
        ref = a_c
        margin = limit_pct / 100.0 * ref
        need = auc_min_positives(ref, margin, pair.negatives / max(pair.positives, 1))
        cohorts["paired"] = _sizes(pair)
        enough = pair.positives >= need and pair.negatives >= need
        method = "paired shadow, DeLong"
    elif (
        control is not None
        and min(control.positives, control.negatives, ramped.positives, ramped.negatives) >= 2
    ):
        interval, a_c, a_r = unpaired_auc_drop(
            control.labels,
            control.scores,
            ramped.labels,
            ramped.scores,
            relative_margin=limit_pct / 100.0,
            alpha=alpha,
        )
        ref = a_c
        margin = limit_pct / 100.0 * ref
        need = max(
            auc_min_positives(ref, margin, c.negatives / max(c.positives, 1)) for c in (ramped, control)
        )
        enough = min(ramped.positives, control.positives, ramped.negatives, control.negatives) >= need
        method = "ramped vs control cohort, DeLong"
    else:
        return MetricDecision(
            name,
            Decision.INCONCLUSIVE,
            "none",
            math.nan,
            "AUC",
            cohorts,
            why="too few labelled positives and negatives in the ramped cohort and its control",
        )
    decision = decide(interval, margin)
    why = ""
    min_ev = f"{need} labelled positives and negatives per cohort (margin {margin:.4g} = {limit_pct:g}% of {ref:.4f})"
    if not enough:
        decision = Decision.INCONCLUSIVE
        why = f"below the minimum evidence: need {min_ev}"
    elif decision is Decision.INCONCLUSIVE:
        why = "the interval straddles the margin: more labels needed"
    return MetricDecision(
        name,
        decision,
        method,
        margin,
        "AUC",
        cohorts,
        interval,
        min_evidence=min_ev,
        why=why,
        extra={"auc_control": a_c, "auc_ramped": a_r, "limit_pct": limit_pct},
    )


def hist_sample(st: Any) -> Weighted | None:
    """(values in ms, counts) of a backend's merged HDR histogram, or None when it has none."""
    h = getattr(st, "histogram", None)
    if h is None or not h.get_total_count():
        return None
    vals, counts = [], []
    for item in h.get_recorded_iterator():
        vals.append(item.value_iterated_to / 1000.0)
        counts.append(item.count_added_in_this_iter_step)
    return np.asarray(vals, dtype=float), np.asarray(counts, dtype=float)


def latency_check(
    new: Weighted,
    old: Weighted,
    tolerance_ms: float,
    *,
    reference: str,
    min_requests: int,
    alpha: float = DEFAULT_ALPHA,
) -> MetricDecision:
    """New-store latency against the old store's: a breach only with confidence.

    Fails when the Hodges-Lehmann shift or the p99 increase is above ``tolerance_ms`` with
    confidence; passes when the shift's interval is below it and the p99 increase is within it;
    a p99 over the tolerance without confidence is inconclusive (never a pass).
    """
    shift = hodges_lehmann(new, old, alpha=alpha / 2, ref_n=min_requests)
    p99 = quantile_increase(new, old, 0.99, alpha=alpha / 2, ref_n=min_requests)
    cohorts = {
        "ramped (new store)": {"reads": int(new[1].sum())},
        f"control (old store, {reference})": {"reads": int(old[1].sum())},
    }
    d_shift, d_p99 = decide(shift, tolerance_ms), decide(p99, tolerance_ms)
    why = ""
    if Decision.FAIL in (d_shift, d_p99):
        decision = Decision.FAIL
        why = (
            "p99 increase above the tolerance with confidence"
            if d_p99 is Decision.FAIL
            else ("the whole latency distribution shifted above the tolerance with confidence")
        )
    elif d_shift is Decision.PASS and p99.estimate <= tolerance_ms:
        decision = Decision.PASS
    else:
        decision = Decision.INCONCLUSIVE
        why = (
            f"p99 +{p99.estimate:.2f} ms is over the {tolerance_ms:g} ms band but not with confidence"
            if p99.estimate > tolerance_ms
            else "the shift's interval reaches the tolerance: more reads needed"
        )
    return MetricDecision(
        "new store latency shift",
        decision,
        "Hodges-Lehmann shift, Mann-Whitney confidence sequence; p99 by order statistics",
        tolerance_ms,
        "ms",
        cohorts,
        shift,
        min_evidence=f"{min_requests} reads per cohort",
        why=why,
        extra={
            "p99_increase": {"estimate": _num(p99.estimate), "interval": [_num(p99.lo), _num(p99.hi)]},
            "p99_decision": d_p99.value,
            "shift_decision": d_shift.value,
        },
    )
