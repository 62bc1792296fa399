"""The migration plan: model, loader with file:line errors, dependency graph and waves."""

from __future__ import annotations

from airflow_fsmigration.plan.errors import PlanError, PlanIssue
from airflow_fsmigration.plan.graph import Waves, compute_waves, risk_tier
from airflow_fsmigration.plan.loader import load_plan
from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan, Settings

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
