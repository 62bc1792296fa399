"""Triggers that watch the long gates (shadow soak, bake, keep-warm) without holding a worker slot.

Each trigger runs in the triggerer's event loop: it resolves the plan's connections with
``get_async_connection``, then calls the same one-shot check the sensor pokes with
(:mod:`airflow_fsmigration.triggers.checks`) through ``sync_to_async``, sleeping between checks
with an interval proportional to the gate's duration. It yields exactly one event:
``{"status": "pass" | "fail" | "error", "reason": ..., "details": ...}``.

Only the plan path, the group and timing go into ``serialize()`` (and so into the metadata DB);
connection URLs with passwords are resolved inside ``run()`` and never stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

log = logging.getLogger("airflow_fsmigration.triggers")


async def resolve_urls(plan: Any, roles: tuple[str, ...], secrets: list[str] | None = None) -> dict[str, str]:
    """libpq / Redis URLs for the plan's connection roles, fetched without blocking the loop.

    Passwords met on the way are appended to ``secrets`` (for redaction).
    """
    from airflow.providers.common.compat.connection import get_async_connection

    from airflow_fsmigration.hooks.stores import conn_info

    urls: dict[str, str] = {}
    for role in roles:
        conn = await get_async_connection(plan.connections.conn_id(role))
        info = conn_info(conn)
        if secrets is not None and info.password:
            secrets.append(info.password)
        urls[role] = info.redis_url() if role in ("legacy_online", "routing_mirror") else info.postgres_url()
    return urls


class FsMigrationGateTrigger(BaseTrigger):
    """Poll one gate of one group until it passes or fails.

    :param plan_path: the plan file or folder.
    :param group: the feature group.
    :param poll_interval: seconds between checks.
    """

    roles: tuple[str, ...] = ("registry",)

    def __init__(self, plan_path: str, group: str, poll_interval: float = 60.0) -> None:
        super().__init__()
        self.plan_path = plan_path
        self.group = group
        self.poll_interval = float(poll_interval)

    def _kwargs(self) -> dict[str, Any]:
        return {"plan_path": self.plan_path, "group": self.group, "poll_interval": self.poll_interval}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", self._kwargs()

    def check(self, plan: Any, urls: dict[str, str]) -> Any:
        """One evaluation (sync; called through ``sync_to_async``)."""
        raise NotImplementedError

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from airflow_fsmigration.connections import redact
        from airflow_fsmigration.plan.cache import load_plan_cached

        secrets: list[str] = []
        try:
            plan = await sync_to_async(load_plan_cached)(self.plan_path, isolate=False)
            urls = await resolve_urls(plan, self.roles, secrets)
            checks = 0
            while True:
                result = await sync_to_async(self.check)(plan, urls)
                checks += 1
                if result.status != "wait":
                    yield TriggerEvent({**result.as_dict(), "checks": checks})
                    return
                self.log.info("%s: %s", self.group, result.reason)
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:
            message = redact(f"{type(exc).__name__}: {exc}", *secrets)
            yield TriggerEvent(
                {
                    "status": "error",
                    "reason": f"{type(self).__name__} for group {self.group}: {message}",
                    "details": {},
                }
            )


class ShadowSoakTrigger(FsMigrationGateTrigger):
    """Wait until the shadow comparison has been green for the plan's ``shadow_soak``.

    :param refresh_after: run a fresh comparison when the newest is older than this many seconds
        (demo/test time scales; ``None`` leaves the series to the nightly DAG).
    """

    def __init__(
        self, plan_path: str, group: str, poll_interval: float = 60.0, refresh_after: float | None = None
    ) -> None:
        super().__init__(plan_path, group, poll_interval)
        self.refresh_after = refresh_after
        self.roles = (
            ("registry", "legacy_online", "new_store") if refresh_after is not None else ("registry",)
        )

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "refresh_after": self.refresh_after}

    def check(self, plan: Any, urls: dict[str, str]) -> Any:
        from airflow_fsmigration.triggers.checks import check_soak

        return check_soak(plan, self.group, urls, refresh_after=self.refresh_after)


class BakeTrigger(FsMigrationGateTrigger):
    """Watch the rollback triggers over one ramp step's bake window.

    :param windows: bake and baseline windows (ISO times) fixed when the sensor started.
    :param inconclusive_grace: seconds after the window to wait for late labels before failing.
    """

    roles = ("registry", "model_metrics", "routing_mirror")

    def __init__(
        self,
        plan_path: str,
        group: str,
        windows: dict[str, str],
        poll_interval: float = 60.0,
        inconclusive_grace: float = 0.0,
    ) -> None:
        super().__init__(plan_path, group, poll_interval)
        self.windows = dict(windows)
        self.inconclusive_grace = float(inconclusive_grace)

    def _kwargs(self) -> dict[str, Any]:
        return {**super()._kwargs(), "windows": self.windows, "inconclusive_grace": self.inconclusive_grace}

    def check(self, plan: Any, urls: dict[str, str]) -> Any:
        from airflow_fsmigration.gates.bake import sequential_bake_check
        from airflow_fsmigration.triggers.checks import check_bake, utcnow

        grace = self.inconclusive_grace
        return sequential_bake_check(
            lambda windows, now: check_bake(
                plan, self.group, urls, dict(windows), inconclusive_grace=grace, now=now
            ),
            self.windows,
            utcnow(),
            inconclusive_grace=grace,
        )


class KeepWarmTrigger(FsMigrationGateTrigger):
    """Check the old store's warmth every interval until the keep-warm window has passed."""

    roles = ("registry", "legacy_online", "legacy_offline")

    def check(self, plan: Any, urls: dict[str, str]) -> Any:
        from airflow_fsmigration.triggers.checks import check_keep_warm

        return check_keep_warm(plan, self.group, urls)
