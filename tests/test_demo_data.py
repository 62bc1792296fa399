"""The demo generator writes the legacy stores exactly as the correct definitions compute them."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from fsmig_dev.demo.data import (
    BUG_GROUP,
    as_of_sql,
    deploy_new_store,
    encode_value,
    generate_demo,
    generate_raw,
)

NOW = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)
TYPES = {
    "int64": "bigint",
    "float64": "double precision",
    "string": "text",
    "bool": "boolean",
    "timestamp": "timestamptz",
}


@pytest.fixture(scope="module")
def demo(postgres, redis_server, demo_plan):
    """A small demo world (300 users, 90 days) in one database and the test Redis."""
    import psycopg
    import redis
    from psycopg import sql

    name = f"t_demo_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    plan_dir = tempfile.mkdtemp(prefix="fsmig_demo_plan_")  # not tmp_path: a concurrent pytest may prune it
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    env = generate_demo(
        url,
        url,
        url,
        redis_server.url,
        demo_plan,
        entities=300,
        days=90,
        history_entities=60,
        now=NOW,
        plan_dir=Path(plan_dir) / "plan",
    )
    yield env, url, client
    shutil.rmtree(plan_dir, ignore_errors=True)
    client.flushall()
    client.close()
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _as_of_rows(conn, plan, group, as_of, entities):
    g = plan.groups[group]
    cols = ", ".join(f'q."{f.name}"::{TYPES[str(f.dtype)]}' for f in g.features)
    query = (
        f'SELECT q."{g.entity_key}"::text, {cols}, q.source_ts FROM ({as_of_sql(plan, group, "%(as_of)s")}) AS q '
        f'WHERE q."{g.entity_key}"::text = ANY(%(ids)s) ORDER BY 1'
    )
    return conn.execute(query, {"as_of": as_of, "ids": entities}).fetchall()


@pytest.mark.integration
def test_every_group_has_one_redis_hash_per_entity_of_its_definition(demo, demo_plan):
    import psycopg

    env, url, client = demo
    with psycopg.connect(url) as conn:
        for name, g in demo_plan.groups.items():
            expected = conn.execute(
                f"SELECT count(*) FROM ({as_of_sql(demo_plan, name, '%(as_of)s')}) q", {"as_of": NOW}
            ).fetchone()[0]
            keys = sum(
                1 for _ in client.scan_iter(match=g.legacy_online.key_template.format(entity="*"), count=1000)
            )
            assert keys == expected == env.counts[f"redis:{name}"], name
    assert env.counts["redis:user_profile"] == 300  # every user has a profile


@pytest.mark.integration
def test_redis_values_are_the_definitions_values_in_the_legacy_encoding(demo, demo_plan):
    import psycopg

    _env, url, client = demo
    checked = 0
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for name, g in demo_plan.groups.items():
            ids = [
                r[0]
                for r in conn.execute(
                    f'SELECT q."{g.entity_key}"::text FROM ({as_of_sql(demo_plan, name, "%(as_of)s")}) q ORDER BY 1 LIMIT 4',
                    {"as_of": NOW},
                )
            ]
            for row in _as_of_rows(conn, demo_plan, name, NOW, ids):
                entity, values, source_ts = row[0], row[1:-1], row[-1]
                stored = {
                    k.decode(): v.decode()
                    for k, v in client.hgetall(g.legacy_online.key_template.format(entity=entity)).items()
                }
                expected = {}
                for f, v in zip(g.features, values, strict=True):
                    if v is None:
                        continue
                    if g.legacy_online.encoding == "json":
                        text = json.dumps(v.isoformat() if isinstance(v, datetime) else v)
                    elif isinstance(v, bool):
                        text = "true" if v else "false"
                    elif isinstance(v, float):
                        text = repr(v)
                    elif isinstance(v, datetime):
                        text = v.isoformat()
                    else:
                        text = str(v)
                    expected[f.name] = text
                expected["_ts"] = str(int(source_ts.timestamp()))
                assert stored == expected, (name, entity)
                checked += 1
    assert checked == 32  # 4 entities in each of the 8 groups


@pytest.mark.unit
def test_value_encodings():
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert encode_value(42, "int64", "string") == "42"
    assert encode_value(0.1, "float64", "string") == "0.1"
    assert encode_value(True, "bool", "string") == "true"
    assert encode_value(ts, "timestamp", "string") == "2026-01-02T03:04:05+00:00"
    assert encode_value(None, "int64", "string") is None
    assert encode_value("feed", "string", "json") == '"feed"'
    assert encode_value(False, "bool", "json") == "false"
    assert encode_value(ts, "timestamp", "json") == '"2026-01-02T03:04:05+00:00"'
    assert json.loads(encode_value(1 / 3, "float64", "json")) == 1 / 3


@pytest.mark.integration
def test_offline_history_holds_daily_snapshots_of_the_definitions(demo, demo_plan):
    import psycopg

    _env, url, _ = demo
    last = NOW.replace(hour=0, minute=0, second=0)
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for name, g in demo_plan.groups.items():
            table = g.legacy_offline.table
            days = int(g.backfill_window.total_seconds() // 86400)
            snapshots = conn.execute(
                f"SELECT count(DISTINCT event_ts), min(event_ts), max(event_ts) FROM {table}"
            ).fetchone()
            assert snapshots == (days, last - timedelta(days=days - 1), last), name
            # Events older than the clickstream's 30-day retention were purged after the history was
            # written, so groups reading it are re-checked only where the purge cannot matter.
            reads_clicks = name in ("user_session_stats", "user_recs_affinity", "item_popularity")
            for as_of in [last] if reads_clicks else [last, last - timedelta(days=days - 1)]:
                ids = [
                    r[0]
                    for r in conn.execute(
                        f'SELECT "{g.entity_key}" FROM {table} WHERE event_ts = %s ORDER BY 1 LIMIT 3',
                        (as_of,),
                    )
                ]
                assert len(ids) == 3, (name, as_of)
                cols = ", ".join(f'"{f.name}"' for f in g.features)
                stored = conn.execute(
                    f'SELECT "{g.entity_key}", {cols} FROM {table} WHERE event_ts = %s AND "{g.entity_key}" = ANY(%s) ORDER BY 1',
                    (as_of, ids),
                ).fetchall()
                computed = [row[:-1] for row in _as_of_rows(conn, demo_plan, name, as_of, ids)]
                assert stored == computed, (name, as_of)


@pytest.mark.integration
def test_history_covers_the_sampled_entities_only(demo, demo_plan):
    import psycopg

    _env, url, _ = demo
    with psycopg.connect(url) as conn:
        users = conn.execute("SELECT count(DISTINCT user_id) FROM legacy.user_profile_history").fetchone()[0]
        # The first 60 users, less those created after the newest snapshot (a definition skips them).
        expected = conn.execute(
            "SELECT count(*) FROM (SELECT * FROM raw.users ORDER BY user_id LIMIT 60) u "
            "WHERE u.created_at <= (SELECT max(event_ts) FROM legacy.user_profile_history)"
        ).fetchone()[0]
        assert users == expected > 50
        assert (
            conn.execute("SELECT max(user_id) FROM legacy.user_profile_history").fetchone()[0] <= "u0000060"
        )
        merchants = conn.execute(
            "SELECT count(DISTINCT merchant_id) FROM legacy.merchant_stats_history"
        ).fetchone()[0]
        assert merchants == 20  # 6 merchants by share, but never fewer than 20 (or all of them)


@pytest.mark.integration
def test_retention_purge_and_spans(demo):
    import psycopg

    env, url, _ = demo
    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        oldest_click = conn.execute("SELECT min(event_ts) FROM raw.clickstream").fetchone()[0]
        oldest_txn = conn.execute("SELECT min(event_ts) FROM raw.transactions").fetchone()[0]
    day = NOW.replace(hour=0, minute=0, second=0)
    assert day - timedelta(days=30) <= oldest_click < day - timedelta(days=29)
    assert day - timedelta(days=90) <= oldest_txn < day - timedelta(days=89)
    assert env.counts["purged:raw.clickstream"] > 0


@pytest.mark.integration
def test_buggy_new_store_shifts_click_times_by_the_new_york_offset(demo, demo_plan):
    import psycopg

    env, url, _ = demo
    buggy = env.load_plan()
    assert env.bug is not None and env.bug.group == BUG_GROUP
    assert "America/New_York" in buggy.definition_sql(BUG_GROUP)
    assert buggy.definition_sql("user_txn_stats") == demo_plan.definition_sql("user_txn_stats")
    with psycopg.connect(url) as conn:
        right = dict(
            conn.execute(
                f"SELECT user_id, last_click_ts FROM ({as_of_sql(demo_plan, BUG_GROUP, '%(t)s')}) q",
                {"t": NOW},
            ).fetchall()
        )
        wrong = dict(
            conn.execute(
                f"SELECT user_id, last_click_ts FROM ({as_of_sql(buggy, BUG_GROUP, '%(t)s')}) q", {"t": NOW}
            ).fetchall()
        )
        # Deploying the plan copy creates the views, the buggy one included.
        views = deploy_new_store(conn, buggy)
        assert len(views) == 8
        text = conn.execute("SELECT pg_get_viewdef('features.user_session_stats'::regclass)").fetchone()[0]
        assert "America/New_York" in text
    recent = [u for u, ts in right.items() if ts is not None and ts > NOW - timedelta(days=29) and u in wrong]
    assert len(recent) > 100
    # Wall-clock New York time read as UTC: -5 h after the DST change of 2026-11-01, -4 h before.
    ny = ZoneInfo("America/New_York")
    assert all(wrong[u] - right[u] == right[u].astimezone(ny).utcoffset() for u in recent)
    assert {wrong[u] - right[u] for u in recent} == {timedelta(hours=-5), timedelta(hours=-4)}


@pytest.mark.integration
def test_generation_is_reproducible(postgres, demo_plan):
    import psycopg
    from psycopg import sql

    digests = []
    names = [f"t_seed_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        for name in names:
            url = postgres.create_database(name)
            with psycopg.connect(url, autocommit=True) as conn:
                counts = generate_raw(conn, demo_plan, entities=40, days=20, seed=0.3, now=NOW)
                digest = conn.execute(
                    "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM raw.transactions t"
                ).fetchone()[0]
                digests.append((counts, digest))
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert digests[0] == digests[1]
    assert digests[0][0]["transactions"] > 0


@pytest.mark.integration
def test_runner_shadow_step_finds_the_planted_bug_and_nothing_else(demo, monkeypatch, capsys):
    """The frozen event-log clock lines the new store's now() up with the legacy stores' now."""
    import argparse

    from airflow_fsmigration.cli import main as fsmigrate
    from fsmig_dev.demo.__main__ import _deploy_and_shadow, _print_shadow_outcome, write_demo_report

    env, _url, _ = demo
    for key, value in env.conn_env.items():
        monkeypatch.setenv(key, value)
    out_dir = Path(tempfile.mkdtemp(prefix="fsmig_demo_reports_"))
    try:
        args = argparse.Namespace(shadow_sample=0, out=out_dir)
        outcome = _deploy_and_shadow(env, args, fsmigrate)
        _print_shadow_outcome(env, outcome)
        page = write_demo_report(env, outcome, out_dir, assessment=out_dir / "a.html").read_text()
        assert page.count('">report</a>') == 8  # one shadow report per group, linked
        # the root cause, proven, across the features it moves (was: a per-feature timezone_shift)
        assert "<b>time_zone (proven by replay)</b>" in page and "last_click_ts" in page
        assert "Found in &#39;user_session_stats&#39;" in page
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    assert outcome == {
        "merchant_stats": "pass",
        "item_popularity": "pass",
        "user_session_stats": "FAIL",
        "user_profile": "pass",
        "user_txn_stats": "pass",
        "user_recs_affinity": "FAIL",
        "user_risk_profile": "pass",
        "fraud_decision_features": "pass",
    }
    out = capsys.readouterr().out
    assert "[timezone_shift] last_click_ts" in out
    assert "found the planted bug in 'user_session_stats'" in out


@pytest.mark.integration
def test_model_metrics_baseline_for_every_model(demo, demo_plan):
    import psycopg

    env, url, _ = demo
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT model, metric, count(*), min(ts), max(ts), avg(value) FROM fsmig.model_metrics "
            "GROUP BY model, metric ORDER BY model, metric"
        ).fetchall()
    assert len(rows) == 2 * len(demo_plan.models) == 12
    assert {r[2] for r in rows} == {7 * 24}
    assert {(r[3], r[4]) for r in rows} == {(NOW - timedelta(days=7), NOW - timedelta(hours=1))}
    fraud_auc = next(r[5] for r in rows if r[:2] == ("fraud_gbdt_v7", "auc"))
    assert abs(fraud_auc - 0.942) < 0.001
    assert env.counts["model_metrics"] == 12 * 168
