"""Keep-warm checks: after cutover the old store must stay refreshed, and that is checked, not assumed.

A rollback during the warm window is only safe if the old store still holds fresh values. Each
check reads the newest source time of a sample of the legacy Redis online hashes and the newest
event time of the legacy offline history table, compares both with the group's
``sla.max_staleness`` and records the outcome in ``fsmig.keepwarm_checks``.
:func:`warm_window_status` then reads the checks and lets :mod:`airflow_fsmigration.gates.keepwarm`
decide whether the plan's ``keep_warm`` window has ended with warmth verified in every day of it;
the registry refuses ``ready_to_decommission`` until it has.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.db import SCHEMA, ensure_schema
from airflow_fsmigration.gates.keepwarm import WarmWindowStatus, warm_window
from airflow_fsmigration.registry.audit import last_entered
from airflow_fsmigration.semantics import decode_source_ts, key_pattern

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

__all__ = [
    "MIGRATIONS",
    "WarmCheck",
    "WarmWindowStatus",
    "check_warmth",
    "ensure_keepwarm_schema",
    "parse_source_ts",
    "record_check",
    "warm_window_status",
]

log = logging.getLogger("airflow_fsmigration.registry")

MIGRATIONS: tuple[str, ...] = (
    f"""CREATE TABLE "{SCHEMA}".keepwarm_checks (
        id bigserial PRIMARY KEY,
        group_name text NOT NULL,
        checked_at timestamptz NOT NULL,
        passed boolean NOT NULL,
        online_sampled integer NOT NULL,
        online_with_ts integer NOT NULL,
        online_newest timestamptz,
        offline_newest timestamptz,
        max_staleness_s double precision NOT NULL,
        problems jsonb NOT NULL DEFAULT '[]'
    )""",
    f'CREATE INDEX keepwarm_checks_group_at ON "{SCHEMA}".keepwarm_checks (group_name, checked_at)',
)


def ensure_keepwarm_schema(conn: Any) -> int:
    return ensure_schema(conn, "keepwarm", MIGRATIONS)


@dataclass(frozen=True)
class WarmCheck:
    """One keep-warm check of one group. ``passed`` only when both stores were read and are fresh."""

    group: str
    checked_at: datetime
    passed: bool
    online_sampled: int
    online_with_ts: int
    online_newest: datetime | None
    offline_newest: datetime | None
    max_staleness: timedelta
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (XCom, audit evidence, reports)."""
        return {
            "group": self.group,
            "checked_at": _iso(self.checked_at),
            "passed": self.passed,
            "online_sampled": self.online_sampled,
            "online_with_ts": self.online_with_ts,
            "online_newest": _iso(self.online_newest),
            "offline_newest": _iso(self.offline_newest),
            "max_staleness_s": self.max_staleness.total_seconds(),
            "problems": list(self.problems),
        }

    def summary(self) -> str:
        if self.passed:
            return (
                f"group '{self.group}': old store warm (online newest {_iso(self.online_newest)} over "
                f"{self.online_sampled} sampled keys, offline newest {_iso(self.offline_newest)}, "
                f"max staleness {self.max_staleness})"
            )
        return f"group '{self.group}': old store NOT verified warm: " + "; ".join(self.problems)


@dataclass
class _Probe:
    sampled: int = 0
    with_ts: int = 0
    newest: datetime | None = None
    problems: list[str] = field(default_factory=list)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def parse_source_ts(raw: Any, encoding: str | None = None) -> datetime | None:
    """A source time as stored by the legacy store (see :func:`~airflow_fsmigration.semantics.decode_source_ts`)."""
    return decode_source_ts(raw, encoding)


def _probe_online(
    plan: MigrationPlan, group: str, client: Any, sample_size: int, max_scan_calls: int
) -> _Probe:
    g = plan.groups[group]
    probe = _Probe()
    ts_field = g.legacy_online.timestamp_field
    if not ts_field:
        probe.problems.append(
            "the plan gives no legacy_online.timestamp_field, so online freshness cannot be measured; "
            "set it to the hash field holding the source time (e.g. _ts)"
        )
        return probe
    pattern = key_pattern(g.legacy_online.key_template)
    keys: list[Any] = []
    cursor = 0
    for _ in range(max_scan_calls):
        cursor, batch = client.scan(cursor=cursor, match=pattern, count=1000)
        keys.extend(batch)
        if len(keys) >= sample_size or int(cursor) == 0:
            break
    keys = keys[:sample_size]
    probe.sampled = len(keys)
    if not keys:
        probe.problems.append(
            f"no legacy online keys match {g.legacy_online.key_template!r} (pattern {pattern!r}): "
            "the old online store is empty or the plan's key_template is wrong"
        )
        return probe
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, ts_field)
    for value in pipe.execute():
        ts = parse_source_ts(value, str(g.legacy_online.encoding))
        if ts is None:
            continue
        probe.with_ts += 1
        if probe.newest is None or ts > probe.newest:
            probe.newest = ts
    if probe.with_ts == 0:
        probe.problems.append(
            f"none of {probe.sampled} sampled online hashes has a readable {ts_field!r} field"
        )
    return probe


