"""The legacy offline store: latest and as-of reads from a Postgres history table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.plan.model import FeatureGroup
from airflow_fsmigration.stores.base import FeatureSource
from airflow_fsmigration.stores.frames import feature_schema
from airflow_fsmigration.stores.postgres_offline import OfflineTableError, PostgresOfflineSource
from fsmig_dev.devservices import free_port

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def group(table: str = "legacy.user_hist", entity_column: str | None = None) -> FeatureGroup:
    return FeatureGroup.model_validate(
        {
            "name": "user_stats",
            "entity_key": "user_id",
            "definition": "sql/x.sql",
            "features": [
                {"name": "cnt", "dtype": "int64"},
                {"name": "amount", "dtype": "float64"},
                {"name": "label", "dtype": "string"},
                {"name": "flag", "dtype": "bool"},
                {"name": "seen", "dtype": "timestamp"},
            ],
            "legacy_online": {"key_template": "x:{entity}"},
            "legacy_offline": {
                "table": table,
                "event_time_column": "event ts",
                "entity_column": entity_column,
            },
            "sla": {"p99_ms": 10, "max_staleness": "5m"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )


@pytest.fixture
def history(pg_conn):
    """Three versions per user at T0+1h, +2h, +3h; u3 only after T0+10h; a quoted column name."""
    pg_conn.execute("CREATE SCHEMA legacy")
    pg_conn.execute(
        'CREATE TABLE legacy.user_hist (user_id text, "event ts" timestamptz, cnt bigint, amount numeric(10, 2), '
        "label text, flag boolean, seen timestamptz)"
    )
    rows = []
    for u in ("u1", "u2"):
        for v in (1, 2, 3):
            rows.append(
                (
                    u,
                    T0 + timedelta(hours=v),
                    v * 10 + int(u[1]),
                    v * 1.25,
                    f"{u}-v{v}",
                    v % 2 == 1,
                    T0 + timedelta(minutes=v),
                )
            )
    rows.append(("u2", T0 + timedelta(hours=4), None, None, None, None, None))  # a newer all-null version
    rows.append(("u3", T0 + timedelta(hours=10), 7, 0.5, "late", False, T0))
    with pg_conn.cursor() as cur:
        cur.executemany("INSERT INTO legacy.user_hist VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
    return rows


def test_read_latest_row_per_entity(pg_url, history):
    source = PostgresOfflineSource(pg_url, None, "fsmig_legacy_offline")
    frame = source.read(group(), ["u1", "u2", "u3", "ghost"])
    assert frame.schema == feature_schema(group())
    rows = {r["entity_id"]: r for r in frame.to_pylist()}
    assert sorted(rows) == ["u1", "u2", "u3"]
    assert rows["u1"] == {
        "entity_id": "u1",
        "cnt": 31,
        "amount": 3.75,
        "label": "u1-v3",
        "flag": True,
        "seen": T0 + timedelta(minutes=3),
        "_source_ts": T0 + timedelta(hours=3),
    }
    assert rows["u2"]["cnt"] is None and rows["u2"]["_source_ts"] == T0 + timedelta(hours=4)
    assert isinstance(source, FeatureSource)


def test_read_as_of_picks_the_right_row(pg_url, history):
    source = PostgresOfflineSource(pg_url, None, "fsmig_legacy_offline")
    ids = ["u1", "u2", "u3"]
    at_2h = {r["entity_id"]: r for r in source.read_as_of(group(), ids, T0 + timedelta(hours=2)).to_pylist()}
    assert sorted(at_2h) == ["u1", "u2"]  # u3 did not exist yet: absent, not null
    assert (at_2h["u1"]["cnt"], at_2h["u1"]["label"], at_2h["u1"]["_source_ts"]) == (
        21,
        "u1-v2",
        T0 + timedelta(hours=2),
    )
    # Just before the second version: the first one. The bound is inclusive.
    before = source.read_as_of(group(), ids, T0 + timedelta(hours=2) - timedelta(microseconds=1))
    assert before.column("cnt").to_pylist() == [11, 12]
    # An as-of in another zone is the same instant.
    cet = source.read_as_of(group(), ids, (T0 + timedelta(hours=2)).astimezone(ZoneInfo("Europe/Berlin")))
    assert cet.column("cnt").to_pylist() == [21, 22]
    assert source.read_as_of(group(), ids, T0).num_rows == 0
    assert source.read_as_of(group(), ids, T0 + timedelta(hours=11)).num_rows == 3


def test_integer_entity_column_and_listing(pg_conn, pg_url):
    pg_conn.execute("CREATE SCHEMA legacy")
    pg_conn.execute(
        'CREATE TABLE legacy.int_hist (uid bigint, "event ts" timestamptz, cnt bigint, amount double precision, '
        "label text, flag boolean, seen timestamptz)"
    )
    with pg_conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO legacy.int_hist VALUES (%s, %s, %s, 1.5, 'x', true, NULL)",
            [(i, T0 + timedelta(seconds=i % 7), i) for i in range(200)],
        )
    source = PostgresOfflineSource(pg_url, None, "fsmig_legacy_offline")
    g = group("legacy.int_hist", entity_column="uid")
    frame = source.read(g, ["5", "199", "1000"])
    assert frame.column("entity_id").to_pylist() == ["5", "199"] and frame.column("cnt").to_pylist() == [
        5,
        199,
    ]
    ids = source.entity_ids(g)
    assert len(ids) == 200 and ids == sorted(str(i) for i in range(200))
    shards = [source.entity_ids(g, shard=(i, 3)) for i in range(3)]
    assert sorted(x for s in shards for x in s) == ids and sum(map(len, shards)) == 200
    assert source.entity_ids(g, limit=7) == ids[:7]
    assert source.entity_ids(g, shard=(1, 3), limit=4) == shards[1][:4] and len(shards[1]) > 4
    scanned = list(source.scan(g, chunk_size=30, shard=(0, 3)))
    assert sorted(x for c in scanned for x in c.column("entity_id").to_pylist()) == sorted(shards[0])
    assert sum(c.num_rows for c in list(source.scan(g, chunk_size=64))) == 200
    assert source.freshness(g) == T0 + timedelta(seconds=6)


def test_missing_table_or_column_is_a_clear_error(pg_url, history):
    source = PostgresOfflineSource(pg_url, None, "fsmig_legacy_offline")
    with pytest.raises(
        OfflineTableError,
        match=r"group 'user_stats': history table legacy.nope does not exist in connection 'fsmig_legacy_offline'",
    ):
        source.read(group("legacy.nope"), ["u1"])
    with pytest.raises(OfflineTableError, match=r"has no column\(s\) uid"):
        source.read(group(entity_column="uid"), ["u1"])


def test_unreachable_offline_store_names_the_connection():
    source = PostgresOfflineSource(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x", None, "fsmig_legacy_offline"
    )
    with pytest.raises(
        StoreUnavailable, match=r"connection 'fsmig_legacy_offline' \(Postgres offline\) did not answer"
    ):
        source.read(group(), ["u1"])
