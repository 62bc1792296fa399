"""Serving-side routing for model servers: no Airflow import anywhere in this package.

``FeatureRouter`` reads each entity from the legacy or the new store by the registry's ramp,
with a circuit breaker on the new store and per-backend latency/error stats flushed to Redis;
``read_window`` merges those stats for the bake gates; ``run_load_test`` drives a read path
open-loop. Names are imported lazily so ``import airflow_fsmigration.serving`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "FeatureRouter": "airflow_fsmigration.serving.router",
    "ServingError": "airflow_fsmigration.serving.router",
    "build_router": "airflow_fsmigration.serving.router",
    "LegacyRedisBackend": "airflow_fsmigration.serving.backends",
    "PostgresBackend": "airflow_fsmigration.serving.backends",
    "BackendStats": "airflow_fsmigration.serving.stats",
    "StatsRecorder": "airflow_fsmigration.serving.stats",
    "read_window": "airflow_fsmigration.serving.stats",
    "bucket_of": "airflow_fsmigration.serving.bucketing",
    "routes_to_new": "airflow_fsmigration.serving.bucketing",
    "RouteState": "airflow_fsmigration.serving.routing",
    "LoadTestOutcome": "airflow_fsmigration.serving.loadtest",
    "LoadTestResult": "airflow_fsmigration.serving.loadtest",
    "run_load_test": "airflow_fsmigration.serving.loadtest",
    "run_load_test_processes": "airflow_fsmigration.serving.loadtest",
    "load_test_for_group": "airflow_fsmigration.serving.loadtest",
}

__all__ = [
    "BackendStats",
    "FeatureRouter",
    "LegacyRedisBackend",
    "LoadTestOutcome",
    "LoadTestResult",
    "PostgresBackend",
    "RouteState",
    "ServingError",
    "StatsRecorder",
    "bucket_of",
    "build_router",
    "load_test_for_group",
    "read_window",
    "routes_to_new",
    "run_load_test",
    "run_load_test_processes",
]

if TYPE_CHECKING:
    from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend
    from airflow_fsmigration.serving.bucketing import bucket_of, routes_to_new
    from airflow_fsmigration.serving.loadtest import (
        LoadTestOutcome,
        LoadTestResult,
        load_test_for_group,
        run_load_test,
        run_load_test_processes,
    )
    from airflow_fsmigration.serving.router import FeatureRouter, ServingError, build_router
    from airflow_fsmigration.serving.routing import RouteState
    from airflow_fsmigration.serving.stats import BackendStats, StatsRecorder, read_window


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'airflow_fsmigration.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
