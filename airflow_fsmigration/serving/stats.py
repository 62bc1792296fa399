"""Serving latency and error stats: recorded in process, flushed to Redis per time bucket.

A request must not pay for a Redis write (nor for a Python HDR ``record_value``, ~2 us here),
so the hot path appends one tuple to a deque. A background thread drains it about once a
second, folds the samples into one HDR histogram per (group, backend) and writes them to Redis:

- ``fsmig:stats:{group}:{bucket}`` (hash): ``{backend}:count``, ``{backend}:errors``,
  ``{backend}:shadow_match``, ``{backend}:shadow_mismatch``, ``{backend}:rejected`` via HINCRBY, so any number of
  processes add up without read-modify-write races;
- ``fsmig:stats:{group}:{bucket}:{backend}:hdr`` (list): one encoded HDR histogram per flush
  (RPUSH), merged by :func:`read_window`;
- ``fsmig:stats:{group}:index`` (sorted set): the bucket start times that hold data, so a
  48 h window is read without SCAN.

``bucket`` is the bucket's start in epoch seconds. Samples land in the bucket of the flush that
writes them (at most one flush interval after they happened). All keys expire after
``retention_s``. Latencies are microseconds in the histograms and milliseconds in the API.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hdrh.histogram import HdrHistogram

log = logging.getLogger("airflow_fsmigration.serving")

BACKENDS = ("old", "new")
KEY_PREFIX = "fsmig:stats"
# HDR range: 1 us .. 60 s at 3 significant digits (0.1% value precision).
HDR_LOWEST_US = 1
HDR_HIGHEST_US = 60_000_000
HDR_DIGITS = 3
# Pending flushes kept while Redis is down; older ones are dropped with a warning.
MAX_PENDING_FLUSHES = 600
# Safety net if the flush thread is starved for minutes: beyond this many queued samples the
# oldest are dropped (a normal flush drains ~1 s of traffic, far below it).
MAX_QUEUED_SAMPLES = 2_000_000


class StatsUnavailable(RuntimeError):
    """The stats could not be read from Redis; a gate reading them must not pass."""


def new_histogram() -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_DIGITS)


def bucket_key(group: str, bucket: int) -> str:
    return f"{KEY_PREFIX}:{group}:{bucket}"


def hdr_key(group: str, bucket: int, backend: str) -> str:
    return f"{KEY_PREFIX}:{group}:{bucket}:{backend}:hdr"


def index_key(group: str) -> str:
    return f"{KEY_PREFIX}:{group}:index"


@dataclass
class BackendStats:
    """One backend's traffic over a window.

    ``p50_ms``/``p99_ms``/``max_ms`` are ``None`` when the window holds no sample: "no data" must
    stay distinguishable from "fast" so that a gate reading it says inconclusive, not pass.
    ``count`` includes failed reads; ``error_rate`` is ``errors / count`` (0.0 with no traffic).
    Shadow counts are kept on the ``new`` backend (shadow reads go to the new store), and so is
    ``rejected``: requests routed to the new store that its open circuit breaker served from the
    old one (they are in neither ``count`` nor ``errors``, since no read of the new store happened).
    """

    backend: str
    count: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    shadow_matches: int = 0
    rejected: int = 0
    shadow_mismatches: int = 0
    histogram: HdrHistogram | None = field(default=None, repr=False, compare=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.count if self.count else 0.0

    @property
    def samples(self) -> int:
        """Latency samples behind the percentiles (equals ``count`` unless a flush was partial)."""
        return int(self.histogram.get_total_count()) if self.histogram is not None else 0

    def percentile_ms(self, pct: float) -> float | None:
        if self.histogram is None or self.histogram.get_total_count() == 0:
            return None
        return self.histogram.get_value_at_percentile(pct) / 1000.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "count": self.count,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "shadow_matches": self.shadow_matches,
            "rejected": self.rejected,
            "shadow_mismatches": self.shadow_mismatches,
        }


def _epoch(value: datetime) -> float:
    """Epoch seconds; a naive datetime is taken as UTC (the registry stores UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def read_window(client: Any, group: str, start: datetime, end: datetime) -> dict[str, BackendStats]:
    """Merge the flushed stats of ``group`` for the buckets whose start lies in ``[start, end)``.

    Returns ``{"old": BackendStats, "new": BackendStats}`` (both always present, zero counts when
    there was no traffic). Raises :class:`StatsUnavailable` when Redis cannot be read.

    :param client: a ``redis.Redis`` client (bytes responses).
    :param group: the feature group.
    :param start: window start (aware; naive means UTC), inclusive.
    :param end: window end, exclusive.
    """
    import redis

    lo, hi = _epoch(start), _epoch(end)
    result = {b: BackendStats(backend=b) for b in BACKENDS}
    if hi <= lo:
        return result
    try:
        raw_buckets = client.zrangebyscore(index_key(group), lo, f"({hi}")
        buckets = [int(b) for b in raw_buckets]
        if not buckets:
            return result
        pipe = client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hgetall(bucket_key(group, bucket))
            for backend in BACKENDS:
                pipe.lrange(hdr_key(group, bucket, backend), 0, -1)
        replies = pipe.execute()
    except redis.RedisError as exc:
        raise StatsUnavailable(
            f"group '{group}': serving stats could not be read from Redis ({type(exc).__name__}: {exc}); "
            "check the Redis that the routers flush to"
        ) from exc

    hists: dict[str, HdrHistogram | None] = dict.fromkeys(BACKENDS)
    step = 1 + len(BACKENDS)
    for i in range(0, len(replies), step):
        counters = {k.decode(): int(v) for k, v in (replies[i] or {}).items()}
        for j, backend in enumerate(BACKENDS):
            st = result[backend]
            st.count += counters.get(f"{backend}:count", 0)
            st.errors += counters.get(f"{backend}:errors", 0)
            st.shadow_matches += counters.get(f"{backend}:shadow_match", 0)
            st.rejected += counters.get(f"{backend}:rejected", 0)
            st.shadow_mismatches += counters.get(f"{backend}:shadow_mismatch", 0)
            for encoded in replies[i + 1 + j] or ():
                h = hists[backend]
                if h is None:
                    h = hists[backend] = new_histogram()
                h.decode_and_add(encoded)
    for backend, h in hists.items():
        st = result[backend]
        st.histogram = h
        if h is not None and h.get_total_count():
            st.p50_ms = h.get_value_at_percentile(50) / 1000.0
            st.p99_ms = h.get_value_at_percentile(99) / 1000.0
            st.max_ms = h.get_max_value() / 1000.0
    return result


class StatsRecorder:
    """Per-process latency/error aggregation with a background flush to Redis.

    ``record`` is the hot path (one deque append, thread-safe under the GIL); ``flush`` runs on a
    daemon thread every ``flush_interval_s`` and on :meth:`close`.

    :param client: ``redis.Redis`` client to flush to (bytes responses).
    :param bucket_s: width of a time bucket in seconds (the finest window ``read_window`` resolves).
    :param flush_interval_s: how often the background thread writes; ``0`` disables the thread
        (call :meth:`flush` yourself).
    :param retention_s: how long flushed buckets live in Redis; keep it above the longest bake.
    """

    def __init__(
        self,
        client: Any,
        *,
        bucket_s: int = 10,
        flush_interval_s: float = 1.0,
        retention_s: int = 14 * 86400,
    ) -> None:
        if bucket_s < 1:
            raise ValueError(f"bucket_s must be at least 1 second, got {bucket_s}")
        self._client = client
        self.bucket_s = int(bucket_s)
        self.retention_s = int(retention_s)
        self._samples: collections.deque[tuple[str, str, int, bool]] = collections.deque(
            maxlen=MAX_QUEUED_SAMPLES
        )
        # Counted events of the new store per group: shadow_match, shadow_mismatch, rejected.
        self._events: collections.deque[tuple[str, str]] = collections.deque(maxlen=MAX_QUEUED_SAMPLES)
        self._pending: collections.deque[tuple[float, list[tuple[str, int, str, dict[str, int], bytes]]]] = (
            collections.deque()
        )
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self.flushes = 0
        self.flush_failures = 0
        self.dropped_flushes = 0
        self._thread: threading.Thread | None = None
        if flush_interval_s > 0:
            self._thread = threading.Thread(
                target=self._run, args=(flush_interval_s,), name="fsmig-stats-flush", daemon=True
            )
            self._thread.start()

    # -- hot path -------------------------------------------------------------------------
    def record(self, group: str, backend: str, latency_us: int, error: bool = False) -> None:
        """Note one backend read (a whole batch is one read)."""
        self._samples.append((group, backend, latency_us, error))

    def record_shadow(self, group: str, matched: bool) -> None:
        """Note one shadow comparison (one entity, all features)."""
        self._events.append((group, "shadow_match" if matched else "shadow_mismatch"))

    def record_rejected(self, group: str) -> None:
        """Note one request the new store should have served but its open breaker sent to the old."""
        self._events.append((group, "rejected"))

    # -- background -----------------------------------------------------------------------
    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.flush()
            except Exception:  # pragma: no cover - a flush must never kill the thread
                log.exception("serving stats flush failed")

    def _drain(self, now: float) -> list[tuple[str, int, str, dict[str, int], bytes]]:
        """Fold queued samples into per (group, backend) histograms and counters."""
        samples = self._samples
        n = len(samples)
        per: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for _ in range(n):
            group, backend, lat, err = samples.popleft()
            entry = per.get((group, backend))
            if entry is None:
                entry = per[(group, backend)] = ([], [0])
            entry[0].append(lat)
            if err:
                entry[1][0] += 1
        events: dict[str, collections.Counter[str]] = {}
        for _ in range(len(self._events)):
            group, name = self._events.popleft()
            events.setdefault(group, collections.Counter())[name] += 1
        bucket = int(now // self.bucket_s * self.bucket_s)
        out = []
        for (group, backend), (lats, errs) in per.items():
            h = new_histogram()
            # Counter first: HDR record_value is pure Python, so record each distinct value once.
            for value, count in collections.Counter(lats).items():
                h.record_value(min(max(value, HDR_LOWEST_US), HDR_HIGHEST_US), count)
            counters = {"count": len(lats), "errors": errs[0]}
            out.append((group, bucket, backend, counters, h.encode()))
        for group, counts in events.items():
            out.append((group, bucket, "new", dict(counts), b""))
        return out

    def flush(self) -> int:
        """Write everything recorded so far; returns the number of samples written.

        When Redis is down the aggregated data is kept (up to ``MAX_PENDING_FLUSHES`` flushes)
        and written with the next successful flush, so a short outage loses no counts.
        """
        import redis

        with self._flush_lock:
            now = time.time()
            batch = self._drain(now)
            if batch:
                self._pending.append((now, batch))
            while len(self._pending) > MAX_PENDING_FLUSHES:
                self._pending.popleft()
                self.dropped_flushes += 1
                log.warning("serving stats: Redis unreachable for too long, dropped one flush of stats")
            written = 0
            while self._pending:
                _, batch = self._pending[0]
                try:
                    written += self._write(batch)
                except redis.RedisError as exc:
                    self.flush_failures += 1
                    log.warning("serving stats flush to Redis failed (%s); will retry", exc)
                    break
                self._pending.popleft()
            self.flushes += 1
            return written

    def _write(self, batch: list[tuple[str, int, str, dict[str, int], bytes]]) -> int:
        pipe = self._client.pipeline(transaction=True)
        horizon = time.time() - self.retention_s
        written = 0
        groups: set[str] = set()
        for group, bucket, backend, counters, encoded in batch:
            key = bucket_key(group, bucket)
            for name, value in counters.items():
                if value:
                    pipe.hincrby(key, f"{backend}:{name}", value)
            pipe.expire(key, self.retention_s)
            if encoded:
                hk = hdr_key(group, bucket, backend)
                pipe.rpush(hk, encoded)
                pipe.expire(hk, self.retention_s)
                written += counters.get("count", 0)
            pipe.zadd(index_key(group), {str(bucket): bucket})
            groups.add(group)
        for group in groups:
            pipe.zremrangebyscore(index_key(group), "-inf", f"({horizon}")
            pipe.expire(index_key(group), self.retention_s)
        pipe.execute()
        return written

    def close(self) -> None:
        """Stop the thread and write what is left (best effort when Redis is down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(Exception):
            self.flush()
