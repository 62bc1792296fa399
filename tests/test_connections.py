"""Connection ids resolve without Airflow, and a missing one says how to set it."""

from __future__ import annotations

import json

import psycopg
import pytest
import redis

from airflow_fsmigration.connections import (
    ConnectionNotFound,
    StoreUnavailable,
    connect_postgres,
    connect_redis,
    parse_airflow_conn,
    resolve,
)
from fsmig_dev.devservices import airflow_conn_env, free_port


@pytest.mark.unit
def test_uri_and_json_forms() -> None:
    info = parse_airflow_conn("pg", "postgresql://u:s%40cret@db.example:6543/feat?sslmode=require")
    assert (info.conn_type, info.host, info.port, info.login, info.password, info.schema) == (
        "postgres",
        "db.example",
        6543,
        "u",
        "s@cret",
        "feat",
    )
    assert info.postgres_url() == "postgresql://u:s%40cret@db.example:6543/feat?sslmode=require"
    sock = parse_airflow_conn(
        "pg", json.dumps({"conn_type": "postgres", "host": "/tmp/sock", "login": "postgres", "schema": "x"})
    )
    assert sock.postgres_url() == "postgresql://postgres@/x?host=%2Ftmp%2Fsock"
    rd = parse_airflow_conn(
        "r", json.dumps({"conn_type": "redis", "host": "h", "port": 7000, "extra": {"db": 3}})
    )
    assert rd.redis_url() == "redis://h:7000/3"
    assert parse_airflow_conn("r", "redis://h:6379?db=2").redis_url() == "redis://h:6379/2"


@pytest.mark.unit
def test_missing_connection_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
    with pytest.raises(ConnectionNotFound, match="set AIRFLOW_CONN_NOPE"):
        resolve("nope")


@pytest.mark.integration
def test_embedded_servers_round_trip(pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for conn_id, url in (("fsmig_pg", pg_url), ("fsmig_redis", redis_url)):
        for key, value in airflow_conn_env(conn_id, url).items():
            monkeypatch.setenv(key, value)
    with connect_postgres("fsmig_pg") as conn:
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    client = connect_redis("fsmig_redis")
    client.set("k", "v")
    assert redis.Redis.from_url(redis_url).get("k") == b"v"


@pytest.mark.integration
def test_unreachable_store_names_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_PG", f"postgresql://postgres@127.0.0.1:{port}/x")
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_REDIS", f"redis://127.0.0.1:{port}")
    with pytest.raises(StoreUnavailable, match="connection 'dead_pg' \\(Postgres\\) did not answer") as exc:
        connect_postgres("dead_pg")
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)
    with pytest.raises(StoreUnavailable, match="AIRFLOW_CONN_DEAD_REDIS"):
        connect_redis("dead_redis")
