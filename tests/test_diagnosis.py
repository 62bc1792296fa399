"""Root causes proven by replaying the definition (issue 11), on real Postgres and Redis.

A small event log with the events that break comparators (events exactly on a window bound,
re-delivered events with the same id) feeds a correct definition (the legacy values, written to
Redis) and a defective port (the new store's view). The diagnosis must name the injected defect
once across every feature it moves, with the rewrite that reproduces the legacy values.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from airflow_fsmigration.compare import rewrites
from airflow_fsmigration.compare.shadow import run_shadow
from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.stores.new_store import NewStore
from airflow_fsmigration.stores.redis_online import RedisOnlineSource

AS_OF = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
USERS = 80
ON_BOUND = range(0, 12)  # an event exactly at as_of - 24 h
REDELIVERED = range(40, 55)  # one event delivered twice (same event_id)
EARLY = range(20, 35)  # an event 21 h before as_of (a 5 h zone shift moves it out of the window)

CORRECT = """
SELECT e.user_id,
       count(*) AS txn_count_24h,
       sum(e.amount) AS amount_sum_24h,
       max(e.event_ts) AS last_txn_ts,
       max(e.event_ts) AS source_ts
FROM (SELECT DISTINCT ON (event_id) * FROM raw.ev ORDER BY event_id) AS e
WHERE e.event_ts > :as_of - interval '24 hours' AND e.event_ts <= :as_of
GROUP BY e.user_id
"""
BOUND_BUG = CORRECT.replace("e.event_ts > :as_of", "e.event_ts >= :as_of")
DEDUP_BUG = CORRECT.replace("(SELECT DISTINCT ON (event_id) * FROM raw.ev ORDER BY event_id)", "raw.ev")
ZONE_BUG = CORRECT.replace(
    "FROM (SELECT DISTINCT ON (event_id) * FROM raw.ev ORDER BY event_id) AS e",
    "FROM (SELECT DISTINCT ON (event_id) event_id, user_id, amount,"
    " (event_ts AT TIME ZONE 'America/New_York') AT TIME ZONE 'UTC' AS event_ts"
    " FROM raw.ev ORDER BY event_id) AS e",
)


def events() -> list[tuple[int, str, float, datetime]]:
    rows, next_id = [], 1
    for u in range(USERS):
        user = f"u{u:03d}"
        for k in range(3):
            ts = AS_OF - timedelta(hours=2 + 5 * k, minutes=u % 50)
            rows.append((next_id, user, 10.0 + u + k, ts))
            next_id += 1
        if u in ON_BOUND:
            rows.append((next_id, user, 7.0, AS_OF - timedelta(hours=24)))
            next_id += 1
        if u in EARLY:
            rows.append((next_id, user, 3.5, AS_OF - timedelta(hours=21)))
            next_id += 1
        if u in REDELIVERED:
            rows.append(rows[-1])  # the same event again, same id
    return rows


def write_plan(tmp_path, definition: str):
    (tmp_path / "sql").mkdir(exist_ok=True)
    (tmp_path / "sql" / "g.sql").write_text(definition)
    plan = {
        "version": 1,
        "name": "diagnosis_test",
        "connections": {
            "legacy_online": "t_redis",
            "legacy_offline": "t_offline",
            "event_log": "t_events",
            "new_store": "t_new",
            "registry": "t_registry",
            "model_metrics": "t_metrics",
        },
        "defaults": {"shadow_sample_size": 0},
        "groups": {
            "g": {
                "entity_key": "user_id",
                "definition": "sql/g.sql",
                "features": [
                    {"name": "txn_count_24h", "dtype": "int64"},
                    {"name": "amount_sum_24h", "dtype": "float64", "atol": 0.001},
                    {"name": "last_txn_ts", "dtype": "timestamp"},
                ],
                "event_sources": [
                    {
                        "table": "raw.ev",
                        "time_column": "event_ts",
                        "retention": "30d",
                        "id_column": "event_id",
                    }
                ],
                "legacy_online": {"key_template": "t:g:{entity}", "encoding": "string"},
                "legacy_offline": {"table": "legacy.g_history"},
                "sla": {"p99_ms": 10, "max_staleness": "5m"},
                "qps": {"peak": 10, "average": 1},
            }
        },
    }
    (tmp_path / "plan.yaml").write_text(json.dumps(plan, indent=2))
    return load_plan(tmp_path / "plan.yaml")


@pytest.fixture
def scenario(tmp_path, pg_url, redis_client, redis_url):
    """Build the event log, the legacy Redis values (correct definition) and a defective new store."""
    from fsmig_dev.demo.data import freeze_clock

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute(
            "CREATE TABLE raw.ev (event_id bigint, user_id text, amount double precision, event_ts timestamptz)"
        )
        with conn.cursor().copy("COPY raw.ev FROM STDIN") as copy:
            for row in events():
                copy.write_row(row)
        freeze_clock(conn, AS_OF)
        legacy = conn.execute(CORRECT.replace(":as_of", "%(t)s"), {"t": AS_OF}).fetchall()
    pipe = redis_client.pipeline(transaction=False)
    for user, n, total, last, _ in legacy:
        pipe.hset(
            f"t:g:{user}",
            mapping={"txn_count_24h": str(n), "amount_sum_24h": repr(total), "last_txn_ts": last.isoformat()},
        )
    pipe.execute()

    def build(definition: str):
        plan = write_plan(tmp_path, definition)
        store = NewStore(pg_url, plan, "t_new")
        store.deploy("g")
        return plan, RedisOnlineSource(redis_url, plan, "t_redis"), store

    return build


def run(plan, old, new):
    with old, new:
        return run_shadow(plan, "g", old, new, sample_size=0, reread_delay_s=0.0)


@pytest.mark.integration
def test_window_bound_is_one_cause_over_count_and_sum_with_the_diff(scenario):
    plan, old, new = scenario(BOUND_BUG)
    r = run(plan, old, new)
    assert r.verdict.value == "fail"
    assert (r.features["txn_count_24h"].mismatched, r.features["amount_sum_24h"].mismatched) == (12, 12)
    top = r.causes[0]
    assert top.kind == "window_bound" and top.proven and top.entities == 12
    assert top.features == {"txn_count_24h": 12, "amount_sum_24h": 12}
    assert top.rewrite is not None and top.rewrite.control_changed == 0
    assert "-  e.event_ts >= :as_of - INTERVAL '24 HOURS'" in top.rewrite.diff.replace("AND ", "")
    assert [c.kind for c in r.causes] == ["window_bound"]  # no false extra cause
    assert "cause: window_bound" in r.summary().splitlines()[1]
    assert json.loads(json.dumps(r.to_dict()))["causes"][0]["rewrite"]["kind"] == "window_bound"


@pytest.mark.integration
def test_a_redelivered_event_is_missing_dedup_not_a_window_bound(scenario):
    """Was: the +1 on the count was called a window-boundary error (issue 11)."""
    plan, old, new = scenario(DEDUP_BUG)
    r = run(plan, old, new)
    assert r.features["txn_count_24h"].mismatched == 15
    assert [c.kind for c in r.causes] == ["deduplication"]
    c = r.causes[0]
    assert c.proven and c.features == {"txn_count_24h": 15, "amount_sum_24h": 15}
    assert "DISTINCT ON (event_id)" in c.rewrite.diff


@pytest.mark.integration
def test_a_zone_bug_is_one_cause_across_timestamp_count_and_sum(scenario):
    plan, old, new = scenario(ZONE_BUG)
    r = run(plan, old, new)
    assert r.causes and r.causes[0].kind == "time_zone" and r.causes[0].proven
    moved = {f for f, s in r.features.items() if s.mismatched}
    assert set(r.causes[0].features) == moved and "last_txn_ts" in moved and len(moved) >= 2
    assert all(share == 1.0 for share in r.causes[0].shares.values())
    assert len(r.causes) == 1


@pytest.mark.integration
def test_a_clean_port_has_no_cause(scenario):
    plan, old, new = scenario(CORRECT)
    r = run(plan, old, new)
    assert r.verdict.value == "pass" and r.causes == []


@pytest.mark.unit
def test_rewrites_flip_bounds_drop_zones_and_add_dedup():
    tree = rewrites.parse(ZONE_BUG)
    bounds = rewrites._bounds(tree)
    assert [side for _, side in bounds] == ["lower", "upper"]
    dropped = rewrites.render(rewrites._drop_zone_conversions(tree))
    assert "AT TIME ZONE" not in dropped and ":as_of" in dropped
    flipped = rewrites.render(rewrites._flip_bounds("lower")(rewrites.parse(BOUND_BUG)))
    assert "e.event_ts > :as_of - INTERVAL '24 HOURS'" in flipped
    assert "e.event_ts <= :as_of" in flipped


def _cli_setup(scenario, pg_url, redis_url, monkeypatch) -> None:
    """The window-bound scenario deployed, and the plan's connections as AIRFLOW_CONN_* for the CLI."""
    from fsmig_dev.devservices import airflow_conn_env

    _plan, old, new = scenario(BOUND_BUG)
    old.close()
    new.close()
    for conn_id, url in (("t_redis", redis_url), ("t_new", pg_url), ("t_registry", pg_url)):
        for k, v in airflow_conn_env(conn_id, url).items():
            monkeypatch.setenv(k, v)


