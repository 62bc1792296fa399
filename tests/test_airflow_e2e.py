"""End to end through ``dag.test()`` on real Postgres and Redis, with a plan whose durations are seconds.

The world: the demo generator's raw events, legacy Redis online store and legacy Postgres history
(small: 200 users), all in one test database; the new store's views are deployed by the DAGs.
A feeder thread plays the model-serving side while DAGs run: it records AUC points and router
latency stats, as the real model servers would, so the bake gates have evidence to judge.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

SECRET = "s3cr3t-FSMIG-pw-7731"
SLICE = ("user_txn_stats", "user_profile", "user_risk_profile")


def _seconds_plan(plan_dir: Path) -> None:
    """Turn the copied demo plan into a seconds-scale one that this 2-core VM can load-test."""
    plan_yaml = plan_dir / "plan.yaml"
    text = plan_yaml.read_text()
    for old, new in (
        ("shadow_soak: 14d", "shadow_soak: 2s"),
        ("bake: 48h", "bake: 1s"),
        ("keep_warm: 30d", "keep_warm: 1s"),
        ("load_test_duration: 5m", "load_test_duration: 1s"),
        ("high_traffic_qps: 1000", "high_traffic_qps: 45"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    plan_yaml.write_text(text)
    fraud = plan_dir / "groups_fraud.yaml"
    text = fraud.read_text()
    # one load-tested group at a rate this VM sustains; the others below the threshold
    text = text.replace(
        "sla: {p99_ms: 15, max_staleness: 1h}\n    qps: {peak: 3000, average: 900}",
        "sla: {p99_ms: 500, max_staleness: 2d}\n    qps: {peak: 50, average: 20}",
    )
    text = text.replace("qps: {peak: 12000, average: 4000}", "qps: {peak: 20, average: 5}")
    # the offline history holds daily snapshots: a keep-warm staleness of minutes would always fail
    text = text.replace("max_staleness: 5m}", "max_staleness: 2d}").replace(
        "max_staleness: 1h}", "max_staleness: 2d}"
    )
    fraud.write_text(text)
    recs = plan_dir / "groups_recs.yaml"
    recs.write_text(recs.read_text().replace("max_staleness: 15m}", "max_staleness: 2d}"))


@pytest.fixture(scope="module")
def world(postgres, redis_server, demo_plan, tmp_path_factory, airflow_db):
    import psycopg
    import redis
    from psycopg import sql

    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo.data import generate_demo

    name = f"t_af_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    plan_dir = tmp_path_factory.mktemp("af") / "plan"
    env = generate_demo(
        url,
        url,
        url,
        redis_server.url,
        demo_plan,
        entities=200,
        days=70,
        history_entities=40,
        plan_dir=plan_dir,
        inject_bug=False,
    )
    _seconds_plan(plan_dir)
    plan = load_plan(plan_dir)
    conn_env = dict(env.conn_env)
    # a known password on the registry connection (trust auth ignores it): it must never leak
    key = f"AIRFLOW_CONN_{plan.connections.registry.upper()}"
    registry_conn = json.loads(conn_env[key])
    registry_conn["password"] = SECRET
    conn_env[key] = json.dumps(registry_conn)
    mp = pytest.MonkeyPatch()
    for k, v in conn_env.items():
        mp.setenv(k, v)
    mp.setenv("FSMIG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("FSMIG_REPORTS_DIR", str(tmp_path_factory.mktemp("reports")))
    client = redis.Redis.from_url(redis_server.url)
    yield {"plan": plan, "plan_dir": plan_dir, "url": url, "redis": client, "redis_url": redis_server.url}
    client.close()
    mp.undo()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def serving_feed(world, *, auc_drop_after: tuple[str, float] | None = None, interval: float = 0.1):
    """Record model AUC and router stats continuously, like model servers would.

    ``auc_drop_after=(group, pct)``: once the registry shows ``group`` at ``pct`` % or more, the AUC
    of that group's models falls from 0.90 to 0.80 (a 11% drop against a 0.5% trigger).
    """
    import psycopg

    from airflow_fsmigration.gates.metrics import AUC, record_metric
    from airflow_fsmigration.serving.stats import StatsRecorder

    plan = world["plan"]
    stop = threading.Event()
    errors: list[BaseException] = []
    dropped = threading.Event()

    def loop() -> None:
        try:
            with psycopg.connect(world["url"], autocommit=True) as conn:
                recorder = StatsRecorder(world["redis"], bucket_s=1, flush_interval_s=0)
                drop_models: set[str] = set()
                while not stop.is_set():
                    if auc_drop_after and not dropped.is_set():
                        group, pct = auc_drop_after
                        row = (
                            conn.execute(
                                "SELECT ramp_pct FROM fsmig.routing WHERE group_name = %s", (group,)
                            ).fetchone()
                            if _has_routing(conn)
                            else None
                        )
                        if row and row[0] >= pct:
                            drop_models = set(plan.groups[group].models)
                            dropped.set()
                    now = datetime.now(UTC)
                    for model in plan.models:
                        record_metric(conn, model, AUC, 0.80 if model in drop_models else 0.90, ts=now)
                    for group in plan.groups:
                        for _ in range(30):
                            recorder.record(group, "old", 900)
                            recorder.record(group, "new", 1000)
                    recorder.flush()
                    stop.wait(interval)
                recorder.close()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=loop, name="serving-feed", daemon=True)
    thread.start()
    try:
        yield dropped
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors


def _has_routing(conn) -> bool:
    return conn.execute("SELECT to_regclass('fsmig.routing') IS NOT NULL").fetchone()[0]


def _dags(world, *ids):
    from airflow_fsmigration.dag_factory import build_dags

    out = {}
    for dag_id in ids:
        out.update(build_dags(world["plan"], str(world["plan_dir"]), only=dag_id))
    return out


def _states(run) -> dict[str, str]:
    return {
        ti.task_id: (ti.state.value if hasattr(ti.state, "value") else str(ti.state))
        for ti in run.get_task_instances()
    }


def _registry(world):
    from airflow_fsmigration.registry.routing import Registry

    return Registry(world["url"], plan=world["plan"])


@pytest.mark.airflow
def test_demo_slice_migrates_wave_by_wave_upstream_first(world, run_dag, capfd, caplog):
    plan = world["plan"]
    ids = [f"fsmig__{g}__migrate" for g in SLICE]
    dags = _dags(world, *ids)

    # The downstream group cannot start before its upstreams are cut over: its gate times out.
    risk = dags["fsmig__user_risk_profile__migrate"]
    gate = risk.get_task("upstream_gate")
    gate.mode, gate.timeout, gate.poke_interval = "poke", 1, 0.2
    blocked = run_dag(risk)
    assert blocked.state == "failed"
    states = _states(blocked)
    assert states["upstream_gate"] == "failed"
    assert states["deploy"] == "upstream_failed"
    assert states["rollback"] in ("upstream_failed", "skipped")  # no bake ran: nothing to roll back

    # Wave 1, then wave 2.
    gate.mode, gate.timeout, gate.poke_interval = "reschedule", 30 * 86400, 1.0
    with serving_feed(world):
        for dag_id in ids:
            run = run_dag(dags[dag_id])
            states = _states(run)
            assert run.state == "success", (dag_id, states)
            assert states["rollback"] == "skipped"
            assert states["ready_to_decommission"] == "success"
            assert ("load_test" in states) == (dag_id == "fsmig__user_profile__migrate")

    with _registry(world) as registry:
        for group in SLICE:
            assert registry.state(group).phase.value == "ready_to_decommission"
        cutover_at = {g: registry.last_entered(g, "cutover") for g in SLICE}
        audit = registry.audit("user_risk_profile")
    first_ramp = next(e.at for e in audit if e.to_phase.value == "ramping")
    assert first_ramp > cutover_at["user_txn_stats"]
    assert first_ramp > cutover_at["user_profile"]
    phases = [e.to_phase.value for e in audit]
    assert phases == ["planned", "shadow", "ramping", "ramping", "cutover", "warm", "ready_to_decommission"]
    assert all(e.actor.startswith("airflow:fsmig__user_risk_profile__migrate.") for e in audit[1:])

    # each cutover emitted its asset event
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_fsmigration.dag_factory import cutover_uri

    with create_session() as session:
        uris = session.scalars(
            select(AssetModel.uri).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        ).all()
    for group in SLICE:
        assert uris.count(cutover_uri(plan, group)) == 1

    # the registry password never reached a log, an XCom value, a report or a DAG doc
    from airflow.models.xcom import XComModel

    with create_session() as session:
        xcoms = [json.dumps(v, default=str) for v in session.scalars(select(XComModel.value)).all()]
    out, err = capfd.readouterr()
    reports = [
        p.read_bytes().decode("utf-8", "replace")
        for p in Path(os.environ["FSMIG_REPORTS_DIR"]).rglob("*")
        if p.is_file()
    ]
    docs = [d.doc_md for d in dags.values()]
    assert len(xcoms) > 20 and reports
    for text in (out, err, caplog.text, *xcoms, *reports, *docs):
        assert SECRET not in text


@pytest.mark.airflow
def test_auc_drop_mid_ramp_rolls_back_by_itself_with_the_reason_audited(world, run_dag):
    group = "merchant_stats"
    dag = _dags(world, f"fsmig__{group}__migrate")[f"fsmig__{group}__migrate"]
    with serving_feed(world, auc_drop_after=(group, 50)) as dropped:
        run = run_dag(dag)
    assert dropped.is_set()
    states = _states(run)
    assert run.state == "failed"
    assert states["bake_5"] == "success"
    assert states["bake_50"] == "failed"
    assert states["ramp_100"] == "upstream_failed"
    assert states["rollback"] == "success"
    with _registry(world) as registry:
        state = registry.state(group)
        audit = registry.audit(group)
    assert state.phase.value == "rolled_back" and state.ramp_pct == 0
    last = audit[-1]
    assert last.to_phase.value == "rolled_back" and last.from_pct == 50
    assert last.reason.startswith("automatic rollback: bake_50: ")
    assert "merchant_risk_v2" in last.reason and "auc" in last.reason.lower()
    assert last.actor == f"airflow:fsmig__{group}__migrate.rollback"
    assert last.evidence["breaches"][0]["breaches"][0]["trigger"] == "auc_drop_pct"
    # the mirror serving processes read says old store, at once
    mirror = json.loads(world["redis"].get(f"fsmig:routing:{group}"))
    assert mirror["phase"] == "rolled_back" and mirror["ramp_pct"] == 0


@pytest.mark.airflow
def test_nightly_dag_records_one_run_per_active_group(world, run_dag):
    import psycopg

    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.stores.new_store import NewStore

    plan = world["plan"]
    with NewStore(world["url"], plan) as store:
        for group in ("item_popularity", "user_session_stats"):
            store.deploy(group)
    with _registry(world) as registry:
        registry.ensure_schema()
        registry.register_plan(plan)
        for group in ("item_popularity", "user_session_stats"):
            if registry.state(group).phase.value == "planned":
                registry.transition(group, "shadow", actor="test", reason="nightly test")
        phases = {g: s.phase.value for g, s in registry.states(plan.name).items()}
    active = {g for g, p in phases.items() if p in ("shadow", "ramping", "cutover", "warm")}
    assert {"item_popularity", "user_session_stats"} <= active

    with psycopg.connect(world["url"], autocommit=True) as conn:
        store = ResultStore(conn)
        store.ensure()
        before = {g: len(store.series(g)) for g in plan.groups}
        nightly_id = f"fsmig__{plan.name}__nightly_consistency"
        run = run_dag(_dags(world, nightly_id)[nightly_id])
        after = {g: len(store.series(g)) for g in plan.groups}
    assert run.state == "success", _states(run)
    added = {g: after[g] - before[g] for g in plan.groups}
    assert added == {g: (1 if g in active else 0) for g in plan.groups}
    mapped = [ti for ti in run.get_task_instances() if ti.task_id == "shadow_compare"]
    assert len(mapped) == len(active)


@pytest.mark.airflow
def test_backfill_dag_rejects_an_invalid_form_and_replays_a_valid_one(world, run_dag):
    from airflow.sdk.exceptions import ParamValidationError

    dag_id = "fsmig__user_txn_stats__backfill"

    def dag():  # a fresh DAG per run: dag.test() leaves the run's conf in the DAG object's params
        return _dags(world, dag_id)[dag_id]

    now = datetime.now(UTC).replace(microsecond=0)

    # rejected by the Param schema before any task runs
    with pytest.raises(ParamValidationError):
        run_dag(dag(), run_conf={"start": "yesterday", "end": now.isoformat(), "cadence": "1d"})
    with pytest.raises(ParamValidationError):
        run_dag(dag(), run_conf={"start": "2026-01-01", "end": now.isoformat(), "cadence": "3d"})

    # schema-valid but wrong: end before start; both cadence and spine
    for conf in (
        {
            "start": (now - timedelta(days=1)).isoformat(),
            "end": (now - timedelta(days=3)).isoformat(),
            "cadence": "1d",
        },
        {
            "start": (now - timedelta(days=3)).isoformat(),
            "end": (now - timedelta(days=1)).isoformat(),
            "cadence": "1d",
            "spine_table": "raw.labels",
        },
    ):
        run = run_dag(dag(), run_conf=conf)
        states = _states(run)
        assert run.state == "failed"
        assert states == {"validate_form": "failed", "replay": "upstream_failed"}

    start = (now - timedelta(days=3)).replace(hour=0, minute=0, second=0)
    run = run_dag(
        dag(),
        run_conf={
            "start": start.isoformat(),
            "end": (start + timedelta(days=2)).isoformat(),
            "cadence": "1d",
        },
    )
    assert run.state == "success", _states(run)
    result = run.get_task_instance("replay").xcom_pull(task_ids="replay")
    assert result["group"] == "user_txn_stats" and result["rows"] > 0 and result["chunks"] >= 1


@pytest.mark.airflow
def test_freeze_then_manual_rollback_dag_records_the_persons_reason(world, run_dag):
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import ParamValidationError

    from airflow_fsmigration.operators.routing import FreezeOperator

    plan, group = world["plan"], "user_recs_affinity"
    with _registry(world) as registry:
        registry.ensure_schema()
        registry.register_plan(plan)
        registry.transition(group, "shadow", actor="test", reason="setup")
        registry.ramp(
            group, plan.settings_for(group).ramp_steps[0], actor="test", reason="setup", soak_passed=True
        )

    with DAG("t_freeze", schedule=None) as freeze_dag:
        FreezeOperator(
            task_id="freeze", plan_path=str(world["plan_dir"]), group=group, reason="{{ params.why }}"
        )
    run = run_dag(freeze_dag, run_conf={"why": "labels delayed, hold the ramp"})
    assert run.state == "success", _states(run)

    rollback_id = f"fsmig__{group}__rollback"
    with pytest.raises(ParamValidationError):
        run_dag(_dags(world, rollback_id)[rollback_id])  # no reason: the form refuses
    run = run_dag(
        _dags(world, rollback_id)[rollback_id], run_conf={"reason": "ranker CTR fell after the ramp"}
    )
    assert run.state == "success", _states(run)
    with _registry(world) as registry:
        audit = registry.audit(group)
    assert [(e.to_phase.value, e.reason) for e in audit[-2:]] == [
        ("frozen", "labels delayed, hold the ramp"),
        ("rolled_back", "ranker CTR fell after the ramp"),
    ]
    assert audit[-1].actor == f"airflow:{rollback_id}.rollback" and audit[-1].from_phase.value == "frozen"


# -- ramp approvals (plan ramp_approval): Airflow's human-in-the-loop operators -----------------


def _approval_plan(world, tmp_path: Path, group: str, timeout: str) -> tuple[Any, Path]:
    """A copy of the world's plan in which ``group`` waits for a person before every ramp step."""
    import shutil

    from airflow_fsmigration.plan import load_plan

    plan_dir = tmp_path / "plan"
    shutil.copytree(world["plan_dir"], plan_dir)
    for path in plan_dir.glob("groups_*.yaml"):
        text = path.read_text()
        head = f"\n  {group}:\n"
        if head in text:
            text = text.replace(
                head,
                f"{head}    overrides: {{ramp_approval: all, approval_timeout: {timeout}, high_traffic_qps: 1000000000}}\n",
                1,
            )
            path.write_text(text)
    plan = load_plan(plan_dir)
    assert plan.approves_ramps(group)
    return plan, plan_dir


