"""A deferrable wait for a RisingWave background build: polls ``rw_ddl_progress``, logs rows, rate, ETA.

The deploy operator starts the build with ``SET BACKGROUND_DDL = true`` and defers to this
trigger, so a backfill of hours holds no worker slot. Each poll is one
:func:`~airflow_fsmigration.stores.risingwave_ddl.check_build` (through ``sync_to_async``); the
trigger logs its line (``building features.g: rows 125/1,000 (12.50%), 41 rows/s, ETA 21s``) and
yields exactly one event: ``{"status": "done" | "error", "reason": ..., "target": ..., "polls": n}``.

Only the plan path, group, view name and timing are serialized; the new store's URL (with its
password) is resolved inside ``run()`` from the plan's connection id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class DdlProgressTrigger(BaseTrigger):
    """Follow the background build of ``schema.target`` in the new store until it is done.

    :param plan_path: the plan file or folder.
    :param group: the feature group being deployed.
    :param target: the view being built (the live view, or ``<group>__fsmig_build`` for a redefinition).
    :param poll_interval: seconds between polls of ``rw_catalog.rw_ddl_progress``.
    """

    def __init__(self, plan_path: str, group: str, target: str, poll_interval: float = 30.0) -> None:
        super().__init__()
        self.plan_path = plan_path
        self.group = group
        self.target = target
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "plan_path": self.plan_path,
                "group": self.group,
                "target": self.target,
                "poll_interval": self.poll_interval,
            },
        )

    def _poll(self, url: str, schema: str, tracker: Any) -> Any:
        import psycopg

        from airflow_fsmigration.stores.risingwave_ddl import check_build

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return check_build(conn, schema, self.target, tracker)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from airflow_fsmigration.connections import redact
        from airflow_fsmigration.plan.cache import load_plan_cached
        from airflow_fsmigration.stores.risingwave_ddl import DONE, MISSING, ProgressTracker
        from airflow_fsmigration.triggers.gates import resolve_urls

        secrets: list[str] = []
        polls = 0
        try:
            plan = await sync_to_async(load_plan_cached)(self.plan_path, isolate=False)
            url = (await resolve_urls(plan, ("new_store",), secrets))["new_store"]
            schema = plan.new_store.schema_name
            tracker = ProgressTracker()
            while True:
                state = await sync_to_async(self._poll)(url, schema, tracker)
                polls += 1
                self.log.info("group %s: %s", self.group, state.message)
                if state.status in (DONE, MISSING):
                    status = "done" if state.status == DONE else "error"
                    yield TriggerEvent(
                        {"status": status, "reason": state.message, "target": self.target, "polls": polls}
                    )
                    return
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:
            message = redact(f"{type(exc).__name__}: {exc}", *secrets)
            yield TriggerEvent(
                {
                    "status": "error",
                    "reason": f"following the build of {self.target} for group {self.group}: {message}",
                    "target": self.target,
                    "polls": polls,
                }
            )
