"""The demo: a realistic legacy feature store and a new store with one bug, for ``make demo``.

:mod:`airflow_fsmigration.demo.data` generates the data; ``python -m airflow_fsmigration.demo``
starts embedded Postgres and Redis, generates it and walks through the migration.
"""

from __future__ import annotations
