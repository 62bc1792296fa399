"""Against a live RisingWave, wherever one is reachable: ``FSMIG_TEST_RISINGWAVE_URL=postgresql://root@host:4566/dev``.

Deploy with a background build followed through ``rw_ddl_progress``, flush-then-read, a blue/green
redefinition switched with ``SWAP WITH``, and the live values against the same definition run on
Postgres (the legacy side's engine) at the store's own clock. Without the URL this module defines
no test at all, so nothing is reported as passed or skipped (``make test-risingwave`` runs it).
None of these have been run here: no RisingWave binary or image is reachable from this machine.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

RW_URL = os.environ.get("FSMIG_TEST_RISINGWAVE_URL", "").strip()
REPO = Path(__file__).resolve().parent.parent
GROUP = "user_txn_stats"
TXN_DDL = (
    "CREATE TABLE {t} (user_id varchar, merchant_id varchar, amount numeric, status varchar, "
    "is_foreign boolean, event_ts timestamptz)"
)


def _rows(now: datetime) -> list[tuple]:
    out = []
    for i in range(400):
        out.append(
            (
                f"u{i % 37:03d}",
                f"m{i % 5}",
                10 + i % 90,
                "declined" if i % 11 == 0 else "ok",
                i % 7 == 0,
                now - timedelta(minutes=13 * i),
            )
        )
    return out


if RW_URL:
    import psycopg

    @pytest.fixture(scope="module")
    def rw_world(tmp_path_factory):
        """A plan (risingwave dialect, a schema of its own) and raw.transactions loaded into RisingWave."""
        from airflow_fsmigration.plan import load_plan

        suffix = uuid.uuid4().hex[:6]
        schema = f"features_{suffix}"
        raw = f"raw_{suffix}"
        plan_dir = tmp_path_factory.mktemp("rw") / "plan"
        shutil.copytree(REPO / "include" / "demo_plan", plan_dir)
        (plan_dir / "new_store.yaml").write_text(f"new_store: {{dialect: risingwave, schema: {schema}}}\n")
        for path in (plan_dir / "sql").glob("*.sql"):
            path.write_text(path.read_text().replace("raw.", f"{raw}."))
        pg_dir = plan_dir.parent / "plan_pg"  # the same definitions on Postgres (no FLUSH there)
        shutil.copytree(plan_dir, pg_dir)
        (pg_dir / "new_store.yaml").write_text(f"new_store: {{dialect: postgres, schema: {schema}}}\n")
        now = datetime.now(UTC).replace(microsecond=0)
        with psycopg.connect(RW_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {raw}")
            conn.execute(TXN_DDL.format(t=f"{raw}.transactions"))
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {raw}.transactions VALUES (%s, %s, %s, %s, %s, %s)", _rows(now))
            conn.execute("FLUSH")
        yield load_plan(plan_dir), schema, raw, load_plan(pg_dir)
        with psycopg.connect(RW_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP SCHEMA IF EXISTS {raw} CASCADE")

    def _wait_built(schema: str, name: str, timeout: float = 300) -> list[str]:
        from airflow_fsmigration.stores.risingwave_ddl import BUILDING, DONE, ProgressTracker, check_build

        tracker, lines, deadline = ProgressTracker(), [], time.monotonic() + timeout
        with psycopg.connect(RW_URL, autocommit=True) as conn:
            while time.monotonic() < deadline:
                state = check_build(conn, schema, name, tracker)
                lines.append(state.message)
                if state.status == DONE:
                    return lines
                assert state.status == BUILDING, state.message
                time.sleep(0.5)
        raise AssertionError(f"{schema}.{name} not built within {timeout}s: {lines[-3:]}")

    @pytest.mark.integration
    @pytest.mark.risingwave
    def test_the_demo_definition_passes_the_lint_and_deploys_in_the_background(rw_world):
        from airflow_fsmigration.stores.new_store import NewStore
        from airflow_fsmigration.stores.risingwave_lint import lint_sql

        plan, schema, _raw, _pg_plan = rw_world
        assert [m for _, sev, m in lint_sql(plan.definition_sql(GROUP)) if sev == "error"] == []
        with NewStore(RW_URL, plan, "fsmig_new_store") as store:
            target = store.start_deploy(GROUP)
            assert target == GROUP
            _wait_built(schema, target)
            store.finish_deploy(GROUP, target)
            assert set(store.columns(GROUP)) >= {"user_id", "txn_count_1h", "source_ts"}

    @pytest.mark.integration
    @pytest.mark.risingwave
    def test_flush_then_read_equals_the_definition_on_postgres(rw_world, pg_url):
        from airflow_fsmigration.stores.new_store import NewStore

        plan, _schema, raw, pg_plan = rw_world
        with psycopg.connect(pg_url, autocommit=True) as pg:
            pg.execute(f"CREATE SCHEMA {raw}")
            pg.execute(TXN_DDL.format(t=f"{raw}.transactions"))
            with psycopg.connect(RW_URL, autocommit=True) as rw:
                rows = rw.execute(f"SELECT * FROM {raw}.transactions").fetchall()
            with pg.cursor() as cur:
                cur.executemany(f"INSERT INTO {raw}.transactions VALUES (%s, %s, %s, %s, %s, %s)", rows)
        ids = [f"u{i:03d}" for i in range(37)]
        with NewStore(RW_URL, plan, "fsmig_new_store") as rw_store:
            clock = rw_store.clock()
            live = rw_store.read(GROUP, ids).sort_by("entity_id")
        with NewStore(pg_url, pg_plan, "fsmig_new_store") as pg_store:
            expected = pg_store.read_as_of(GROUP, ids, clock).sort_by("entity_id")
        # windows of 1 h may move an event across the bound between the two clocks: compare the 7-day columns
        for column in ("entity_id", "txn_count_7d", "txn_amount_max_7d", "distinct_merchants_7d"):
            assert live.column(column).to_pylist() == expected.column(column).to_pylist(), column

    @pytest.mark.integration
    @pytest.mark.risingwave
    def test_redefinition_builds_beside_the_live_view_and_swaps(rw_world):
        from airflow_fsmigration.stores.dialect import build_name, previous_name
        from airflow_fsmigration.stores.new_store import NewStore

        plan, schema, _raw, _pg_plan = rw_world
        with NewStore(RW_URL, plan, "fsmig_new_store") as store:
            assert store.start_deploy(GROUP) is None  # live and not redefined: nothing to do
            target = store.start_deploy(GROUP, redefine=True)
            assert target == build_name(GROUP)
            assert store.read(GROUP, ["u001"]).num_rows == 1  # the live view serves meanwhile
            _wait_built(schema, target)
            store.finish_deploy(GROUP, target)
            assert store.read(GROUP, ["u001"]).num_rows == 1
        with psycopg.connect(RW_URL, autocommit=True) as conn:
            names = {
                r[0]
                for r in conn.execute(
                    "SELECT matviewname FROM pg_catalog.pg_matviews WHERE schemaname = %s", (schema,)
                ).fetchall()
            }
        assert {GROUP, previous_name(GROUP)} <= names and build_name(GROUP) not in names
