"""Retention audit: do the raw events still cover the window a backfill needs?

A backfill of [start, end] recomputes every feature as of each time in it, and a feature with a
7-day window needs the events of the 7 days before ``start`` too. If the event log has already
purged them, the replay silently produces low counts for the first week; so we check the raw
tables first and refuse with the exact gap. The plan's declared ``retention`` is only a promise:
the audit also says whether the table actually holds that much.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.backfill")


class RetentionGapError(RuntimeError):
    """A backfill was refused because the raw events do not cover its window."""

    def __init__(self, report: RetentionReport) -> None:
        self.report = report
        super().__init__(
            f"backfill of group '{report.group}' over {iso_utc(report.start)} .. {iso_utc(report.end)} refused: "
            + "; ".join(report.gaps)
            + ". Choose a later --start, or restore the missing events into the event log first."
        )


@dataclass(frozen=True)
class SourceCoverage:
    """One event source of a group against the coverage the window needs."""

    table: str
    time_column: str
    via_group: str  # the group that declares the source (the audited group or an upstream one)
    longest_window: timedelta
    declared_retention: timedelta
    required_start: datetime
    required_end: datetime
    oldest: datetime | None
    newest: datetime | None
    exists: bool = True
    error: str | None = None

    @property
    def covered(self) -> bool:
        """The head of the window is held: the oldest event is at or before the required start."""
        return (
            self.exists
            and self.error is None
            and self.oldest is not None
            and self.oldest <= self.required_start
        )

    @property
    def missing(self) -> timedelta | None:
        """How much history is missing at the head of the window (None when nothing is held)."""
        if self.oldest is None:
            return None
        return max(self.oldest - self.required_start, timedelta(0))

    @property
    def promise_covers(self) -> bool:
        """Would the declared retention, if honoured, cover the window (counted from the window's end)?"""
        return self.required_end - self.declared_retention <= self.required_start

    def held(self, now: datetime) -> timedelta | None:
        return None if self.oldest is None else now - self.oldest

    def retention_honoured(self, now: datetime, slack: timedelta = timedelta(days=1)) -> bool | None:
        """Does the table really keep ``declared_retention`` of history? None when it cannot be told."""
        if self.oldest is None:
            return None
        return self.oldest <= now - self.declared_retention + slack

    @property
    def gap(self) -> str | None:
        """The gap as a sentence, or None when covered."""
        if self.error:
            return f"{self.table}: {self.error}"
        if not self.exists:
            return f"{self.table} does not exist in the event log"
        if self.oldest is None:
            return f"{self.table} holds no events at all; the window needs them from {iso_utc(self.required_start)}"
        if self.covered:
            return None
        assert self.missing is not None
        return (
            f"{self.table} holds events from {iso_utc(self.oldest)}; the window needs them from "
            f"{iso_utc(self.required_start)}: {human_duration(self.missing)} missing"
        )

    @property
    def tail_note(self) -> str | None:
        """Events that stop before the window's end (a stalled pipeline); a warning, not a refusal."""
        if self.newest is None or self.longest_window <= timedelta(0) or self.newest >= self.required_end:
            return None
        return (
            f"{self.table}: newest event is {iso_utc(self.newest)}, {human_duration(self.required_end - self.newest)} "
            f"before the window's end {iso_utc(self.required_end)}"
        )

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        data = asdict(self)
        for key in ("required_start", "required_end", "oldest", "newest"):
            data[key] = iso_utc(data[key]) if data[key] else None
        data["longest_window"] = self.longest_window.total_seconds()
        data["declared_retention"] = self.declared_retention.total_seconds()
        data.update(
            covered=self.covered,
            missing_seconds=None if self.missing is None else self.missing.total_seconds(),
            promise_covers=self.promise_covers,
            gap=self.gap,
            tail_note=self.tail_note,
        )
        if now is not None:
            held = self.held(now)
            data["held_seconds"] = None if held is None else held.total_seconds()
            data["retention_honoured"] = self.retention_honoured(now)
        return data


@dataclass(frozen=True)
class RetentionReport:
    """The retention audit of one group for one backfill window."""

    group: str
    start: datetime
    end: datetime
    audited_at: datetime
    sources: tuple[SourceCoverage, ...] = field(default_factory=tuple)

    @property
    def covered(self) -> bool:
        """Every source covers the window. A group that reads no event source is trivially covered."""
        return all(s.covered for s in self.sources)

    @property
    def gaps(self) -> list[str]:
        return [g for g in (s.gap for s in self.sources) if g]

    @property
    def warnings(self) -> list[str]:
        notes = [n for n in (s.tail_note for s in self.sources) if n]
        for s in self.sources:
            honoured = s.retention_honoured(self.audited_at)
            if honoured is False:
                held = s.held(self.audited_at)
                assert held is not None
                notes.append(
                    f"{s.table}: declared retention {human_duration(s.declared_retention)} but it holds only "
                    f"{human_duration(held)} of events"
                )
            if not s.promise_covers:
                notes.append(
                    f"{s.table}: declared retention {human_duration(s.declared_retention)} is shorter than the "
                    f"{human_duration(s.required_end - s.required_start)} this window needs"
                )
        return notes

    @property
    def summary(self) -> str:
        if not self.sources:
            return f"group '{self.group}': reads no event source; nothing to audit"
        if self.covered:
            return f"group '{self.group}': raw events cover {iso_utc(self.start)} .. {iso_utc(self.end)}"
        return f"group '{self.group}': NOT covered: " + "; ".join(self.gaps)

    def raise_if_gap(self) -> None:
        if not self.covered:
            raise RetentionGapError(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "start": iso_utc(self.start),
            "end": iso_utc(self.end),
            "audited_at": iso_utc(self.audited_at),
            "covered": self.covered,
            "gaps": self.gaps,
            "warnings": self.warnings,
            "summary": self.summary,
            "sources": [s.to_dict(self.audited_at) for s in self.sources],
        }


def group_event_sources(plan: MigrationPlan, group: str | FeatureGroup) -> list[tuple[str, Any]]:
    """The event sources a group reads, its own and those of every upstream group it inlines.

    A derived group has no raw table of its own, but its as-of SQL inlines its upstream
    definitions, so their sources bound what it can replay. Returns (declaring group, source),
    one per (table, time column), keeping the longest window.
    """
    name = group if isinstance(group, str) else group.name
    if name not in plan.groups:
        raise KeyError(f"plan '{plan.name}' has no group {name!r}; known: {', '.join(sorted(plan.groups))}")
    seen: dict[tuple[str, str], tuple[str, Any]] = {}
    stack, visited = [name], set()
    while stack:
        current = stack.pop()
        if current in visited:
            continue
        visited.add(current)
        g = plan.groups[current]
        for src in g.event_sources:
            key = (src.table, src.time_column)
            if key not in seen or src.longest_window > seen[key][1].longest_window:
                seen[key] = (current, src)
        stack.extend(up for up in g.depends_on if up in plan.groups)
    return [seen[k] for k in sorted(seen)]


def audit_retention(
    plan: MigrationPlan,
    group: str | FeatureGroup,
    conn: Any,
    *,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> RetentionReport:
    """Audit whether the raw events cover a backfill of ``group`` over [start, end].

    ``conn`` is a psycopg connection to the event log (the plan's ``event_log`` connection).
    Each source needs events from ``start - longest_window`` to ``end``.
    """
    start, end = _utc(start), _utc(end)
    if end < start:
        raise ValueError(f"backfill window ends ({iso_utc(end)}) before it starts ({iso_utc(start)})")
    name = group if isinstance(group, str) else group.name
    audited_at = _utc(now) if now else datetime.now(UTC)
    report = _audit_with(plan, name, conn, start=start, end=end, now=audited_at, bounds=_bounds)
    log.info("retention audit: %s", report.summary)
    return report


def audit_plan_retention(
    plan: MigrationPlan, conn: Any, *, now: datetime | None = None
) -> list[RetentionReport]:
    """Audit every group for its plan ``backfill_window`` ending now (what a backfill could promise today)."""
    now = _utc(now) if now else datetime.now(UTC)
    cache: dict[tuple[str, str], tuple[datetime | None, datetime | None, bool, str | None]] = {}

    def cached(c: Any, table: str, column: str) -> tuple[datetime | None, datetime | None, bool, str | None]:
        if (table, column) not in cache:
            cache[(table, column)] = _bounds(c, table, column)
        return cache[(table, column)]

    reports = []
    for name, g in plan.groups.items():
        reports.append(
            _audit_with(plan, name, conn, start=now - g.backfill_window, end=now, now=now, bounds=cached)
        )
    return reports


def _audit_with(
    plan: MigrationPlan, name: str, conn: Any, *, start: datetime, end: datetime, now: datetime, bounds: Any
) -> RetentionReport:
    sources = []
    for via, src in group_event_sources(plan, name):
        oldest, newest, exists, error = bounds(conn, src.table, src.time_column)
        sources.append(
            SourceCoverage(
                table=src.table,
                time_column=src.time_column,
                via_group=via,
                longest_window=src.longest_window,
                declared_retention=src.retention,
                required_start=start - src.longest_window,
                required_end=end,
                oldest=oldest,
                newest=newest,
                exists=exists,
                error=error,
            )
        )
    return RetentionReport(group=name, start=start, end=end, audited_at=now, sources=tuple(sources))


def _bounds(conn: Any, table: str, column: str) -> tuple[datetime | None, datetime | None, bool, str | None]:
    """Oldest and newest event time of a raw table (two index probes when the column is indexed)."""
    from psycopg import sql

    parts = table.split(".")
    ident = sql.Identifier(*parts)
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (".".join(f'"{p}"' for p in parts),)
    ).fetchone()
    if not exists or not exists[0]:
        return None, None, False, None
    query = sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(c=sql.Identifier(column), t=ident)
    try:
        with conn.transaction():
            row = conn.execute(query).fetchone()
    except Exception as exc:  # a missing column or a type we cannot order: name it, never pass
        return None, None, True, f"cannot read {column}: {type(exc).__name__}: {str(exc).strip()}"
    oldest, newest = row if row else (None, None)
    if oldest is not None and not isinstance(oldest, datetime):
        return None, None, True, f"column {column} is {type(oldest).__name__}, not a timestamp"
    return (_utc(oldest) if oldest else None, _utc(newest) if newest else None, True, None)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_utc(value: datetime) -> str:
    value = _utc(value)
    if value.second == 0 and value.microsecond == 0:
        return value.strftime("%Y-%m-%dT%H:%MZ")
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def human_duration(delta: timedelta) -> str:
    """``7 days``, ``2 days 3 hours``, ``45 minutes``: the way a gap is said out loud."""
    seconds = round(delta.total_seconds())
    if seconds <= 0:
        return "0 seconds"
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
        if len(parts) == 2:
            break
    return " ".join(parts)
