"""Routing epochs: what lets a registry restored from a backup reach routers again.

``version`` goes up by one per change within one database. A registry restored to an older
backup starts again below the version that Redis and the running routers hold, and a router
ignores a state older than its own, so a rollback on the restored registry would never reach
it. Each group therefore also has an ``epoch`` (0 unless raised), and routers order states by
``(epoch, version)`` (:mod:`airflow_fsmigration.routing_wire`).

The epoch lives in its own table, ``routing_epoch`` (absent row: 0), next to the routing rows,
so the audit log's one-row-per-version rule is untouched. It is raised only when the mirror is
found *ahead* of Postgres (:func:`supersede_row`, called by ``fsmigrate reconcile`` and
``fsmigrate rollback``): the new epoch is one above the mirror's, so the registry's state wins
again, and later changes carry it. A restore that also rolls this table back is caught the same
way on the next reconcile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import Any

from airflow_fsmigration.db import SCHEMA
from airflow_fsmigration.registry.audit import row_to_state
from airflow_fsmigration.registry.model import RoutingState, UnknownGroup
from airflow_fsmigration.routing_wire import encode_doc

log = logging.getLogger("airflow_fsmigration.registry")

EPOCH_TABLE = f'"{SCHEMA}".routing_epoch'
EPOCH_DDL = (
    f"CREATE TABLE IF NOT EXISTS {EPOCH_TABLE} (group_name text PRIMARY KEY,"
    " epoch integer NOT NULL CHECK (epoch >= 0), set_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " reason text NOT NULL)"
)
# Appended to the routing columns: the group's epoch (a correlated lookup on the primary key).
EPOCH_COL = f"COALESCE((SELECT e.epoch FROM {EPOCH_TABLE} e WHERE e.group_name = routing.group_name), 0)"


@dataclasses.dataclass(frozen=True)
class EpochRoutingState(RoutingState):
    """A routing row of a group whose epoch was raised; its mirror document carries the epoch."""

    epoch: int = 0

    def mirror_json(self) -> str:
        return encode_doc(**{**json.loads(super().mirror_json()), "epoch": self.epoch})


def epoch_of(state: RoutingState) -> int:
    """A state's epoch (0 for a plain :class:`RoutingState`)."""
    return int(getattr(state, "epoch", 0))


def state_from_row(row: tuple[Any, ...], *, changed: bool = True) -> RoutingState:
    """A row of the routing columns plus the epoch; a plain state when the epoch is 0."""
    st = row_to_state(row[:-1], changed=changed)
    if not row[-1]:
        return st
    fields = {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}
    return EpochRoutingState(**fields, epoch=int(row[-1]))


def epoch_columns(conn: Any, cols: str) -> str:
    """``cols`` plus the epoch column; ``0`` when the table is missing and cannot be created.

    Creating it here (not only in ``ensure_schema``) keeps registries that predate epochs
    working; a role without CREATE still reads, with every epoch 0.
    """
    exists = "SELECT to_regclass(%s) IS NOT NULL"
    with conn.transaction():
        found = conn.execute(exists, (EPOCH_TABLE,)).fetchone()[0]
        if not found:
            with contextlib.suppress(Exception), conn.transaction():
                conn.execute(EPOCH_DDL)
            found = conn.execute(exists, (EPOCH_TABLE,)).fetchone()[0]
    return f"{cols}, {EPOCH_COL if found else '0'}"


def supersede_row(
    conn: Any, cols: str, group: str, mirror_epoch: int, mirror_version: int, reason: str
) -> RoutingState | None:
    """Raise ``group``'s epoch above a mirror at ``(mirror_epoch, mirror_version)`` if it is ahead.

    The routing row is re-read under its lock: a change that committed (and published) after the
    caller read the mirror is not mistaken for a restore. Returns the state to publish, or None.
    """
    sel = f'SELECT {cols} FROM "{SCHEMA}".routing WHERE group_name = %s'
    with conn.transaction():
        row = conn.execute(sel + " FOR UPDATE", (group,)).fetchone()
        if row is None:
            raise UnknownGroup(group)
        current = state_from_row(row, changed=False)
        if (epoch_of(current), current.version) >= (mirror_epoch, mirror_version):
            return None
        conn.execute(
            f"INSERT INTO {EPOCH_TABLE} AS t (group_name, epoch, reason) VALUES (%s, %s, %s)"
            " ON CONFLICT (group_name) DO UPDATE SET epoch = GREATEST(t.epoch + 1, EXCLUDED.epoch),"
            " set_at = clock_timestamp(), reason = EXCLUDED.reason",
            (group, int(mirror_epoch) + 1, reason),
        )
        state = state_from_row(conn.execute(sel, (group,)).fetchone())
    log.warning(
        "group %s: the Redis mirror (epoch %d, version %d) was ahead of the registry (%s); epoch now %d: %s",
        *(group, mirror_epoch, mirror_version, current.describe(), epoch_of(state), reason),
    )
    return state
