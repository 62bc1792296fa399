"""The keep-warm decision: has the window after cutover passed with warmth verified every day?

A rollback during the warm window is only safe if the old store still holds fresh values, so
decommissioning waits until the plan's ``keep_warm`` window has ended and every day-sized bucket
of it holds a passing check whose day ended on a pass. Pure: the checks themselves (reading the
old stores) and their table live in :mod:`airflow_fsmigration.registry.keepwarm`, which reads the
rows and calls :func:`warm_window`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airflow_fsmigration.gates.check import FAIL, PASS, WAIT, GateCheck

DAY = timedelta(days=1)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class WarmWindowStatus:
    """Whether the keep-warm window of a group has passed with warmth verified every day."""

    group: str
    keep_warm: timedelta
    bucket: timedelta
    warm_since: datetime | None
    window_end: datetime | None
    now: datetime
    buckets: int = 0
    verified: int = 0
    unverified: tuple[tuple[datetime, datetime], ...] = ()
    failed_checks: int = 0

    @property
    def ended(self) -> bool:
        return self.window_end is not None and self.now >= self.window_end

    @property
    def passed(self) -> bool:
        return self.ended and self.buckets > 0 and self.verified == self.buckets

    def explain(self) -> str:
        if self.warm_since is None:
            return "the group has never entered the warm phase, so its keep-warm window has not started"
        assert self.window_end is not None
        parts = []
        if not self.ended:
            parts.append(
                f"the keep-warm window ({self.keep_warm} from {_iso(self.warm_since)}) ends at "
                f"{_iso(self.window_end)}, {self.window_end - self.now} from now"
            )
        missing = [(s, e) for s, e in self.unverified if s <= self.now]
        if missing:
            shown = ", ".join(f"[{_iso(s)}, {_iso(e)})" for s, e in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            parts.append(
                f"warmth was not verified in {len(missing)} of {self.buckets} day(s) of the window: {shown}{more} "
                "(each day needs a passing keep-warm check, and the day's last check must pass); "
                "the window cannot be shortened, so fix the old store's refresh and keep checking"
            )
        if not parts:
            return f"the keep-warm window passed with warmth verified in all {self.buckets} day(s)"
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "keep_warm_s": self.keep_warm.total_seconds(),
            "bucket_s": self.bucket.total_seconds(),
            "warm_since": _iso(self.warm_since),
            "window_end": _iso(self.window_end),
            "now": _iso(self.now),
            "buckets": self.buckets,
            "verified": self.verified,
            "unverified": [[_iso(s), _iso(e)] for s, e in self.unverified],
            "failed_checks": self.failed_checks,
            "passed": self.passed,
        }


def warm_window(
    group: str,
    keep_warm: timedelta,
    warm_since: datetime | None,
    checks: Iterable[tuple[datetime, bool]],
    now: datetime,
    *,
    bucket: timedelta | None = None,
) -> WarmWindowStatus:
    """Whether the ``keep_warm`` window from ``warm_since`` ended with warmth verified in every day.

    ``checks``: ``(checked_at, passed)`` of the group's keep-warm checks inside the window, in
    time order. The window is cut into day-sized buckets (``bucket``, default one day, never
    longer than the window; tests use seconds); a bucket is verified when it holds a passing
    check and its last check passed, so a store that went cold and stayed cold that day does not
    count. No ``warm_since`` (never entered warm): the window has not started.
    """
    size = bucket or DAY
    size = min(size, keep_warm) if keep_warm > timedelta(0) else size
    if warm_since is None:
        return WarmWindowStatus(group, keep_warm, size, None, None, now)
    end = warm_since + keep_warm
    n = max(1, math.ceil(keep_warm / size)) if size > timedelta(0) else 1
    any_pass = [False] * n
    last_pass = [False] * n
    seen = [False] * n
    failed = 0
    for checked_at, passed in checks:
        if checked_at < warm_since or checked_at >= end:
            continue
        i = min(n - 1, int((checked_at - warm_since) / size)) if size > timedelta(0) else 0
        seen[i] = True
        any_pass[i] = any_pass[i] or passed
        last_pass[i] = passed
        failed += 0 if passed else 1
    unverified = []
    verified = 0
    for i in range(n):
        if seen[i] and any_pass[i] and last_pass[i]:
            verified += 1
        else:
            unverified.append((warm_since + i * size, min(end, warm_since + (i + 1) * size)))
    return WarmWindowStatus(
        group=group,
        keep_warm=keep_warm,
        bucket=size,
        warm_since=warm_since,
        window_end=end,
        now=now,
        buckets=n,
        verified=verified,
        unverified=tuple(unverified),
        failed_checks=failed,
    )


def keep_warm_decision(check: Any, status: Any) -> GateCheck:
    """Pass once the window passed; fail when it ended unverified; otherwise wait.

    ``check``: the check just made (``summary()``, ``as_dict()``); ``status``: a window status
    (``passed``, ``ended``, ``explain()``, ``as_dict()``).
    """
    details = {"check": check.as_dict(), "window": status.as_dict()}
    if status.passed:
        return GateCheck(PASS, status.explain(), details)
    if status.ended:
        return GateCheck(FAIL, status.explain(), details)
    return GateCheck(WAIT, f"{check.summary()}; {status.explain()}", details)


@dataclass(frozen=True)
class DriftStatus:
    """The daily-difference drift test of keep-warm: has the new store's metric worsened?"""

    days: int
    total: float  # sum of the daily differences (positive: the new store is worse)
    bound: float  # the always-valid boundary the sum must exceed to call a drift
    breached: bool
    first_breach_day: int | None = None

    def explain(self) -> str:
        verdict = (
            "a confident slow degradation: roll back while the old store is warm"
            if self.breached
            else "no confident drift"
        )
        return (
            f"{self.days} day(s) of paired differences, cumulative {self.total:+.5f} vs boundary "
            f"{self.bound:.5f}: {verdict}"
        )


def drift_check(
    diffs: Iterable[float],
    variances: Iterable[float],
    *,
    alpha: float = 0.05,
    ref_days: float = 14.0,
    rho: float | None = None,
) -> DriftStatus:
    """A confidence-sequence test on the daily difference new - control (e.g. false-negative rates).

    Slow degradation ("3% more false negatives over three weeks") is invisible on any one day, so
    the test adds the daily differences up: under "no degradation" their sum ``S`` is a
    martingale with variance ``V`` (the sum of the daily variances, from each day's sample size),
    and Robbins' normal mixture bounds it at every day at once:
    ``S > sqrt((V + rho) log((V + rho) / (rho alpha^2)))`` happens with probability at most
    ``alpha`` over the whole window, however many days are checked. ``rho`` (fixed in advance)
    defaults to ``ref_days`` days of the first day's variance over 8: the test is sharpest about
    ``ref_days`` into keep-warm. Returns the first day the boundary was crossed, if any.
    """
    s = v = 0.0
    days = 0
    first: int | None = None
    bound = math.inf
    for d, var in zip(diffs, variances, strict=True):
        days += 1
        if rho is None:
            rho = max(var, 1e-12) * ref_days / 8.0
        s += d
        v += max(var, 0.0)
        bound = math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha**2)))
        if first is None and s > bound:
            first = days
    return DriftStatus(days=days, total=s, bound=bound, breached=first is not None, first_breach_day=first)
