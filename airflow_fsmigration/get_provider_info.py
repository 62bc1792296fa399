"""Provider metadata read by Airflow's providers manager (entry point ``apache_airflow_provider``).

Imports only ``__version__``: this runs inside ``import airflow``.
"""

from __future__ import annotations

from typing import Any

from airflow_fsmigration import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: must name the canonical distribution, else Airflow fails to import."""
    return {
        "package-name": "airflow-fsmigration",
        "name": "Feature Store Migration",
        "description": "Assess, shadow-compare, ramp, roll back and backfill feature store migrations.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Feature Store Migration",
                "tags": ["software"],
            }
        ],
    }