class _Responder(threading.Thread):
    """Answers a run's approvals from outside ``dag.test()``, as the Required Actions UI would.

    ``answer``: the option to choose, as user ``user`` (None: never answer). ``sweep``: run the
    scheduler's own timeout sweep (``check_awaiting_input_timeouts``), which ``dag.test()`` lacks.
    """

    def __init__(self, dag_id: str, answer: str | None, user: str = "alice", sweep: bool = False) -> None:
        super().__init__(daemon=True)
        self.dag_id, self.answer, self.user, self.sweep = dag_id, answer, user, sweep
        self.answered: list[str] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.models.trigger import handle_event_submit
        from airflow.triggers.base import TriggerEvent
        from airflow.utils import timezone
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        runner = SchedulerJobRunner(job=Job()) if self.sweep else None
        while not self.stop.wait(0.3):
            try:
                if runner is not None:
                    runner.check_awaiting_input_timeouts()
                if self.answer is not None:
                    self._answer(
                        TI, TaskInstanceState, handle_event_submit, TriggerEvent, timezone, create_session
                    )
            except Exception as exc:  # SQLite may be busy with the run's own session: try again
                self.errors.append(repr(exc))

    def _answer(
        self, TI, TaskInstanceState, handle_event_submit, TriggerEvent, timezone, create_session
    ) -> None:
        from sqlalchemy import select
        from sqlalchemy.orm import joinedload

        if True:
            with create_session() as session:
                waiting = session.scalars(
                    select(TI)
                    .where(TI.dag_id == self.dag_id, TI.state == TaskInstanceState.AWAITING_INPUT)
                    .options(joinedload(TI.hitl_detail))
                ).all()
                for ti in waiting:
                    detail = ti.hitl_detail
                    if detail is None or detail.responded_at is not None:
                        continue
                    # what the HITL REST API's PATCH .../hitlDetails does for a logged-in user
                    detail.responded_by = {"id": self.user, "name": self.user}
                    detail.responded_at = timezone.utcnow()
                    detail.chosen_options = [self.answer]
                    detail.params_input = {}
                    session.add(detail)
                    handle_event_submit(
                        TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session
                    )
                    self.answered.append(ti.task_id)


