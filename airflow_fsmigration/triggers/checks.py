"""One evaluation of each long-running gate, shared by the sensors (poke) and the triggers (poll).

Plain Python over the core: no Airflow import, so the same code runs in a worker's ``poke``, in
the triggerer (through ``sync_to_async``) and in tests. Each check opens its connections from
libpq / Redis URLs, reads the evidence, and lets :mod:`airflow_fsmigration.gates` decide; it
returns a :class:`GateCheck` whose status is ``pass``, ``fail`` or ``wait``. Nothing here turns
"could not tell" into a pass.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.gates.bake import bake_decision, bake_windows, parse_time
from airflow_fsmigration.gates.check import FAIL, PASS, WAIT, GateCheck

if TYPE_CHECKING:
    from airflow_fsmigration.plan import MigrationPlan

__all__ = [
    "CUTOVER_PHASES",
    "FAIL",
    "PASS",
    "WAIT",
    "GateCheck",
    "bake_windows",
    "check_bake",
    "check_keep_warm",
    "check_soak",
    "check_upstream",
    "parse_time",
    "poll_interval",
    "utcnow",
]

log = logging.getLogger("airflow_fsmigration.triggers")

CUTOVER_PHASES = ("cutover", "warm", "ready_to_decommission", "decommissioned")


def poll_interval(
    duration: timedelta | float, *, divisions: int = 20, floor: float = 0.2, cap: float = 600.0
) -> float:
    """Seconds between checks of a gate lasting ``duration``: proportional, within [floor, cap].

    A 48 h bake is checked every 10 minutes, a 5 s test bake every 0.25 s.
    """
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    return min(max(seconds / divisions, floor), cap)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _pg(stack: ExitStack, url: str) -> Any:
    import psycopg

    return stack.enter_context(psycopg.connect(url, autocommit=True, connect_timeout=10))


def _redis(stack: ExitStack, url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    stack.callback(client.close)
    return client


def check_upstream(plan: MigrationPlan, group: str, urls: dict[str, str]) -> GateCheck:
    """Every upstream group of ``group`` is cut over (cutover, warm or later) in the registry."""
    from airflow_fsmigration.registry.routing import Registry

    upstream = list(plan.groups[group].depends_on)
    if not upstream:
        return GateCheck(PASS, f"group {group} has no upstream groups", {"upstream": {}})
    with Registry(urls["registry"], plan=plan) as registry:
        registry.ensure_schema()
        states = registry.states()
    phases = {u: (states[u].phase.value if u in states else "unregistered") for u in upstream}
    waiting = {u: p for u, p in phases.items() if p not in CUTOVER_PHASES}
    if waiting:
        shown = ", ".join(f"{u} ({p})" for u, p in sorted(waiting.items()))
        return GateCheck(
            WAIT, f"group {group} waits for upstream groups to cut over: {shown}", {"upstream": phases}
        )
    return GateCheck(PASS, f"every upstream group of {group} is cut over", {"upstream": phases})


def check_soak(
    plan: MigrationPlan,
    group: str,
    urls: dict[str, str],
    *,
    refresh_after: float | None = None,
    now: datetime | None = None,
) -> GateCheck:
    """Consistency green for the plan's ``shadow_soak``, read from the shadow results series.

    With ``refresh_after`` (seconds), a fresh comparison is run and recorded first whenever the
    newest run is older than that: at demo and test time scales (a soak of seconds) nothing
    else feeds the series often enough. Production soaks (days) are fed by the nightly DAG.
    """
    from airflow_fsmigration.operators._runtime import record_shadow_run, soak_status_dict

    max_gap = None
    if refresh_after is not None:
        # A comparison itself takes a second or so: at a time scale of seconds, soak/7 between
        # runs (the default) could never be met. The soak must still be covered by passing runs.
        max_gap = max(
            plan.settings_for(group).shadow_soak / 7, timedelta(seconds=max(5.0, 4 * refresh_after))
        )
    with ExitStack() as stack:
        conn = _pg(stack, urls["registry"])
        status = soak_status_dict(plan, group, conn, now=now, max_gap=max_gap)
        if refresh_after is not None and not status.get("passed"):
            last = parse_time(status.get("last_run_at"))
            if last is None or (utcnow() - last).total_seconds() >= refresh_after:
                result = record_shadow_run(
                    plan,
                    group,
                    registry_conn=conn,
                    online_url=urls["legacy_online"],
                    new_url=urls["new_store"],
                )
                log.info("soak of %s: fresh shadow run %s: %s", group, result.run_id, result.verdict)
                status = soak_status_dict(plan, group, conn, now=now, max_gap=max_gap)
    if status.get("passed"):
        return GateCheck(PASS, status.get("reason") or f"shadow soak of {group} passed", status)
    return GateCheck(WAIT, status.get("reason") or f"shadow soak of {group} still running", status)


def check_bake(
    plan: MigrationPlan,
    group: str,
    urls: dict[str, str],
    windows: dict[str, str],
    *,
    inconclusive_grace: float = 0.0,
    now: datetime | None = None,
) -> GateCheck:
    """Evaluate the rollback triggers over the bake so far (see :func:`~airflow_fsmigration.gates.bake.bake_decision`)."""
    from airflow_fsmigration.gates.bake import evaluate_bake
    from airflow_fsmigration.serving.stats import read_window

    now = now or utcnow()
    start = parse_time(windows["bake_start"])
    end = parse_time(windows["bake_end"])
    assert start is not None and end is not None
    with ExitStack() as stack:
        result = evaluate_bake(
            plan,
            group,
            metrics_conn=_pg(stack, urls["model_metrics"]),
            read_stats=partial(read_window, _redis(stack, urls["routing_mirror"])),
            bake_start=start,
            bake_end=min(now, end),
            baseline_start=parse_time(windows["baseline_start"]),  # type: ignore[arg-type]
            baseline_end=parse_time(windows["baseline_end"]),  # type: ignore[arg-type]
        )
    return bake_decision(result, group, windows, now, inconclusive_grace=inconclusive_grace)


def check_keep_warm(
    plan: MigrationPlan, group: str, urls: dict[str, str], *, now: datetime | None = None
) -> GateCheck:
    """Check the old store's warmth once (recorded) and whether the keep-warm window has passed."""
    from airflow_fsmigration.gates.keepwarm import keep_warm_decision
    from airflow_fsmigration.registry.keepwarm import check_warmth, warm_window_status

    with ExitStack() as stack:
        registry_conn = _pg(stack, urls["registry"])
        check = check_warmth(
            plan,
            group,
            online_client=_redis(stack, urls["legacy_online"]),
            offline_conn=_pg(stack, urls["legacy_offline"]),
            registry_conn=registry_conn,
            now=now,
        )
        status = warm_window_status(plan, group, conn=registry_conn, now=now)
    return keep_warm_decision(check, status)
