"""The migration plan: model, loader with file:line errors, dependency graph and waves.

Names load lazily (PEP 562): the DAG file unpickles a cached plan and needs only the model, not
the loader, its YAML parser or difflib, and every millisecond here is paid on each DAG parse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.errors import PlanError, PlanIssue
    from airflow_fsmigration.plan.graph import Waves, compute_waves, risk_tier
    from airflow_fsmigration.plan.loader import load_plan
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan, Settings

_LAZY = {
    "PlanError": "errors",
    "PlanIssue": "errors",
    "Waves": "graph",
    "compute_waves": "graph",
    "risk_tier": "graph",
    "load_plan": "loader",
    "FeatureGroup": "model",
    "MigrationPlan": "model",
    "Settings": "model",
}

__all__ = [
    "FeatureGroup",
    "MigrationPlan",
    "PlanError",
    "PlanIssue",
    "Settings",
    "Waves",
    "compute_waves",
    "load_plan",
    "risk_tier",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_fsmigration.plan' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"airflow_fsmigration.plan.{module}"), name)
    globals()[name] = value
    return value
