"""The demo's migration step, small: generated DAGs under dag.test() on real Postgres and Redis.

A few hundred users with the planted time-zone bug; six groups of the demo plan: two healthy
wave-1 groups and their wave-2 downstream (which must ramp only after both cut over), the buggy
group and its downstream (neither may cut over), and a healthy group whose models lose AUC at
its 50 % step (rolled back by the DAG itself, reason in the audit log).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

GROUPS = (
    "user_txn_stats",
    "user_profile",
    "merchant_stats",
    "user_session_stats",
    "user_risk_profile",
    "user_recs_affinity",
)


@pytest.fixture(scope="module")
def demo_env(postgres, redis_server, demo_plan, tmp_path_factory, airflow_db):
    import psycopg
    import redis
    from psycopg import sql

    from fsmig_dev.demo.data import generate_demo

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    name = f"t_dm_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    env = generate_demo(
        url,
        url,
        url,
        redis_server.url,
        demo_plan,
        entities=300,
        days=70,
        history_entities=40,
        plan_dir=tmp_path_factory.mktemp("dm") / "plan",
        inject_bug=True,
    )
    mp = pytest.MonkeyPatch()
    for k, v in env.conn_env.items():
        mp.setenv(k, v)
    work = tmp_path_factory.mktemp("dm_work")
    mp.setenv("FSMIG_REPORTS_DIR", str(work / "reports"))
    mp.setenv("FSMIG_CACHE_DIR", str(work / "cache"))
    yield env, work
    mp.undo()
    client.flushall()
    client.close()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.unit
def test_seconds_plan_keeps_the_bug_and_scales_every_window(demo_plan, tmp_path):
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo.data import write_demo_plan
    from fsmig_dev.demo.migrate import TimeScale, write_seconds_plan

    src = tmp_path / "buggy"
    assert write_demo_plan(demo_plan.source_dir, src, inject_bug=True) is not None
    dst = write_seconds_plan(
        src,
        tmp_path / "seconds",
        TimeScale(soak_s=4, bake_s=2, keep_warm_s=1, sample=50),
        staleness=timedelta(days=3),
    )
    plan = load_plan(dst)
    s = plan.settings_for("merchant_stats")
    assert s.shadow_soak == timedelta(seconds=4) and s.bake == timedelta(seconds=2)
    assert s.keep_warm == timedelta(seconds=1) and s.shadow_sample_size == 50
    assert plan.settings_for("fraud_decision_features").ramp_steps == (1, 5, 25, 50, 100)
    assert all(g.sla.max_staleness == timedelta(hours=73) for g in plan.groups.values())
    assert (dst / "sql" / "user_session_stats.sql").read_text() == (
        src / "sql" / "user_session_stats.sql"
    ).read_text()
    assert "America/New_York" in (dst / "sql" / "user_session_stats.sql").read_text()


@pytest.mark.airflow
@pytest.mark.integration
def test_demo_migration_wave_order_bug_held_and_breach_rolled_back(demo_env):
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo.migrate import TimeScale, run_migration
    from fsmig_dev.demo.report import collect, migration_sections, summary_lines

    env, work = demo_env
    # the demo's shadow step before the DAGs: one recorded comparison of the buggy group
    import psycopg

    from airflow_fsmigration.operators._runtime import record_shadow_run
    from airflow_fsmigration.stores.new_store import NewStore

    base = env.load_plan()
    with NewStore(env.urls[base.connections.new_store], base, base.connections.new_store) as store:
        store.deploy_all()
    with psycopg.connect(env.urls[base.connections.registry], autocommit=True) as conn:
        first = record_shadow_run(
            base,
            "user_session_stats",
            registry_conn=conn,
            online_url=env.urls[base.connections.legacy_online],
            new_url=env.urls[base.connections.new_store],
        )
    assert first.verdict == "fail"
    lines: list[str] = []
    outcome = run_migration(
        env,
        work_dir=work,
        scale=TimeScale(soak_s=4, bake_s=3, keep_warm_s=1, sample=100, gate_wait_s=2, pit_samples=10),
        inject=("merchant_stats", 50),
        groups=GROUPS,
        out=lines.append,
    )
    assert set(outcome.runs) == set(GROUPS)
    assert outcome.injection is not None and outcome.injection.dropped_at is not None
    plan = load_plan(outcome.plan_dir)
    stories = {
        s.group: s
        for s in collect(
            plan,
            registry_url=env.urls[plan.connections.registry],
            redis_url=env.urls[plan.connections.legacy_online],
            since=outcome.started_at,
            until=outcome.finished_at,
            runs=outcome.runs,
        )
    }

    # healthy groups went all the way; the downstream ramped only after both upstreams cut over
    for g in ("user_txn_stats", "user_profile", "user_risk_profile"):
        assert outcome.runs[g].state == "success", (g, outcome.runs[g].tasks)
        assert stories[g].phase == "ready_to_decommission" and stories[g].ramp_pct == 100
        assert stories[g].ramp_steps == [5, 50, 100]
    cutover = {
        g: next(e.at for e in stories[g].audit if e.to_phase.value == "cutover")
        for g in ("user_txn_stats", "user_profile")
    }
    first_ramp = next(e.at for e in stories["user_risk_profile"].audit if e.to_phase.value == "ramping")
    assert first_ramp > max(cutover.values())

    # the bug: its shadow comparison failed, it never took traffic, and its downstream was held
    bug = stories["user_session_stats"]
    assert outcome.runs["user_session_stats"].state == "failed"
    bug_tasks = dict((t, s) for t, s, _ in outcome.runs["user_session_stats"].tasks)
    # schema parity checks the schema only, so it passes; the shadow comparison, which explains
    # the difference, is what stops the group; no ramp
    assert bug.failed_task == "shadow_compare" and bug_tasks["schema_parity"] == "success"
    assert bug_tasks[bug.failed_task] == "failed" and bug_tasks["ramp_5"] == "upstream_failed"
    assert bug.phase in ("planned", "shadow") and bug.ramp_pct == 0 and bug.ramp_steps == []
    assert bug.latest_verdict == "fail" and bug.latest_match_rate < bug.threshold
    assert f"{bug.failed_task} failed; shadow comparison fail" in bug.held_reason
    down = stories["user_recs_affinity"]
    assert outcome.runs["user_recs_affinity"].blocked_by == ["user_session_stats"]
    down_tasks = dict((t, s) for t, s, _ in outcome.runs["user_recs_affinity"].tasks)
    assert down_tasks["upstream_gate"] == "failed" and down_tasks["deploy"] == "upstream_failed"
    assert down.phase == "planned" and down.ramp_pct == 0

    # the injected AUC drop at 50 %: the bake failed and the DAG rolled back with the reason
    ms = stories["merchant_stats"]
    tasks = dict((t, s) for t, s, _ in outcome.runs["merchant_stats"].tasks)
    assert tasks["bake_5"] == "success" and tasks["bake_50"] == "failed"
    assert tasks["ramp_100"] == "upstream_failed" and tasks["rollback"] == "success"
    assert ms.phase == "rolled_back" and ms.ramp_pct == 0 and ms.ramp_steps == [5, 50, 0]
    rb = ms.rollback
    assert rb is not None and rb.from_pct == 50
    assert rb.reason.startswith("automatic rollback: bake_50: ")
    assert "merchant_risk_v2" in rb.reason and "auc" in rb.reason.lower()
    assert rb.actor == "airflow:fsmig__merchant_stats__migrate.rollback"

    # real reads went through the router on both backends; the summary and report say all this
    assert ms.latency["new"]["count"] >= 100 and ms.latency["old"]["count"] >= 100
    text = "\n".join(summary_lines(list(stories.values())))
    assert "rolled back from 50%: automatic rollback: bake_50" in text.replace("\n      ", " ")
    html = str(
        migration_sections(
            list(stories.values()), started=outcome.started_at, outcome=outcome, link_base=work
        )
    )
    assert html.count("<svg") >= 2 * 4 and "mig-user_session_stats" in html
    assert (
        html.count("reports written by the DAG&#39;s tasks") >= 4 and 'href="reports/merchant_stats/' in html
    )
    assert any("registry: shadow 0% -> ramping 5%" in line for line in lines)
