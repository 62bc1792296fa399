"""Airflow plugins shipped with the provider (the migration cockpit)."""

from __future__ import annotations
