"""The new store (Postgres standing in for RisingWave): deploy the demo definitions, read now and as of.

A small raw dataset (about 300 rows in schema ``raw``) is written relative to a base time;
expected feature values are computed independently in Python from the same rows and compared
exactly with what the views and the as-of queries return.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.stores.base import FeatureSource, UpstreamNotDeployed
from airflow_fsmigration.stores.frames import feature_schema
from airflow_fsmigration.stores.new_store import DeployError, NewStore
from fsmig_dev.devservices import free_port

pytestmark = pytest.mark.integration

USERS = [f"u{i:02d}" for i in range(40)]


def dataset(base: datetime) -> dict[str, list[tuple]]:
    users = [
        (u, base - timedelta(days=3 * i + 1), ["DE", "FR", "US"][i % 3], i % 4 != 0, i % 3, round(i / 40, 3))
        for i, u in enumerate(USERS)
    ]
    txns = [
        (
            u,
            f"m{(i + j) % 5}",
            Decimal(10 + i) + Decimal("2.5") * j,
            "declined" if (i + j) % 4 == 0 else "ok",
            (i * j) % 3 == 1,
            base - timedelta(minutes=17 + 97 * j * (1 + i % 3)),
        )
        for i, u in enumerate(USERS)
        for j in range(i % 9)
    ]
    events = [
        (u, f"d{k % 2}", "login" if k % 2 == 0 else "login_failed", base - timedelta(hours=5 + 31 * k))
        for i, u in enumerate(USERS)
        for k in range(i % 5)
    ]
    return {"users": users, "transactions": txns, "user_events": events}


def load_raw(url: str, data: dict[str, list[tuple]]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute(
            "CREATE TABLE raw.users (user_id text PRIMARY KEY, created_at timestamptz, country text, "
            "is_verified boolean, kyc_level bigint, email_domain_risk double precision)"
        )
        conn.execute(
            "CREATE TABLE raw.transactions (user_id text, merchant_id text, amount numeric(12, 2), "
            "status text, is_foreign boolean, event_ts timestamptz)"
        )
        conn.execute(
            "CREATE TABLE raw.user_events (user_id text, device_id text, event_type text, event_ts timestamptz)"
        )
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO raw.users VALUES (%s, %s, %s, %s, %s, %s)", data["users"])
            cur.executemany(
                "INSERT INTO raw.transactions VALUES (%s, %s, %s, %s, %s, %s)", data["transactions"]
            )
            cur.executemany("INSERT INTO raw.user_events VALUES (%s, %s, %s, %s)", data["user_events"])


def expected_txn_stats(data, as_of: datetime) -> dict[str, dict]:
    out = {}
    for u in USERS:
        rows = [t for t in data["transactions"] if t[0] == u and as_of - timedelta(days=7) < t[5] <= as_of]
        if not rows:
            continue
        day = [t for t in rows if t[5] > as_of - timedelta(hours=24)]
        amounts = [t[2] for t in rows]
        out[u] = {
            "txn_count_1h": sum(t[5] > as_of - timedelta(hours=1) for t in rows),
            "txn_count_24h": len(day),
            "txn_count_7d": len(rows),
            "txn_amount_sum_24h": float(sum((t[2] for t in day), Decimal(0))),
            "txn_amount_avg_7d": float(sum(amounts) / len(amounts)),
            "txn_amount_max_7d": float(max(amounts)),
            "distinct_merchants_7d": len({t[1] for t in rows}),
            "declined_count_24h": sum(t[3] == "declined" for t in day),
            "foreign_txn_ratio_7d": sum(t[4] for t in rows) / len(rows),
            "last_txn_ts": max(t[5] for t in rows),
            "_source_ts": max(t[5] for t in rows),
        }
    return out


def expected_profile(data, as_of: datetime) -> dict[str, dict]:
    out = {}
    for user_id, created, country, verified, kyc, risk in data["users"]:
        if created > as_of:
            continue
        ev = [
            e for e in data["user_events"] if e[0] == user_id and as_of - timedelta(days=30) < e[3] <= as_of
        ]
        out[user_id] = {
            "account_age_days": math.floor((as_of - created).total_seconds() / 86400),
            "country": country,
            "is_verified": verified,
            "kyc_level": kyc,
            "email_domain_risk": risk,
            "device_count_30d": len({e[1] for e in ev}),
            "login_count_7d": sum(e[2] == "login" and e[3] > as_of - timedelta(days=7) for e in ev),
            "failed_login_count_24h": sum(
                e[2] == "login_failed" and e[3] > as_of - timedelta(hours=24) for e in ev
            ),
            "_source_ts": max([created, *(e[3] for e in ev)]),
        }
    return out


def as_dict(frame) -> dict[str, dict]:
    return {r.pop("entity_id"): r for r in frame.to_pylist()}


@pytest.fixture
def loaded(pg_url, demo_plan):
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    data = dataset(base)
    load_raw(pg_url, data)
    store = NewStore(pg_url, demo_plan, "fsmig_new_store")
    yield store, data, base
    store.close()


def test_deploy_all_then_read_exact_values_and_types(loaded, demo_plan):
    store, data, base = loaded
    groups = ["user_txn_stats", "user_profile", "user_risk_profile", "fraud_decision_features"]
    for name in groups[:2]:
        store.deploy(name)
    store.deploy("user_risk_profile")
    store.deploy("user_risk_profile")  # idempotent
    store.deploy("fraud_decision_features")
    assert isinstance(store, FeatureSource)

    ids = [*USERS, "nobody"]
    txn = store.read("user_txn_stats", ids)
    assert txn.schema == feature_schema(demo_plan.groups["user_txn_stats"])
    expected = expected_txn_stats(data, base)
    assert len(expected) == 35  # users with i % 9 == 0 have no transactions: absent rows
    assert as_dict(txn) == expected

    profile = store.read("user_profile", ids)
    assert profile.schema == feature_schema(demo_plan.groups["user_profile"])
    assert as_dict(profile) == expected_profile(data, base)

    risk = as_dict(store.read("user_risk_profile", ids))
    assert len(risk) == 40  # LEFT JOIN on the profile: every user
    p, t = expected_profile(data, base)["u10"], expected["u10"]
    assert risk["u10"]["velocity_ratio_1h_7d"] == round(t["txn_count_1h"] * 168 / t["txn_count_7d"], 6)
    assert risk["u10"]["spend_per_account_day"] == round(t["txn_amount_sum_24h"] / p["account_age_days"], 4)
    assert risk["u09"]["velocity_ratio_1h_7d"] is None  # no transactions
    decision = store.read("fraud_decision_features", ["u10", "u09"])
    assert decision.num_rows == 2 and set(decision.column("risk_band").to_pylist()) <= {
        "low",
        "medium",
        "high",
    }


def test_read_as_of_matches_python_at_two_times(loaded):
    store, data, base = loaded
    for name in ("user_txn_stats", "user_profile", "user_risk_profile"):
        store.deploy(name)
    for as_of in (base, base - timedelta(days=1)):
        got = as_dict(store.read_as_of("user_txn_stats", USERS, as_of))
        assert got == expected_txn_stats(data, as_of), as_of
        assert as_dict(store.read_as_of("user_profile", USERS, as_of)) == expected_profile(data, as_of)
    earlier = expected_txn_stats(data, base - timedelta(days=1))
    assert 0 < len(earlier) < len(expected_txn_stats(data, base))  # the earlier time really differs
    # The derived group's as-of query inlines its upstreams at the same time, and matches the live view now.
    now_rows = as_dict(store.read("user_risk_profile", USERS))
    assert as_dict(store.read_as_of("user_risk_profile", USERS, base)) == now_rows
    with pytest.raises(ValueError, match=r"no time zone"):
        store.read_as_of("user_txn_stats", USERS, base.replace(tzinfo=None))


def test_deploy_all_runs_in_wave_order(loaded, demo_plan):
    store, _, _ = loaded
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE raw.merchants (merchant_id text, category text, static_risk double precision, updated_at timestamptz)"
        )
        conn.execute(
            "CREATE TABLE raw.items (item_id text, price double precision, category text, updated_at timestamptz)"
        )
        conn.execute(
            "CREATE TABLE raw.clickstream (user_id text, item_id text, session_id text, event_type text, event_ts timestamptz)"
        )
    order = store.deploy_all()
    assert sorted(order) == sorted(demo_plan.groups)
    assert (
        order.index("user_txn_stats")
        < order.index("user_risk_profile")
        < order.index("fraud_decision_features")
    )
    assert order.index("user_session_stats") < order.index("user_recs_affinity")
    assert store.columns("user_txn_stats") == {
        "user_id": "text",
        "txn_count_1h": "bigint",
        "txn_count_24h": "bigint",
        "txn_count_7d": "bigint",
        "txn_amount_sum_24h": "numeric",
        "txn_amount_avg_7d": "numeric",
        "txn_amount_max_7d": "numeric",
        "distinct_merchants_7d": "bigint",
        "declined_count_24h": "bigint",
        "foreign_txn_ratio_7d": "numeric",
        "last_txn_ts": "timestamp with time zone",
        "source_ts": "timestamp with time zone",
    }
    # What the view declares about nulls (views declare every column nullable), for schema parity.
    nullable = store.nullability("user_txn_stats")
    assert list(nullable) == list(store.columns("user_txn_stats")) and all(nullable.values())


def test_derived_group_before_upstream_fails_naming_it(loaded):
    store, _, _ = loaded
    store.deploy("user_profile")
    with pytest.raises(
        UpstreamNotDeployed, match=r"upstream group\(s\) 'user_txn_stats'.*deploy 'user_txn_stats' first"
    ):
        store.deploy("user_risk_profile")
    with pytest.raises(DeployError, match=r"no view features.user_risk_profile"):
        store.columns("user_risk_profile")  # nothing half-created


def test_missing_raw_table_names_group_and_file(pg_url, demo_plan):
    store = NewStore(pg_url, demo_plan, "fsmig_new_store")
    with pytest.raises(
        DeployError,
        match=r"group 'merchant_stats'.*merchant_stats.sql.*UndefinedTable: relation \"raw.transactions\" does not exist",
    ):
        store.deploy("merchant_stats")


def test_listing_sharding_scan_freshness(loaded):
    store, data, base = loaded
    store.deploy("user_txn_stats")
    ids = sorted(expected_txn_stats(data, base))
    assert store.entity_ids("user_txn_stats") == ids
    assert store.entity_ids("user_txn_stats", limit=5) == ids[:5]
    shards = [store.entity_ids("user_txn_stats", shard=(i, 4)) for i in range(4)]
    assert sorted(x for s in shards for x in s) == ids and sum(map(len, shards)) == len(ids)
    # a shard with a limit: filtered client-side first, then cut (the server cannot apply the limit)
    assert store.entity_ids("user_txn_stats", shard=(1, 4), limit=3) == shards[1][:3] and len(shards[1]) > 3
    chunks = list(store.scan("user_txn_stats", chunk_size=8, shard=(2, 4)))
    assert [x for c in chunks for x in c.column("entity_id").to_pylist()] == shards[2]
    assert all(c.num_rows == 8 for c in chunks[:-1])
    assert store.freshness("user_txn_stats") == max(t[5] for t in data["transactions"])


def test_unreachable_new_store_names_the_connection(demo_plan):
    store = NewStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", demo_plan, "fsmig_new_store")
    with pytest.raises(StoreUnavailable, match=r"connection 'fsmig_new_store'"):
        store.read("user_txn_stats", ["u1"])
    with pytest.raises(StoreUnavailable, match=r"connection 'fsmig_new_store'"):
        store.deploy("user_txn_stats")
