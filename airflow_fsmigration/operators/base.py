"""The base of every fsmigration operator: plan, hook and registry built lazily, JSON results.

Operators are constructed at DAG-parse time for every group of the plan, so ``__init__`` only
stores arguments; the plan, the connections and the core modules are loaded in ``execute``.
Results go to XCom as plain JSON with every resolved password removed.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_fsmigration.hooks.migration import MigrationHook
    from airflow_fsmigration.plan import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.operators")


def actor_of(context: Context) -> str:
    """Who made a routing change, for the audit log: the DAG and task that made it."""
    ti = context["ti"]
    return f"airflow:{ti.dag_id}.{ti.task_id}"


def dag_run_ref(context: Context) -> dict[str, Any]:
    ti = context["ti"]
    return {"dag_id": ti.dag_id, "run_id": ti.run_id}


def to_json(value: Any, hook: MigrationHook | None = None) -> Any:
    """A JSON-safe copy of ``value`` (dates as ISO text) with resolved passwords removed."""
    text = json.dumps(value, default=_default, sort_keys=True)
    if hook is not None:
        text = hook.redact(text)
    return json.loads(text)


def _default(obj: Any) -> Any:
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    if hasattr(obj, "total_seconds"):
        return obj.total_seconds()
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj, key=str)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return str(obj)


class PlanResources:
    """Mixin: the plan, the group, the connections hook and the registry, each built on first use.

    Shared by operators and sensors. Nothing here runs at parse time.
    """

    plan_path: str
    group: str | None
    task_id: str

    @cached_property
    def plan(self) -> MigrationPlan:
        from airflow_fsmigration.plan.cache import load_plan_cached

        return load_plan_cached(self.plan_path, isolate=False)

    @cached_property
    def feature_group(self) -> FeatureGroup:
        if not self.group:
            raise ValueError(f"task {self.task_id}: no feature group given")
        try:
            return self.plan.groups[self.group]
        except KeyError:
            raise ValueError(
                f"task {self.task_id}: group {self.group!r} is not in plan {self.plan.name!r} "
                f"({self.plan_path}); known groups: {', '.join(sorted(self.plan.groups))}"
            ) from None

    @cached_property
    def hook(self) -> MigrationHook:
        from airflow_fsmigration.hooks.migration import MigrationHook

        return MigrationHook(self.plan)

    @cached_property
    def registry(self) -> Any:
        """The routing registry (schema ensured, plan registered), publishing to the Redis mirror."""
        from airflow_fsmigration.operators._runtime import open_registry

        return open_registry(self.plan, self.hook)

    def urls(self, roles: Sequence[str]) -> dict[str, str]:
        """libpq / Redis URLs of the plan's connection roles (for the one-shot gate checks)."""
        from airflow_fsmigration.hooks.migration import REDIS_ROLES

        return {
            role: self.hook.redis_url(role) if role in REDIS_ROLES else self.hook.postgres_url(role)
            for role in roles
        }

    def _close(self) -> None:
        registry = self.__dict__.pop("registry", None)
        if registry is not None:
            registry.close()
        hook = self.__dict__.get("hook")
        if hook is not None:
            hook.close()


# The undecorated ``BaseOperator.__init__`` and the arguments it takes (see init_base).
_BASE_INIT: Any = BaseOperator.__init__.__wrapped__  # type: ignore[attr-defined]
_BASE_ARGS = frozenset(inspect.signature(_BASE_INIT).parameters) - {"self"}


def init_base(
    op: BaseOperator, kwargs: dict[str, Any], base_init: Any = None, base_args: frozenset[str] = _BASE_ARGS
) -> None:
    """Initialise ``op`` as ``FsMigrationBaseOperator.__init__`` would, with one ``apply_defaults`` pass.

    Airflow wraps every operator class's ``__init__`` in ``apply_defaults``, which merges the
    DAG's default args and deep-copies its params once per class layer. The factory builds
    thousands of tasks per parse, so a subclass calls this instead of ``super().__init__``: its own
    layer has already merged params and default args (they arrive in ``kwargs``), so the
    undecorated base ``__init__`` is called directly, after filling the base operator's arguments
    from ``default_args`` exactly as the skipped layer would have.
    """
    try:
        plan_path = kwargs.pop("plan_path")
    except KeyError:
        raise TypeError(f"{type(op).__name__}: missing keyword argument 'plan_path'") from None
    group = kwargs.pop("group", None)
    default_args = kwargs.pop("default_args", None) or {}
    for key, value in default_args.items():
        if key in base_args and key not in kwargs:
            kwargs[key] = value
    (base_init or _BASE_INIT)(op, default_args=default_args, **kwargs)
    op.plan_path = plan_path  # type: ignore[attr-defined]
    op.group = group  # type: ignore[attr-defined]


class FsMigrationBaseOperator(PlanResources, BaseOperator):
    """Common arguments and lazy resources of the fsmigration operators.

    :param plan_path: the plan file or folder (templated).
    :param group: the feature group this task works on (templated; ``None`` for plan-wide tasks).
    """

    template_fields: Sequence[str] = ("plan_path", "group")
    ui_color = "#e8f1fb"
    needs_group: ClassVar[bool] = True

    def __init__(self, *, plan_path: str, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan_path = plan_path
        self.group = group

    def execute(self, context: Context) -> Any:
        if self.needs_group:
            _ = self.feature_group
        try:
            result = self.run(context)
        finally:
            self._close()
        return to_json(result, self.hook) if result is not None else None

    def run(self, context: Context) -> Any:
        """Do the work; return a JSON-able result for XCom."""
        raise NotImplementedError