@pytest.mark.airflow
def test_each_ramp_step_waits_for_approval_and_the_audit_names_the_approver(world, run_dag, tmp_path):
    from airflow_fsmigration.dag_factory import build_dags

    group = "item_popularity"
    plan, plan_dir = _approval_plan(world, tmp_path, group, "2m")
    dag_id = f"fsmig__{group}__migrate"
    dag = build_dags(plan, str(plan_dir), only=dag_id)[dag_id]
    steps = plan.settings_for(group).ramp_steps
    assert [t for t in dag.task_ids if t.startswith("approve_")] == [f"approve_{s}" for s in steps]
    assert dag.get_task(f"ramp_{steps[0]}").upstream_task_ids == {f"approve_{steps[0]}"}
    responder = _Responder(dag_id, "Approve", user="alice")
    responder.start()
    try:
        with serving_feed(world):
            run = run_dag(dag)
    finally:
        responder.stop.set()
        responder.join(timeout=10)
    states = _states(run)
    assert run.state == "success", states
    assert sorted(responder.answered) == sorted(f"approve_{s}" for s in steps)
    with _registry(world) as registry:
        audit = registry.audit(group)
    ramps = [a for a in audit if a.to_pct in steps and a.from_pct != a.to_pct]
    assert [a.to_pct for a in ramps[-len(steps) :]] == list(steps)
    for entry in ramps[-len(steps) :]:
        assert entry.actor == "alice" and "approved in approve_" in entry.reason, entry
        assert entry.evidence["approval"]["answer"] == "Approve"