def _probe_offline(plan: MigrationPlan, group: str, conn: Any) -> _Probe:
    from psycopg import sql

    g = plan.groups[group]
    probe = _Probe()
    table = sql.Identifier(*g.legacy_offline.table.split("."))
    column = sql.Identifier(g.legacy_offline.event_time_column)
    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(column, table)).fetchone()
    value = row[0] if row else None
    probe.newest = parse_source_ts(value)
    probe.sampled = probe.with_ts = 1 if probe.newest is not None else 0
    if probe.newest is None:
        probe.problems.append(f"the offline history table {g.legacy_offline.table} has no event time at all")
    return probe


def check_warmth(
    plan: MigrationPlan,
    group: str,
    *,
    online_client: Any,
    offline_conn: Any,
    registry_conn: Any | None = None,
    sample_size: int = 50,
    max_scan_calls: int = 200,
    now: datetime | None = None,
) -> WarmCheck:
    """Check that the old store of ``group`` is still refreshed; record the check when ``registry_conn`` is given.

    A store that cannot be read makes the check fail (with the reason), never pass.

    :param online_client: ``redis.Redis`` of the plan's ``legacy_online`` connection.
    :param offline_conn: psycopg connection of the plan's ``legacy_offline`` connection.
    :param registry_conn: psycopg connection of the registry, where the check is recorded.
    :param sample_size: how many online hashes to read (found by SCAN over the key template).
    """
    if group not in plan.groups:
        raise KeyError(f"group '{group}' is not in plan '{plan.name}'")
    g = plan.groups[group]
    max_staleness = g.sla.max_staleness
    conns = plan.connections
    try:
        online = _probe_online(plan, group, online_client, sample_size, max_scan_calls)
    except Exception as exc:
        online = _Probe(
            problems=[f"legacy online store (connection '{conns.legacy_online}') did not answer: {exc}"]
        )
    try:
        offline = _probe_offline(plan, group, offline_conn)
    except Exception as exc:
        offline = _Probe(
            problems=[f"legacy offline store (connection '{conns.legacy_offline}') could not be read: {exc}"]
        )
    now = now or datetime.now(UTC)
    problems = online.problems + offline.problems
    for name, probe in (("online", online), ("offline", offline)):
        if probe.newest is not None and now - probe.newest > max_staleness:
            problems.append(
                f"{name} newest source time {_iso(probe.newest)} is {now - probe.newest} old, over the "
                f"max_staleness {max_staleness}: the old store's refresh job has stopped or is lagging"
            )
    check = WarmCheck(
        group=group,
        checked_at=now,
        passed=not problems,
        online_sampled=online.sampled,
        online_with_ts=online.with_ts,
        online_newest=online.newest,
        offline_newest=offline.newest,
        max_staleness=max_staleness,
        problems=tuple(problems),
    )
    (log.info if check.passed else log.warning)("%s", check.summary())
    if registry_conn is not None:
        record_check(registry_conn, check)
    return check


def record_check(conn: Any, check: WarmCheck) -> None:
    """Store a check in ``fsmig.keepwarm_checks`` (creating the table when needed)."""
    ensure_keepwarm_schema(conn)
    with conn.transaction():
        conn.execute(
            f'INSERT INTO "{SCHEMA}".keepwarm_checks (group_name, checked_at, passed, online_sampled, online_with_ts,'
            " online_newest, offline_newest, max_staleness_s, problems) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                check.group,
                check.checked_at,
                check.passed,
                check.online_sampled,
                check.online_with_ts,
                check.online_newest,
                check.offline_newest,
                check.max_staleness.total_seconds(),
                json.dumps(list(check.problems)),
            ),
        )


def warm_window_status(
    plan: MigrationPlan,
    group: str,
    *,
    conn: Any,
    now: datetime | None = None,
    bucket: timedelta | None = None,
    warm_since: datetime | None = None,
) -> WarmWindowStatus:
    """Whether the group's ``keep_warm`` window has ended with warmth verified in every day of it.

    Reads the evidence and lets :func:`airflow_fsmigration.gates.keepwarm.warm_window` decide. The
    window starts when the group last entered ``warm`` (from the routing audit log) unless
    ``warm_since`` is given; ``bucket`` is the length of one "day" (tests use seconds).
    """
    keep_warm = plan.settings_for(group).keep_warm
    now = now or datetime.now(UTC)
    if warm_since is None:
        warm_since = last_entered(conn, group, "warm")
    rows: list[tuple[datetime, bool]] = []
    if warm_since is not None:
        ensure_keepwarm_schema(conn)
        rows = conn.execute(
            f'SELECT checked_at, passed FROM "{SCHEMA}".keepwarm_checks'
            " WHERE group_name = %s AND checked_at >= %s AND checked_at < %s ORDER BY checked_at, id",
            (group, warm_since, warm_since + keep_warm),
        ).fetchall()
    return warm_window(group, keep_warm, warm_since, rows, now, bucket=bucket)
