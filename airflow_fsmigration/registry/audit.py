"""The registry's tables and its audit log: schema, row decoding, audit reads and writes.

Split from :mod:`.routing` (the state machine and its concurrency) along the storage seam. The
functions here take a psycopg connection, so readers that hold one (the soak and keep-warm
gates, the cockpit) read the audit log without building a :class:`~.routing.Registry`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow_fsmigration.db import SCHEMA
from airflow_fsmigration.registry.model import AuditEntry, Backend, DagRunRef, Phase, RoutingState

_PHASES_SQL = ", ".join(f"'{p.value}'" for p in Phase)

# Append-only: never edit a shipped step, add a new one.
MIGRATIONS: tuple[str, ...] = (
    f"""CREATE TABLE "{SCHEMA}".routing (
        group_name text PRIMARY KEY,
        plan_name text,
        phase text NOT NULL CHECK (phase IN ({_PHASES_SQL})),
        ramp_pct double precision NOT NULL CHECK (ramp_pct >= 0 AND ramp_pct <= 100),
        active_backend text NOT NULL CHECK (active_backend IN ('old', 'new')),
        version bigint NOT NULL CHECK (version >= 1),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_by text NOT NULL,
        CHECK ((active_backend = 'new') = (ramp_pct > 0))
    )""",
    f"""CREATE TABLE "{SCHEMA}".routing_audit (
        id bigserial PRIMARY KEY,
        group_name text NOT NULL REFERENCES "{SCHEMA}".routing (group_name),
        version bigint NOT NULL,
        at timestamptz NOT NULL,
        actor text NOT NULL,
        reason text NOT NULL,
        from_phase text,
        from_pct double precision,
        to_phase text NOT NULL,
        to_pct double precision NOT NULL,
        dag_id text,
        run_id text,
        evidence jsonb,
        UNIQUE (group_name, version)
    )""",
)

COLS = "group_name, phase, ramp_pct, active_backend, version, updated_at, plan_name"
AUDIT_COLS = "id, group_name, version, at, actor, reason, from_phase, from_pct, to_phase, to_pct, dag_id, run_id, evidence"

DagRunLike = DagRunRef | tuple[str, str] | Mapping[str, Any] | None


def row_to_state(row: tuple[Any, ...], *, changed: bool = True) -> RoutingState:
    return RoutingState(
        group=row[0],
        phase=Phase(row[1]),
        ramp_pct=float(row[2]),
        active_backend=Backend(row[3]),
        version=int(row[4]),
        updated_at=row[5],
        plan=row[6],
        changed=changed,
    )


def dag_run_ids(ref: DagRunLike) -> tuple[str | None, str | None]:
    if ref is None:
        return None, None
    if isinstance(ref, DagRunRef):
        return ref.dag_id, ref.run_id
    if isinstance(ref, Mapping):
        return ref.get("dag_id"), ref.get("run_id")
    dag_id, run_id = ref
    return dag_id, run_id


def check_who_why(group: str, actor: str, reason: str) -> None:
    if not actor or not str(actor).strip():
        raise ValueError(f"group '{group}': a routing change needs an actor (who is making it)")
    if not reason or not str(reason).strip():
        raise ValueError(f"group '{group}': a routing change needs a reason (it goes into the audit log)")


def read_audit(conn: Any, group: str, *, limit: int | None = None) -> list[AuditEntry]:
    """The group's transitions, oldest first (the newest ``limit`` when given)."""
    sql = f'SELECT {AUDIT_COLS} FROM "{SCHEMA}".routing_audit WHERE group_name = %s ORDER BY version'
    params: tuple[Any, ...] = (group,)
    if limit is not None:
        sql = f"SELECT * FROM ({sql} DESC LIMIT %s) t ORDER BY version"
        params = (group, limit)
    rows = conn.execute(sql, params).fetchall()
    return [
        AuditEntry(
            id=r[0],
            group=r[1],
            version=r[2],
            at=r[3],
            actor=r[4],
            reason=r[5],
            from_phase=Phase(r[6]) if r[6] else None,
            from_pct=r[7],
            to_phase=Phase(r[8]),
            to_pct=r[9],
            dag_id=r[10],
            run_id=r[11],
            evidence=r[12],
        )
        for r in rows
    ]


def insert_audit(
    conn: Any,
    state: RoutingState,
    before: RoutingState | None,
    *,
    actor: str,
    reason: str,
    dag_run: DagRunLike,
    evidence: Mapping[str, Any] | None = None,
) -> None:
    """Append the audit row of one committed change (inside the caller's transaction)."""
    dag_id, run_id = dag_run_ids(dag_run)
    conn.execute(
        f'INSERT INTO "{SCHEMA}".routing_audit (group_name, version, at, actor, reason, from_phase, from_pct,'
        " to_phase, to_pct, dag_id, run_id, evidence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            state.group,
            state.version,
            state.updated_at,
            actor,
            reason,
            before.phase.value if before else None,
            before.ramp_pct if before else None,
            state.phase.value,
            state.ramp_pct,
            dag_id,
            run_id,
            json.dumps(dict(evidence), default=str) if evidence else None,
        ),
    )


def has_audit_table(conn: Any) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (f'"{SCHEMA}".routing_audit',)).fetchone()
    return bool(row and row[0])


# A row whose phase and ramp did not change records a decision (Registry.record), not a move.
MOVED = "(from_phase IS DISTINCT FROM to_phase OR from_pct IS DISTINCT FROM to_pct)"


def last_entered(conn: Any, group: str, phase: Phase | str) -> datetime | None:
    """When the group last moved into ``phase``, or None."""
    row = conn.execute(
        f'SELECT max(at) FROM "{SCHEMA}".routing_audit WHERE group_name = %s AND to_phase = %s AND {MOVED}',
        (group, Phase(phase).value),
    ).fetchone()
    return row[0] if row else None


def soak_start(conn: Any, group: str) -> tuple[datetime, Phase] | None:
    """The group's newest move into ``shadow`` or ``rolled_back``: where its current soak starts.

    None when the registry holds no such move (or no audit log at all: a results store used on
    its own). A ``rolled_back`` answer means the group has not re-entered shadow since.
    """
    if not has_audit_table(conn):
        return None
    row = conn.execute(
        f'SELECT at, to_phase FROM "{SCHEMA}".routing_audit WHERE group_name = %s AND to_phase = ANY(%s)'
        f" AND {MOVED} ORDER BY version DESC LIMIT 1",
        (group, [Phase.SHADOW.value, Phase.ROLLED_BACK.value]),
    ).fetchone()
    return (row[0], Phase(row[1])) if row else None
