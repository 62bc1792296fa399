"""The one DAG file Airflow parses: the migration DAGs of the plan at ``$FSMIG_PLAN``.

Default plan: the repository's ``include/demo_plan``. Parsing only loads the plan (cached on
file mtimes) and builds DAG objects; an invalid plan fails this file with one import error
that names the plan file and line.

Options (environment):

- ``FSMIG_SCHEDULE_ON_UPSTREAM=true``: schedule each downstream group's migrate DAG on its
  upstream groups' cutover assets (default: manual trigger; the first task checks the registry
  either way).
- ``FSMIG_SHADOW_SHARDS=N``: map each shadow comparison over N hash shards (default 1).
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_fsmigration.dag_factory import FactoryOptions, register_dags

PLAN_PATH = os.environ.get("FSMIG_PLAN") or str(
    Path(__file__).resolve().parent.parent / "include" / "demo_plan"
)
OPTIONS = FactoryOptions(
    schedule_on_upstream=os.environ.get("FSMIG_SCHEDULE_ON_UPSTREAM", "").strip().lower()
    in ("1", "true", "yes"),
    shadow_shards=int(os.environ.get("FSMIG_SHADOW_SHARDS") or 1),
)

register_dags(globals(), PLAN_PATH, options=OPTIONS)
