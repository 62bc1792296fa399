"""Routing phases, the legal moves between them, and the errors that explain a refusal.

The state machine is data (:data:`LEGAL`), so the CLI, the DAGs and the docs all read the same
table. Every refusal says why and what to do, because the person reading it is usually on call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from airflow_fsmigration.routing_wire import encode_doc
from airflow_fsmigration.runbook import rollback_command  # noqa: F401 - re-exported


class Phase(StrEnum):
    PLANNED = "planned"
    SHADOW = "shadow"
    RAMPING = "ramping"
    CUTOVER = "cutover"
    WARM = "warm"
    READY_TO_DECOMMISSION = "ready_to_decommission"
    DECOMMISSIONED = "decommissioned"
    ROLLED_BACK = "rolled_back"
    FROZEN = "frozen"


class Backend(StrEnum):
    OLD = "old"
    NEW = "new"


# Phases in which some traffic may be on the new store and the old store still exists: a
# rollback is always allowed from these.
SERVING_PHASES = frozenset(
    {Phase.RAMPING, Phase.CUTOVER, Phase.WARM, Phase.READY_TO_DECOMMISSION, Phase.FROZEN}
)
# Phases where every read already goes to the old store: a rollback is a no-op there.
OLD_ONLY_PHASES = frozenset({Phase.PLANNED, Phase.SHADOW, Phase.ROLLED_BACK})
FREEZABLE_PHASES = frozenset({Phase.RAMPING, Phase.CUTOVER, Phase.WARM})

# to_phase -> the phases it may be entered from (rollback and freeze have their own rules above).
LEGAL: dict[Phase, frozenset[Phase]] = {
    Phase.PLANNED: frozenset({Phase.SHADOW, Phase.ROLLED_BACK}),
    Phase.SHADOW: frozenset({Phase.PLANNED, Phase.ROLLED_BACK}),
    Phase.RAMPING: frozenset({Phase.SHADOW, Phase.RAMPING, Phase.CUTOVER, Phase.FROZEN}),
    Phase.CUTOVER: frozenset({Phase.RAMPING, Phase.FROZEN}),
    Phase.WARM: frozenset({Phase.CUTOVER, Phase.FROZEN}),
    Phase.READY_TO_DECOMMISSION: frozenset({Phase.WARM}),
    Phase.DECOMMISSIONED: frozenset({Phase.READY_TO_DECOMMISSION}),
    Phase.ROLLED_BACK: SERVING_PHASES,
    Phase.FROZEN: FREEZABLE_PHASES,
}

# What each phase implies for traffic, when the phase alone decides it.
FIXED_PCT: dict[Phase, float] = {
    Phase.PLANNED: 0.0,
    Phase.SHADOW: 0.0,
    Phase.ROLLED_BACK: 0.0,
    Phase.CUTOVER: 100.0,
    Phase.WARM: 100.0,
    Phase.READY_TO_DECOMMISSION: 100.0,
    Phase.DECOMMISSIONED: 100.0,
}

# What to do next, quoted in refusals.
_HINTS: dict[Phase, str] = {
    Phase.PLANNED: "start the shadow phase first (transition to 'shadow')",
    Phase.SHADOW: "let the shadow soak pass, then ramp with soak_passed=True",
    Phase.RAMPING: "ramp to the next step, or to 100 to cut over",
    Phase.CUTOVER: "move to 'warm' to start the keep-warm window",
    Phase.WARM: "wait until the keep-warm window has ended with warmth verified every day",
    Phase.READY_TO_DECOMMISSION: "decommission the old store",
    Phase.DECOMMISSIONED: "nothing: the migration of this group is finished",
    Phase.ROLLED_BACK: "fix the cause, return to 'shadow' and pass the soak again before ramping",
    Phase.FROZEN: "resume with a ramp, or roll back",
}


class RegistryError(Exception):
    """Base class of registry errors."""


class UnknownGroup(RegistryError, LookupError):
    def __init__(self, group: str) -> None:
        super().__init__(
            f"group '{group}' is not in the routing registry: run `fsmigrate status PLAN` to list the groups, "
            "or register the plan (Registry.register_plan) if it is new"
        )
        self.group = group


class IllegalTransition(RegistryError):
    """A move the state machine forbids; the message says why and what to do instead."""

    def __init__(self, group: str, current: RoutingState | None, target: str, why: str) -> None:
        where = f" (now {current.describe()})" if current else ""
        hint = f" Next: {_HINTS[current.phase]}." if current else ""
        super().__init__(f"group '{group}': cannot move to {target}{where}: {why}.{hint}")
        self.group = group
        self.current = current
        self.target = target
        self.why = why


class VersionConflict(RegistryError):
    """Someone else changed the group since the caller read it (compare-and-set failed)."""

    def __init__(self, group: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"group '{group}': expected routing version {expected} but it is {actual}: another writer "
            "changed it first. Re-read the state (`fsmigrate status PLAN`), re-check the decision, and retry."
        )
        self.group = group
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class DagRunRef:
    """Which DAG run asked for a change, for the audit log."""

    dag_id: str
    run_id: str


@dataclass(frozen=True)
class RoutingState:
    """One group's routing row.

    ``changed`` is True only on the state returned by a call that wrote a new version; reads and
    idempotent no-ops (rolling back a group already on the old store, freezing a frozen one) are False.
    """

    group: str
    phase: Phase
    ramp_pct: float
    active_backend: Backend
    version: int
    updated_at: datetime
    plan: str | None = None
    changed: bool = field(default=True, compare=False)

    def describe(self) -> str:
        return f"{self.phase.value} at {self.ramp_pct:g}% (version {self.version})"

    def mirror_doc(self) -> dict[str, Any]:
        """The JSON document of the Redis mirror (the contract in :mod:`airflow_fsmigration.routing_wire`)."""
        return json.loads(self.mirror_json())

    def mirror_json(self) -> str:
        return encode_doc(
            group=self.group,
            phase=self.phase.value,
            ramp_pct=self.ramp_pct,
            active_backend=self.active_backend.value,
            version=self.version,
            updated_at=self.updated_at.isoformat(),
        )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    group: str
    version: int
    at: datetime
    actor: str
    reason: str
    from_phase: Phase | None
    from_pct: float | None
    to_phase: Phase
    to_pct: float
    dag_id: str | None
    run_id: str | None
    evidence: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


def backend_for(pct: float) -> Backend:
    """``active_backend`` is "new" exactly when some entities are routed to the new store."""
    return Backend.NEW if pct > 0 else Backend.OLD


def check_forward(
    current: RoutingState,
    target: Phase,
    ramp_pct: float | None,
    soak_passed: bool | None,
    *,
    ramp_steps: Sequence[float] | None = None,
    soak_why: str = "",
) -> float:
    """Check a forward move against the state machine; return the ramp percentage it leads to.

    Pure (the keep-warm window, which needs the database, is checked by the registry itself).
    :param ramp_steps: the plan's ramp steps of the group; None skips the no-skipping rule.
    """
    group = current.group
    allowed = LEGAL[target]
    if current.phase not in allowed:
        froms = ", ".join(sorted(p.value for p in allowed))
        why = f"{target.value} can only be entered from {froms}"
        if current.phase is Phase.ROLLED_BACK and target in (Phase.RAMPING, Phase.CUTOVER):
            why = "the group was rolled back; traffic may only move again after a fresh shadow soak"
        raise IllegalTransition(group, current, target.value, why)
    if target is Phase.RAMPING:
        if ramp_pct is None:
            raise IllegalTransition(group, current, "ramping", "a ramp needs ramp_pct (1..99)")
        pct = float(ramp_pct)
        if not 0 < pct < 100:
            why = (
                "ramp_pct 100 is a cutover: call ramp(group, 100) or transition to 'cutover'"
                if pct >= 100
                else f"ramp_pct must be in (0, 100), got {ramp_pct}; use rollback to send all traffic back"
            )
            raise IllegalTransition(group, current, "ramping", why)
    else:
        pct = FIXED_PCT[target]
        if ramp_pct is not None and float(ramp_pct) != pct:
            raise IllegalTransition(
                group, current, target.value, f"{target.value} means {pct:g}%, not {ramp_pct}%"
            )
    if current.phase is Phase.SHADOW and target in (Phase.RAMPING, Phase.CUTOVER) and soak_passed is not True:
        raise IllegalTransition(
            group,
            current,
            f"{target.value} at {pct:g}%",
            "no traffic moves before the shadow soak has passed (soak_passed was "
            f"{soak_passed!r}{': ' + soak_why if soak_why else ''}); pass the group's "
            "`compare.results` SoakStatus (or soak_passed=True) once it is satisfied",
        )
    if pct > current.ramp_pct and ramp_steps is not None:
        nxt = next((s for s in ramp_steps if s > current.ramp_pct), 100)
        if pct > nxt:
            raise IllegalTransition(
                group,
                current,
                f"{target.value} at {pct:g}%",
                f"it skips the {nxt}% step of the plan's ramp_steps {list(ramp_steps)}; ramp to {nxt}% and bake first",
            )
    return pct
