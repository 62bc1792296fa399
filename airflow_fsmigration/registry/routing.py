"""The routing registry: per-group routing state in Postgres, the source of truth for serving.

Every change is one transaction that updates the group's row and appends an audit row; the row's
``version`` goes up by exactly one per change, and ``(group, version)`` is unique in the audit log,
so versions and audit rows can be counted against each other.

Concurrency, and why two mechanisms:

* Forward moves (shadow, ramp, cutover, warm, decommission) use optimistic compare-and-set:
  ``UPDATE ... WHERE version = %s``. A ramp is a decision made on evidence read at some version
  (a bake gate that passed, an operator's screen); CAS guarantees it is applied only on top of
  exactly that state, never on top of a change it did not see. A failed CAS re-reads the state and
  re-checks legality (or raises :class:`VersionConflict` when the caller pinned ``expected_version``).
* Rollback and freeze take the row lock (``SELECT ... FOR UPDATE``) and then write unconditionally.
  An emergency action must not lose a CAS race against a stream of ramps (a retry loop could starve
  under contention); with the lock it waits for at most the one transaction in flight and then wins.
  A ramp racing it blocks on the same row, and under READ COMMITTED its ``WHERE version = v``
  is re-evaluated against the rolled-back row, matches nothing, and the ramp is refused on re-check:
  a rollback is never overwritten by a ramp that started before it.

The Redis mirror is written only after commit (a mirror that ran ahead of Postgres could route
traffic on a change that then rolled back); when that publish fails, ``RoutingMirror.reconcile``
repairs it.

Epochs (:mod:`.epochs`): states are ordered by ``(epoch, version)``, so a registry restored
from a backup can still reach routers that hold a newer version: :meth:`Registry.supersede`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.db import SCHEMA, ensure_schema
from airflow_fsmigration.registry import audit as _audit
from airflow_fsmigration.registry.audit import COLS as _COLS
from airflow_fsmigration.registry.audit import MIGRATIONS, DagRunLike
from airflow_fsmigration.registry.audit import check_who_why as _check_who_why
from airflow_fsmigration.registry.decisions import DecisionLog
from airflow_fsmigration.registry.epochs import EPOCH_DDL, EPOCH_TABLE, epoch_columns, supersede_row
from airflow_fsmigration.registry.epochs import state_from_row as _state
from airflow_fsmigration.registry.model import (
    FREEZABLE_PHASES,
    OLD_ONLY_PHASES,
    SERVING_PHASES,
    AuditEntry,
    IllegalTransition,
    Phase,
    RegistryError,
    RoutingState,
    UnknownGroup,
    VersionConflict,
    backend_for,
    check_forward,
)

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.registry.mirror import RoutingMirror

log = logging.getLogger("airflow_fsmigration.registry")


class Registry(DecisionLog):
    """Routing state per group, with legal-transition checks, CAS versions and an audit log.

    :param url_or_conn_factory: a libpq URL, or a callable returning a new psycopg connection.
        One connection is kept per instance and reopened when broken; use one instance per thread.
    :param mirror: a :class:`~airflow_fsmigration.registry.mirror.RoutingMirror` to publish to after
        each commit, or None.
    :param plan: the migration plan; needed to check ramp steps and the keep-warm window before a
        decommission (``register_plan`` sets it too).
    :param warm_bucket: the length of one "day" of the keep-warm window (default one day; tests and
        the demo use seconds).
    """

    def __init__(
        self,
        url_or_conn_factory: str | Callable[[], Any],
        mirror: RoutingMirror | None = None,
        *,
        plan: MigrationPlan | None = None,
        warm_bucket: timedelta | None = None,
        max_retries: int = 100,
    ) -> None:
        if isinstance(url_or_conn_factory, str):
            url = url_or_conn_factory

            def factory() -> Any:
                import psycopg

                return psycopg.connect(url, autocommit=True, connect_timeout=10)

            self._factory: Callable[[], Any] = factory
        else:
            self._factory = url_or_conn_factory
        self.mirror = mirror
        self.plan = plan
        self.warm_bucket = warm_bucket
        self.max_retries = max_retries
        self._conn: Any = None
        self._lock = threading.RLock()
        self._cols = f"{_COLS}, 0"

    # -- connection -------------------------------------------------------------------------
    def connection(self) -> Any:
        """The instance's psycopg connection (opened on first use, reopened when broken)."""
        if self._conn is None or self._conn.closed or getattr(self._conn, "broken", False):
            self._conn = self._factory()
            self._find_epochs(self._conn)
        return self._conn

    def _find_epochs(self, conn: Any) -> None:
        self._cols = epoch_columns(conn, _COLS)

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure_schema(self) -> int:
        """Create or migrate the registry tables (and the keep-warm table the decommission gate reads)."""
        from airflow_fsmigration.registry.keepwarm import ensure_keepwarm_schema

        with self._lock:
            conn = self.connection()
            version = ensure_schema(conn, "registry", MIGRATIONS)
            ensure_keepwarm_schema(conn)
            conn.execute(EPOCH_DDL)
            self._find_epochs(conn)
            return version

    # -- reads ------------------------------------------------------------------------------
    def state(self, group: str) -> RoutingState:
        with self._lock:
            row = (
                self.connection()
                .execute(f'SELECT {self._cols} FROM "{SCHEMA}".routing WHERE group_name = %s', (group,))
                .fetchone()
            )
        if row is None:
            raise UnknownGroup(group)
        return _state(row, changed=False)

    def states(self, plan_name: str | None = None) -> dict[str, RoutingState]:
        """Every group's state (of one plan when ``plan_name`` is given), by group name."""
        with self._lock:
            self.connection()
        sql = f'SELECT {self._cols} FROM "{SCHEMA}".routing'
        params: tuple[Any, ...] = ()
        if plan_name is not None:
            sql += " WHERE plan_name = %s"
            params = (plan_name,)
        with self._lock:
            rows = self.connection().execute(sql + " ORDER BY group_name", params).fetchall()
        return {r[0]: _state(r, changed=False) for r in rows}

    def audit(self, group: str, *, limit: int | None = None) -> list[AuditEntry]:
        """The group's transitions, oldest first (the newest ``limit`` when given)."""
        with self._lock:
            return _audit.read_audit(self.connection(), group, limit=limit)

    def last_entered(self, group: str, phase: Phase | str) -> Any:
        """When the group last moved into ``phase`` (a datetime), or None."""
        with self._lock:
            return _audit.last_entered(self.connection(), group, phase)

    # -- writes -----------------------------------------------------------------------------
    def register_plan(self, plan: MigrationPlan, *, actor: str = "fsmigrate") -> list[str]:
        """Insert the plan's groups that are missing, as ``planned``; return the names added.

        Existing groups keep their state: re-registering a plan is safe at any time.
        """
        self.plan = plan
        added: list[RoutingState] = []
        with self._lock:
            conn = self.connection()
            for name in plan.groups:
                with conn.transaction():
                    row = conn.execute(
                        f'INSERT INTO "{SCHEMA}".routing (group_name, plan_name, phase, ramp_pct, active_backend,'
                        " version, updated_by) VALUES (%s, %s, 'planned', 0, 'old', 1, %s)"
                        f" ON CONFLICT (group_name) DO NOTHING RETURNING {self._cols}",
                        (name, plan.name, actor),
                    ).fetchone()
                    if row is None:
                        other = conn.execute(
                            f'SELECT plan_name FROM "{SCHEMA}".routing WHERE group_name = %s', (name,)
                        ).fetchone()
                        if other and other[0] not in (None, plan.name):
                            raise RegistryError(
                                f"group '{name}' is already registered by plan '{other[0]}', not '{plan.name}': "
                                "group names share one routing namespace (the Redis key fsmig:routing:<group>); "
                                "rename the group in one of the plans"
                            )
                        continue
                    state = _state(row)
                    _audit.insert_audit(
                        conn, state, None, actor=actor, reason=f"registered by plan {plan.name}", dag_run=None
                    )
                    added.append(state)
        for state in added:
            self._publish(state)
        if added:
            log.info("registered %d new group(s) of plan %s as planned", len(added), plan.name)
        return [s.group for s in added]

    def transition(
        self,
        group: str,
        to_phase: Phase | str,
        *,
        actor: str,
        reason: str,
        ramp_pct: float | None = None,
        expected_version: int | None = None,
        dag_run: DagRunLike = None,
        soak_passed: bool | Any | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> RoutingState:
        """Move ``group`` to ``to_phase`` if the state machine allows it; return the new state.

        :param soak_passed: evidence from the caller that the shadow soak passed, required to leave
            ``shadow``: True, or the group's ``SoakStatus`` from ``airflow_fsmigration.gates.soak``
            (its ``satisfied`` decides, and it is stored with the audit row).
        :param expected_version: apply only on top of this version, else raise
            :class:`VersionConflict`. Without it, a lost race re-reads and re-checks (bounded).
        :param evidence: JSON-able facts stored with the audit row (gate results, soak status).
        :raises IllegalTransition: the move is not allowed now; the message says why and what to do.
        """
        try:
            target = Phase(to_phase)
        except ValueError:
            raise ValueError(
                f"group '{group}': unknown phase {to_phase!r}; phases are {', '.join(p.value for p in Phase)}"
            ) from None
        if target is Phase.ROLLED_BACK:
            return self.rollback(group, reason=reason, actor=actor, dag_run=dag_run, evidence=evidence)
        if target is Phase.FROZEN:
            return self.freeze(group, reason=reason, actor=actor, dag_run=dag_run, evidence=evidence)
        _check_who_why(group, actor, reason)
        ev = dict(evidence or {})
        soak_why = ""
        if soak_passed is not None and not isinstance(soak_passed, bool):
            # A SoakStatus from airflow_fsmigration.gates.soak (duck-typed: the registry does not import gates).
            soak_group = getattr(soak_passed, "group", group)
            if soak_group != group:
                raise ValueError(f"group '{group}': the soak evidence passed is for group '{soak_group}'")
            if hasattr(soak_passed, "to_dict"):
                ev.setdefault("soak", soak_passed.to_dict())
            soak_why = str(getattr(soak_passed, "reason", "") or "")
            soak_passed = bool(soak_passed.satisfied)
        if soak_passed is not None:
            ev.setdefault("soak_passed", bool(soak_passed))
        for attempt in range(self.max_retries + 1):
            current = self.state(group)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflict(group, expected_version, current.version)
            if current.phase is target and (ramp_pct is None or float(ramp_pct) == current.ramp_pct):
                log.info("group %s: already %s, nothing to do", group, current.describe())
                return current  # idempotent: a retried task or a lost race to the same target
            pct = self._check_forward(current, target, ramp_pct, soak_passed, ev, soak_why)
            with self._lock:
                conn = self.connection()
                with conn.transaction():
                    row = conn.execute(
                        f'UPDATE "{SCHEMA}".routing SET phase = %s, ramp_pct = %s, active_backend = %s,'
                        " version = version + 1, updated_at = clock_timestamp(), updated_by = %s"
                        f" WHERE group_name = %s AND version = %s RETURNING {self._cols}",
                        (target.value, pct, backend_for(pct).value, actor, group, current.version),
                    ).fetchone()
                    if row is not None:
                        state = _state(row)
                        _audit.insert_audit(
                            conn, state, current, actor=actor, reason=reason, dag_run=dag_run, evidence=ev
                        )
            if row is not None:
                log.info(
                    "group %s: %s -> %s by %s: %s",
                    group,
                    current.describe(),
                    state.describe(),
                    actor,
                    reason,
                )
                self._publish(state)
                return state
            if expected_version is not None:
                raise VersionConflict(group, expected_version, self.state(group).version)
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise VersionConflict(group, current.version, self.state(group).version)

    def ramp(
        self,
        group: str,
        pct: float,
        *,
        actor: str,
        reason: str,
        expected_version: int | None = None,
        dag_run: DagRunLike = None,
        soak_passed: bool | Any | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> RoutingState:
        """Route ``pct`` % of entities to the new store (100 is the cutover)."""
        target = Phase.CUTOVER if float(pct) >= 100 else Phase.RAMPING
        return self.transition(
            group,
            target,
            actor=actor,
            reason=reason,
            ramp_pct=pct,
            expected_version=expected_version,
            dag_run=dag_run,
            soak_passed=soak_passed,
            evidence=evidence,
        )

    def rollback(
        self,
        group: str,
        *,
        reason: str,
        actor: str,
        dag_run: DagRunLike = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> RoutingState:
        """Send every read of ``group`` back to the old store, now. Always allowed from a serving phase.

        Idempotent: a group that already serves only from the old store is returned unchanged
        (``changed=False``). Refused only after decommission, when there is no old store to go to.
        """
        return self._locked_move(
            group, Phase.ROLLED_BACK, reason=reason, actor=actor, dag_run=dag_run, evidence=evidence
        )

    def freeze(
        self,
        group: str,
        *,
        reason: str,
        actor: str,
        dag_run: DagRunLike = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> RoutingState:
        """Stop the ramp where it stands without moving traffic (for when going back is worse)."""
        return self._locked_move(
            group, Phase.FROZEN, reason=reason, actor=actor, dag_run=dag_run, evidence=evidence
        )

    # -- internals --------------------------------------------------------------------------
    def _locked_move(
        self,
        group: str,
        target: Phase,
        *,
        reason: str,
        actor: str,
        dag_run: DagRunLike,
        evidence: Mapping[str, Any] | None,
    ) -> RoutingState:
        _check_who_why(group, actor, reason)
        state: RoutingState | None = None
        with self._lock:
            conn = self.connection()
            with conn.transaction():
                current = self._locked_current(conn, group)
                if target is Phase.ROLLED_BACK:
                    if current.phase in OLD_ONLY_PHASES:
                        log.info(
                            "group %s: rollback is a no-op, %s already serves only the old store",
                            group,
                            current.describe(),
                        )
                        return current
                    if current.phase not in SERVING_PHASES:
                        raise IllegalTransition(
                            group,
                            current,
                            "rolled_back",
                            "the old store has been decommissioned, so there is nothing to roll back to; "
                            "restore the old store and register the group again",
                        )
                    pct = 0.0
                else:
                    if current.phase is Phase.FROZEN:
                        return current
                    if current.phase not in FREEZABLE_PHASES:
                        raise IllegalTransition(
                            group,
                            current,
                            "frozen",
                            "only a ramp in progress (ramping, cutover or warm) can be frozen",
                        )
                    pct = current.ramp_pct
                row = conn.execute(
                    f'UPDATE "{SCHEMA}".routing SET phase = %s, ramp_pct = %s, active_backend = %s,'
                    " version = version + 1, updated_at = clock_timestamp(), updated_by = %s"
                    f" WHERE group_name = %s RETURNING {self._cols}",
                    (target.value, pct, backend_for(pct).value, actor, group),
                ).fetchone()
                state = _state(row)
                _audit.insert_audit(
                    conn, state, current, actor=actor, reason=reason, dag_run=dag_run, evidence=evidence
                )
        log.warning(
            "group %s: %s -> %s by %s: %s", group, current.describe(), state.describe(), actor, reason
        )
        self._publish(state)
        return state

    def _check_forward(
        self,
        current: RoutingState,
        target: Phase,
        ramp_pct: float | None,
        soak_passed: bool | None,
        evidence: dict[str, Any],
        soak_why: str = "",
    ) -> float:
        """Check a forward move; return the ramp percentage it leads to."""
        steps = None
        if self.plan is not None and current.group in self.plan.groups:
            steps = self.plan.settings_for(current.group).ramp_steps
        pct = check_forward(current, target, ramp_pct, soak_passed, ramp_steps=steps, soak_why=soak_why)
        if target is Phase.READY_TO_DECOMMISSION:
            evidence["warm_window"] = self._check_warm_window(current)
        return pct

    def _check_warm_window(self, current: RoutingState) -> dict[str, Any]:
        from airflow_fsmigration.registry.keepwarm import warm_window_status

        if self.plan is None or current.group not in self.plan.groups:
            raise IllegalTransition(
                current.group,
                current,
                "ready_to_decommission",
                "the registry needs the plan to check the keep-warm window: Registry(url, plan=plan) "
                "or register_plan(plan) first",
            )
        with self._lock:
            status = warm_window_status(
                self.plan, current.group, conn=self.connection(), bucket=self.warm_bucket
            )
        if not status.passed:
            raise IllegalTransition(current.group, current, "ready_to_decommission", status.explain())
        return status.as_dict()

    def supersede(
        self, group: str, mirror_epoch: int, mirror_version: int, *, reason: str
    ) -> RoutingState | None:
        """Raise ``group``'s epoch above a mirror that is ahead of Postgres (a restored registry).

        Returns the state to publish, or None when Postgres, re-read under the row lock, is not
        behind the mirror. See :mod:`.epochs`.
        """
        with self._lock:
            conn = self.connection()
            if self._cols.endswith(", 0"):
                raise RegistryError(
                    f"group '{group}': the registry has no {EPOCH_TABLE} table to record an epoch in; "
                    "run `fsmigrate register PLAN` (it creates it) with a role that may create tables"
                )
            return supersede_row(conn, self._cols, group, mirror_epoch, mirror_version, reason)

    def _publish(self, state: RoutingState) -> None:
        if self.mirror is not None:
            self.mirror.publish(state)
