"""Shadow comparison operators: compare one group (or one hash shard of it), list active groups.

For a large group, map the comparison over shards:
``ShadowCompareOperator.partial(task_id=..., plan_path=..., group=..., num_shards=8).expand(shard=range(8))``;
each mapped task records its shard at the same logical time, and the soak gate counts the
shards of one logical time together (one failing shard fails that time).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.links import ReportLink
from airflow_fsmigration.operators.base import FsMigrationBaseOperator, init_base

if TYPE_CHECKING:
    from airflow.sdk import Context


def logical_time_of(context: Context) -> datetime:
    """The run's logical time (shards of one run share it); manual runs use the run's ``run_after``."""
    when: Any = context.get("logical_date")
    if when is None:
        dag_run = context.get("dag_run")
        when = getattr(dag_run, "run_after", None) or getattr(dag_run, "start_date", None)
    when = when or datetime.now(UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class ShadowCompareOperator(FsMigrationBaseOperator):
    """Compare the group between the old and the new store and record the run for the soak gate.

    Fails when the verdict is ``fail`` or ``inconclusive`` (after pushing the result), so a red
    night is visible in the grid; a store that did not answer fails naming its connection, and
    nothing is recorded.

    :param shard: hash shard K of ``num_shards`` (templated; map over it with ``.expand``).
    :param num_shards: total shards; 1 compares the whole sample in one task.
    :param sample_size: entities to compare (templated); default the plan's ``shadow_sample_size``.
    :param use_logical_time: record the run at the DAG run's logical time (so shards line up);
        ``False`` records it at the moment of the comparison.
    :param fail_on_mismatch: fail the task on a ``fail``/``inconclusive`` verdict.
    """

    template_fields: Sequence[str] = (*FsMigrationBaseOperator.template_fields, "shard", "sample_size")
    operator_extra_links = (ReportLink(),)
    ui_color = "#e0d7f5"

    def __init__(
        self,
        *,
        shard: int | str | None = None,
        num_shards: int = 1,
        sample_size: int | str | None = None,
        use_logical_time: bool = True,
        fail_on_mismatch: bool = True,
        **kwargs: Any,
    ) -> None:
        init_base(self, kwargs)
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        self.shard = shard
        self.num_shards = num_shards
        self.sample_size = sample_size
        self.use_logical_time = use_logical_time
        self.fail_on_mismatch = fail_on_mismatch
        self.report_url: str | None = None

    def run(self, context: Context) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        from airflow_fsmigration.operators._runtime import report_url, shadow_compare, write_report

        shard = None
        if self.num_shards > 1:
            if self.shard in (None, ""):
                raise ValueError(
                    f"task {self.task_id}: num_shards={self.num_shards} needs a shard (0..{self.num_shards - 1})"
                )
            shard = f"{int(self.shard)}/{self.num_shards}"  # type: ignore[arg-type]
        sample = None if self.sample_size in (None, "") else int(self.sample_size)  # type: ignore[arg-type]
        result = shadow_compare(
            self.plan,
            self.feature_group.name,
            self.hook,
            shard=shard,
            sample_size=sample,
            logical_time=logical_time_of(context) if self.use_logical_time else None,
        )
        summary = {
            k: result.get(k)
            for k in (
                "group",
                "run_id",
                "verdict",
                "match_rate",
                "threshold",
                "entities_compared",
                "entities_requested",
                "missing_in_new",
                "missing_in_old",
                "shard",
                "logical_time",
                "reasons",
                "errors",
            )
        }
        summary["feature_match_rates"] = {
            n: f.get("match_rate") for n, f in result.get("features", {}).items()
        }
        summary["explanations"] = result.get("explanations", [])
        summary["causes"] = result.get("causes", [])
        path = write_report(
            "shadow",
            self.group,
            f"{context['ti'].run_id}_{result.get('run_id')}",
            f"Shadow comparison: {self.group}",
            result,
        )
        self.report_url = report_url(path)
        headline = outcome_message(self.feature_group.name, summary)
        for line in cause_details(summary.get("causes") or []):
            self.log.info("%s", line)
        if self.fail_on_mismatch and summary["verdict"] != "pass":
            context["ti"].xcom_push(key="shadow_result", value=summary)
            raise AirflowFailException(headline + (f" Report: {self.report_url}" if self.report_url else ""))
        self.log.info("%s", headline)
        return summary


def _rate(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.4%}"


def outcome_message(group: str, summary: dict[str, Any]) -> str:
    """The first line a user reads: verdict, figures, then the root causes with their fixes."""
    head = (
        f"group {group}: shadow comparison {str(summary.get('verdict')).upper()}: match rate "
        f"{_rate(summary.get('match_rate'))} vs threshold {_rate(summary.get('threshold'))} over "
        f"{summary.get('entities_compared')} entities."
    )
    causes = summary.get("causes") or []
    if not causes:
        rest = "; ".join(summary.get("reasons") or [])
        return head + (f" {rest}." if rest else "")
    parts = []
    for i, c in enumerate(causes[:3], start=1):
        feats = ", ".join(f"{f} {c['shares'].get(f, 0):.0%}" for f in c.get("features", {}))
        proof = "proven by replay" if c.get("proven") else "value pattern, not proven"
        change = (c.get("rewrite") or {}).get("description")
        parts.append(
            f"Root cause {i}: {c['kind']} on {feats} ({proof})."
            + (f" Change: {change}." if change else "")
            + f" Fix: {c['fix']}."
        )
    if len(causes) > 3:
        parts.append(f"{len(causes) - 3} more causes in the report.")
    return head + " " + " ".join(parts)


def cause_details(causes: Sequence[dict[str, Any]]) -> list[str]:
    """Evidence and the SQL diff of each cause, for the task log (above the failure line)."""
    lines = []
    for i, c in enumerate(causes, start=1):
        lines.append(f"root cause {i}: {c['kind']}: {c.get('evidence')}")
        diff = (c.get("rewrite") or {}).get("diff")
        if diff:
            lines.extend(f"    {d}" for d in diff.splitlines())
    return lines


class ActiveGroupsOperator(FsMigrationBaseOperator):
    """List the plan's groups in the given registry phases, read at run time (for mapping over).

    :param phases: registry phases that count as active (default: shadow, ramping, cutover, warm).
    """

    needs_group = False
    ui_color = "#fdf2d0"

    def __init__(self, *, phases: Sequence[str] | None = None, **kwargs: Any) -> None:
        init_base(self, kwargs)
        self.phases = tuple(phases) if phases else ("shadow", "ramping", "cutover", "warm")

    def run(self, context: Context) -> Any:
        from airflow_fsmigration.operators._runtime import active_groups

        groups = active_groups(self.plan, self.hook, self.phases)
        self.log.info("active groups (%s): %s", ", ".join(self.phases), ", ".join(groups) or "none")
        return groups
