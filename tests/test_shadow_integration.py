"""Shadow comparisons end to end on real Redis (old online store) and real Postgres (new store, registry).

Every mismatch type is injected into the new store on its own, disjoint set of entities with a
known count; each must come back as the right explanation with exactly that count. Clean data
must pass; an unreachable store must raise naming its connection and record nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from airflow_fsmigration.compare.engine import Verdict
from airflow_fsmigration.compare.explain import Kind
from airflow_fsmigration.compare.noise import noise_from_reads
from airflow_fsmigration.compare.results import ResultStore
from airflow_fsmigration.compare.shadow import run_shadow
from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.stores.new_store import NewStore
from airflow_fsmigration.stores.redis_online import RedisOnlineSource
from fsmig_dev.devservices import airflow_conn_env, free_port

pytestmark = pytest.mark.integration

BASE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
N = 1000
FEATURES = [
    ("last_seen_ts", "timestamp", "timestamptz", ""),
    ("amount_total", "float64", "double precision", ", atol: 0.001"),
    ("ratio", "float64", "double precision", ", atol: 0.0001"),
    ("txn_count_24h", "int64", "bigint", ""),
    ("event_count", "int64", "bigint", ""),
    ("avg_amount", "float64", "double precision", ""),
    ("clicks", "int64", "bigint", ""),
    ("segment", "string", "text", ""),
    ("active", "bool", "boolean", ""),
]
# Disjoint entity ranges per injected defect, and the count each must be reported with.
INJECT = {
    "tz": range(0, 17),
    "scale": range(17, 40),
    "null_zero": range(40, 51),
    "off_by_one": range(51, 64),
    "dup": range(64, 83),
    "rounding": range(83, 112),
    "lag": range(112, 121),
    "missing_in_new": range(121, 128),
}
NEW_ONLY = [f"x{i}" for i in range(5)]


def eid(i: int) -> str:
    return f"u{i:04d}"


def old_rows() -> dict[str, dict]:
    rows = {}
    for i in range(N):
        rows[eid(i)] = {
            "last_seen_ts": BASE - timedelta(minutes=i),
            "amount_total": round(10 + i * 1.37, 2),
            "ratio": (i % 10) / 10 + 0.05,
            "txn_count_24h": i % 50 + 1,
            "event_count": i % 40 + 2,
            "avg_amount": round(5 + i * 0.01 + 0.003457, 6),
            "clicks": i,
            "segment": "abc"[i % 3],
            "active": i % 2 == 0,
            "source_ts": BASE - timedelta(hours=1),
        }
    return rows


def new_rows(old: dict[str, dict], *, defects: bool) -> dict[str, dict]:
    rows = {k: dict(v) for k, v in old.items()}
    if not defects:
        return rows
    for i in INJECT["tz"]:
        rows[eid(i)]["last_seen_ts"] += timedelta(hours=3)
    for i in INJECT["scale"]:
        rows[eid(i)]["amount_total"] *= 100
    for i in INJECT["null_zero"]:
        old[eid(i)]["ratio"] = None  # the old store has no value ...
        rows[eid(i)]["ratio"] = 0.0  # ... where the new one writes 0
    for i in INJECT["off_by_one"]:
        rows[eid(i)]["txn_count_24h"] += 1
    for i in INJECT["dup"]:
        rows[eid(i)]["event_count"] *= 2
    for i in INJECT["rounding"]:
        rows[eid(i)]["avg_amount"] = round(rows[eid(i)]["avg_amount"], 2)
    for i in INJECT["lag"]:
        rows[eid(i)]["clicks"] += 5
        rows[eid(i)]["source_ts"] += timedelta(seconds=60)  # within the 5 min staleness SLA
    for i in INJECT["missing_in_new"]:
        del rows[eid(i)]
    for k, x in enumerate(NEW_ONLY):
        rows[x] = {**old[eid(900 + k)]}
    return rows


def write_plan(tmp_path) -> object:
    """A one-group plan on disk (JSON is YAML) whose definition reads a table we fill exactly."""
    (tmp_path / "sql").mkdir()
    cols = ", ".join(f"v.{n}" for n, *_ in FEATURES)
    (tmp_path / "sql" / "g.sql").write_text(
        f"SELECT v.user_id, {cols}, v.source_ts FROM raw.g_values AS v WHERE v.source_ts <= :as_of\n"
    )
    features = []
    for name, dtype, _, extra in FEATURES:
        spec = {"name": name, "dtype": dtype}
        if extra:
            key, value = extra.strip(", ").split(": ")
            spec[key] = float(value)
        features.append(spec)
    plan = {
        "version": 1,
        "name": "shadow_test",
        "connections": {
            "legacy_online": "t_redis",
            "legacy_offline": "t_offline",
            "event_log": "t_events",
            "new_store": "t_new",
            "registry": "t_registry",
            "model_metrics": "t_metrics",
        },
        "defaults": {"shadow_sample_size": 0, "shadow_soak": "10s"},
        "groups": {
            "g": {
                "entity_key": "user_id",
                "definition": "sql/g.sql",
                "features": features,
                "legacy_online": {
                    "key_template": "t:g:{entity}",
                    "encoding": "string",
                    "timestamp_field": "_ts",
                },
                "legacy_offline": {"table": "legacy.g_history"},
                "sla": {"p99_ms": 10, "max_staleness": "5m"},
                "qps": {"peak": 10, "average": 1},
            }
        },
    }
    (tmp_path / "plan.yaml").write_text(json.dumps(plan, indent=2))
    return load_plan(tmp_path / "plan.yaml")


def load_redis(client, rows: dict[str, dict]) -> None:
    pipe = client.pipeline(transaction=False)
    for key, r in rows.items():
        fields = {}
        for name, dtype, *_ in FEATURES:
            v = r[name]
            if v is None:
                continue
            if dtype == "timestamp":
                fields[name] = v.isoformat()
            elif dtype == "bool":
                fields[name] = "true" if v else "false"
            else:
                fields[name] = repr(v) if dtype == "float64" else str(v)
        fields["_ts"] = str(int(r["source_ts"].timestamp()))
        pipe.hset(f"t:g:{key}", mapping=fields)
    pipe.execute()


def load_new(url: str, rows: dict[str, dict]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS raw")
        conn.execute("DROP TABLE IF EXISTS raw.g_values CASCADE")
        cols = ", ".join(f"{n} {sqlt}" for n, _, sqlt, _ in FEATURES)
        conn.execute(f"CREATE TABLE raw.g_values (user_id text PRIMARY KEY, {cols}, source_ts timestamptz)")
        names = ["user_id", *(n for n, *_ in FEATURES), "source_ts"]
        with conn.cursor().copy(f"COPY raw.g_values ({', '.join(names)}) FROM STDIN") as copy:
            for key, r in rows.items():
                copy.write_row([key, *(r[n] for n, *_ in FEATURES), r["source_ts"]])


@pytest.fixture
def setup(tmp_path, pg_url, redis_client, redis_url):
    plan = write_plan(tmp_path)

    def build(defects: bool):
        old = old_rows()
        new = new_rows(old, defects=defects)
        redis_client.flushall()
        load_redis(redis_client, old)
        load_new(pg_url, new)
        store = NewStore(pg_url, plan, "t_new")
        store.deploy("g")
        return RedisOnlineSource(redis_url, plan, "t_redis"), store

    return plan, build


def by_kind(result) -> dict[tuple[str, str | None], int]:
    return {(str(e.kind), e.feature): e.rows for e in result.explanations}


def test_every_injected_mismatch_is_explained_with_exact_counts(setup, pg_conn):
    plan, build = setup
    old, new = build(defects=True)
    results = ResultStore(pg_conn)
    r = run_shadow(plan, "g", old, new, chunk_size=300, results=results, logical_time=BASE)
    assert r.verdict is Verdict.FAIL
    assert r.entities_requested is None  # sample 0: a full scan of both stores
    assert r.entities_compared == N + len(NEW_ONLY)
    assert (r.missing_in_new, r.missing_in_old) == (7, 5)
    assert by_kind(r) == {
        ("missing_in_new", None): 7,
        ("missing_in_old", None): 5,
        ("timezone_shift", "last_seen_ts"): 17,
        ("scale_factor", "amount_total"): 23,
        ("null_vs_zero", "ratio"): 11,
        ("off_by_one", "txn_count_24h"): 13,
        ("duplicate_inflation", "event_count"): 19,
        ("precision", "avg_amount"): 29,
        ("streaming_lag", "clicks"): 9,
    }
    tz = next(e for e in r.explanations if e.kind is Kind.TIMEZONE_SHIFT)
    assert tz.params["offset_seconds"] == 10800 and "new store is +3h" in tz.fix
    assert next(e for e in r.explanations if e.kind is Kind.SCALE_FACTOR).params["ratio"] == 100
    assert next(e for e in r.explanations if e.kind is Kind.PRECISION).params["decimals"] == 2
    assert set(next(e for e in r.explanations if e.kind is Kind.MISSING_IN_OLD).samples) == set(NEW_ONLY)
    clicks = r.features["clicks"]
    assert (clicks.lagging, clicks.mismatched) == (9, 0)
    assert r.features["segment"].match_rate == pytest.approx(993 / 1005)  # only the missing keys
    series = results.series("g")
    assert [(s.run_id, s.verdict, s.entities_compared) for s in series] == [(r.run_id, "fail", 1005)]
    assert series[0].feature_rates["amount_total"] == pytest.approx((993 - 23) / 1005)
    stored = results.result(r.run_id)
    assert stored is not None and by_kind(stored) == by_kind(r)


def test_clean_data_passes_and_sampling_is_exact(setup, pg_conn):
    plan, build = setup
    old, new = build(defects=False)
    results = ResultStore(pg_conn)
    full = run_shadow(plan, "g", old, new, results=results, logical_time=BASE)
    assert full.verdict is Verdict.PASS and full.match_rate == 1.0 and full.entities_compared == N
    assert full.explanations == []
    from airflow_fsmigration.compare.gx import schema_parity

    parity = schema_parity(plan.groups["g"], new.columns("g"), result=full)
    assert parity.success and len(parity.results) == 3
    sample = run_shadow(
        plan, "g", old, new, sample_size=100, results=results, logical_time=BASE + timedelta(seconds=6)
    )
    assert sample.verdict is Verdict.PASS and sample.entities_compared == 100
    shard = run_shadow(plan, "g", old, new, shard="1/4", sample_size=0)
    from airflow_fsmigration.stores.sharding import shard_of

    assert shard.entities_compared == sum(shard_of(eid(i), 4) == 1 for i in range(N))
    gap = timedelta(seconds=10)  # the default (soak / 7) would call a 6 s hole unchecked
    soak = results.soak_status(plan, "g", now=BASE + timedelta(seconds=7), max_gap=gap)
    assert not soak.satisfied and soak.seconds_green == 6 and soak.missing == timedelta(seconds=4)
    results.record(
        full.__class__.from_dict({**full.to_dict(), "run_id": "later"}),
        logical_time=BASE + timedelta(seconds=11),
    )
    assert results.soak_status(plan, "g", now=BASE + timedelta(seconds=11), max_gap=gap).satisfied


def test_unreachable_store_raises_naming_connection_and_records_nothing(setup, pg_conn, redis_url):
    plan, build = setup
    old, new = build(defects=False)
    results = ResultStore(pg_conn)
    dead_redis = RedisOnlineSource(f"redis://127.0.0.1:{free_port()}/0", plan, "t_redis")
    with pytest.raises(StoreUnavailable, match="connection 't_redis'"):
        run_shadow(plan, "g", dead_redis, new, results=results)
    dead_pg = NewStore(f"postgresql://postgres@127.0.0.1:{free_port()}/nope", plan, "t_new")
    with pytest.raises(StoreUnavailable, match="connection 't_new'"):
        run_shadow(plan, "g", old, dead_pg, results=results, entity_ids=[eid(i) for i in range(10)])
    assert results.series("g") == []
    assert pg_conn.execute("SELECT count(*) FROM fsmig.shadow_runs").fetchone()[0] == 0


def test_noise_floor_from_two_reads_of_the_old_store(setup, redis_client):
    plan, build = setup
    old, new = build(defects=False)
    g = plan.groups["g"]
    ids = [eid(i) for i in range(N)]
    first = old.read(g, ids)
    for i in range(0, N, 20):  # 5% of clicks move between the two reads
        redis_client.hincrby(f"t:g:{eid(i)}", "clicks", 1)
    second = old.read(g, ids)
    floor = noise_from_reads(g, first, second)
    assert floor.churn["clicks"] == 0.05 and floor.churn["segment"] == 0.0
    r = run_shadow(plan, "g", old, new, noise=floor, logical_time=BASE)
    # the new store still has the old clicks: 5% differ, within churn -> noise, the run passes
    assert r.features["clicks"].mismatched == 50 and r.features["clicks"].noise
    assert by_kind(r) == {("noise", "clicks"): 50}
    assert r.verdict is Verdict.PASS


def test_cli_shadow_prints_summary_writes_report_and_exit_codes(
    setup, tmp_path, pg_url, redis_url, monkeypatch, capsys
):
    from airflow_fsmigration.cli import EXIT_FAILED, EXIT_INCONCLUSIVE, main

    _plan, build = setup
    build(defects=True)
    for conn_id, url in (("t_redis", redis_url), ("t_new", pg_url), ("t_registry", pg_url)):
        for k, v in airflow_conn_env(conn_id, url).items():
            monkeypatch.setenv(k, v)
    out = tmp_path / "reports"
    code = main(["shadow", str(tmp_path / "plan.yaml"), "g", "--out", str(out)])
    captured = capsys.readouterr()
    printed = captured.out
    assert code == EXIT_FAILED, captured.err[-2000:]
    assert "group g: FAIL" in printed and "[timezone_shift] last_seen_ts: 17 rows" in printed
    html = next(out.glob("shadow_g_*.html")).read_text()
    assert html.count("<svg") >= 3 and "new store is +3h" in html and "<script" not in html
    data = json.loads(next(out.glob("shadow_g_*.json")).read_text())
    assert data["verdict"] == "fail" and data["gx"]["verdict"] == "fail"
    # names and types of the deployed view match the plan
    parity = [r for r in data["schema_parity"]["results"] if r["expectation"] == "fsmig_column_parity"]
    assert parity == []  # schema only; the null difference of ratio is the comparison's to explain
    assert (out / "gx" / "g" / "index.html").exists()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM fsmig.shadow_runs").fetchone()[0] == 1

    monkeypatch.setenv("AIRFLOW_CONN_T_REDIS", f"redis://127.0.0.1:{free_port()}/0")
    code = main(["shadow", str(tmp_path / "plan.yaml"), "g", "--out", str(out), "--no-gx"])
    err = capsys.readouterr().err
    assert code == EXIT_INCONCLUSIVE and "connection 't_redis'" in err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM fsmig.shadow_runs").fetchone()[0] == 1


def test_measure_noise_reads_twice_and_logs_progress(setup, redis_client, caplog):
    import logging
    import threading

    from airflow_fsmigration.compare.noise import measure_noise

    plan, build = setup
    old, new = build(defects=False)
    g = plan.groups["g"]
    ids = [eid(i) for i in range(N)]

    def churn() -> None:  # lands between the two reads (the first takes well under the 1.5 s interval)
        threading.Event().wait(1.0)
        for i in range(0, N, 25):
            redis_client.hincrby(f"t:g:{eid(i)}", "txn_count_24h", 2)

    mover = threading.Thread(target=churn)
    mover.start()
    floor = measure_noise(g, old, ids, interval=1.5)
    mover.join()
    assert floor.churn["txn_count_24h"] == 0.04 and floor.interval_s >= 1.5
    assert sum(floor.churn.values()) == 0.04
    with caplog.at_level(logging.INFO, logger="airflow_fsmigration.compare"):
        listed = run_shadow(plan, "g", old, new, chunk_size=250, noise=floor, sample_size=N)
    assert listed.entities_requested == N == listed.entities_compared  # every id listed on both sides
    progress = [
        r.getMessage() for r in caplog.records if "entities," in r.getMessage() and "ETA" in r.getMessage()
    ]
    assert progress and progress[-1].startswith(f"shadow g: {N}/{N} entities")


def test_as_of_compare_offline_history_against_new_store(setup, pg_url):
    from airflow_fsmigration.stores.postgres_offline import PostgresOfflineSource

    plan, build = setup
    _old, new = build(defects=False)
    rows = old_rows()
    names = [n for n, *_ in FEATURES]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA legacy")
        cols = ", ".join(f"{n} {sqlt}" for n, _, sqlt, _ in FEATURES)
        conn.execute(f"CREATE TABLE legacy.g_history (user_id text, event_ts timestamptz, {cols})")
        with conn.cursor().copy(
            f"COPY legacy.g_history (user_id, event_ts, {', '.join(names)}) FROM STDIN"
        ) as copy:
            for key, r in rows.items():
                earlier = {**r, "clicks": r["clicks"] - 1}  # an older version, superseded an hour later
                copy.write_row([key, r["source_ts"] - timedelta(hours=1), *(earlier[n] for n in names)])
                copy.write_row([key, r["source_ts"], *(r[n] for n in names)])
    offline = PostgresOfflineSource(pg_url, plan, "t_offline")
    now = run_shadow(plan, "g", offline, new, as_of=BASE)
    assert now.verdict is Verdict.PASS and now.entities_compared == N and now.staleness_s == 0
    # as of 90 minutes ago the offline store had the older versions; the new view had nothing yet
    before = run_shadow(plan, "g", offline, new, as_of=BASE - timedelta(minutes=90))
    assert before.verdict is Verdict.FAIL
    assert (before.missing_in_new, before.entities_both) == (N, 0)
