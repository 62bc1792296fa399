"""The bake gate's statistics: intervals, non-inferiority decisions and always-valid bounds.

Plain core (numpy and the standard library; no Airflow, no scipy at run time). Everything here
turns evidence into an :class:`Interval` on a *drop* (or an increase: positive is always worse)
and :func:`decide` compares it with the plan's margin:

* ``fail`` when the whole interval lies above the margin (a breach, with confidence);
* ``pass`` when the whole interval lies below it (non-inferiority shown);
* ``inconclusive`` otherwise, and whenever the evidence is below the minimum the margin needs.
  Inconclusive never promotes.

Why always-valid: a bake is checked every few minutes for 48 h. A fixed 95% interval looked at
50 times fails a healthy bake far more often than 5% of the time, so the gate's intervals are
*confidence sequences* (Robbins' normal mixture, Howard et al. 2021): with probability 1 - alpha
they hold at every check at once, so checking often costs width, not error rate. See
``docs/bake_statistics.md`` for the methods and the simulated error rates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "Decision",
    "Interval",
    "auc",
    "auc_min_positives",
    "cs_multiplier",
    "decide",
    "delong",
    "hanley_mcneil_var",
    "mixture_rho",
    "newcombe_diff",
    "paired_auc_drop",
    "unpaired_auc_drop",
    "wilson",
    "z_two_sided",
]

DEFAULT_ALPHA = 0.05


class Decision(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Interval:
    """An estimate of a drop (positive: worse) with its interval and how it was computed."""

    estimate: float
    lo: float
    hi: float
    method: str
    se: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self, digits: int = 4) -> str:
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def decide(interval: Interval | None, margin: float) -> Decision:
    """Non-inferiority: fail above the margin with confidence, pass below it, else inconclusive."""
    if interval is None or not math.isfinite(interval.lo) or not math.isfinite(interval.hi):
        return Decision.INCONCLUSIVE
    if interval.lo > margin:
        return Decision.FAIL
    if interval.hi < margin:
        return Decision.PASS
    return Decision.INCONCLUSIVE


def z_two_sided(alpha: float = DEFAULT_ALPHA) -> float:
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


# -- confidence sequences ------------------------------------------------------------------------


def cs_multiplier(info: float, rho: float, alpha: float = DEFAULT_ALPHA) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence, in standard errors.

    For an asymptotically normal estimate with information ``info`` (1 / variance), the
    interval ``estimate +- cs_multiplier / sqrt(info)`` holds at every information level at once
    with probability ``1 - alpha`` (Robbins' normal mixture with mixing precision ``rho``:
    ``|S| < sqrt((I + rho) log((I + rho) / (rho alpha^2)))`` in information units). About 3.0 at
    ``info = 8 rho`` for alpha 0.05 (a fixed 95% interval is 1.96), growing like
    ``sqrt(log info)`` beyond.
    """
    if info <= 0 or rho <= 0:
        return math.inf
    return math.sqrt((1.0 + rho / info) * math.log((1.0 + info / rho) / alpha**2))


def mixture_rho(margin: float, alpha: float = DEFAULT_ALPHA) -> float:
    """Mixing precision fixed in advance from the margin: tightest where the half-width is margin/2.

    The CS is narrowest (relative to a fixed interval) near ``info = 8 rho``; at that point its
    half-width is about 3.0 / sqrt(info). Setting that to ``margin / 2`` puts the sharpest
    decisions where they matter: a true drop of zero shows as "below the margin".
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    target_info = (2.0 * cs_multiplier(8.0, 1.0, alpha) / margin) ** 2
    return target_info / 8.0


def normal_cs(estimate: float, se: float, margin: float, method: str, alpha: float) -> Interval:
    """An always-valid interval around an asymptotically normal estimate."""
    if not math.isfinite(se) or se < 0:
        return Interval(estimate, -math.inf, math.inf, method, se)
    if se == 0.0:
        return Interval(estimate, estimate, estimate, method, se)
    info = 1.0 / se**2
    half = cs_multiplier(info, mixture_rho(margin, alpha), alpha) * se
    return Interval(estimate, estimate - half, estimate + half, method, se)


# -- AUC: Mann-Whitney and DeLong ----------------------------------------------------------------


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: each positive's share of negatives below it, and back.

    ``v10[i] = mean_j psi(pos_i, neg_j)``, ``v01[j] = mean_i psi(pos_i, neg_j)`` with
    ``psi = 1`` if pos > neg, ``1/2`` on a tie, else 0 (computed with sorted searches,
    O(n log n), as in Sun & Xu 2014).
    """
    # Sorted needles make the searches cache-friendly (several times faster on large samples).
    op, on = np.argsort(pos, kind="stable"), np.argsort(neg, kind="stable")
    sp, sn = pos[op], neg[on]
    v10 = np.empty(len(pos))
    v10[op] = (np.searchsorted(sn, sp, side="left") + np.searchsorted(sn, sp, side="right")) / (
        2.0 * len(neg)
    )
    v01 = np.empty(len(neg))
    above = 2 * len(pos) - np.searchsorted(sp, sn, side="right") - np.searchsorted(sp, sn, side="left")
    v01[on] = above / (2.0 * len(pos))
    return v10, v01


def auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney probability that a positive outranks a negative)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs at least one positive and one negative label")
    v10, _ = _placements(pos, neg)
    return float(v10.mean())


def delong(
    labels: Sequence[int] | np.ndarray, *scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of one or more scores on the same labels and DeLong's covariance matrix (DeLong 1988).

    ``S = S10 / m + S01 / n`` with ``S10``, ``S01`` the sample covariances of the structural
    components over the ``m`` positives and the ``n`` negatives.
    """
    y = np.asarray(labels).astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives (got {m} and {n})")
    v10s, v01s, aucs = [], [], []
    for sc in scores:
        s = np.asarray(sc, dtype=float)
        v10, v01 = _placements(s[y], s[~y])
        v10s.append(v10)
        v01s.append(v01)
        aucs.append(v10.mean())
    s10 = np.atleast_2d(np.cov(np.vstack(v10s)))
    s01 = np.atleast_2d(np.cov(np.vstack(v01s)))
    return np.asarray(aucs), s10 / m + s01 / n


def paired_auc_drop(
    labels: Sequence[int] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    treated: Sequence[float] | np.ndarray,
    *,
    margin: float = math.nan,
    relative_margin: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = True,
) -> tuple[Interval, float, float]:
    """AUC(control) - AUC(treated) on the same labels (paired shadow scores), DeLong's variance.

    Returns the interval on the drop and both AUCs. ``sequential=False`` gives the fixed-sample
    ``1 - alpha`` interval (for one look only). ``relative_margin``: the margin as a fraction of
    the control's AUC (the confidence sequence is tuned to the margin).
    """
    aucs, cov = delong(labels, control, treated)
    if relative_margin is not None:
        margin = relative_margin * float(aucs[0])
    drop = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    return _interval(drop, se, margin, "DeLong paired", alpha, sequential), float(aucs[0]), float(aucs[1])


def unpaired_auc_drop(
    control_labels: Sequence[int] | np.ndarray,
    control_scores: Sequence[float] | np.ndarray,
    treated_labels: Sequence[int] | np.ndarray,
    treated_scores: Sequence[float] | np.ndarray,
    *,
    margin: float = math.nan,
    relative_margin: float | None = None,
    alpha: float = DEFAULT_ALPHA,
    sequential: bool = True,
) -> tuple[Interval, float, float]:
    """AUC(control cohort) - AUC(treated cohort), independent cohorts: DeLong variances add."""
    a_c, v_c = delong(control_labels, control_scores)
    a_t, v_t = delong(treated_labels, treated_scores)
    if relative_margin is not None:
        margin = relative_margin * float(a_c[0])
    drop = float(a_c[0] - a_t[0])
    se = math.sqrt(max(float(v_c[0, 0] + v_t[0, 0]), 0.0))
    return _interval(drop, se, margin, "DeLong unpaired", alpha, sequential), float(a_c[0]), float(a_t[0])


def _interval(est: float, se: float, margin: float, method: str, alpha: float, sequential: bool) -> Interval:
    if sequential:
        return normal_cs(est, se, margin, method + ", confidence sequence", alpha)
    z = z_two_sided(alpha)
    return Interval(est, est - z * se, est + z * se, method, se)


def hanley_mcneil_var(a: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil's (1982) variance of an AUC ``a`` from ``n_pos`` positives, ``n_neg`` negatives."""
    q1 = a / (2.0 - a)
    q2 = 2.0 * a * a / (1.0 + a)
    return (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)


def auc_min_positives(a: float, margin: float, neg_per_pos: float, *, floor: int = 20) -> int:
    """Labelled positives needed before an AUC gate may decide, derived from the margin.

    The smallest number of positives (with ``neg_per_pos`` negatives each) at which Hanley &
    McNeil's standard error of one cohort's AUC is no larger than the margin: below it, the
    DeLong variance itself is too rough to trust an interval of the margin's size.
    """
    a = min(max(a, 0.5), 0.999)
    ratio = max(neg_per_pos, 1e-6)
    n = floor
    while n < 10**8 and hanley_mcneil_var(a, n, max(2, math.ceil(n * ratio))) > margin**2:
        n = int(n * 1.1) + 1
    lo = max(floor, int(n / 1.1) - 1)
    while lo < n and hanley_mcneil_var(a, lo, max(2, math.ceil(lo * ratio))) > margin**2:
        lo += 1
    return max(floor, lo)


# -- proportions ----------------------------------------------------------------------------------


def wilson(k: int, n: int, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (two-sided ``1 - alpha``)."""
    if n <= 0:
        return 0.0, 1.0
    z = z_two_sided(alpha)
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, alpha: float = DEFAULT_ALPHA) -> Interval:
    """``p1 - p2`` with Newcombe's hybrid score interval (method 10, from two Wilson intervals)."""
    if n1 <= 0 or n2 <= 0:
        return Interval(math.nan, -1.0, 1.0, "Newcombe")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, alpha)
    l2, u2 = wilson(k2, n2, alpha)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(d, lo, hi, "Newcombe hybrid score")