@pytest.mark.integration
def test_cli_leads_with_the_cause_writes_json_and_refuses_an_undeployed_group(
    scenario, tmp_path, pg_url, redis_url, monkeypatch, capsys
):
    from airflow_fsmigration.cli import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, main

    _cli_setup(scenario, pg_url, redis_url, monkeypatch)
    args = ["shadow", str(tmp_path / "plan.yaml"), "g", "--out", str(tmp_path / "r"), "--no-gx"]
    code = main([*args, "--json", str(tmp_path / "result.json")])
    printed = capsys.readouterr().out.splitlines()
    assert code == EXIT_FAILED
    assert printed[0].startswith("group g: FAIL") and printed[1].startswith("  cause: window_bound")
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["verdict"] == "fail" and data["causes"][0]["kind"] == "window_bound"
    assert data["causes"][0]["rewrite"]["diff"].startswith("--- definition")
    html = next((tmp_path / "r").glob("shadow_g_*.html")).read_text()
    assert html.index("Root causes") < html.index("Summary") and 'class="diff"' in html

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP VIEW features.g")
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_INCONCLUSIVE and "has no view features.g" in err and "fsmigrate deploy" in err
    assert main(["deploy", str(tmp_path / "plan.yaml"), "g"]) == EXIT_OK
    capsys.readouterr()

    # an entity key of another type than the plan's: one clear line, exit 3, no driver error
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP VIEW features.g")
        conn.execute("CREATE VIEW features.g AS SELECT 1::bigint AS user_id, 1::bigint AS txn_count_24h")
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_INCONCLUSIVE and "entity key 'user_id' is bigint in the new store but string" in err


@pytest.mark.integration
def test_cli_as_of_records_the_time_the_data_describe(
    scenario, tmp_path, pg_url, redis_url, monkeypatch, capsys
):
    """Was: a replay against a frozen snapshot was recorded at the wall clock (issue 11)."""
    from airflow_fsmigration.cli import EXIT_BAD_INPUT, EXIT_FAILED, main

    _cli_setup(scenario, pg_url, redis_url, monkeypatch)
    base = ["shadow", str(tmp_path / "plan.yaml"), "g", "--out", str(tmp_path / "r"), "--no-gx"]
    assert main([*base, "--as-of", "yesterday"]) == EXIT_BAD_INPUT
    assert "--as-of 'yesterday' is not an ISO 8601 time" in capsys.readouterr().err
    assert main([*base, "--as-of", AS_OF.isoformat(), "--json", "-"]) == EXIT_FAILED
    out = capsys.readouterr().out
    data = json.loads(out[out.index("\n{") + 1 :])
    assert data["logical_time"] == AS_OF.isoformat()
    with psycopg.connect(pg_url) as conn:
        (recorded,) = conn.execute("SELECT logical_time FROM fsmig.shadow_runs").fetchone()
    assert recorded == AS_OF
