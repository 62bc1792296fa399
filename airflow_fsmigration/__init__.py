"""airflow-fsmigration: feature store migrations as Airflow 3 DAGs.

Provider discovery imports this package while ``import airflow`` is still initialising its
configuration, so nothing here may import Airflow, pandas or Great Expectations.
"""

from __future__ import annotations

__version__ = "0.1.0"
