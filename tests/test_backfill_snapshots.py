"""Training snapshots: Parquet typed by the plan, schema mismatches refused with a clear error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from airflow_fsmigration.backfill import replay, snapshots
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
GROUP = "user_txn_stats"


@pytest.fixture
def run(demo_plan, pg_conn):
    synthetic.create_transactions(pg_conn, events=5_000, users=60, start=T0, end=T0 + timedelta(days=12))
    return replay.run_backfill(
        demo_plan,
        GROUP,
        pg_conn,
        pg_conn,
        start=T0 + timedelta(days=8),
        end=T0 + timedelta(days=11),
        every=timedelta(days=1),
    )


@pytest.mark.integration
def test_export_parquet_typed_by_plan(demo_plan, pg_conn, run, tmp_path):
    export = snapshots.export_snapshots(demo_plan, run.run_id, pg_conn, pg_conn, tmp_path, rows_per_file=100)
    assert export.rows == run.rows
    assert len(export.files) == -(-run.rows // 100)
    table = snapshots.read_snapshots(tmp_path / GROUP / run.run_id, demo_plan, GROUP)
    assert table.num_rows == run.rows
    assert table.schema.field("txn_count_7d").type == pa.int64()
    assert (
        table.schema.field("foreign_txn_ratio_7d").type == pa.float64()
    )  # numeric in SQL, float64 in the plan
    assert table.schema.field("last_txn_ts").type == pa.timestamp("us", tz="UTC")
    assert table.column_names[:3] == ["as_of", "user_id", "txn_count_1h"]
    assert sorted(set(table.column("as_of").to_pylist())) == replay.grid_times(
        T0 + timedelta(days=8), T0 + timedelta(days=11), timedelta(days=1)
    )
    expected = pg_conn.execute(
        "SELECT sum(txn_count_7d) FROM features_history.user_txn_stats_snapshots WHERE run_id = %s",
        (run.run_id,),
    ).fetchone()[0]
    assert sum(table.column("txn_count_7d").to_pylist()) == expected


@pytest.mark.integration
def test_schema_mismatch_is_a_clear_error(demo_plan, pg_conn, run, tmp_path):
    g = demo_plan.groups[GROUP]
    features = tuple(
        f.model_copy(update={"dtype": "string"}) if f.name == "txn_count_1h" else f for f in g.features
    )
    features = tuple(
        f.model_copy(update={"null_policy": "nulls_never_match"}) if f.name == "txn_amount_avg_7d" else f
        for f in features
    )
    wrong = demo_plan.model_copy(
        update={"groups": {**demo_plan.groups, GROUP: g.model_copy(update={"features": features})}}
    )
    pg_conn.execute(
        "UPDATE features_history.user_txn_stats_snapshots SET txn_amount_avg_7d = NULL WHERE ctid IN ("
        " SELECT ctid FROM features_history.user_txn_stats_snapshots LIMIT 3)"
    )
    with pytest.raises(snapshots.SnapshotSchemaError) as err:
        snapshots.export_snapshots(wrong, run.run_id, pg_conn, pg_conn, tmp_path)
    text = str(err.value)
    assert "txn_count_1h: the plan says string but the definition produces bigint" in text
    assert "txn_amount_avg_7d: null_policy nulls_never_match, but 3 snapshot rows are null" in text
    assert not (tmp_path / GROUP).exists()
