"""A person approves each ramp step, with the evidence in front of them (plan ``ramp_approval``).

Built on Airflow's own human-in-the-loop operator (``airflow.providers.standard.operators.hitl``):
the task waits in ``awaiting_input`` without a worker slot, shows up under *Required Actions* in
the UI, and can be answered there or through the HITL REST API. Three answers:

- **Approve**: the ramp step runs; its audit row names who approved it.
- **Freeze**: the group stays where it is (phase ``frozen``); the run fails so nothing promotes.
- **Roll back**: every read goes back to the old store now.

Nobody answering within the plan's ``approval_timeout`` counts as *Freeze*: a ramp never
promotes by default. Every answer, and the timeout, is written to the routing audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.hitl import HITLOperator

from airflow_fsmigration.operators.base import PlanResources, actor_of, dag_run_ref, to_json
from airflow_fsmigration.plan.durations import format_duration

if TYPE_CHECKING:
    from airflow.sdk import Context

APPROVE, FREEZE, ROLL_BACK = "Approve", "Freeze", "Roll back"
OPTIONS = (APPROVE, FREEZE, ROLL_BACK)
APPROVAL_XCOM_KEY = "approval"


def _reason_of(value: Any) -> str | None:
    """The one-line reason a gate or task pushed to XCom, if any."""
    if isinstance(value, dict):
        reason = value.get("reason") or value.get("message") or value.get("summary")
        return str(reason) if reason else None
    return None


def evidence_body(group: str, pct: float, state: str, evidence: dict[str, str | None], timeout: str) -> str:
    """The approval's body (markdown): what is asked, the evidence, and what each answer does."""
    lines = [f"**{group}**: route **{pct:g}%** of reads to the new store?", "", f"Now: {state}.", ""]
    for name, text in evidence.items():
        lines.append(f"- **{name}**: {text or 'no result recorded in this run'}")
    lines += [
        "",
        f"*{APPROVE}*: ramp to {pct:g}% and bake. *{FREEZE}*: stay where it is. "
        f"*{ROLL_BACK}*: every read back to the old store now.",
        f"Nobody answering within {timeout} freezes the group: it never promotes by default.",
    ]
    return "\n".join(lines)


class RampApprovalOperator(PlanResources, HITLOperator):
    """Wait for a person to approve the ramp step to ``percent`` % (``Freeze`` on timeout).

    :param percent: the ramp step this approval guards.
    :param evidence_task_ids: tasks of this run whose results go into the body (name -> task id).
    """

    template_fields: Sequence[str] = ("plan_path", "group", "subject", "body")
    ui_color = "#fff0c2"

    def __init__(
        self,
        *,
        plan_path: str,
        group: str,
        percent: int,
        evidence_task_ids: dict[str, str] | None = None,
        response_timeout: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("subject", f"{group}: ramp to {percent}%?")
        super().__init__(
            options=list(OPTIONS),
            defaults=[FREEZE],
            multiple=False,
            response_timeout=response_timeout,
            **kwargs,
        )
        self.plan_path = plan_path
        self.group = group
        self.percent = percent
        self.evidence_task_ids = dict(evidence_task_ids or {})

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        evidence = {
            name: _reason_of(ti.xcom_pull(task_ids=task_id))
            for name, task_id in self.evidence_task_ids.items()
        }
        try:
            state = self.registry.state(self.group).describe()
        finally:
            self._close()
        timeout = format_duration(self.response_timeout) if self.response_timeout else "the timeout"
        self.body = evidence_body(self.feature_group.name, float(self.percent), state, evidence, timeout)
        self.log.info(
            "%s: waiting for a person to approve the ramp to %s%%\n%s", self.group, self.percent, self.body
        )
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        result = super().execute_complete(context, event)
        chosen = result["chosen_options"][0]
        user = result.get("responded_by_user") or None
        who = str(user.get("name") or user.get("id")) if isinstance(user, dict) else None
        actor = who or f"{actor_of(context)} (no answer)"
        answer = {
            "answer": chosen,
            "by": who,
            "at": result.get("responded_at"),
            "step": float(self.percent),
            "timed_out": who is None,
        }
        try:
            if chosen == APPROVE:
                context["ti"].xcom_push(key=APPROVAL_XCOM_KEY, value=to_json(answer))
                self.log.info("%s: ramp to %s%% approved by %s", self.group, self.percent, who)
                return to_json(answer)
            if who is None:
                timeout = format_duration(self.response_timeout) if self.response_timeout else "its timeout"
                reason = f"ramp to {self.percent}% not approved: nobody answered within {timeout}"
            else:
                reason = f"ramp to {self.percent}% not approved: {who} chose {chosen}"
            group = self.feature_group.name
            current = self.registry.state(group)
            if current.ramp_pct <= 0 and current.phase.value in ("shadow", "rolled_back", "planned"):
                # No traffic has moved: there is nothing to freeze or roll back, only the answer to log.
                move = self.registry.record
                reason += f" (no traffic had moved; the group stays in {current.phase.value})"
            else:
                move = self.registry.rollback if chosen == ROLL_BACK else self.registry.freeze
            state = move(
                group,
                reason=reason,
                actor=actor,
                dag_run=dag_run_ref(context),
                evidence={"approval": answer},
            )
        finally:
            self._close()
        raise AirflowFailException(f"group {self.group}: {reason}; now {state.describe()}")

    def _close(self) -> None:
        registry = self.__dict__.pop("registry", None)
        if registry is not None:
            registry.close()
        hook = self.__dict__.pop("hook", None)
        if hook is not None:
            hook.close()
