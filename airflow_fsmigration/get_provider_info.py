"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``).

Imports only ``__version__``: this runs inside ``import airflow``, before Airflow's configuration
exists, so importing any Airflow module here breaks ``import airflow`` for the whole installation.
Classes are named by dotted path and imported by Airflow only when needed.
"""

from __future__ import annotations

from typing import Any

from airflow_fsmigration import __version__

_INTEGRATION = "Feature Store Migration"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: must name the canonical distribution, else Airflow fails to import."""
    return {
        "package-name": "airflow-fsmigration",
        "name": "Feature Store Migration",
        "description": "Assess, shadow-compare, ramp, roll back and backfill feature store migrations.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_fsmigration.hooks.stores", "airflow_fsmigration.hooks.migration"],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_fsmigration.operators.store",
                    "airflow_fsmigration.operators.shadow",
                    "airflow_fsmigration.operators.routing",
                    "airflow_fsmigration.operators.backfill",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_fsmigration.sensors.gates"],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_fsmigration.triggers.gates"],
            }
        ],
        "extra-links": ["airflow_fsmigration.links.ReportLink"],
    }