@pytest.mark.airflow
def test_an_unanswered_approval_freezes_the_group_and_never_promotes(world, run_dag, tmp_path):
    from airflow_fsmigration.dag_factory import build_dags

    group = "merchant_stats"
    plan, plan_dir = _approval_plan(world, tmp_path, group, "2s")
    dag_id = f"fsmig__{group}__migrate"
    dag = build_dags(plan, str(plan_dir), only=dag_id)[dag_id]
    responder = _Responder(dag_id, None, sweep=True)  # nobody answers; the scheduler's sweep runs
    responder.start()
    try:
        with serving_feed(world):
            run = run_dag(dag)
    finally:
        responder.stop.set()
        responder.join(timeout=10)
    states = _states(run)
    assert run.state == "failed", states
    assert states["approve_5"] == "failed" and states["ramp_5"] == "upstream_failed", states
    assert states["rollback"] in ("skipped", "upstream_failed"), states
    with _registry(world) as registry:
        state = registry.state(group)
        last = registry.audit(group)[-1]
    assert state.ramp_pct == 0 and state.phase.value == "shadow"  # no traffic ever moved
    assert last.from_phase == last.to_phase and last.from_pct == last.to_pct == 0
    assert "nobody answered within 2s" in last.reason and "(no answer)" in last.actor
    assert last.evidence["approval"]["timed_out"] is True
