"""Routing operators: phase moves, ramp steps, rollback, freeze and the load test.

Every move goes through :class:`airflow_fsmigration.registry.routing.Registry`, which checks the
state machine, applies a compare-and-set and writes the audit row (actor = the DAG and task,
with the DAG run id); the Redis mirror tells serving processes at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.links import ReportLink
from airflow_fsmigration.operators.base import FsMigrationBaseOperator, actor_of, dag_run_ref, init_base

if TYPE_CHECKING:
    from airflow.sdk import Context

BREACH_XCOM_KEY = "breach"


def move_to_phase(op: Any, context: Context, phase: str, reason: str) -> dict[str, Any]:
    """Move ``op.group`` to ``phase`` unless it is there already (re-runs are no-ops)."""
    from airflow_fsmigration.registry.model import Phase

    target = Phase(phase)
    current = op.registry.state(op.group)
    if current.phase is target:
        op.log.info("group %s is already %s: nothing to do", op.group, current.describe())
        return {
            "group": op.group,
            "phase": current.phase.value,
            "ramp_pct": current.ramp_pct,
            "changed": False,
        }
    state = op.registry.transition(
        op.group, target, actor=actor_of(context), reason=reason, dag_run=dag_run_ref(context)
    )
    return {"group": op.group, "phase": state.phase.value, "ramp_pct": state.ramp_pct, "changed": True}


class RegistryTransitionOperator(FsMigrationBaseOperator):
    """Move a group to a phase (``shadow``, ``warm``, ``ready_to_decommission``, ...).

    :param phase: the target phase (templated).
    :param reason: why, for the audit log (templated).
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "phase", "reason")
    ui_color = "#fdf2d0"

    def __init__(self, *, phase: str, reason: str | None = None, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.phase = phase
        self.reason = reason

    def run(self, context: Context) -> Any:
        reason = self.reason or f"{context['ti'].task_id} in {context['ti'].dag_id}"
        return move_to_phase(self, context, self.phase, reason)


class RampStepOperator(FsMigrationBaseOperator):
    """Route ``percent`` % of the group's entities to the new store (100 = cutover).

    The first step out of ``shadow`` carries the soak status as evidence: the registry refuses
    to move traffic unless the soak passed.

    :param percent: the ramp step, one of the plan's ``ramp_steps`` (templated).
    :param soak_task_id: the soak sensor of this DAG run; its passed gate (XCom) is the evidence.
        Without it (or when it did not run), the soak status is read from the results series.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "percent")
    ui_color = "#d7f0dd"

    def __init__(
        self,
        *,
        percent: int | str,
        soak_task_id: str | None = "shadow_soak",
        approval_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        init_base(self, kwargs)
        self.percent = percent
        self.soak_task_id = soak_task_id
        self.approval_task_id = approval_task_id

    def run(self, context: Context) -> Any:
        from airflow_fsmigration.operators._runtime import soak_evidence

        pct = float(self.percent)
        steps = self.plan.settings_for(self.feature_group).ramp_steps
        if pct not in [float(s) for s in steps]:
            raise ValueError(
                f"group {self.group!r}: {pct:g}% is not one of the plan's ramp_steps {list(steps)}"
            )
        current = self.registry.state(self.group)
        if current.ramp_pct == pct and current.phase.value in ("ramping", "cutover"):
            self.log.info("group %s is already at %s: nothing to do", self.group, current.describe())
            return {"group": self.group, "ramp_pct": pct, "changed": False}
        soak_passed = None
        evidence: dict[str, Any] = {"step": pct}
        if current.phase.value == "shadow":
            gate = None
            if self.soak_task_id:
                gate = context["ti"].xcom_pull(task_ids=self.soak_task_id)
            if isinstance(gate, dict) and gate.get("status") == "pass":
                soak = {**(gate.get("details") or {}), "passed": True, "gate_task": self.soak_task_id}
            else:
                soak = soak_evidence(self.plan, self.feature_group.name, self.hook)
            soak_passed = bool(soak.get("passed"))
            evidence["soak"] = soak
        actor, reason = actor_of(context), f"ramp step {pct:g}% of {list(steps)}"
        if self.approval_task_id:
            from airflow_fsmigration.operators.approval import APPROVAL_XCOM_KEY

            approval = context["ti"].xcom_pull(task_ids=self.approval_task_id, key=APPROVAL_XCOM_KEY)
            if not isinstance(approval, dict) or not approval.get("by"):
                raise ValueError(
                    f"group {self.group!r}: the {pct:g}% step needs an approval and "
                    f"{self.approval_task_id} recorded none; answer it in Required Actions"
                )
            actor, reason = str(approval["by"]), f"{reason}, approved in {self.approval_task_id}"
            evidence["approval"] = approval
        state = self.registry.ramp(
            self.group,
            pct,
            actor=actor,
            reason=reason,
            dag_run=dag_run_ref(context),
            soak_passed=soak_passed,
            evidence=evidence,
        )
        self.log.info("group %s now %s", self.group, state.describe())
        return {"group": self.group, "phase": state.phase.value, "ramp_pct": state.ramp_pct, "changed": True}


class RollbackOperator(FsMigrationBaseOperator):
    """Send every read of the group back to the old store and record why in the audit log.

    Used two ways: in the rollback DAG with a reason typed by a person, and in the migrate DAG
    with trigger rule ``one_failed`` after the bakes, where the reason is the breach the failed
    bake recorded (XCom key ``breach``) or the names of the tasks that failed.

    :param reason: why (templated); a person's reason in the manual DAG.
    :param breach_task_ids: tasks whose recorded breach explains an automatic rollback.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "reason")
    ui_color = "#f8d7da"

    def __init__(
        self, *, reason: str | None = None, breach_task_ids: Sequence[str] = (), **kwargs: Any
    ) -> None:
        init_base(self, kwargs)
        self.reason = reason
        self.breach_task_ids = list(breach_task_ids)

    def _automatic_reason(self, context: Context) -> tuple[str, list[Any]]:
        ti = context["ti"]
        breaches = []
        for task_id in self.breach_task_ids:
            value = ti.xcom_pull(task_ids=task_id, key=BREACH_XCOM_KEY)
            if value:
                breaches.append(value)
        if breaches:
            first = breaches[0]
            return f"automatic rollback: {first.get('task_id')}: {first.get('reason')}", breaches
        failed: list[str] = []
        try:
            states = ti.get_task_states(
                dag_id=ti.dag_id, task_ids=list(self.upstream_task_ids), run_ids=[ti.run_id]
            )
            failed = sorted(t for t, s in states.get(ti.run_id, {}).items() if s == "failed")
        except Exception as exc:  # roll back anyway: the trigger rule says an upstream failed
            self.log.warning("could not read upstream task states: %s", exc)
            failed = ["an upstream task"]
        if not failed:
            from airflow.sdk.exceptions import AirflowSkipException

            # Only upstream_failed (e.g. the soak never passed): no traffic moved, nothing to undo.
            raise AirflowSkipException(
                "no bake failed: no traffic was moved by this run, nothing to roll back"
            )
        return f"automatic rollback: task(s) failed: {', '.join(failed)}", []

    def run(self, context: Context) -> Any:
        evidence: dict[str, Any] = {}
        if self.reason and str(self.reason).strip():
            reason = str(self.reason).strip()
        else:
            reason, breaches = self._automatic_reason(context)
            evidence["breaches"] = breaches
        state = self.registry.rollback(
            self.group,
            reason=reason,
            actor=actor_of(context),
            dag_run=dag_run_ref(context),
            evidence=evidence or None,
        )
        self.log.warning("group %s rolled back (%s): %s", self.group, state.describe(), reason)
        return {
            "group": self.group,
            "phase": state.phase.value,
            "ramp_pct": state.ramp_pct,
            "changed": state.changed,
            "reason": reason,
        }


