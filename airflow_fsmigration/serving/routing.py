"""The Redis mirror of the registry's routing state, as serving reads it.

The wire format (key, channel, canonical JSON and what is unreadable) is
:mod:`airflow_fsmigration.routing_wire`, the one module the registry and serving share.
A missing or unreadable key (or Redis down) means the old store at 0%: the safe side.
``rolled_back`` serves 0% new whatever ``ramp_pct`` says; ``frozen`` keeps its ``ramp_pct``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_fsmigration.routing_wire import CHANNEL as ROUTING_CHANNEL
from airflow_fsmigration.routing_wire import decode_doc, encode_doc, routing_key
from airflow_fsmigration.serving.bucketing import threshold_for

__all__ = [
    "BREAKER_CHANNEL",
    "ROUTING_CHANNEL",
    "ZERO_PHASES",
    "RouteState",
    "parse_state",
    "publish_state",
    "routing_key",
]

log = logging.getLogger("airflow_fsmigration.serving")

BREAKER_CHANNEL = "fsmig:breaker"
ZERO_PHASES = frozenset({"rolled_back"})


@dataclass(frozen=True)
class RouteState:
    """One group's routing state as mirrored to Redis."""

    group: str
    phase: str
    ramp_pct: float
    active_backend: str
    version: int
    updated_at: str | None = None

    @property
    def threshold(self) -> int:
        """Bucket bound: entities whose bucket is below it are served by the new store."""
        if self.phase in ZERO_PHASES:
            return 0
        return threshold_for(min(max(float(self.ramp_pct), 0.0), 100.0))

    def to_json(self) -> str:
        return encode_doc(
            group=self.group,
            phase=self.phase,
            ramp_pct=self.ramp_pct,
            active_backend=self.active_backend,
            version=self.version,
            updated_at=self.updated_at,
        )


def parse_state(raw: Any, group: str | None = None) -> RouteState | None:
    """Parse a mirrored state; ``None`` (meaning: old store) when absent or malformed."""
    if raw is None:
        return None
    doc, why = decode_doc(raw)
    if doc is None:
        log.warning(
            "routing state for group %s is unreadable (%s); serving from the old store", group or "?", why
        )
        return None
    state = RouteState(
        group=doc["group"],
        phase=doc["phase"],
        ramp_pct=float(doc["ramp_pct"]),
        active_backend=doc["active_backend"],
        version=doc["version"],
        updated_at=doc["updated_at"],
    )
    if group is not None and state.group != group:
        log.warning(
            "routing key of group %s holds state of group %s; serving from the old store", group, state.group
        )
        return None
    return state


def publish_state(
    client: Any,
    group: str,
    *,
    phase: str,
    ramp_pct: float,
    active_backend: str = "old",
    version: int = 1,
) -> RouteState:
    """SET and PUBLISH a routing state in the registry's format (tests, benchmarks, repairs).

    The registry owns routing; this writes the mirror only and is no substitute for a
    registry transition.
    """
    state = RouteState(
        group=group,
        phase=phase,
        ramp_pct=ramp_pct,
        active_backend=active_backend,
        version=version,
        updated_at=datetime.now(UTC).isoformat(),
    )
    payload = state.to_json()
    pipe = client.pipeline(transaction=True)
    pipe.set(routing_key(group), payload)
    pipe.publish(ROUTING_CHANNEL, payload)
    pipe.execute()
    return state
