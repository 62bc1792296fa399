"""The one DAG file Airflow parses: the migration DAGs of the plan at ``$FSMIG_PLAN``.

Default plan: the repository's ``include/demo_plan``. Parsing only loads the plan (cached on
file mtimes) and builds DAG objects; an invalid plan fails this file with one import error
that names the plan file and line.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_fsmigration.dag_factory import register_dags

PLAN_PATH = os.environ.get("FSMIG_PLAN") or str(
    Path(__file__).resolve().parent.parent / "include" / "demo_plan"
)

register_dags(globals(), PLAN_PATH)
