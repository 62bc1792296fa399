"""Moved: the bake gate is :mod:`airflow_fsmigration.gates.bake`, the model-metrics table
:mod:`airflow_fsmigration.gates.metrics`.

Kept for the model-metrics writers that import it from here (the demo, the end-to-end test);
it re-exports storage only, so the registry does not depend on the gates' decisions.
"""

from __future__ import annotations

from airflow_fsmigration.gates.metrics import AUC, MIGRATIONS, PRECISION, ensure_metrics_schema, record_metric

__all__ = ["AUC", "MIGRATIONS", "PRECISION", "ensure_metrics_schema", "record_metric"]
