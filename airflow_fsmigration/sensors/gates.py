"""Sensors for the migration's gates: upstream cutover, shadow soak, bake and keep-warm.

The long ones (soak: days, bake: 48 h, keep-warm: 30 days) are deferrable in the standard
provider's way: check once in the worker, and if the gate is still open, defer to a trigger in
the triggerer so no worker slot is held while waiting. With ``deferrable=False`` they poke
(use ``mode="reschedule"`` to release the slot between pokes).

A gate that fails (a breach, consistency lost, the old store gone cold) fails the task with
:class:`AirflowFailException` (no retries: waiting again would not change the evidence), after
pushing the evidence to XCom (key ``gate``; bakes also push key ``breach`` for the rollback task).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseSensorOperator, conf

from airflow_fsmigration.operators.base import PlanResources, init_base, to_json

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_fsmigration.gates.check import GateCheck

GATE_XCOM_KEY = "gate"
BREACH_XCOM_KEY = "breach"


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


_SENSOR_INIT: Any = BaseSensorOperator.__init__.__wrapped__  # type: ignore[attr-defined]
_SENSOR_ARGS = frozenset(inspect.signature(_SENSOR_INIT).parameters) - {"self"}


def init_sensor(op: BaseSensorOperator, kwargs: dict[str, Any]) -> None:
    """``FsMigrationGateSensor.__init__`` with one ``apply_defaults`` pass less (see ``init_base``)."""
    deferrable = kwargs.pop("deferrable", None)
    if "group" not in kwargs:
        raise TypeError(f"{type(op).__name__}: missing keyword argument 'group'")
    init_base(op, kwargs, base_init=_SENSOR_INIT, base_args=_SENSOR_ARGS)
    op.deferrable = _default_deferrable() if deferrable is None else deferrable  # type: ignore[attr-defined]


class FsMigrationGateSensor(PlanResources, BaseSensorOperator):
    """Base of the gate sensors: poke = one check; deferrable = one check, then a trigger.

    :param plan_path: the plan file or folder (templated).
    :param group: the feature group (templated).
    :param deferrable: wait in the triggerer instead of a worker (default: ``[operators] default_deferrable``).
    """

    template_fields: Sequence[str] = ("plan_path", "group")
    ui_color = "#fff3cd"
    roles: ClassVar[tuple[str, ...]] = ("registry",)

    def __init__(self, *, plan_path: str, group: str, deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan_path = plan_path
        self.group = group
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    # -- subclass API ------------------------------------------------------------------------
    def check(self) -> GateCheck:
        raise NotImplementedError

    def trigger(self) -> Any:
        raise NotImplementedError

    def prepare(self, context: Context) -> None:
        """Fix whatever the gate needs before its first check (e.g. a bake's windows)."""

    # -- execution ---------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        _ = self.feature_group
        try:
            self.prepare(context)
            if not self.deferrable or self._short_wait():
                super().execute(context)
                return self._last
            result = self.check()
            if result.status == "pass":
                return self._finish(context, result.as_dict())
            if result.status == "fail":
                self._fail(context, result.as_dict())
        finally:
            self._close()
        self.log.info("%s: %s; deferring (poll every %.1fs)", self.group, result.reason, self.poke_interval)
        self.defer(
            trigger=self.trigger(),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout else None,
        )

    _last: Any = None

    #: A gate whose whole timeout is shorter than this (seconds-scale plans: demo, tests) waits in
    #: its worker instead of deferring. A wait of seconds is cheaper there than a deferral round
    #: trip, and Airflow 3.3's scheduler can fail a task whose trigger fires a few seconds after it
    #: deferred: the defer-exit's stale "success" arrives once the resumed try runs
    #: (apache/airflow#72716, seen with ``make airflow SCALE=seconds``). Real gates take days.
    SHORT_WAIT_S: ClassVar[float] = 600.0

    def _short_wait(self) -> bool:
        return bool(self.timeout) and float(self.timeout) < self.SHORT_WAIT_S

    def poke(self, context: Context) -> bool:
        result = self.check()
        if result.status == "fail":
            self._fail(context, result.as_dict())
        if result.status == "pass":
            self._last = self._finish(context, result.as_dict())
            return True
        self.log.info("%s: %s", self.group, result.reason)
        return False

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        if not event:
            self._fail(
                context, {"status": "error", "reason": "the trigger ended without an event", "details": {}}
            )
        assert event is not None
        if event.get("status") == "pass":
            return self._finish(context, event)
        self._fail(context, event)

    def _finish(self, context: Context, event: dict[str, Any]) -> Any:
        payload = to_json(event, self.hook)
        self.log.info("%s: gate passed: %s", self.group, payload.get("reason"))
        return payload

    def _fail(self, context: Context, event: dict[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        payload = to_json(event, self.hook)
        context["ti"].xcom_push(key=GATE_XCOM_KEY, value=payload)
        raise AirflowFailException(f"group {self.group}: {payload.get('reason')}")


class UpstreamCutoverSensor(FsMigrationGateSensor):
    """Wait until every upstream group of ``group`` is cut over (cutover, warm or later).

    The first task of every migrate DAG: even when the DAG was started by an upstream group's
    cutover asset event, the registry is the source of truth and is checked here.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("deferrable", False)
        init_sensor(self, kwargs)

    def check(self) -> GateCheck:
        from airflow_fsmigration.triggers.checks import check_upstream

        return check_upstream(self.plan, self.group, self.urls(("registry",)))  # type: ignore[arg-type]


class ShadowSoakSensor(FsMigrationGateSensor):
    """Wait until the shadow comparison has been green for the plan's ``shadow_soak``.

    :param refresh_after: seconds; when the newest recorded comparison is older, run and record a
        fresh one before checking (for soaks of seconds or minutes, where the nightly DAG cannot
        keep the series dense enough). ``None``: only read the series.
    """

    def __init__(self, *, refresh_after: float | None = None, **kwargs: Any) -> None:
        init_sensor(self, kwargs)
        self.refresh_after = refresh_after

    def _roles(self) -> tuple[str, ...]:
        return ("registry", "legacy_online", "new_store") if self.refresh_after is not None else ("registry",)

    def check(self) -> GateCheck:
        from airflow_fsmigration.triggers.checks import check_soak

        return check_soak(self.plan, self.group, self.urls(self._roles()), refresh_after=self.refresh_after)  # type: ignore[arg-type]

    def trigger(self) -> Any:
        from airflow_fsmigration.triggers.gates import ShadowSoakTrigger

        return ShadowSoakTrigger(
            self.plan_path,
            self.feature_group.name,
            poll_interval=self.poke_interval,
            refresh_after=self.refresh_after,
        )


class BakeSensor(FsMigrationGateSensor):
    """Watch the plan's rollback triggers for one ramp step's bake window (48 h by default).

    A breach fails the task at once with the breach in XCom (key ``breach``), which the migrate
    DAG's rollback task records as the reason. A pass needs the whole window to have elapsed.

    :param percent: the ramp step being baked (templated).
    :param inconclusive_grace: seconds to wait after the window for late labels before failing.
    """

    template_fields: Sequence[str] = (*FsMigrationGateSensor.template_fields, "percent")
    ui_color = "#ffe5b4"

    def __init__(self, *, percent: int | str, inconclusive_grace: float = 0.0, **kwargs: Any) -> None:
        init_sensor(self, kwargs)
        self.percent = percent
        self.inconclusive_grace = inconclusive_grace
        self.windows: dict[str, str] = {}

    def prepare(self, context: Context) -> None:
        from airflow_fsmigration.gates.bake import bake_windows

        self.windows = bake_windows(self.plan, self.group, self.registry, float(self.percent))  # type: ignore[arg-type]
        self.log.info("bake of %s at %s%%: %s", self.group, self.percent, self.windows)

    def check(self) -> GateCheck:
        from airflow_fsmigration.gates.bake import sequential_bake_check
        from airflow_fsmigration.triggers.checks import check_bake, utcnow

        urls = self.urls(("registry", "model_metrics", "routing_mirror"))
        grace = float(self.inconclusive_grace)
        return sequential_bake_check(
            lambda windows, now: check_bake(
                self.plan,  # type: ignore[arg-type]
                self.feature_group.name,
                urls,  # type: ignore[arg-type]
                dict(windows),
                inconclusive_grace=grace,
                now=now,
            ),
            self.windows,
            utcnow(),
            inconclusive_grace=grace,
        )

    def trigger(self) -> Any:
        from airflow_fsmigration.triggers.gates import BakeTrigger

        return BakeTrigger(
            self.plan_path,
            self.feature_group.name,
            windows=self.windows,
            poll_interval=self.poke_interval,
            inconclusive_grace=self.inconclusive_grace,
        )

    def _fail(self, context: Context, event: dict[str, Any]) -> None:
        payload = to_json(event, self.hook)
        context["ti"].xcom_push(
            key=BREACH_XCOM_KEY,
            value={
                "task_id": self.task_id,
                "percent": float(self.percent),
                "reason": payload.get("reason"),
                "breaches": (payload.get("details") or {}).get("breaches", []),
            },
        )
        super()._fail(context, event)


class KeepWarmSensor(FsMigrationGateSensor):
    """Check every interval that the old store is still refreshed, until the keep-warm window passed.

    First moves the group from ``cutover`` to ``warm`` (which starts the window; a no-op when it
    is already warm). Each check is recorded in the registry; the window passes only with
    warmth verified in every day of it, which is what allows ``ready_to_decommission``.
    """

    def prepare(self, context: Context) -> None:
        from airflow_fsmigration.operators.routing import move_to_phase

        if self.registry.state(self.group).phase.value == "cutover":
            move_to_phase(self, context, "warm", "cutover baked: keep the old store warm")

    def check(self) -> GateCheck:
        from airflow_fsmigration.triggers.checks import check_keep_warm

        urls = self.urls(("registry", "legacy_online", "legacy_offline"))
        return check_keep_warm(self.plan, self.group, urls)  # type: ignore[arg-type]

    def trigger(self) -> Any:
        from airflow_fsmigration.triggers.gates import KeepWarmTrigger

        return KeepWarmTrigger(self.plan_path, self.feature_group.name, poll_interval=self.poke_interval)
