"""Runbook text that several faces print (DAG docs, the cockpit, the CLI), kept in one place.

Import-light on purpose: the DAG factory reads it at parse time.
"""

from __future__ import annotations

import shlex


def rollback_command(plan_path: str, group: str) -> str:
    """The shell command that rolls a group back when Airflow itself is down (``fsmigrate rollback``)."""
    return f"fsmigrate rollback {shlex.quote(plan_path)} {shlex.quote(group)} --reason '...'"
