"""Open-loop load test of a read path, for the "2x peak QPS before any traffic moves" gate.

Open loop: request ``i`` is due at ``t0 + i / target_qps`` whatever happened to earlier ones,
and its latency is measured from that due time, not from when a worker got round to it. A
closed loop (send, wait, send) slows down with the system under test and hides exactly the
queueing a real traffic peak causes ("coordinated omission").

Verdicts, in this order:

* ``fail`` when the service time alone (send to answer) has a p99 over the SLA, or the error
  rate is over the limit: the store is too slow or too broken whatever the generator did;
* ``inconclusive`` when the generator could not issue the planned requests at the target rate
  (too few workers for the latency, or not enough CPU): nothing was shown, so nothing passes;
* ``fail`` when the p99 from due time is over the SLA;
* ``pass`` otherwise.

The generator itself (schedule, workers, histograms) is :mod:`airflow_fsmigration.serving.loadgen`.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.serving.loadgen import Drive, drive_share, percentile_ms, process_main, read_fn
from airflow_fsmigration.serving.stats import new_histogram

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.serving")

ReadFn = Callable[[str, Sequence[str]], Any]


class LoadTestOutcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass
class LoadTestResult:
    """What a load test measured; latencies in milliseconds, ``None`` when nothing completed."""

    group: str
    outcome: LoadTestOutcome
    message: str
    target_qps: float
    achieved_qps: float
    duration_s: float
    elapsed_s: float
    planned: int
    completed: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    service_p99_ms: float | None
    start_lag_p99_ms: float | None
    sla_p99_ms: float
    max_error_rate_pct: float
    concurrency: int
    batch_size: int
    processes: int = 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.completed if self.completed else 0.0

    @property
    def passed(self) -> bool:
        return self.outcome is LoadTestOutcome.PASS

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcome"] = str(self.outcome)
        d["error_rate"] = self.error_rate
        return d

    def summary(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        return (
            f"{self.group}: {self.outcome.upper()} - {self.message} | target {self.target_qps:.0f} QPS, "
            f"achieved {self.achieved_qps:.0f} QPS, {self.completed}/{self.planned} requests, "
            f"p50 {ms(self.p50_ms)} ms, p95 {ms(self.p95_ms)} ms, p99 {ms(self.p99_ms)} ms, max {ms(self.max_ms)} ms, "
            f"errors {self.error_rate:.3%}"
        )


def _judge(
    drives: list[Drive],
    *,
    group: str,
    target_qps: float,
    duration_s: float,
    sla_p99_ms: float,
    max_error_rate_pct: float,
    rate_tolerance: float,
    concurrency: int,
    batch_size: int,
    processes: int,
) -> LoadTestResult:
    lat_h, svc_h, lag_h = new_histogram(), new_histogram(), new_histogram()
    for d in drives:
        lat_h.decode_and_add(d.latency_hdr)
        svc_h.decode_and_add(d.service_hdr)
        lag_h.decode_and_add(d.lag_hdr)
    planned = sum(d.planned for d in drives)
    completed = sum(d.completed for d in drives)
    errors = sum(d.errors for d in drives)
    first_error = next((d.first_error for d in drives if d.first_error), None)
    interval = 1.0 / target_qps
    # The rate the generator issued at: requests over the time to the last send (plus one interval,
    # so a schedule met exactly gives the target). Latency of the last answers does not count here.
    elapsed = max(max(d.last_start_rel for d in drives) + interval, 1e-9) if completed else duration_s
    achieved = completed / elapsed
    p99, svc_p99 = percentile_ms(lat_h, 99), percentile_ms(svc_h, 99)
    error_rate_pct = errors / completed * 100 if completed else 0.0
    reached = completed == planned and achieved >= (1 - rate_tolerance) * target_qps
    workers = f"{concurrency} workers" + (f" x {processes} processes" if processes > 1 else "")

    if completed and svc_p99 is not None and svc_p99 > sla_p99_ms:
        outcome, message = (
            LoadTestOutcome.FAIL,
            f"p99 service time {svc_p99:.2f} ms is over the {sla_p99_ms:g} ms SLA even before queueing",
        )
    elif completed and error_rate_pct > max_error_rate_pct:
        outcome, message = (
            LoadTestOutcome.FAIL,
            f"error rate {error_rate_pct:.3f}% is over {max_error_rate_pct:g}% (first error: {first_error})",
        )
    elif not reached:
        outcome, message = (
            LoadTestOutcome.INCONCLUSIVE,
            f"the generator reached only {achieved:.0f} of {target_qps:.0f} QPS "
            f"({completed} of {planned} requests with {workers}); the store was not tested "
            "at the target rate - add workers or processes, or run the generator on more cores/hosts",
        )
    elif p99 is not None and p99 > sla_p99_ms:
        outcome, message = (
            LoadTestOutcome.FAIL,
            f"p99 {p99:.2f} ms (from scheduled send time) is over the {sla_p99_ms:g} ms SLA",
        )
    else:
        outcome, message = (
            LoadTestOutcome.PASS,
            f"p99 {p99:.2f} ms within the {sla_p99_ms:g} ms SLA at target rate",
        )
    result = LoadTestResult(
        group=group,
        outcome=outcome,
        message=message,
        target_qps=target_qps,
        achieved_qps=achieved,
        duration_s=duration_s,
        elapsed_s=elapsed,
        planned=planned,
        completed=completed,
        errors=errors,
        p50_ms=percentile_ms(lat_h, 50),
        p95_ms=percentile_ms(lat_h, 95),
        p99_ms=p99,
        max_ms=lat_h.get_max_value() / 1000.0 if completed else None,
        service_p99_ms=svc_p99,
        start_lag_p99_ms=percentile_ms(lag_h, 99),
        sla_p99_ms=sla_p99_ms,
        max_error_rate_pct=max_error_rate_pct,
        concurrency=concurrency,
        batch_size=batch_size,
        processes=processes,
    )
    (log.info if result.passed else log.warning)("%s", result.summary())
    return result


def _check(group: str, target_qps: float, duration_s: float, entity_ids: Sequence[str]) -> None:
    if target_qps <= 0 or duration_s <= 0:
        raise ValueError(f"group '{group}': target_qps and duration_s must be positive")
    if not entity_ids:
        raise ValueError(f"group '{group}': the load test needs at least one entity id")


def run_load_test(
    router_or_read_fn: Any,
    group: str,
    entity_ids: Sequence[str],
    *,
    target_qps: float,
    duration_s: float,
    sla_p99_ms: float,
    concurrency: int = 16,
    batch_size: int = 1,
    backend: str | None = "new",
    max_error_rate_pct: float = 0.1,
    rate_tolerance: float = 0.05,
    grace_s: float | None = None,
    seed: int = 0,
) -> LoadTestResult:
    """Drive ``target_qps`` requests per second for ``duration_s`` through a read path.

    :param router_or_read_fn: a :class:`~.router.FeatureRouter` (read through
        ``read_backend(group, ids, backend)``, so the new store is tested before any traffic is
        routed to it) or a function ``fn(group, entity_ids)``.
    :param group: the feature group.
    :param entity_ids: entities to request (cycled in a shuffled order).
    :param target_qps: requests per second to schedule.
    :param duration_s: length of the schedule in seconds.
    :param sla_p99_ms: the group's p99 SLA; a p99 above it fails.
    :param concurrency: worker threads issuing requests.
    :param batch_size: entities per request.
    :param backend: with a router, which store to read (``"new"``); ``None`` goes through
        ``get_features`` and the live ramp instead.
    :param max_error_rate_pct: error rate (in %) above which the test fails.
    :param rate_tolerance: share of the target rate the generator may miss and still count as
        having reached it.
    :param grace_s: how long past ``duration_s`` late requests may still be sent (default
        ``max(1, 20% of duration)``); what is not sent by then makes the run inconclusive.
    :param seed: shuffles ``entity_ids`` reproducibly.
    """
    _check(group, target_qps, duration_s, entity_ids)
    ids = list(entity_ids)
    random.Random(seed).shuffle(ids)
    planned = max(1, round(target_qps * duration_s))
    log.info(
        "load test of group %s: %.0f QPS for %.1f s (%d requests, %d workers, %d entities per request)",
        group,
        target_qps,
        duration_s,
        planned,
        concurrency,
        batch_size,
    )
    drive = drive_share(
        read_fn(router_or_read_fn, group, backend),
        ids,
        group=group,
        planned_total=planned,
        interval=1.0 / target_qps,
        duration_s=duration_s,
        grace_s=max(1.0, 0.2 * duration_s) if grace_s is None else grace_s,
        concurrency=concurrency,
        batch_size=batch_size,
        t0_wall=time.time() + 0.05,  # let every worker start before the first due time
    )
    return _judge(
        [drive],
        group=group,
        target_qps=target_qps,
        duration_s=duration_s,
        sla_p99_ms=sla_p99_ms,
        max_error_rate_pct=max_error_rate_pct,
        rate_tolerance=rate_tolerance,
        concurrency=concurrency,
        batch_size=batch_size,
        processes=1,
    )


def run_load_test_processes(
    target_factory: Callable[[], Any],
    group: str,
    entity_ids: Sequence[str],
    *,
    target_qps: float,
    duration_s: float,
    sla_p99_ms: float,
    processes: int = 2,
    concurrency: int = 16,
    batch_size: int = 1,
    backend: str | None = "new",
    max_error_rate_pct: float = 0.1,
    rate_tolerance: float = 0.05,
    grace_s: float | None = None,
    seed: int = 0,
    startup_s: float = 10.0,
) -> LoadTestResult:
    """:func:`run_load_test` from several processes, for rates one Python process cannot issue.

    Each process calls ``target_factory()`` (a picklable zero-argument callable, e.g. a
    ``functools.partial`` of a module-level function, returning a router or a read function
    ``fn(group, entity_ids)``), then issues every ``processes``-th request of one global
    schedule that starts at the same wall-clock instant in all of them; the HDR histograms are
    merged and judged as one run. A process that fails to start or to report makes the run
    inconclusive.

    :param startup_s: time allowed for the processes to start and build their targets; the
        schedule begins once all are ready.
    """
    import multiprocessing
    import queue as queue_mod
    import threading as _threading

    _check(group, target_qps, duration_s, entity_ids)
    if processes < 1:
        raise ValueError(f"group '{group}': processes must be at least 1, got {processes}")
    ids = list(entity_ids)
    random.Random(seed).shuffle(ids)
    planned = max(1, round(target_qps * duration_s))
    grace = max(1.0, 0.2 * duration_s) if grace_s is None else grace_s
    log.info(
        "load test of group %s: %.0f QPS for %.1f s (%d requests) from %d processes x %d workers",
        group,
        target_qps,
        duration_s,
        planned,
        processes,
        concurrency,
    )
    common = {
        "ids": ids,
        "group": group,
        "planned_total": planned,
        "interval": 1.0 / target_qps,
        "duration_s": duration_s,
        "grace_s": grace,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "stride": processes,
    }
    ctx = multiprocessing.get_context("spawn")  # no fork: the caller may hold threads and sockets
    ready = ctx.Barrier(processes + 1)
    t0 = ctx.Value("d", 0.0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=process_main,
            args=(k, target_factory, backend, {**common, "offset": k}, ready, t0, results),
            name=f"fsmig-load-{k}",
            daemon=True,
        )
        for k in range(processes)
    ]
    for proc in procs:
        proc.start()
    drives: list[Drive] = []
    problems: list[str] = []
    try:
        try:
            ready.wait(timeout=startup_s)
        except _threading.BrokenBarrierError:
            problems.append(f"the generator processes were not ready within {startup_s:g} s")
        else:
            t0.value = time.time() + 0.05
        deadline = time.monotonic() + startup_s + duration_s + grace + 60
        while len(drives) + len(problems) < processes and time.monotonic() < deadline:
            try:
                _, item = results.get(timeout=0.5)
            except queue_mod.Empty:
                if not any(proc.is_alive() for proc in procs) and results.empty():
                    break
                continue
            if isinstance(item, Drive):
                drives.append(item)
            else:
                problems.append(item)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    if problems or len(drives) < processes:
        detail = "; ".join(problems) or f"only {len(drives)} of {processes} processes reported"
        return LoadTestResult(
            group=group,
            outcome=LoadTestOutcome.INCONCLUSIVE,
            message=f"the load generator did not run as planned ({detail}); nothing was measured at the target rate",
            target_qps=target_qps,
            achieved_qps=0.0,
            duration_s=duration_s,
            elapsed_s=0.0,
            planned=planned,
            completed=sum(d.completed for d in drives),
            errors=sum(d.errors for d in drives),
            p50_ms=None,
            p95_ms=None,
            p99_ms=None,
            max_ms=None,
            service_p99_ms=None,
            start_lag_p99_ms=None,
            sla_p99_ms=sla_p99_ms,
            max_error_rate_pct=max_error_rate_pct,
            concurrency=concurrency,
            batch_size=batch_size,
            processes=processes,
        )
    return _judge(
        drives,
        group=group,
        target_qps=target_qps,
        duration_s=duration_s,
        sla_p99_ms=sla_p99_ms,
        max_error_rate_pct=max_error_rate_pct,
        rate_tolerance=rate_tolerance,
        concurrency=concurrency,
        batch_size=batch_size,
        processes=processes,
    )


def load_test_for_group(
    router_or_read_fn: Any,
    plan: MigrationPlan,
    group: str,
    entity_ids: Sequence[str],
    *,
    duration_s: float | None = None,
    processes: int = 1,
    **kwargs: Any,
) -> LoadTestResult:
    """Run the plan's load test for ``group``: ``load_test_multiplier`` x peak QPS for
    ``load_test_duration``, against the group's p99 SLA and error-rate trigger.

    ``duration_s`` overrides the plan's duration (tests and demos use seconds). With
    ``processes > 1``, ``router_or_read_fn`` is a picklable factory as for
    :func:`run_load_test_processes`.
    """
    if group not in plan.groups:
        raise KeyError(
            f"plan '{plan.name}' has no group '{group}' (groups: {', '.join(sorted(plan.groups))})"
        )
    g = plan.groups[group]
    settings = plan.settings_for(g)
    target = settings.load_test_multiplier * g.qps.peak
    if target <= 0:
        raise ValueError(f"group '{group}': qps.peak is 0 in the plan, so there is no rate to load-test")
    kwargs.setdefault("max_error_rate_pct", settings.rollback_triggers.error_rate_pct)
    if processes > 1:
        return run_load_test_processes(
            router_or_read_fn,
            group,
            entity_ids,
            target_qps=target,
            duration_s=duration_s if duration_s is not None else settings.load_test_duration.total_seconds(),
            sla_p99_ms=g.sla.p99_ms,
            processes=processes,
            **kwargs,
        )
    return run_load_test(
        router_or_read_fn,
        group,
        entity_ids,
        target_qps=target,
        duration_s=duration_s if duration_s is not None else settings.load_test_duration.total_seconds(),
        sla_p99_ms=g.sla.p99_ms,
        **kwargs,
    )
