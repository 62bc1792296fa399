"""RisingWave's streaming rules on definitions: findings with file and line, and an exact rewrite.

The rewrite's exactness is proven on real Postgres: the original and the rewritten definition of
every windowed demo group give the same rows as of several times (the demo's raw events).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.stores.risingwave_lint import entity_key_leads_pk, lint_plan, lint_sql
from airflow_fsmigration.stores.risingwave_rewrite import rewrite_windows

REPO = Path(__file__).resolve().parent.parent
DEMO_PLAN = REPO / "include" / "demo_plan"
NOW = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)

WINDOWS = """-- two windows over one source
SELECT
    t.user_id,
    count(*) FILTER (WHERE t.event_ts > :as_of - interval '1 hour') AS n_1h,
    count(*) AS n_7d
FROM raw.transactions AS t
WHERE t.event_ts > :as_of - interval '7 days'
  AND t.event_ts <= :as_of
GROUP BY t.user_id
"""


def _messages(sql: str) -> list[tuple[int | None, str, str]]:
    return [(line, sev, msg.split(": RisingWave")[0]) for line, sev, msg in lint_sql(sql, "user_id")]


@pytest.mark.unit
def test_temporal_filters_in_where_pass_and_a_filter_clause_is_named_with_its_line():
    assert _messages(WINDOWS) == [
        (4, "error", ":as_of inside an aggregate FILTER (WHERE ...) (column 'n_1h')")
    ]
    ok = "SELECT t.user_id, count(*) AS n FROM raw.t AS t WHERE t.ts BETWEEN :as_of - interval '1 day' AND :as_of GROUP BY t.user_id"
    assert lint_sql(ok, "user_id") == []
    trunc = "SELECT t.user_id FROM raw.t AS t WHERE t.ts < date_trunc('hour', :as_of) - interval '1 hour' GROUP BY t.user_id"
    assert lint_sql(trunc, "user_id") == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT u.id, :as_of - u.created_at AS age FROM raw.u AS u",
            ":as_of in the SELECT list (column 'age')",
        ),
        (
            "SELECT u.id FROM raw.u AS u WHERE u.ts > :as_of - interval '1 hour' OR u.ts < :as_of - interval '9 hours'",
            "temporal filters joined by OR",
        ),
        (
            "SELECT u.id FROM raw.u AS u WHERE :as_of - u.ts > interval '1 hour'",
            ":as_of in WHERE is not a temporal filter",
        ),
        (
            "SELECT u.id FROM raw.u AS u WHERE u.ts > interval '1 day' - :as_of",
            ":as_of in WHERE is not a temporal filter",
        ),
        ("SELECT u.id FROM raw.u AS u WHERE NOT (u.ts > :as_of)", ":as_of in WHERE is not a temporal filter"),
        (
            "SELECT u.id, rank() OVER (ORDER BY u.ts) AS r FROM raw.u AS u",
            "a window function without PARTITION BY",
        ),
        (
            "SELECT u.id FROM raw.u AS u JOIN raw.v AS v ON v.id = u.id AND v.ts > :as_of",
            ":as_of in a JOIN ... ON condition",
        ),
    ],
)
def test_each_refused_construct_is_reported(sql, expected):
    found = [msg for _, _, msg in lint_sql(sql, "id")]
    assert any(m.startswith(expected) for m in found), found
    assert all(line == 1 for line, _, _ in lint_sql(sql, "id"))


@pytest.mark.unit
def test_or_with_a_plain_condition_is_allowed_and_the_entity_key_pk():
    sql = "SELECT u.id, count(*) AS n FROM raw.u AS u WHERE u.ts > :as_of - interval '1 hour' OR u.ts IS NULL GROUP BY u.id"
    assert lint_sql(sql, "id") == []
    assert entity_key_leads_pk(sql, "id") is True
    assert entity_key_leads_pk("SELECT u.id, u.x FROM raw.u AS u", "id") is None
    other = "SELECT u.region, count(*) AS n FROM raw.u AS u GROUP BY u.region"
    assert entity_key_leads_pk(other, "id") is False
    assert any("primary-key prefix" in m for _, _, m in lint_sql(other, "id"))


@pytest.mark.unit
def test_the_demo_plan_is_flagged_file_and_line_and_every_window_has_a_rewrite_that_passes(tmp_path):
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO_PLAN, plan_dir)
    (plan_dir / "new_store.yaml").write_text("new_store: {dialect: risingwave, schema: features}\n")
    plan = load_plan(plan_dir)
    findings = [f for f in lint_plan(plan) if f.severity == "error"]
    where = {(Path(f.file).name, f.line) for f in findings}
    assert ("user_txn_stats.sql", 4) in where and ("user_profile.sql", 16) in where
    assert all(str(f).startswith(f"{f.file}:{f.line}: groups.{f.group}.definition: ") for f in findings)
    for group in sorted({f.group for f in findings}):
        rewritten = rewrite_windows(plan.definition_sql(group))
        assert rewritten is not None, group
        left = [m for _, _, m in lint_sql(rewritten, plan.groups[group].entity_key) if "FILTER" in m]
        assert left == [], (group, left)


@pytest.mark.unit
def test_validate_exits_2_with_file_and_line_and_writes_the_rewrites(tmp_path):
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO_PLAN, plan_dir)
    (plan_dir / "new_store.yaml").write_text("new_store: {dialect: risingwave, schema: features}\n")
    out = tmp_path / "rewrites"
    run = subprocess.run(
        [sys.executable, "-m", "airflow_fsmigration.cli", "validate", str(plan_dir), "--rewrites", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert (
        f"{plan_dir}/sql/user_txn_stats.sql:4: groups.user_txn_stats.definition: :as_of inside" in run.stderr
    )
    assert "Traceback" not in run.stderr
    assert (out / "user_txn_stats.sql").read_text().count("LEFT JOIN") == 2
    # a plan whose definitions RisingWave accepts validates with exit 0
    for path in out.glob("*.sql"):
        if path.stem != "user_profile":  # account_age_days moves with the clock: no streaming form
            shutil.copy(path, plan_dir / "sql" / path.name)
    run = subprocess.run(
        [sys.executable, "-m", "airflow_fsmigration.cli", "validate", str(plan_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and run.stderr.count("groups.") == 4, run.stderr  # user_profile's 4 lines


@pytest.fixture(scope="module")
def demo_events(postgres, demo_plan):
    """The demo's raw events (300 users, 60 days) in a database of their own."""
    import psycopg
    from psycopg import sql

    from fsmig_dev.demo.data import generate_raw

    name = f"t_rw_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        generate_raw(conn, demo_plan, entities=300, days=60, seed=0.42, now=NOW)
    yield url
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _rows(conn, sql_text: str, as_of: datetime) -> list[tuple]:
    body = sql_text.replace(":as_of", "CAST(%(as_of)s AS timestamptz)").rstrip().rstrip(";")
    return conn.execute(f"SELECT * FROM ({body}) AS q ORDER BY 1", {"as_of": as_of}).fetchall()


AS_OFS = [
    NOW,
    NOW - timedelta(hours=5, minutes=7),
    NOW - timedelta(days=3, seconds=1),
    NOW - timedelta(days=20),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    "group", ["user_txn_stats", "merchant_stats", "item_popularity", "user_profile", "user_session_stats"]
)
def test_the_rewrite_gives_the_same_rows_on_postgres_as_of_several_times(demo_events, demo_plan, group):
    import psycopg

    original = demo_plan.definition_sql(group)
    rewritten = rewrite_windows(original)
    assert rewritten is not None
    with psycopg.connect(demo_events, autocommit=True) as conn:
        for as_of in AS_OFS:
            old, new = _rows(conn, original, as_of), _rows(conn, rewritten, as_of)
            assert old, (group, as_of)
            assert new == old, (group, as_of)
