"""Soak, bake and keep-warm decisions: when may traffic move, when must it go back.

Plain Python, no Airflow import. The decisions are pure functions over evidence (a series of
comparisons, model metrics and serving stats, keep-warm checks); the layers that hold the
evidence read it and call in: :mod:`airflow_fsmigration.compare.results` (the soak series),
:mod:`airflow_fsmigration.registry` (audit log, keep-warm checks), and the sensors and triggers
through :mod:`airflow_fsmigration.triggers.checks`, which opens the connections.

Imports: the standard library, :mod:`airflow_fsmigration.db` (the model-metrics table) and,
for type hints only, the plan model. Never compare, registry or serving: they import gates.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "GateCheck": "check",
    "SoakStatus": "soak",
    "soak_from_runs": "soak",
    "time_verdicts": "soak",
    "Outcome": "bake",
    "Breach": "bake",
    "GateResult": "bake",
    "evaluate_bake": "bake",
    "bake_windows": "bake",
    "bake_decision": "bake",
    "record_metric": "metrics",
    "record_scores": "metrics",
    "ensure_metrics_schema": "metrics",
    "warm_window": "keepwarm",
    "keep_warm_decision": "keepwarm",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