class FreezeOperator(FsMigrationBaseOperator):
    """Stop the ramp where it stands without moving traffic, for when going back is worse.

    :param reason: why (templated).
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "reason")
    ui_color = "#e2e3f3"

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.reason = reason

    def run(self, context: Context) -> Any:
        state = self.registry.freeze(
            self.group, reason=self.reason, actor=actor_of(context), dag_run=dag_run_ref(context)
        )
        return {
            "group": self.group,
            "phase": state.phase.value,
            "ramp_pct": state.ramp_pct,
            "changed": state.changed,
        }


class LoadTestOperator(FsMigrationBaseOperator):
    """Drive the new store at ``multiplier`` x the group's peak QPS before any traffic moves.

    Fails when the p99 exceeds the group's SLA or the generator could not reach the target rate.

    :param multiplier: overrides the plan's ``load_test_multiplier`` (templated).
    :param duration_seconds: overrides the plan's ``load_test_duration`` (templated).
    """

    template_fields: Sequence[str] = (
        *FsMigrationBaseOperator.template_fields,
        "multiplier",
        "duration_seconds",
    )
    operator_extra_links = (ReportLink(),)
    ui_color = "#fbe3d0"

    def __init__(
        self,
        *,
        multiplier: float | str | None = None,
        duration_seconds: float | str | None = None,
        **kwargs: Any,
    ) -> None:
        init_base(self, kwargs)
        self.multiplier = multiplier
        self.duration_seconds = duration_seconds
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import load_test, report_url, write_report

        result = load_test(
            self.plan,
            self.feature_group.name,
            self.hook,
            multiplier=float(self.multiplier) if self.multiplier not in (None, "") else None,
            duration_seconds=float(self.duration_seconds)
            if self.duration_seconds not in (None, "")
            else None,
        )
        path = write_report("load_test", self.group, context["ti"].run_id, f"Load test: {self.group}", result)
        self.report_url = report_url(path)
        if result.get("outcome") != "pass":
            context["ti"].xcom_push(key="load_test", value=result)
            raise AirflowFailException(
                f"group {self.group}: load test {result.get('outcome')}: {result.get('message')}"
            )
        return result
