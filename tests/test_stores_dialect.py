"""Dialect differences live in one module: the SQL each dialect emits, and Postgres view replacement."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.stores.dialect import POSTGRES, RISINGWAVE, dialect_for
from airflow_fsmigration.stores.new_store import NewStore

DEMO_PLAN = Path(__file__).resolve().parent.parent / "include" / "demo_plan"
VIEW = sql.Identifier("features", "g")
BODY = "SELECT 1 AS x FROM raw.t WHERE t.ts > :as_of - interval '1 hour'"


@pytest.mark.unit
def test_postgres_makes_plain_views_replaced_in_place():
    assert POSTGRES.create_view(VIEW, POSTGRES.live_sql(BODY + ";\n")).as_string(None) == (
        'CREATE OR REPLACE VIEW "features"."g" AS\n'
        "SELECT 1 AS x FROM raw.t WHERE t.ts > now() - interval '1 hour'\n"
    )
    assert [s.as_string(None).split(" AS")[0] for s in POSTGRES.replace_view(VIEW, "SELECT 1")] == [
        'DROP VIEW IF EXISTS "features"."g"',
        'CREATE VIEW "features"."g"',
    ]
    assert POSTGRES.before_read() is None and POSTGRES.transactional_ddl


@pytest.mark.unit
def test_risingwave_makes_materialized_views_with_temporal_filters():
    stmt = RISINGWAVE.create_view(VIEW, RISINGWAVE.live_sql(BODY)).as_string(None)
    assert stmt.startswith('CREATE MATERIALIZED VIEW IF NOT EXISTS "features"."g" AS\n')
    assert "t.ts > now() - interval '1 hour'" in stmt  # now() in WHERE: a RisingWave temporal filter
    assert RISINGWAVE.before_read() == "FLUSH"
    assert RISINGWAVE.drop_view(VIEW).as_string(None) == 'DROP MATERIALIZED VIEW IF EXISTS "features"."g"'
    with pytest.raises(NotImplementedError, match="drop it deliberately"):
        RISINGWAVE.replace_view(VIEW, "SELECT 1")
    assert not RISINGWAVE.transactional_ddl


@pytest.mark.unit
def test_unknown_dialect_is_a_clear_error():
    assert dialect_for("risingwave") is RISINGWAVE
    with pytest.raises(ValueError, match="unknown new-store dialect 'duckdb'"):
        dialect_for("duckdb")


@pytest.mark.integration
def test_redeploy_after_the_column_list_changed(pg_url, tmp_path):
    """CREATE OR REPLACE VIEW cannot retype a column; the Postgres dialect drops and recreates."""
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO_PLAN, plan_dir)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute(
            "CREATE TABLE raw.merchants (merchant_id text, category text, static_risk double precision, "
            "updated_at timestamptz)"
        )
        conn.execute(
            "CREATE TABLE raw.transactions (user_id text, merchant_id text, amount numeric(12, 2), status text, "
            "is_foreign boolean, event_ts timestamptz)"
        )
        conn.execute("INSERT INTO raw.merchants VALUES ('m1', 'food', 0.5, now() - interval '1 day')")
    store = NewStore(pg_url, load_plan(plan_dir), "fsmig_new_store")
    store.deploy("merchant_stats")
    assert store.columns("merchant_stats")["merchant_avg_ticket_7d"] == "numeric"
    path = plan_dir / "sql" / "merchant_stats.sql"
    path.write_text(
        path.read_text().replace(
            "x7.merchant_avg_ticket_7d,",
            "x7.merchant_avg_ticket_7d::double precision AS merchant_avg_ticket_7d,",
        )
    )
    store = NewStore(pg_url, load_plan(plan_dir), "fsmig_new_store")
    store.deploy("merchant_stats")
    assert store.columns("merchant_stats")["merchant_avg_ticket_7d"] == "double precision"
    frame = store.read("merchant_stats", ["m1"])
    assert frame.column("merchant_category").to_pylist() == ["food"]
    assert frame.column("merchant_avg_ticket_7d").to_pylist() == [None]
