"""``make airflow SCALE=seconds``: a migration a newcomer can watch in the real Airflow UI.

At the production time scale (14-day soak, 48 h bakes, 30-day keep-warm) nobody can watch a ramp
in a local Airflow. The seconds scale runs the same DAGs on the plan copy that ``make demo`` uses
(durations of seconds, see :func:`~fsmig_dev.demo.migrate.write_seconds_plan`), and plays the
serving side beside Airflow: model servers that read features through the router and record
AUC points, so bakes have evidence to decide on.

What is prepared before Airflow starts:

- the routing state of earlier runs is forgotten (every group starts ``planned``);
- the new store's views are deployed and their indexed serving copies materialized;
- ``item_popularity`` waits for a person before each ramp step (Required Actions, 10 min);
- a :class:`RegistryFeed` reads, round-robin, every group whose routing is live (shadow,
  ramping, cut over, warm), and drops the AUC of one group's models once it reaches 50%
  (``merchant_stats`` by default), so its bake rolls it back by itself.

The soak at this scale feeds itself (the soak sensor records a fresh comparison every soak/14),
so the nightly DAG is not needed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fsmig_dev.demo.migrate import (
    Injection,
    ServingFeed,
    TimeScale,
    materialize_serving,
    reset_migration_state,
    sample_entity_ids,
    write_seconds_plan,
)

log = logging.getLogger("fsmig_dev.demo.airflow")

SCALES = ("production", "seconds")
#: Phases in which serving traffic flows for a group, so its gates have reads to judge.
LIVE_PHASES = frozenset({"shadow", "ramping", "cutover", "warm"})
DEFAULT_INJECTION = ("merchant_stats", 50.0)
#: The group whose ramp steps wait for a person at this scale (Required Actions in the UI).
APPROVAL_GROUP = "item_popularity"
APPROVAL_TIMEOUT = "10m"


def require_approvals(plan_dir: Path, group: str, timeout: str = APPROVAL_TIMEOUT) -> bool:
    """Make ``group`` of the plan copy wait for an approval before each ramp step; False if absent."""
    import yaml

    for path in sorted(plan_dir.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        spec = (data.get("groups") or {}).get(group) if isinstance(data, dict) else None
        if isinstance(spec, dict):
            spec.setdefault("overrides", {}).update(ramp_approval="all", approval_timeout=timeout)
            path.write_text(
                "# Seconds-scale copy written by the demo (fsmig_dev.demo.airflow_feed); do not edit.\n"
                + yaml.safe_dump(data, sort_keys=False)
            )
            return True
    return False


class RegistryFeed(ServingFeed):
    """A :class:`ServingFeed` that serves every group whose routing is live, in turn.

    The demo runs one group at a time and tells the feed which; under Airflow a user may trigger
    any group's DAG, so the feed follows the routing mirror instead (re-read every second).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._live: list[str] = []
        self._turn = 0
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def active(self) -> str | None:
        """The next live group (round-robin), or ``None`` when no group is live."""
        live = self._live
        if not live:
            return None
        self._turn += 1
        return live[self._turn % len(live)]

    @active.setter
    def active(self, value: str | None) -> None:
        """Ignored: the routing mirror decides which groups are live."""

    def live_groups(self) -> list[str]:
        return list(self._live)

    def _watch(self) -> None:
        import redis

        from airflow_fsmigration.routing_wire import decode_doc, routing_key

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        groups = list(self.plan.groups)
        shown: list[str] = []
        try:
            while not self._watch_stop.is_set():
                try:
                    raws = client.mget([routing_key(g) for g in groups])
                except Exception as exc:  # keep the last list: a blip must not stop the feed
                    log.warning("serving feed: routing mirror unreadable: %s", exc)
                else:
                    docs = [decode_doc(raw)[0] for raw in raws]
                    self._live = [
                        g
                        for g, doc in zip(groups, docs, strict=True)
                        if doc and doc.get("phase") in LIVE_PHASES
                    ]
                    if self._live != shown:
                        shown = list(self._live)
                        log.info("serving feed: reading %s", ", ".join(shown) or "no group (none is live)")
                self._watch_stop.wait(1.0)
        finally:
            client.close()

    def __enter__(self) -> RegistryFeed:
        self._watcher = threading.Thread(target=self._watch, name="demo-feed-watch", daemon=True)
        self._watcher.start()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


