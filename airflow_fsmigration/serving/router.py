"""``FeatureRouter``: serve each entity from the old or the new store by the current ramp.

Hot path per call (everything else happens on background threads):

1. the group's bucket threshold from an in-process dict (kept current by a pub/sub listener);
2. CRC-32 bucketing of each entity id (see :mod:`.bucketing`);
3. new-side ids: one read of the new store unless its circuit breaker is open; any failure
   sends those ids to the old store instead, with no error to the caller;
4. one read of the old store for the rest;
5. one deque append per backend read for the stats (flushed to Redis per time bucket).

The breaker is ``pybreaker`` (its ``call()`` costs ~1.3 us here), but the router only goes
through it while failures are being counted or a trial is due; a healthy closed breaker costs
one attribute check. A trip is published on ``fsmig:breaker`` so other processes open theirs
without waiting for their own failures; each process then probes the store on its own timer.

Routing survives its own dependencies: when the mirror's Redis does not answer (or restarts
without the key) the router keeps its last-known routing, logging its age; a fresh router serves
the old store. Routers report what they apply (``fsmig:router:{instance}``) for ``status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.routing_wire import report_key
from airflow_fsmigration.serving.breaker import BreakerOpen, GroupBreaker
from airflow_fsmigration.serving.bucketing import BUCKETS, bucket_of, split
from airflow_fsmigration.serving.routing import (
    BREAKER_CHANNEL,
    ROUTING_CHANNEL,
    RouteState,
    RoutingView,
    parse_state,
    routing_key,
)
from airflow_fsmigration.serving.shadow_sample import ShadowSampling, row_diffs, values_match
from airflow_fsmigration.serving.stats import StatsRecorder

__all__ = ["FeatureRouter", "GroupBreaker", "ServingError", "build_router", "row_diffs", "values_match"]

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan
    from airflow_fsmigration.serving.backends import Backend, Rows

log = logging.getLogger("airflow_fsmigration.serving")

_now_ns = time.perf_counter_ns
_monotonic = time.monotonic


class ServingError(RuntimeError):
    """The old store failed: there is nothing left to fall back to."""


class FeatureRouter(ShadowSampling, RoutingView):
    """Route feature reads between the legacy store and the new store by the registry's ramp.

    :param redis_client: ``redis.Redis`` (bytes responses) holding the routing mirror; also used
        for pub/sub, breaker trips and stats unless ``stats_client`` is given. Give it a
        ``socket_timeout`` so that a hung Redis is noticed instead of blocking the listener
        (routing then stays at its last-known state).
    :param old_backend: the legacy store (e.g. :class:`~.backends.LegacyRedisBackend`).
    :param new_backend: the new store (e.g. :class:`~.backends.PostgresBackend`).
    :param plan: the migration plan; gives shadow comparisons their per-feature tolerances.
    :param breaker_fail_max: consecutive new-store failures that open a group's breaker.
    :param breaker_reset_s: how long an open breaker waits before a trial read.
    :param share_trips: publish local trips and open on trips published by other processes.
    :param stats_bucket_s: stats time bucket (seconds) in Redis.
    :param stats_flush_s: how often stats are flushed (``0``: only on :meth:`flush_stats`).
    :param stats_retention_s: how long stats live in Redis.
    :param shadow_rate: share of old-served requests also read from the new store (0 disables).
    :param shadow_max_per_s: at most this many shadow reads per second (token bucket).
    :param shadow_max_entities: at most this many entities compared per shadow read.
    :param refresh_s: full re-read of the mirror this often, repairing missed publishes.
    :param report_s: how often the router reports its applied routing to Redis (and at once
        after a change); the report lives ``3 x report_s`` (at least 10 s).
    :param listen: run the pub/sub listener (``False``: state is read once per group and on
        :meth:`refresh`; for tools and tests).
    """

    def __init__(
        self,
        redis_client: Any,
        old_backend: Backend,
        new_backend: Backend,
        *,
        plan: MigrationPlan | None = None,
        breaker_fail_max: int = 5,
        breaker_reset_s: float = 10.0,
        share_trips: bool = True,
        stats_client: Any = None,
        stats_bucket_s: int = 10,
        stats_flush_s: float = 1.0,
        stats_retention_s: int = 14 * 86400,
        shadow_rate: float = 0.0,
        shadow_max_per_s: float = 50.0,
        shadow_max_entities: int = 20,
        refresh_s: float = 5.0,
        report_s: float = 2.0,
        listen: bool = True,
    ) -> None:
        self.redis = redis_client
        self.old = old_backend
        self.new = new_backend
        self.plan = plan
        self.instance_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.breaker_fail_max = breaker_fail_max
        self.breaker_reset_s = breaker_reset_s
        self.share_trips = share_trips
        self.refresh_s = refresh_s
        self.report_s = report_s
        self._confirmed_at: float | None = None
        self._report_due = False
        self._mirror_lost_at: float | None = None
        self._missing: set[str] = set()  # groups whose key is missing (warned once each)
        self.stats = StatsRecorder(
            stats_client or redis_client,
            bucket_s=stats_bucket_s,
            flush_interval_s=stats_flush_s,
            retention_s=stats_retention_s,
        )
        # The stats hot path is one deque append; bound here to skip a method frame per read.
        self._record = self.stats._samples.append
        # Hot-path state: group -> bucket threshold; plain dict reads/writes are atomic under the GIL.
        self._thresholds: dict[str, int] = {}
        self._states: dict[str, RouteState | None] = {}
        self._breakers: dict[str, GroupBreaker] = {}
        self._breaker_lock = threading.Lock()
        self._stop = threading.Event()
        self.fallbacks = 0
        self._fallback_logged: dict[str, float] = {}
        self.routing_updates = 0
        # Breaker trips go out on a thread: a failing request must not also wait for a PUBLISH.
        self._trip_outbox: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        # Shadow sampling (see :mod:`.shadow_sample`).
        self._init_shadow(shadow_rate, shadow_max_per_s, shadow_max_entities)
        self._subscribed = threading.Event()
        if share_trips:
            self._start(self._publish_trips, "fsmig-breaker-publish")
        if shadow_rate > 0:
            self._start(self._shadow_worker, "fsmig-shadow")
        if listen:
            self._start(self._listen, "fsmig-routing-listener")

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the listener is subscribed (so no publish after this is missed)."""
        return self._subscribed.wait(timeout)

    def close(self) -> None:
        """Stop the threads, flush stats, close the backends."""
        self._stop.set()
        self._trip_outbox.put(None)
        with contextlib.suppress(queue.Full):
            self._shadow_queue.put_nowait(None)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        with contextlib.suppress(Exception):
            self.redis.delete(report_key(self.instance_id))
        self.stats.close()
        for backend in (self.new, self.old):
            with contextlib.suppress(Exception):
                backend.close()

    def __enter__(self) -> FeatureRouter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing state (rules in :class:`.routing.RoutingView`) -----------------------------
    def _load(self, group: str) -> int:
        """First sight of a group: read its state once (old store if Redis does not answer)."""
        import redis

        try:
            raw = self.redis.get(routing_key(group))
        except redis.RedisError as exc:
            log.warning("group %s: routing state unreadable (%s); serving from the old store", group, exc)
            self._apply(group, None)
        else:
            self._apply_raw(group, raw)
        return self._thresholds[group]

    def refresh(self) -> None:
        """Re-read the mirror of every group seen so far (repairs a missed publish)."""
        groups = list(self._thresholds)
        raws = self.redis.mget([routing_key(g) for g in groups]) if groups else []
        self._mirror_ok()
        for group, raw in zip(groups, raws, strict=True):
            self._apply_raw(group, raw)

    def _listen(self) -> None:
        import redis

        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                channels = [ROUTING_CHANNEL] + ([BREAKER_CHANNEL] if self.share_trips else [])
                pubsub.subscribe(*channels)
                # Subscribed first, then read: a change between the two is caught either way.
                self.refresh()
                self._subscribed.set()
                backoff = 0.1
                next_refresh = _monotonic() + self.refresh_s
                next_report = 0.0
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=min(0.5, self.refresh_s, self.report_s))
                    if msg is not None and msg.get("type") == "message":
                        self._confirmed_at = _monotonic()
                        self._on_message(msg["channel"], msg["data"])
                    if _monotonic() >= next_refresh:
                        self.refresh()
                        next_refresh = _monotonic() + self.refresh_s
                    if self._report_due or _monotonic() >= next_report:
                        self._report()  # never raises: a report is for status, not for serving
                        next_report = _monotonic() + self.report_s
            except redis.RedisError as exc:
                self._subscribed.clear()
                if not self._stop.is_set():
                    if self._mirror_lost_at is None:
                        self._mirror_lost_at = _monotonic()
                        age = self.routing_age_s()
                        log.warning(
                            "routing listener lost Redis (%s); keeping the last-known routing "
                            "(%s; confirmed %s s ago) until it is back",
                            exc,
                            self.describe_routing(),
                            "-" if age is None else f"{age:.1f}",
                        )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
            except Exception:  # pragma: no cover - keep listening whatever one message did
                log.exception("routing listener error")
                self._stop.wait(backoff)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _on_message(self, channel: bytes | str, data: bytes | str) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if channel == ROUTING_CHANNEL:
            state = parse_state(data)
            if state is not None:
                self._apply(state.group, state)
            return
        if channel == BREAKER_CHANNEL:
            try:
                trip = json.loads(data)
                group, origin = str(trip["group"]), str(trip["origin"])
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed breaker message %r", data[:200])
                return
            if origin != self.instance_id and trip.get("state") == "open":
                log.warning(
                    "group %s: new-store breaker opened by process %s; opening here too", group, origin
                )
                self.breaker(group).open_remote()

    def _publish_trips(self) -> None:
        while True:
            group = self._trip_outbox.get()
            if group is None:
                return
            payload = json.dumps(
                {"group": group, "state": "open", "origin": self.instance_id, "at": time.time()}
            )
            try:
                self.redis.publish(BREAKER_CHANNEL, payload)
            except Exception as exc:
                log.warning("group %s: could not share the breaker trip (%s)", group, exc)

    def _on_trip(self, group: str) -> None:
        log.warning(
            "group %s: new-store circuit breaker opened after %s consecutive failures; serving from the old store",
            group,
            self.breaker_fail_max,
        )
        if self.share_trips:
            self._trip_outbox.put(group)

    def breaker(self, group: str) -> GroupBreaker:
        b = self._breakers.get(group)
        if b is None:
            with self._breaker_lock:
                b = self._breakers.get(group)
                if b is None:
                    b = self._breakers[group] = GroupBreaker(
                        group, self.breaker_fail_max, self.breaker_reset_s, self._on_trip
                    )
        return b

    def state(self, group: str) -> RouteState | None:
        """The routing state this process currently applies (``None``: old store)."""
        if group not in self._thresholds:
            self._load(group)
        return self._states.get(group)

    def ramp_pct(self, group: str) -> float:
        """The share of entities this process currently sends to the new store, in %."""
        t = self._thresholds.get(group)
        return (self._load(group) if t is None else t) / 100

    def route(self, group: str, entity_ids: Sequence[str]) -> tuple[list[str], list[str]]:
        """Partition ids into (old, new) by the current ramp, ignoring the breaker."""
        t = self._thresholds.get(group)
        if t is None:
            t = self._load(group)
        if t <= 0:
            return list(entity_ids), []
        if t >= BUCKETS:
            return [], list(entity_ids)
        return split(entity_ids, t)

    # -- reads ----------------------------------------------------------------------------
    def get_features(self, group: str, entity_ids: Sequence[str]) -> Rows:
        """Features of ``entity_ids`` (``{entity_id: {feature: value}}``; unknown entities absent).

        Raises :class:`ServingError` only when the old store fails; new-store failures fall
        back to the old store silently (counted in stats and ``fallbacks``).
        """
        t = self._thresholds.get(group)
        if t is None:
            t = self._load(group)
        old_ids: Sequence[str]
        new_ids: Sequence[str]
        if t <= 0:
            old_ids, new_ids = entity_ids, ()
        elif t >= BUCKETS:
            old_ids, new_ids = (), entity_ids
        elif len(entity_ids) == 1:  # the common single-entity lookup: no lists to build
            if bucket_of(entity_ids[0]) < t:
                old_ids, new_ids = (), entity_ids
            else:
                old_ids, new_ids = entity_ids, ()
        else:
            old_ids, new_ids = split(entity_ids, t)
        rows: Rows | None = None
        if new_ids:
            b = self._breakers.get(group) or self.breaker(group)
            if b.allows():
                start = _now_ns()
                try:
                    rows = b.call(self.new.read, group, new_ids)
                except BreakerOpen:  # another thread holds the trial read: no store was tried
                    self.fallbacks += len(new_ids)
                    self.stats.record_rejected(group)
                    old_ids = [*old_ids, *new_ids]
                except Exception as exc:
                    self._record((group, "new", (_now_ns() - start) // 1000, True))
                    self._fell_back(group, exc, len(new_ids))
                    old_ids = [*old_ids, *new_ids]
                else:
                    self._record((group, "new", (_now_ns() - start) // 1000, False))
            else:
                self.fallbacks += len(new_ids)
                self.stats.record_rejected(group)
                old_ids = [*old_ids, *new_ids]
        if not old_ids:
            return rows if rows is not None else {}
        start = _now_ns()
        try:
            old_rows = self.old.read(group, old_ids)
        except Exception as exc:
            self._record((group, "old", (_now_ns() - start) // 1000, True))
            raise ServingError(
                f"group '{group}': the legacy store failed for {len(old_ids)} entities "
                f"({type(exc).__name__}: {exc}); no fallback is left"
            ) from exc
        self._record((group, "old", (_now_ns() - start) // 1000, False))
        if self.shadow_rate and old_rows and random.random() < self.shadow_rate:
            self._maybe_shadow(group, old_ids, old_rows)
        if rows:
            old_rows.update(rows)
        return old_rows

    def read_backend(
        self, group: str, entity_ids: Sequence[str], backend: str, *, record: bool = False
    ) -> Rows:
        """Read one backend directly, bypassing ramp and breaker (load tests, diagnostics).

        Errors propagate. ``record=True`` also counts the read in the serving stats; load tests
        leave it off so synthetic traffic does not move a bake gate.
        """
        store = {"old": self.old, "new": self.new}.get(backend)
        if store is None:
            raise ValueError(f"backend must be 'old' or 'new', got {backend!r}")
        if not record:
            return store.read(group, entity_ids)
        start = _now_ns()
        try:
            rows = store.read(group, entity_ids)
        except Exception:
            self.stats.record(group, backend, (_now_ns() - start) // 1000, True)
            raise
        self.stats.record(group, backend, (_now_ns() - start) // 1000)
        return rows

    def _fell_back(self, group: str, exc: Exception, n: int) -> None:
        """Count a fallback; log it at most every 10 s per group (a dead store fails every read)."""
        self.fallbacks += n
        now = _monotonic()
        if now - self._fallback_logged.get(group, -1e9) >= 10:
            self._fallback_logged[group] = now
            log.warning(
                "group %s: new store read failed (%s: %s); served %d entities from the old store "
                "(breaker %s; further failures in the next 10 s are only counted)",
                group,
                type(exc).__name__,
                exc,
                n,
                self.breaker(group).state,
            )

    def flush_stats(self) -> int:
        """Write the stats recorded so far to Redis now (returns samples written)."""
        return self.stats.flush()


def build_router(
    plan: MigrationPlan | str | os.PathLike[str],
    redis_url: str,
    new_store_url: str,
    *,
    socket_timeout_s: float = 1.0,
    pool_size: int = 4,
    statement_timeout_ms: int = 2000,
    read_timeout_ms: float | dict[str, float] | None = None,
    mirror_url: str | None = None,
    **kwargs: Any,
) -> FeatureRouter:
    """A router over the plan's legacy Redis and a Postgres-wire new store, from URLs.

    For model servers that are configured by URL, for tools, and as a picklable factory
    (``functools.partial(build_router, plan_path, redis_url, pg_url)``) for multi-process load
    tests. ``read_timeout_ms`` is the new store's client-side deadline per read (default: from
    each group's SLA, see :func:`~.backends.read_timeout_ms`). ``mirror_url`` is the Redis of the
    plan's ``routing_mirror`` connection when it has one (routing, reports, trips and stats live
    there; default: the legacy Redis). ``kwargs`` go to :class:`FeatureRouter`.
    """
    import redis

    from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend

    if isinstance(plan, (str, os.PathLike)):
        from pathlib import Path

        from airflow_fsmigration.plan import load_plan

        plan = load_plan(Path(plan))
    client = redis.Redis.from_url(
        redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
    )
    control = client
    if mirror_url is not None and mirror_url != redis_url:
        control = redis.Redis.from_url(
            mirror_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
    return FeatureRouter(
        control,
        LegacyRedisBackend.from_plan(client, plan),
        PostgresBackend(
            new_store_url,
            plan,
            pool_size=pool_size,
            statement_timeout_ms=statement_timeout_ms,
            read_timeout_ms=read_timeout_ms,
        ),
        plan=plan,
        **kwargs,
    )
