"""The demo: a realistic legacy feature store and a new store with one bug, for ``make demo``.

:mod:`fsmig_dev.demo.data` generates the data; ``python -m fsmig_dev.demo``
starts embedded Postgres and Redis, generates it and walks through the migration.
"""

from __future__ import annotations
