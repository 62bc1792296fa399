"""Decisions that move no traffic, in the routing audit log beside the moves.

A person declining a ramp approval before any traffic moved changes no routing, yet "who
decided what, when" belongs in the same log as every ramp and rollback. Such a row keeps the
group's phase and ramp (``from`` equals ``to``); the phase queries of
:mod:`~airflow_fsmigration.registry.audit` skip it (``MOVED``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.db import SCHEMA
from airflow_fsmigration.registry import audit as _audit
from airflow_fsmigration.registry.audit import DagRunLike
from airflow_fsmigration.registry.audit import check_who_why as _check_who_why
from airflow_fsmigration.registry.epochs import state_from_row as _state
from airflow_fsmigration.registry.model import UnknownGroup

if TYPE_CHECKING:
    from airflow_fsmigration.registry.model import RoutingState

log = logging.getLogger("airflow_fsmigration.registry")


class DecisionLog:
    """Mixin of :class:`~airflow_fsmigration.registry.routing.Registry`: :meth:`record`."""

    _lock: Any
    _cols: str

    def connection(self) -> Any:  # provided by Registry
        raise NotImplementedError

    def _publish(self, state: RoutingState) -> None:  # provided by Registry
        raise NotImplementedError

    def _locked_current(self, conn: Any, group: str) -> RoutingState:
        """The group's row, locked for this transaction (``SELECT ... FOR UPDATE``)."""
        row = conn.execute(
            f'SELECT {self._cols} FROM "{SCHEMA}".routing WHERE group_name = %s FOR UPDATE', (group,)
        ).fetchone()
        if row is None:
            raise UnknownGroup(group)
        return _state(row, changed=False)

    def record(
        self,
        group: str,
        *,
        reason: str,
        actor: str,
        dag_run: DagRunLike = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> RoutingState:
        """Write a decision that moves no traffic into the audit log; the version goes up, so the
        row is ordered like any change (and routers, which see the same routing, ignore it)."""
        _check_who_why(group, actor, reason)
        with self._lock:
            conn = self.connection()
            with conn.transaction():
                current = self._locked_current(conn, group)
                row = conn.execute(
                    f'UPDATE "{SCHEMA}".routing SET version = version + 1, updated_at = clock_timestamp(),'
                    f" updated_by = %s WHERE group_name = %s RETURNING {self._cols}",
                    (actor, group),
                ).fetchone()
                state = _state(row, changed=False)
                _audit.insert_audit(
                    conn, state, current, actor=actor, reason=reason, dag_run=dag_run, evidence=evidence
                )
        log.warning("group %s: %s, recorded for %s: %s", group, state.describe(), actor, reason)
        self._publish(state)
        return state
