"""Training data after a migration: retention audit, chunked as-of replay, point-in-time checks.

- :mod:`.retention`: do the raw events cover a backfill window? (``audit_retention``,
  ``audit_plan_retention``, ``RetentionGapError``)
- :mod:`.training`: per model, the path the data allows and the retraining verdict
- :mod:`.replay`: the group definition as of a snapshot grid or a label spine, in checkpointed,
  idempotent chunks (``run_backfill``)
- :mod:`.pit`: point-in-time validation against the old offline store (``validate_point_in_time``)
- :mod:`.snapshots`: training snapshots as Parquet typed by the plan (``export_snapshots``)

Names load on first use, so importing the package at DAG-parse time costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RetentionGapError": "retention",
    "RetentionReport": "retention",
    "audit_retention": "retention",
    "audit_plan_retention": "retention",
    "plan_training_paths": "training",
    "retraining_verdicts": "training",
    "agreements_from_result": "training",
    "run_backfill": "replay",
    "BackfillError": "replay",
    "BackfillResult": "replay",
    "validate_point_in_time": "pit",
    "PitResult": "pit",
    "export_snapshots": "snapshots",
    "SnapshotSchemaError": "snapshots",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
