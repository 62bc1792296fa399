"""``python -m airflow_fsmigration.cli`` is ``fsmigrate``."""

from __future__ import annotations

import sys

from airflow_fsmigration.cli import main

sys.exit(main())
