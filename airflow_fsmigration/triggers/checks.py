"""One evaluation of each long-running gate, shared by the sensors (poke) and the triggers (poll).

Plain Python over the core: no Airflow import, so the same code runs in a worker's ``poke``, in
the triggerer (through ``sync_to_async``) and in tests. Each check opens its connections from
libpq / Redis URLs, evaluates once and returns a :class:`GateCheck` whose status is ``pass``,
``fail`` or ``wait``. Nothing here turns "could not tell" into a pass.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan import MigrationPlan

log = logging.getLogger("airflow_fsmigration.triggers")

PASS, FAIL, WAIT = "pass", "fail", "wait"
CUTOVER_PHASES = ("cutover", "warm", "ready_to_decommission", "decommissioned")


@dataclass
class GateCheck:
    status: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def parse_time(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


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


def bake_windows(plan: MigrationPlan, group: str, registry: Any, step_pct: float) -> dict[str, str]:
    """The bake window of a ramp step and the pre-ramp baseline window, from the audit log.

    The bake starts when the registry recorded the step; the baseline is the ``bake``-long window
    just before the group first left ``shadow`` (metrics with no new-store traffic at all).
    """
    bake = plan.settings_for(group).bake
    state = registry.state(group)
    if float(state.ramp_pct) != float(step_pct):
        raise RuntimeError(
            f"group {group} is at {state.describe()}, not at the {step_pct:g}% step this bake watches: "
            "the ramp did not happen or another writer changed it; check the audit log"
        )
    bake_start = state.updated_at
    left_shadow = None
    for entry in reversed(registry.audit(group)):
        if entry.from_phase is not None and entry.from_phase.value == "shadow":
            left_shadow = entry.at
            break
    baseline_end = left_shadow or bake_start
    return {
        "bake_start": bake_start.isoformat(),
        "bake_end": (bake_start + bake).isoformat(),
        "baseline_start": (baseline_end - bake).isoformat(),
        "baseline_end": baseline_end.isoformat(),
    }


def check_bake(
    plan: MigrationPlan,
    group: str,
    urls: dict[str, str],
    windows: dict[str, str],
    *,
    inconclusive_grace: float = 0.0,
    now: datetime | None = None,
) -> GateCheck:
    """Evaluate the rollback triggers over the bake so far.

    A breach fails at once (no reason to keep traffic on a bad store); a pass only counts once the
    whole bake window has elapsed; an inconclusive gate waits, and fails ``inconclusive_grace``
    seconds after the window ended (labels never arrived: a person must look).
    """
    from airflow_fsmigration.registry.gates import evaluate_bake

    now = now or utcnow()
    start = parse_time(windows["bake_start"])
    end = parse_time(windows["bake_end"])
    assert start is not None and end is not None
    with ExitStack() as stack:
        result = evaluate_bake(
            plan,
            group,
            metrics_conn=_pg(stack, urls["model_metrics"]),
            redis_client=_redis(stack, urls["legacy_online"]),
            bake_start=start,
            bake_end=min(now, end),
            baseline_start=parse_time(windows["baseline_start"]),  # type: ignore[arg-type]
            baseline_end=parse_time(windows["baseline_end"]),  # type: ignore[arg-type]
        )
    details = {**result.as_dict(), "windows": windows, "checked_at": now.isoformat()}
    outcome = result.outcome.value
    if outcome == "fail":
        return GateCheck(FAIL, result.summary(), details)
    if now < end:
        return GateCheck(
            WAIT, f"bake of {group} runs until {end.isoformat()} ({result.outcome.value} so far)", details
        )
    if outcome == "pass":
        return GateCheck(PASS, result.summary(), details)
    if (now - end).total_seconds() >= inconclusive_grace:
        return GateCheck(FAIL, result.summary() + " (grace period over: a person must decide)", details)
    return GateCheck(WAIT, result.summary(), details)


def check_keep_warm(
    plan: MigrationPlan, group: str, urls: dict[str, str], *, now: datetime | None = None
) -> GateCheck:
    """Check the old store's warmth once (recorded) and whether the keep-warm window has passed."""
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
    details = {"check": _as_dict(check), "window": status.as_dict()}
    if status.passed:
        return GateCheck(PASS, status.explain(), details)
    if status.ended:
        return GateCheck(FAIL, status.explain(), details)
    return GateCheck(WAIT, f"{check.summary()}; {status.explain()}", details)


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    try:
        return asdict(obj)
    except TypeError:
        return {"repr": repr(obj)}
