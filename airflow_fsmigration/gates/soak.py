"""The shadow soak decision: has a group been green long enough, on evidence that counts?

Pure decision over a series of recorded comparisons (anything with ``logical_time``,
``verdict``, ``shard`` and ``recorded_at``, such as :class:`~airflow_fsmigration.compare.results.ShadowRun`);
reading the series and the registry's audit log is the caller's job, so this module imports
nothing from the rest of the package and the compare, registry and trigger layers can all use it.

Three rules make a green soak one that was earned:

* only comparisons after the group last entered ``shadow`` count (a rollback resets the soak; a
  group that is rolled back and has not re-entered shadow has no soak at all);
* a logical time is green only when every shard of it recorded a pass: a shard that could not
  read its store records nothing, so a missing shard makes that time inconclusive, not green;
* a hole longer than ``max_gap`` between passing times, or since the last one, breaks the streak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_RANK = {FAIL: 2, INCONCLUSIVE: 1, PASS: 0}


class Run(Protocol):
    """What the soak reads of one recorded comparison."""

    @property
    def logical_time(self) -> datetime: ...

    @property
    def verdict(self) -> str: ...

    @property
    def shard(self) -> str | None: ...

    @property
    def recorded_at(self) -> datetime | None: ...


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
    counted_since: datetime | None = None
    incomplete_times: int = 0

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
            "counted_since": iso(self.counted_since),
            "incomplete_times": self.incomplete_times,
        }


def _shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N); anything unreadable -> (-1, 0), which never completes a time."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        return (-1, 0)
    return (k, n) if 0 <= k < n else (-1, 0)


def time_verdicts(runs: Iterable[Run]) -> list[tuple[datetime, str, str | None]]:
    """One verdict per logical time, in time order: ``(time, verdict, why it is not a pass)``.

    Runs at one logical time are the shards of one comparison (or retries): the worst recorded
    verdict wins, and a time whose runs are all passes is still inconclusive unless they cover
    every shard (an unsharded run covers all; ``K/N`` runs need every K of one N).
    """
    by_time: dict[datetime, list[Run]] = {}
    for run in runs:
        by_time.setdefault(run.logical_time, []).append(run)
    out: list[tuple[datetime, str, str | None]] = []
    for t in sorted(by_time):
        group = by_time[t]
        worst = max((r.verdict for r in group), key=lambda v: _RANK.get(v, 1))
        if worst not in _RANK:
            worst = INCONCLUSIVE
        if worst != PASS:
            out.append((t, worst, f"a run at this time was {worst}"))
            continue
        parts = [_shard(r.shard) for r in group]
        if any(p is None for p in parts):
            out.append((t, PASS, None))
            continue
        seen: dict[int, set[int]] = {}
        for p in parts:
            assert p is not None
            seen.setdefault(p[1], set()).add(p[0])
        if any(n > 0 and ks == set(range(n)) for n, ks in seen.items()):
            out.append((t, PASS, None))
            continue
        n, ks = max(seen.items(), key=lambda item: len(item[1]))
        lacking = sorted(set(range(n)) - ks) if n > 0 else []
        shown = ", ".join(f"{k}/{n}" for k in lacking[:5]) or "unreadable shard names"
        out.append((t, INCONCLUSIVE, f"shard(s) {shown} recorded no result"))
    return out


def soak_from_runs(
    group: str,
    runs: list[Any],
    required: timedelta,
    *,
    now: datetime | None = None,
    max_gap: timedelta | None = None,
    since: datetime | None = None,
    rolled_back_at: datetime | None = None,
) -> SoakStatus:
    """The soak answer from a series: consecutive passing times covering ``required``, no fail since.

    :param since: when the group last entered ``shadow`` (from the registry's audit log); runs
        with a logical time or a recording time before it do not count. None: the whole series
        (a results store used without a registry).
    :param rolled_back_at: set when the group's newest phase change is a rollback it has not yet
        left for ``shadow``: there is no soak until it re-enters shadow.

    An inconclusive time (including one with a missing shard) neither counts as green nor resets
    the streak, but two passing times further apart than ``max_gap`` (default ``required / 7``,
    i.e. two days for a 14-day soak) break it: a window nobody checked is not green. The streak
    is also stale if the last pass is more than ``max_gap`` before ``now``.
    """
    now = now or datetime.now(UTC)
    gap = max_gap if max_gap is not None else required / 7
    counted = [r for r in runs if since is None or _at_or_after(r, since)]
    points = [(t, v, why) for t, v, why in time_verdicts(counted) if t <= now]
    last_run_at, last_verdict = (points[-1][0], points[-1][1]) if points else (None, None)
    fails = [t for t, v, _ in points if v == FAIL]
    last_fail = fails[-1] if fails else None
    incomplete = sum(1 for _, v, why in points if v == INCONCLUSIVE and why and why.startswith("shard"))
    streak: list[datetime] = []
    if rolled_back_at is None:
        for t, v, _ in points:
            if last_fail is not None and t <= last_fail:
                continue
            if v != PASS:
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
            counted_since=rolled_back_at or since,
            incomplete_times=incomplete,
        )

    if rolled_back_at is not None:
        return status(
            timedelta(0),
            False,
            f"the group was rolled back at {rolled_back_at.isoformat()}: return it to shadow, "
            "then it needs a fresh soak (comparisons from before do not count)",
        )
    after = f" since the group entered shadow at {since.isoformat()}" if since is not None else ""
    if not streak:
        if last_fail:
            why = f"no passing shadow run since the failure at {last_fail.isoformat()}"
        else:
            why = "no passing shadow run" + (after or " yet")
        if incomplete:
            why += f" ({incomplete} time(s) inconclusive: a shard recorded no result)"
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
            green_for,
            True,
            f"green for {green_for} over {len(streak)} passing runs{after} (needs {required})",
        )
    return status(
        green_for,
        False,
        f"green for {green_for} over {len(streak)} passing runs{after}; {required - green_for} more needed",
    )


def _at_or_after(run: Any, since: datetime) -> bool:
    """Whether ``run`` compared the stores as of, and was recorded, after the group entered shadow.

    Both times must be after ``since``: an old logical time recorded late is no fresh evidence,
    and neither is a comparison recorded before the rollback. ``recorded_at`` is written with
    ``clock_timestamp()``, the clock of the registry's audit log, never ``now()``, which is the
    transaction's start and which the demo's frozen event clock replaces.
    """
    recorded = getattr(run, "recorded_at", None)
    return bool(run.logical_time >= since and (recorded is None or recorded >= since))
