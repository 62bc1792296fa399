"""The Redis mirror of the registry's routing state, as serving reads it.

The wire format (key, channel, canonical JSON and what is unreadable) is
:mod:`airflow_fsmigration.routing_wire`, the one module the registry and serving share.
To a router with no state yet, a missing or unreadable key (or Redis down) means the old store
at 0%: the safe side. A router that holds a state keeps it through a mirror outage or a missing
key (see :mod:`.router`). States are ordered by ``(epoch, version)`` (:attr:`RouteState.order`).
``rolled_back`` serves 0% new whatever ``ramp_pct`` says; ``frozen`` keeps its ``ramp_pct``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_fsmigration.routing_wire import CHANNEL as ROUTING_CHANNEL
from airflow_fsmigration.routing_wire import (
    decode_doc,
    encode_doc,
    encode_report,
    order_key,
    report_key,
    routing_key,
)
from airflow_fsmigration.serving.bucketing import threshold_for

__all__ = [
    "BREAKER_CHANNEL",
    "ROUTING_CHANNEL",
    "ZERO_PHASES",
    "RouteState",
    "RoutingView",
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
    epoch: int = 0

    @property
    def order(self) -> tuple[int, int]:
        """``(epoch, version)``: the newer state is the higher one (epochs survive registry restores)."""
        return (self.epoch, self.version)

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
            epoch=self.epoch,
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
        epoch=order_key(doc)[0],
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
    epoch: int = 0,
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
        epoch=epoch,
    )
    payload = state.to_json()
    pipe = client.pipeline(transaction=True)
    pipe.set(routing_key(group), payload)
    pipe.publish(ROUTING_CHANNEL, payload)
    pipe.execute()
    return state


class RoutingView:
    """The routing a router applies: last-known state per group, its age, what it reports.

    Mixed into :class:`~.router.FeatureRouter`, which fills ``_thresholds``/``_states`` from the
    mirror. The rules that keep serving through the router's own dependencies failing:

    * a state is taken only when its ``(epoch, version)`` is not below the one held (pub/sub and
      a refresh can cross; a restored registry raises the epoch);
    * a missing key, or Redis not answering, keeps the last-known state (its age is logged and
      reported); only a router that never read a state serves the old store by default;
    * an unreadable document still means the old store (someone wrote garbage: the safe side).
    """

    _thresholds: dict[str, int]
    _states: dict[str, RouteState | None]
    _confirmed_at: float | None
    _report_due: bool
    _mirror_lost_at: float | None
    _missing: set[str]
    _breakers: dict[str, Any]
    redis: Any
    instance_id: str
    report_s: float
    routing_updates: int

    def _apply(self, group: str, state: RouteState | None) -> None:
        held = self._states.get(group)
        if state is not None and held is not None and state.order < held.order:
            return
        self._states[group] = state
        threshold = state.threshold if state is not None else 0
        if self._thresholds.get(group) != threshold or (held is None) != (state is None):
            self._report_due = True
        if self._thresholds.get(group) != threshold:
            log.info(
                "group %s: routing now %s%% new (phase %s, epoch %s, version %s)",
                group,
                threshold / 100,
                state.phase if state else "none",
                state.epoch if state else "-",
                state.version if state else "-",
            )
            self.routing_updates += 1
        elif held is not None and state is not None and held.order != state.order:
            self._report_due = True
        self._thresholds[group] = threshold

    def _apply_raw(self, group: str, raw: Any) -> None:
        """Apply a mirror read of ``group``; a missing key keeps a held state."""
        if raw is None and self._states.get(group) is not None:
            held = self._states[group]
            assert held is not None
            if group in self._missing:
                return
            self._missing.add(group)
            log.warning(
                "group %s: routing key %s is missing from Redis; keeping the last-known routing "
                "(%s at %s%%, epoch %s, version %s); run `fsmigrate reconcile PLAN` to rewrite it",
                group,
                routing_key(group),
                held.phase,
                held.threshold / 100,
                held.epoch,
                held.version,
            )
            return
        self._missing.discard(group)
        self._apply(group, parse_state(raw, group))

    def _mirror_ok(self) -> None:
        """The mirror answered: the routing held is current again."""
        import time

        now = time.monotonic()
        if self._mirror_lost_at is not None:
            log.warning(
                "routing mirror answers again after %.1f s; routing re-read", now - self._mirror_lost_at
            )
            self._mirror_lost_at = None
        self._confirmed_at = now

    def _report(self) -> None:
        """Tell Redis what this router applies; a failure only costs ``status`` its view."""
        import time

        groups = self.applied()
        for group, doc in groups.items():
            b = self._breakers.get(group)
            doc["breaker"] = b.state if b is not None else "closed"
        text = encode_report(self.instance_id, time.time(), self.routing_age_s(), groups)
        self._report_due = False
        try:
            self.redis.set(report_key(self.instance_id), text, ex=max(10, int(3 * self.report_s) + 1))
        except Exception as exc:
            log.debug("routing report not written (%s)", exc)

    def routing_age_s(self) -> float | None:
        """Seconds since the mirror last answered (None: never); the age of the last-known routing."""
        import time

        return None if self._confirmed_at is None else time.monotonic() - self._confirmed_at

    def applied(self) -> dict[str, dict[str, Any]]:
        """What this router serves per group (the report ``fsmigrate status`` compares)."""
        out: dict[str, dict[str, Any]] = {}
        for group, threshold in list(self._thresholds.items()):
            st = self._states.get(group)
            out[group] = {
                "epoch": st.epoch if st else None,
                "version": st.version if st else None,
                "phase": st.phase if st else None,
                "ramp_pct": st.ramp_pct if st else None,
                "serving_pct": threshold / 100,
            }
        return out

    def describe_routing(self) -> str:
        """One line of the routing held, for logs during an outage."""
        parts = [
            f"{g} {t / 100:g}% new (v{s.version if s else '-'})"
            for g, t in list(self._thresholds.items())
            for s in (self._states.get(g),)
        ]
        return ", ".join(parts) or "no group seen yet"
