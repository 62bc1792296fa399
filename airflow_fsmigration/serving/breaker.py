"""The new store's circuit breaker per group, cheap enough for the router's hot path.

pybreaker holds the state machine (consecutive failures, open -> half-open after
``reset_timeout``, close on success); :class:`GroupBreaker` mirrors its state into plain
attributes, so a healthy closed breaker costs the router one attribute check per read.

The read itself never runs under pybreaker's lock: ``CircuitBreaker.call`` holds its lock for
the whole call, so routing reads through it would queue every concurrent read of a group behind
the one in flight (a 100 ms timeout per read would become 100 ms x the queue). Instead the read
runs outside, and only its outcome is told to pybreaker (a no-op or a raising call, held for
microseconds). While the breaker is open, exactly one thread at a time gets the trial read when
``reset_timeout`` has passed; the others are rejected at once and served by the old store.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pybreaker

_monotonic = time.monotonic


def _noop() -> None:
    return None


class BreakerOpen(pybreaker.CircuitBreakerError):
    """The breaker refused the read without trying the store (the router serves the old store)."""


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
        # Held (non-blocking) by the one thread doing the trial read of an open breaker.
        self._trial = threading.Lock()
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
        """Closed, or open long enough that a trial read is due (and no other trial is running)."""
        return not self.is_open or (_monotonic() >= self.open_until and not self._trial.locked())

    def call(self, func: Any, *args: Any) -> Any:
        """Run ``func`` under the breaker; the read never holds a lock that other reads wait on."""
        if not self.is_open:
            if not self.dirty:
                try:
                    return func(*args)
                except Exception as exc:
                    self.dirty = True
                    self._count_failure(exc)
                    raise
            # Failures are being counted: the read runs outside pybreaker, its outcome goes in.
            try:
                result = func(*args)
            except Exception as exc:
                self._count_failure(exc)
                raise
            with contextlib.suppress(Exception):
                self.cb.call(_noop)  # resets the consecutive-failure count
            if not self.is_open:
                self.dirty = False
            return result
        return self._trial_call(func, *args)

    def _trial_call(self, func: Any, *args: Any) -> Any:
        """Open breaker: one thread tries the store, the others are refused without waiting."""
        if not self._trial.acquire(blocking=False):
            raise BreakerOpen(f"group '{self.group}': a trial read of the new store is in flight")
        try:
            if _monotonic() < self.open_until:
                raise BreakerOpen(f"group '{self.group}': the new-store breaker is open")
            try:
                result = func(*args)
            except Exception:
                self.cb.open()  # still failing: open for another reset_timeout (listener re-arms it)
                raise
            self.cb.close()
            return result
        finally:
            self._trial.release()

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
