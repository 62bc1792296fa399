"""The routing registry: state machine in Postgres, audit log, Redis mirror, keep-warm checks.

The gates that decide on the evidence (soak, bake, keep-warm window) are :mod:`airflow_fsmigration.gates`.

Plain Python, no Airflow import: usable from the CLI when Airflow is down and from DAG tasks.
Submodules load lazily so that importing the package costs nothing at DAG-parse time.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Phase": "model",
    "Backend": "model",
    "RoutingState": "model",
    "AuditEntry": "model",
    "DagRunRef": "model",
    "RegistryError": "model",
    "IllegalTransition": "model",
    "VersionConflict": "model",
    "UnknownGroup": "model",
    "rollback_command": "model",
    "Registry": "routing",
    "RoutingMirror": "mirror",
    "ReconcileReport": "mirror",
    "routing_key": "mirror",
    "check_warmth": "keepwarm",
    "warm_window_status": "keepwarm",
    "WarmCheck": "keepwarm",
    "WarmWindowStatus": "keepwarm",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