@dataclass
class SecondsScale:
    """What the seconds scale prepared: the plan copy Airflow reads and the feed to run beside it."""

    plan_dir: Path
    feed: RegistryFeed
    injection: Injection | None
    approval_group: str | None = None


def prepare_seconds_scale(
    env: Any, work_dir: Path, *, inject: tuple[str, float] | None = DEFAULT_INJECTION
) -> SecondsScale:
    """Write the seconds plan, reset routing, deploy and materialize the serving copies, build the feed.

    ``env`` is the demo environment (:class:`~fsmig_dev.demo.data.DemoEnvironment`).
    """
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore

    scale = TimeScale()
    staleness = max(timedelta(0), datetime.now(UTC) - env.now) + timedelta(days=2)
    plan_dir = write_seconds_plan(env.plan_dir, work_dir / "plan_seconds", scale, staleness=staleness)
    approvals = require_approvals(plan_dir, APPROVAL_GROUP)
    plan = load_plan(plan_dir)
    urls = env.urls
    conns = plan.connections
    t0 = time.perf_counter()
    reset_migration_state(urls[conns.registry], urls[conns.legacy_online])
    with NewStore(urls[conns.new_store], plan, conns.new_store) as store:
        store.deploy_all()  # the DAGs deploy again (idempotent); the serving copies need the views now
    materialize_serving(urls[conns.new_store], plan, plan.groups)
    ids = sample_entity_ids(urls[conns.new_store], plan, plan.groups)
    log.info(
        "seconds scale: plan %s (soak %gs, bake %gs per step, keep-warm %gs); routing reset, "
        "serving copies ready in %.0f s",
        plan_dir,
        scale.soak_s,
        scale.bake_s,
        scale.keep_warm_s,
        time.perf_counter() - t0,
    )
    injection = Injection(*inject) if inject is not None and inject[0] in plan.groups else None
    feed = RegistryFeed(
        plan,
        redis_url=urls[conns.legacy_online],
        new_store_url=urls[conns.new_store],
        metrics_url=urls[conns.model_metrics],
        entity_ids=ids,
        injection=injection,
        out=log.info,
    )
    return SecondsScale(
        plan_dir=plan_dir,
        feed=feed,
        injection=injection,
        approval_group=APPROVAL_GROUP if approvals else None,
    )


def banner_lines(seconds: SecondsScale, bug_group: str | None) -> list[str]:
    """What to try at the seconds scale, for the start-up banner."""
    from airflow_fsmigration.dag_context import MIGRATE, dag_id

    healthy = next(
        (
            g
            for g in seconds.feed.plan.groups
            if not seconds.feed.plan.groups[g].depends_on
            and g != bug_group
            and (seconds.injection is None or g != seconds.injection.group)
            and g != seconds.approval_group
        ),
        None,
    )
    lines = ["  time scale:      seconds (soak, bakes and keep-warm take seconds; serving feed running)"]
    if healthy:
        lines.append(
            f"  try:             trigger {dag_id(MIGRATE, healthy)} and watch it reach ready_to_decommission"
        )
    if seconds.approval_group:
        lines.append(
            f"  approvals:       {dag_id(MIGRATE, seconds.approval_group)} waits for you before each ramp "
            f"step (Required Actions; no answer in {APPROVAL_TIMEOUT} freezes it)"
        )
    if seconds.injection is not None:
        inj = seconds.injection
        lines.append(
            f"  injected breach: {inj.group}'s models lose AUC at {inj.at_pct:g}%: its bake rolls it back by itself"
        )
    return lines
