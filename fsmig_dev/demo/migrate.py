"""The demo's migration step: every group's generated migrate DAG, wave by wave, under ``dag.test()``.

What runs is the product, not a script imitating it: the DAGs come from
:func:`airflow_fsmigration.dag_factory.build_dags` over a seconds-scale copy of the demo plan
(:func:`write_seconds_plan`), each is serialized into an Airflow metadata DB (sqlite under
``.fsmig/demo/airflow``) and run with ``dag.test()``. Gates are real: the soak passes only on
shadow comparisons recorded a few seconds apart (the soak sensor runs them), bakes read model
metrics and the serving stats of real reads, rollbacks write the registry audit log.

While the DAGs run, :class:`ServingFeed` plays the model-serving side: it reads features through
the real :class:`~airflow_fsmigration.serving.router.FeatureRouter` (old store or new store by
the current ramp; the router records p99 and errors per backend in Redis) and records each model's
AUC as labels arrive. For one healthy group it drops the AUC once the group reaches a ramp step,
which the bake sees as a breach and the DAG rolls back by itself.

The demo's new store is Postgres with plain views computed on read (hundreds of milliseconds per
lookup over 90 days of events); RisingWave serves the same definitions from indexed materialized
views. So the router reads a materialized, indexed copy of each view (:func:`materialize_serving`),
as RisingWave would; shadow comparisons and point-in-time checks still read the views.

``airflow`` is imported only after :func:`configure_airflow` pointed it at the demo's home.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("fsmig_dev.demo")

SERVING_SCHEMA = "fsmig_serving"
HEALTHY_AUC = 0.90
DROPPED_AUC = 0.80
CUT_OVER = frozenset({"cutover", "warm", "ready_to_decommission", "decommissioned"})


@dataclass(frozen=True)
class TimeScale:
    """The seconds-scale settings of the demo run (the real plan says days and hours).

    :param soak_s: shadow soak; the soak sensor records a fresh comparison every soak/14 s.
    :param bake_s: bake window of every ramp step.
    :param keep_warm_s: keep-warm window after cutover.
    :param sample: entities per shadow comparison.
    :param p99_increase_ms: the p99 rollback trigger (a shared 2-core machine is noisy at p99).
    :param gate_wait_s: how long a downstream group's upstream gate waits before giving up.
    :param pit_samples: (entity, time) pairs of the point-in-time check (each replays windows of
        raw events as of that time: about a quarter second apiece on the full-size demo data).
    :param auc_drop_pct: the AUC margin (relative %). The gate needs labelled positives in
        proportion to 1 / margin^2 (about 2,200 per cohort at the real 0.5%, 140 at 2%): a
        seconds-long bake gets hundreds of predictions, so the demo's margin is wider.
    :param evidence_wait_s: how long a bake that is still inconclusive at the end of its window
        keeps gathering evidence (the gate's grace period): a loaded machine reads more slowly,
        so the bake waits for its minimum evidence instead of failing on a fixed clock.
    """

    soak_s: float = 5.0
    bake_s: float = 4.0
    keep_warm_s: float = 2.0
    sample: int = 500
    p99_increase_ms: float = 100.0
    gate_wait_s: float = 4.0
    pit_samples: int = 12
    auc_drop_pct: float = 2.0
    evidence_wait_s: float = 30.0


# -- setup --------------------------------------------------------------------------------------


def configure_airflow(home: Path) -> Path:
    """Point Airflow at ``home`` (sqlite metadata DB); must run before anything imports Airflow."""
    home = home.resolve()
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(home):
        raise RuntimeError(
            "Airflow was imported before the demo configured its home: call configure_airflow() first"
        )
    (home / "dags").mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            # Task failures still show (errors); progress comes from the registry (AuditWatcher).
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        }
    )
    return home


def init_airflow_db() -> float:
    """Create or upgrade the metadata DB (a no-op upgrade when it is current); returns seconds."""
    t0 = time.perf_counter()
    from airflow.utils import db

    db.initdb()
    return time.perf_counter() - t0


def write_seconds_plan(
    src: Path, dst: Path, scale: TimeScale, *, staleness: timedelta, no_load_test: bool = True
) -> Path:
    """Copy the plan to ``dst`` with durations of seconds; returns ``dst``.

    Staleness limits become ``staleness``: the demo's old store was computed at the frozen
    logical now, so "fresh" is measured from there. Load tests are switched off (high-traffic
    threshold out of reach): they would load-test the on-read views, which are not what serves.
    """
    import yaml

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    stale = f"{max(1, int(staleness.total_seconds() // 3600) + 1)}h"
    for path in sorted(dst.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            continue
        defaults = data.get("defaults")
        if isinstance(defaults, dict):
            defaults.update(
                shadow_soak=f"{scale.soak_s:g}s",
                bake=f"{scale.bake_s:g}s",
                keep_warm=f"{scale.keep_warm_s:g}s",
                load_test_duration="1s",
                shadow_sample_size=int(scale.sample),
            )
            if no_load_test:
                defaults["high_traffic_qps"] = 10**9
            triggers = defaults.setdefault("rollback_triggers", {})
            triggers["p99_latency_increase_ms"] = scale.p99_increase_ms
            triggers["auc_drop_pct"] = scale.auc_drop_pct
        for spec in (data.get("groups") or {}).values():
            if isinstance(spec, dict) and isinstance(spec.get("sla"), dict):
                spec["sla"]["max_staleness"] = stale
                spec["sla"]["p99_ms"] = max(spec["sla"].get("p99_ms", 0), 500)
        path.write_text(
            "# Seconds-scale copy written by the demo (fsmig_dev.demo.migrate); do not edit.\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
    return dst


def reset_migration_state(registry_url: str, redis_url: str) -> None:
    """Forget earlier demo runs: routing, audit, keep-warm checks, shadow runs, Redis mirror and stats.

    Model metrics stay (they are the generated history). A rerun on reused data starts at ``planned``.
    """
    import psycopg
    import redis
    from psycopg import sql

    with psycopg.connect(registry_url, autocommit=True) as conn:
        for table in ("routing_audit", "routing", "keepwarm_checks", "shadow_runs"):
            exists = conn.execute("SELECT to_regclass(%s)", (f"fsmig.{table}",)).fetchone()
            if exists and exists[0]:
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier("fsmig", table)))
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="fsmig:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def materialize_serving(new_store_url: str, plan: MigrationPlan, groups: Iterable[str]) -> dict[str, float]:
    """An indexed table per group from its new-store view, in schema ``fsmig_serving``; seconds each.

    Stands in for RisingWave's indexed materialized views: what the router's new backend reads.
    """
    import psycopg
    from psycopg import sql

    took: dict[str, float] = {}
    with psycopg.connect(new_store_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SERVING_SCHEMA)))
        for name in groups:
            g = plan.groups[name]
            t0 = time.perf_counter()
            target = sql.Identifier(SERVING_SCHEMA, name)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            conn.execute(
                sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(
                    target, sql.Identifier(plan.new_store.schema_name, name)
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX ON {} (({}::text))").format(target, sql.Identifier(g.entity_key))
            )
            conn.execute(sql.SQL("ANALYZE {}").format(target))
            took[name] = time.perf_counter() - t0
            log.info("serving copy of %s materialized in %.1fs", name, took[name])
    return took


def serving_plan(plan: MigrationPlan) -> MigrationPlan:
    """The plan as the router sees it: new-store reads go to the materialized serving copies."""
    return plan.model_copy(
        update={"new_store": plan.new_store.model_copy(update={"schema_name": SERVING_SCHEMA})}
    )


# -- the serving side ---------------------------------------------------------------------------


@dataclass
class Injection:
    """An AUC drop for ``group``'s models from ramp ``at_pct`` on, until the group is rolled back."""

    group: str
    at_pct: float
    dropped_at: datetime | None = None
    dropped_at_pct: float | None = None
    restored_at: datetime | None = None


class ServingFeed:
    """Model servers in miniature: real reads through the router, and AUC points as labels arrive.

    Reads go to the group being migrated (``active``), in batches of ``batch`` entities, so the
    router splits each batch by the current ramp and records both backends' latency and errors.
    At 100% the old store is read too, for the same entities (the paired shadow: the control's
    latency over the same window). Every ``interval`` s each model's AUC is recorded (0.90 with
    a little noise), except the injected group's models once it reached the injection's ramp
    step (0.80) until its rollback.

    Labelled predictions (``model_scores``) are logged for the models of the groups being served,
    ``score_rate`` per second in each cohort: ``ramped`` (entities the router's bucketing sends to
    the new store; scored on new-store features, with the old-store score beside it as the
    paired shadow) and ``control`` (the others). Their timestamps are spread evenly over the
    time since the last tick, so every second of a bake window holds the same evidence however
    late a loaded machine runs the tick (the bake waits for late rows, see ``evidence_wait_s``).
    Scores are binormal: AUC 0.90, and 0.80 for the ramped cohort of an injected group.
    """

    def __init__(
        self,
        plan: MigrationPlan,
        *,
        redis_url: str,
        new_store_url: str,
        metrics_url: str,
        entity_ids: dict[str, list[str]],
        injection: Injection | None = None,
        out: Callable[[str], None] = print,
        batch: int = 20,
        interval: float = 0.25,
        seed: int = 7,
        score_rate: float = 200.0,
    ) -> None:
        self.plan = plan
        self.redis_url = redis_url
        self.new_store_url = new_store_url
        self.metrics_url = metrics_url
        self.entity_ids = entity_ids
        self.injection = injection
        self.out = out
        self.batch = batch
        self.interval = interval
        self.active: str | None = None
        self.reads: dict[str, int] = {}
        self.errors: list[BaseException] = []
        self._rng = random.Random(seed)
        self.score_rate = score_rate
        self._np_rng: Any = None
        self._scored_until: dict[str, datetime] = {}
        self.scores: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = datetime.now(UTC)

    def __enter__(self) -> ServingFeed:
        self._thread = threading.Thread(target=self._run, name="demo-serving-feed", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _run(self) -> None:
        import psycopg

        from airflow_fsmigration.gates.metrics import AUC, ensure_metrics_schema, record_metric
        from airflow_fsmigration.serving.router import build_router

        try:
            router = build_router(
                serving_plan(self.plan),
                self.redis_url,
                self.new_store_url,
                stats_bucket_s=1,
                stats_flush_s=0.5,
                refresh_s=1.0,
            )
            router.wait_ready()
            with psycopg.connect(self.metrics_url, autocommit=True) as conn, router:
                ensure_metrics_schema(conn)
                next_metrics = 0.0
                while not self._stop.is_set():
                    now = time.monotonic()
                    if now >= next_metrics:
                        self._record_metrics(conn, router, record_metric, AUC)
                        next_metrics = now + self.interval
                    group = self.active
                    self._active = group
                    ids = self.entity_ids.get(group or "")
                    if group and ids:
                        # at a 1 % step a batch of 20 rarely touches the new store: size the
                        # batch so most calls read both backends, as a busy model server's would.
                        # Before the ramp (0 %) only the old store serves: small batches give the
                        # bake's pre-ramp baseline many reads even on a loaded machine (a window
                        # of a few seconds needs 100 of them for a p99).
                        pct = router.ramp_pct(group)
                        wide = int(300 / max(pct, 1.0)) if pct > 0 else self.batch
                        size = min(len(ids), max(self.batch, wide))
                        batch = self._rng.sample(ids, size)
                        router.get_features(group, batch)
                        if pct >= 100:  # the control at 100%: the same entities from the old store
                            router.read_backend(group, batch, "old", record=True)
                        self.reads[group] = self.reads.get(group, 0) + 1
                    else:
                        self._stop.wait(0.05)
        except BaseException as exc:  # reported by the runner: a dead feed makes bakes inconclusive
            log.exception("serving feed stopped")
            self.errors.append(exc)

    def _record_metrics(self, conn: Any, router: Any, record_metric: Callable[..., Any], auc: str) -> None:
        dropped: set[str] = set()
        inj = self.injection
        if inj is not None and inj.restored_at is None:
            state = router.state(inj.group)
            pct = router.ramp_pct(inj.group)
            if inj.dropped_at is None and pct >= inj.at_pct:
                inj.dropped_at, inj.dropped_at_pct = datetime.now(UTC), pct
                models = ", ".join(sorted(self.plan.groups[inj.group].models))
                self.out(
                    f"    injected: {inj.group} is at {pct:g}%: AUC of {models} drops "
                    f"{HEALTHY_AUC:.2f} -> {DROPPED_AUC:.2f}"
                )
            if inj.dropped_at is not None:
                if state is not None and str(state.phase) == "rolled_back":
                    inj.restored_at = datetime.now(UTC)
                    self.out(f"    injected: {inj.group} is rolled back: its models' AUC recovers")
                else:
                    dropped = set(self.plan.groups[inj.group].models)
        now = datetime.now(UTC)
        for model in self.plan.models:
            value = DROPPED_AUC if model in dropped else HEALTHY_AUC
            record_metric(conn, model, auc, value + self._rng.uniform(-0.001, 0.001), ts=now)
        self._record_scores(conn, router, dropped, now)

    def _served_groups(self) -> list[str]:
        live = getattr(self, "live_groups", None)  # RegistryFeed: every live group
        if callable(live):
            return list(live())
        return [self._active] if self._active else []

    _active: str | None = None

    def _record_scores(self, conn: Any, router: Any, dropped: set[str], now: datetime) -> None:
        """Log ``score_rate``/s labelled predictions per cohort since the last tick (see the class doc)."""
        import numpy as np

        from airflow_fsmigration.gates.metrics import CONTROL, RAMPED, record_scores
        from airflow_fsmigration.serving.bucketing import routes_to_new

        if self._np_rng is None:
            self._np_rng = np.random.default_rng(self._rng.randrange(2**32))
        rng = self._np_rng
        healthy, worse = _separation(HEALTHY_AUC), _separation(DROPPED_AUC)
        for group in self._served_groups():
            ids = self.entity_ids.get(group) or []
            pct = router.ramp_pct(group)
            since = self._scored_until.get(group)
            self._scored_until[group] = now
            if since is None or not ids or pct <= 0:
                continue
            since = max(since, now - timedelta(seconds=10))  # a group served again later: no old gap
            n = int((now - since).total_seconds() * self.score_rate)
            if n <= 0:
                self._scored_until[group] = since
                continue
            step = (now - since) / n
            stamps = [since + step * (i + 1) for i in range(n)]
            ramped = [e for e in ids if routes_to_new(e, pct)]
            control = [e for e in ids if not routes_to_new(e, pct)]
            for model in self.plan.groups[group].models:
                for cohort, members in ((RAMPED, ramped), (CONTROL, control)):
                    if not members:
                        continue
                    y = rng.random(n) < 0.3
                    old_score = healthy * y + rng.normal(size=n)
                    if cohort == RAMPED:
                        shift = (worse - healthy) if model in dropped else 0.0
                        new_score = old_score + shift * y + rng.normal(scale=0.05, size=n)
                        rows = zip(
                            stamps,
                            y.astype(int).tolist(),
                            new_score.tolist(),
                            old_score.tolist(),
                            strict=True,
                        )
                    else:
                        rows = zip(
                            stamps, y.astype(int).tolist(), old_score.tolist(), [None] * n, strict=True
                        )
                    self.scores[group] = self.scores.get(group, 0) + record_scores(conn, model, cohort, rows)


def _separation(auc: float) -> float:
    """Mean shift of positives' scores (unit-variance normals) that gives a binormal AUC of ``auc``."""
    from statistics import NormalDist

    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def sample_entity_ids(
    new_store_url: str, plan: MigrationPlan, groups: Iterable[str], per_group: int = 2000
) -> dict[str, list[str]]:
    """Entity ids to read per group (from the serving copies, so every id has a row)."""
    from airflow_fsmigration.stores.new_store import NewStore

    with NewStore(new_store_url, serving_plan(plan), plan.connections.new_store) as store:
        return {
            name: [str(e) for e in store.entity_ids(plan.groups[name], limit=per_group)] for name in groups
        }


# -- running the DAGs ---------------------------------------------------------------------------


@dataclass
class GroupRun:
    """One migrate DAG run: its state, each task's state and seconds, and what stopped it."""

    group: str
    wave: int
    dag_id: str
    state: str
    seconds: float
    tasks: list[tuple[str, str, float | None]] = field(default_factory=list)
    blocked_by: list[str] = field(default_factory=list)


@dataclass
class MigrationOutcome:
    plan_dir: Path
    started_at: datetime
    finished_at: datetime
    runs: dict[str, GroupRun]
    injection: Injection | None
    scale: TimeScale
    timings: dict[str, float]
    feed_reads: dict[str, int]
    reports_dir: Path | None = None


def run_dag(dag: Any, **kwargs: Any) -> Any:
    """Serialize ``dag`` into the metadata DB (``dag.test()`` runs only serialized DAGs) and test it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )
    return dag.test(**kwargs)


def _state(value: Any) -> str:
    return str(value.value if hasattr(value, "value") else value)


def task_rows(run: Any) -> list[tuple[str, str, float | None]]:
    """(task id, state, seconds) in the order the tasks ran."""
    tis = sorted(
        run.get_task_instances(), key=lambda ti: (ti.start_date is None, ti.start_date or 0, ti.task_id)
    )
    return [(ti.task_id, _state(ti.state), ti.duration) for ti in tis]


class AuditWatcher:
    """Prints the registry's audit entries and shadow runs of one group as they are written."""

    def __init__(
        self, plan: MigrationPlan, registry_url: str, group: str, out: Callable[[str], None]
    ) -> None:
        self.plan = plan
        self.registry_url = registry_url
        self.group = group
        self.out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-audit-watch", daemon=True)
        self.t0 = time.monotonic()

    def __enter__(self) -> AuditWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self._poll()
            except Exception as exc:  # progress only: never stop the run
                log.debug("audit watcher: %s", exc)

    _seen_audit = 0
    _seen_runs = 0

    def _poll(self) -> None:
        import psycopg

        with psycopg.connect(self.registry_url, autocommit=True) as conn:
            has = conn.execute("SELECT to_regclass('fsmig.routing_audit'), to_regclass('fsmig.shadow_runs')")
            audit_t, runs_t = has.fetchone() or (None, None)
            if audit_t:
                rows = conn.execute(
                    "SELECT from_phase, from_pct, to_phase, to_pct, actor, reason FROM fsmig.routing_audit"
                    " WHERE group_name = %s ORDER BY id OFFSET %s",
                    (self.group, self._seen_audit),
                ).fetchall()
                for frm, fpct, to, tpct, actor, reason in rows:
                    self._seen_audit += 1
                    task = actor.rsplit(".", 1)[-1] if actor.startswith("airflow:") else actor
                    self.out(
                        f"    {self._t()} registry: {frm or '-'} {_pct(fpct)} -> {to} {_pct(tpct)}"
                        f"  [{task}] {_short(reason)}"
                    )
            if runs_t:
                rows = conn.execute(
                    "SELECT verdict, match_rate, entities_compared FROM fsmig.shadow_runs"
                    " WHERE group_name = %s AND recorded_at >= %s ORDER BY recorded_at OFFSET %s",
                    (self.group, self.since, self._seen_runs),
                ).fetchall()
                for verdict, rate, n in rows:
                    self._seen_runs += 1
                    shown = "-" if rate is None else f"{rate:.4%}"
                    self.out(
                        f"    {self._t()} shadow run #{self._seen_runs}: {verdict} {shown} of {n} entities"
                    )

    since: datetime = datetime.now(UTC)

    def _t(self) -> str:
        return f"+{time.monotonic() - self.t0:5.1f}s"


def _pct(p: float | None) -> str:
    return "" if p is None else f"{p:g}%"


def _short(text: str | None, n: int = 110) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def run_migration(
    env: Any,
    *,
    work_dir: Path,
    scale: TimeScale | None = None,
    inject: tuple[str, float] | None = ("merchant_stats", 50.0),
    groups: Iterable[str] | None = None,
    out: Callable[[str], None] = print,
) -> MigrationOutcome:
    """Run every group's migrate DAG wave by wave (upstream first) on a seconds-scale plan copy.

    ``env`` is the demo environment (:class:`~fsmig_dev.demo.data.DemoEnvironment`);
    Airflow must already be configured (:func:`configure_airflow`). ``inject=(group, pct)`` drops
    the AUC of ``group``'s models once it reaches ``pct`` % (None: no injected breach).
    ``groups``: migrate only these (still in wave order; default every group of the plan).
    """
    from airflow_fsmigration.dag_factory import MIGRATE, build_dags, dag_id
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.plan.graph import compute_waves
    from airflow_fsmigration.registry.routing import Registry

    scale = scale or TimeScale()
    timings: dict[str, float] = {}
    started = datetime.now(UTC)
    staleness = max(timedelta(0), started - env.now) + timedelta(days=2)
    plan_dir = write_seconds_plan(env.plan_dir, work_dir / "plan_seconds", scale, staleness=staleness)
    plan = load_plan(plan_dir)
    os.environ.setdefault("FSMIG_REPORTS_DIR", str((work_dir / "dag_reports").resolve()))
    os.environ.setdefault("FSMIG_CACHE_DIR", str((work_dir / "cache").resolve()))
    registry_url = env.urls[plan.connections.registry]
    new_url = env.urls[plan.connections.new_store]
    redis_url = env.urls[plan.connections.legacy_online]
    metrics_url = env.urls[plan.connections.model_metrics]
    if inject is not None and inject[0] not in plan.groups:
        raise ValueError(f"--inject-breach: group '{inject[0]}' is not in plan '{plan.name}'")
    wanted = set(plan.groups) if groups is None else set(groups)
    unknown = sorted(wanted - set(plan.groups))
    if unknown:
        raise ValueError(f"groups {unknown} are not in plan '{plan.name}' ({plan_dir})")

    out(
        f"\n== migration through the Airflow DAGs (soak {scale.soak_s:g}s, bake {scale.bake_s:g}s per step, "
        f"keep-warm {scale.keep_warm_s:g}s) =="
    )
    out(f"  plan copy: {plan_dir}")
    timings["airflow db"] = init_airflow_db()
    out(f"  Airflow metadata DB ready in {timings['airflow db']:.1f}s ({os.environ['AIRFLOW_HOME']})")
    t0 = time.perf_counter()
    from airflow_fsmigration.stores.new_store import NewStore

    with NewStore(new_url, plan, plan.connections.new_store) as store:
        store.deploy_all()  # the DAGs deploy again (idempotent); the serving copies need the views now
    materialize_serving(new_url, plan, [g for g in plan.groups if g in wanted])
    ids = sample_entity_ids(new_url, plan, wanted)
    timings["serving copies"] = time.perf_counter() - t0
    out(f"  serving copies of the new store's views materialized in {timings['serving copies']:.1f}s")

    waves = compute_waves(plan).waves
    injection = Injection(inject[0], inject[1]) if inject else None
    if injection:
        out(f"  injected: {injection.group}'s models lose AUC once it reaches {injection.at_pct:g}%")
    runs: dict[str, GroupRun] = {}
    feed = ServingFeed(
        plan,
        redis_url=redis_url,
        new_store_url=new_url,
        metrics_url=metrics_url,
        entity_ids=ids,
        injection=injection,
        out=out,
    )
    t_dags = time.perf_counter()
    with feed:
        time.sleep(max(1.0, scale.bake_s))  # a pre-ramp baseline of metrics and old-store reads
        for wave_no, wave in enumerate(waves, start=1):
            for group in wave:
                if group not in wanted:
                    continue
                did = dag_id(MIGRATE, group)
                dag = build_dags(plan, str(plan_dir), only=did)[did]
                with Registry(registry_url, plan=plan) as registry:
                    registry.ensure_schema()
                    registry.register_plan(plan)
                    phases = {u: registry.state(u).phase.value for u in plan.groups[group].depends_on}
                pit: Any = dag.get_task("point_in_time")
                pit.samples = scale.pit_samples
                for task in dag.tasks:
                    if task.task_id.startswith("bake_"):  # wait for the minimum evidence (class doc)
                        task.inconclusive_grace = max(task.inconclusive_grace, scale.evidence_wait_s)  # type: ignore[attr-defined]
                blocked = sorted(u for u, p in phases.items() if p not in CUT_OVER)
                head = f"\n-- wave {wave_no}: {group} ({did})"
                if blocked:
                    # fail after a few seconds instead of waiting the plan's 30 days
                    gate: Any = dag.get_task("upstream_gate")
                    gate.mode, gate.timeout, gate.poke_interval = "poke", scale.gate_wait_s, 1.0
                    head += f": upstream not cut over ({', '.join(f'{u} {phases[u]}' for u in blocked)})"
                out(head)
                feed.active = group
                t_run = time.perf_counter()
                watcher = AuditWatcher(plan, registry_url, group, out)
                watcher.since = datetime.now(UTC)
                with watcher:
                    run = run_dag(dag)
                feed.active = None
                rows = task_rows(run)
                runs[group] = GroupRun(
                    group=group,
                    wave=wave_no,
                    dag_id=did,
                    state=_state(run.state),
                    seconds=time.perf_counter() - t_run,
                    tasks=rows,
                    blocked_by=blocked,
                )
                shown = ", ".join(f"{t} {s}" + (f" {d:.1f}s" if d else "") for t, s, d in rows)
                out(f"    DAG run {runs[group].state} in {runs[group].seconds:.1f}s: {shown}")
    timings["migrate DAGs"] = time.perf_counter() - t_dags
    if feed.errors:
        out(f"  the serving feed failed: {feed.errors[0]!r} (bakes may have been inconclusive)")
    return MigrationOutcome(
        plan_dir=plan_dir,
        started_at=started,
        finished_at=datetime.now(UTC),
        runs=runs,
        injection=injection,
        scale=scale,
        timings=timings,
        feed_reads=dict(feed.reads),
        reports_dir=Path(os.environ["FSMIG_REPORTS_DIR"]),
    )
