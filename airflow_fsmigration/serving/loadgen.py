"""The open-loop generator behind :mod:`airflow_fsmigration.serving.loadtest`: one process's share.

Request ``i`` of the common schedule is due at ``t0 + i / target_qps``; :func:`drive_share` issues
its share (``offset, offset + stride, ...``) from a pool of workers and records latency from the
due time, service time and start lag in HDR histograms, encoded so they cross processes.
:func:`process_main` is one generator process of ``run_load_test_processes``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_fsmigration.serving.stats import HDR_HIGHEST_US, HDR_LOWEST_US, new_histogram

log = logging.getLogger("airflow_fsmigration.serving")


def read_fn(target: Any, group: str, backend: str | None) -> Callable[[Sequence[str]], Any]:
    """Turn a router or a plain function into ``fn(entity_ids)``."""
    if backend is not None and hasattr(target, "read_backend"):
        return lambda ids: target.read_backend(group, ids, backend)
    if hasattr(target, "get_features"):
        return lambda ids: target.get_features(group, ids)
    if callable(target):
        return lambda ids: target(group, ids)
    raise TypeError(
        f"load test target must be a FeatureRouter or a function (group, entity_ids), got {type(target)}"
    )


def percentile_ms(h: Any, pct: float) -> float | None:
    return h.get_value_at_percentile(pct) / 1000.0 if h.get_total_count() else None


def histogram(values: list[int]) -> Any:
    h = new_histogram()
    for value, count in collections.Counter(values).items():
        h.record_value(min(max(value, HDR_LOWEST_US), HDR_HIGHEST_US), count)
    return h


@dataclass
class Drive:
    """What one generator (a process) measured; histograms HDR-encoded so they cross processes."""

    planned: int
    completed: int
    errors: int
    first_error: str | None
    last_start_rel: float  # seconds from t0 to the last send
    latency_hdr: bytes
    service_hdr: bytes
    lag_hdr: bytes


def drive_share(
    fn: Callable[[Sequence[str]], Any],
    ids: list[str],
    *,
    group: str,
    planned_total: int,
    interval: float,
    duration_s: float,
    grace_s: float,
    concurrency: int,
    batch_size: int,
    t0_wall: float,
    offset: int = 0,
    stride: int = 1,
) -> Drive:
    """Issue requests ``offset, offset + stride, ...`` of the global schedule, open loop."""
    n_ids = len(ids)
    planned = len(range(offset, planned_total, stride))
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[int] = []
    services: list[int] = []
    lags: list[int] = []
    errors = [0]
    first_error: list[str] = []
    last_start = [0.0]
    perf = time.perf_counter
    sleep = time.sleep
    t0 = perf() + (t0_wall - time.time())
    hard_stop = t0 + duration_s + grace_s

    def worker() -> None:
        lat_l: list[int] = []
        svc_l: list[int] = []
        lag_l: list[int] = []
        errs = 0
        err_text = None
        started = 0.0
        while True:
            j = next(counter)
            if j >= planned:
                break
            i = offset + j * stride
            due = t0 + i * interval
            now = perf()
            if now > hard_stop:
                break
            if due > now:
                sleep(due - now)
            start = started = perf()
            if batch_size == 1:
                batch: Sequence[str] = (ids[i % n_ids],)
            else:
                batch = [ids[(i * batch_size + k) % n_ids] for k in range(batch_size)]
            try:
                fn(batch)
            except Exception as exc:
                errs += 1
                if err_text is None:
                    err_text = f"{type(exc).__name__}: {exc}"
            end = perf()
            lat_l.append(int((end - due) * 1e6))
            svc_l.append(int((end - start) * 1e6))
            lag_l.append(int(max(start - due, 0.0) * 1e6))
        with lock:
            latencies.extend(lat_l)
            services.extend(svc_l)
            lags.extend(lag_l)
            errors[0] += errs
            if err_text and not first_error:
                first_error.append(err_text)
            last_start[0] = max(last_start[0], started)

    threads = [
        threading.Thread(target=worker, name=f"fsmig-load-{k}", daemon=True) for k in range(concurrency)
    ]
    for t in threads:
        t.start()
    next_log = time.monotonic() + 5
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)
            if time.monotonic() >= next_log:
                issued = min(next(counter), planned)
                elapsed = max(perf() - t0, 1e-9)
                log.info(
                    "load test %s: %d/%d requests issued, %.0f QPS, ETA %.0f s",
                    group,
                    issued,
                    planned,
                    issued / elapsed,
                    max(t0 + duration_s - perf(), 0),
                )
                next_log = time.monotonic() + 5
    return Drive(
        planned=planned,
        completed=len(latencies),
        errors=errors[0],
        first_error=first_error[0] if first_error else None,
        last_start_rel=(last_start[0] - t0) if latencies else 0.0,
        latency_hdr=histogram(latencies).encode(),
        service_hdr=histogram(services).encode(),
        lag_hdr=histogram(lags).encode(),
    )


def process_main(
    k: int,
    factory: Callable[[], Any],
    backend: str | None,
    kwargs: dict[str, Any],
    ready: Any,
    t0: Any,
    results: Any,
) -> None:
    """One generator process: build its own router (threads and sockets do not cross processes),
    wait until every process is ready, then run its share of the common schedule."""
    try:
        target = factory()
    except BaseException as exc:
        results.put((k, f"target_factory failed: {type(exc).__name__}: {exc}"))
        ready.abort()
        return
    try:
        ready.wait()
        while t0.value == 0.0:
            time.sleep(0.001)
        results.put((k, drive_share(read_fn(target, kwargs["group"], backend), t0_wall=t0.value, **kwargs)))
    except BaseException as exc:
        results.put((k, f"{type(exc).__name__}: {exc}"))
    finally:
        close = getattr(target, "close", None)
        if callable(close):
            close()
