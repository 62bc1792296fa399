"""Shadow comparison: the vectorised engine, explanations, noise floor, GX verdicts, results.

Names are loaded on first use (numpy and pyarrow behind them are not needed to parse a DAG).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ComparisonAccumulator": "engine",
    "ComparisonResult": "engine",
    "FeatureStats": "engine",
    "Verdict": "engine",
    "compare_tables": "engine",
    "Explanation": "explain",
    "Kind": "explain",
    "explain": "explain",
    "NoiseFloor": "noise",
    "measure_noise": "noise",
    "noise_from_reads": "noise",
    "ResultStore": "results",
    "ShadowRun": "results",
    "SoakStatus": "results",
    "soak_from_runs": "results",
    "run_shadow": "shadow",
    "sample_ids": "shadow",
    "GxVerdict": "gx",
    "gx_verdict": "gx",
    "schema_parity": "gx",
}

__all__ = [
    "ComparisonAccumulator",
    "ComparisonResult",
    "Explanation",
    "FeatureStats",
    "GxVerdict",
    "Kind",
    "NoiseFloor",
    "ResultStore",
    "ShadowRun",
    "SoakStatus",
    "Verdict",
    "compare_tables",
    "explain",
    "gx_verdict",
    "measure_noise",
    "noise_from_reads",
    "run_shadow",
    "sample_ids",
    "schema_parity",
    "soak_from_runs",
]

if TYPE_CHECKING:
    from airflow_fsmigration.compare.engine import (
        ComparisonAccumulator,
        ComparisonResult,
        FeatureStats,
        Verdict,
        compare_tables,
    )
    from airflow_fsmigration.compare.explain import Explanation, Kind, explain
    from airflow_fsmigration.compare.gx import GxVerdict, gx_verdict, schema_parity
    from airflow_fsmigration.compare.noise import NoiseFloor, measure_noise, noise_from_reads
    from airflow_fsmigration.compare.results import ResultStore, ShadowRun, SoakStatus, soak_from_runs
    from airflow_fsmigration.compare.shadow import run_shadow, sample_ids


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_fsmigration.compare' has no attribute {name!r}")
    return getattr(importlib.import_module(f"airflow_fsmigration.compare.{module}"), name)
