"""The new store's circuit breaker per group, cheap enough for the router's hot path.

pybreaker holds the state machine (consecutive failures, open -> half-open after
``reset_timeout``, close on success); :class:`GroupBreaker` mirrors its state into plain
attributes, so a healthy closed breaker costs the router one attribute check per read.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pybreaker

_monotonic = time.monotonic


class _BreakerListener(pybreaker.CircuitBreakerListener):
    """Mirror pybreaker's state into plain attributes the hot path can read for free."""

    def __init__(self, breaker: GroupBreaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        b = self._breaker
        name = new_state.name
        if name == pybreaker.STATE_OPEN:
            b.open_until = _monotonic() + cb.reset_timeout
            b.is_open = True
            b.trips += 1
            if not b.applying_remote:
                b.on_trip(b.group)
        elif name == pybreaker.STATE_CLOSED:
            b.is_open = False
            b.dirty = False


class GroupBreaker:
    """The new store's circuit breaker for one group, in process.

    ``is_open``/``open_until``/``dirty`` are the hot-path view; pybreaker holds the state machine
    (consecutive failure count, open -> half-open after ``reset_timeout``, close on success).
    """

    def __init__(self, group: str, fail_max: int, reset_timeout_s: float, on_trip: Any) -> None:
        self.group = group
        self.is_open = False
        self.open_until = 0.0
        self.dirty = False
        self.trips = 0
        self.applying_remote = False
        self.on_trip = on_trip
        self.cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            listeners=[_BreakerListener(self)],
            name=f"fsmig-new-store:{group}",
        )

    @property
    def state(self) -> str:
        return str(self.cb.current_state)

    def allows(self) -> bool:
        """Closed, or open long enough that a trial read is due."""
        return not self.is_open or _monotonic() >= self.open_until

    def call(self, func: Any, *args: Any) -> Any:
        """Run ``func`` under the breaker: directly when healthy, through pybreaker otherwise."""
        if not self.is_open and not self.dirty:
            try:
                return func(*args)
            except Exception as exc:
                self.dirty = True
                self._count_failure(exc)
                raise
        result = self.cb.call(func, *args)
        if not self.is_open:
            self.dirty = False
        return result

    def _count_failure(self, exc: Exception) -> None:
        def _raise() -> None:
            raise exc

        with contextlib.suppress(Exception):
            self.cb.call(_raise)

    def open_remote(self) -> None:
        """Open because another process tripped (no re-publish)."""
        if self.is_open:
            return
        self.applying_remote = True
        try:
            self.cb.open()
        finally:
            self.applying_remote = False
