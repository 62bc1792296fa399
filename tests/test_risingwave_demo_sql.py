"""The demo's definitions in the form RisingWave accepts give the same rows as the FILTER form.

``BEFORE`` holds the demo definitions as they were written before issue 18 (windows as aggregate
``FILTER (WHERE ts > :as_of - interval ...)`` clauses, which RisingWave refuses in a streaming
view). The definitions in ``include/demo_plan/sql`` are one temporal-filtered subquery per window
joined on the entity key. On real Postgres, with the demo's raw events, both forms and the
mechanical rewrite of the old one (:func:`rewrite_windows`) give identical rows as of several
times; and ``fsmigrate validate`` with the RisingWave dialect flags the old forms, file and line.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.plan import load_plan
from airflow_fsmigration.stores.risingwave_lint import lint_plan, lint_sql
from airflow_fsmigration.stores.risingwave_rewrite import rewrite_windows

REPO = Path(__file__).resolve().parent.parent
DEMO_PLAN = REPO / "include" / "demo_plan"
NOW = datetime(2026, 11, 20, 12, 34, 56, tzinfo=UTC)
AS_OFS = [
    NOW,
    NOW - timedelta(hours=5, minutes=7),
    NOW - timedelta(days=3, seconds=1),
    NOW - timedelta(days=20, hours=11),
]

BEFORE = {
    "item_popularity": """\
-- Item engagement over short windows, as of :as_of.
WITH events AS (
    SELECT
        c.item_id,
        count(*) FILTER (WHERE c.event_type = 'view' AND c.event_ts > :as_of - interval '1 hour')          AS item_views_1h,
        count(*) FILTER (WHERE c.event_type = 'view' AND c.event_ts > :as_of - interval '24 hours')        AS item_views_24h,
        count(*) FILTER (WHERE c.event_type = 'purchase' AND c.event_ts > :as_of - interval '24 hours')    AS item_purchases_24h,
        count(*) FILTER (WHERE c.event_type = 'add_to_cart' AND c.event_ts > :as_of - interval '24 hours') AS item_add_to_cart_24h,
        count(*) FILTER (WHERE c.event_type = 'click')                                                     AS clicks_7d,
        count(*) FILTER (WHERE c.event_type = 'view')                                                      AS views_7d,
        max(c.event_ts)                                                                                    AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '7 days'
      AND c.event_ts <= :as_of
    GROUP BY c.item_id
)
SELECT
    i.item_id,
    coalesce(e.item_views_1h, 0)          AS item_views_1h,
    coalesce(e.item_views_24h, 0)         AS item_views_24h,
    coalesce(e.item_purchases_24h, 0)     AS item_purchases_24h,
    coalesce(e.item_add_to_cart_24h, 0)   AS item_add_to_cart_24h,
    CASE WHEN e.views_7d > 0 THEN e.clicks_7d::double precision / e.views_7d END AS item_ctr_7d,
    i.price                               AS item_price,
    i.category                            AS item_category,
    greatest(i.updated_at, e.last_event_ts) AS source_ts
FROM raw.items AS i
LEFT JOIN events AS e ON e.item_id = i.item_id
WHERE i.updated_at <= :as_of
""",
    "merchant_stats": """\
-- Merchant volume, ticket size, refunds and chargebacks, as of :as_of.
WITH txns AS (
    SELECT
        t.merchant_id,
        count(*) FILTER (WHERE t.event_ts > :as_of - interval '24 hours')                              AS merchant_txn_count_24h,
        avg(t.amount) FILTER (WHERE t.event_ts > :as_of - interval '7 days')                           AS merchant_avg_ticket_7d,
        count(*) FILTER (WHERE t.status = 'refunded' AND t.event_ts > :as_of - interval '7 days')      AS merchant_refund_count_7d,
        avg(CASE WHEN t.status = 'chargeback' THEN 1.0 ELSE 0.0 END)                                   AS merchant_chargeback_rate_30d,
        max(t.event_ts)                                                                                AS last_txn_ts
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '30 days'
      AND t.event_ts <= :as_of
    GROUP BY t.merchant_id
)
SELECT
    m.merchant_id,
    coalesce(x.merchant_txn_count_24h, 0)    AS merchant_txn_count_24h,
    x.merchant_avg_ticket_7d,
    coalesce(x.merchant_refund_count_7d, 0)  AS merchant_refund_count_7d,
    coalesce(x.merchant_chargeback_rate_30d, 0) AS merchant_chargeback_rate_30d,
    m.category                               AS merchant_category,
    m.static_risk                            AS merchant_static_risk,
    greatest(m.updated_at, x.last_txn_ts)    AS source_ts
FROM raw.merchants AS m
LEFT JOIN txns AS x ON x.merchant_id = m.merchant_id
WHERE m.updated_at <= :as_of
""",
    "user_profile": """\
-- Account attributes plus login behaviour per user, as of :as_of.
WITH logins AS (
    SELECT
        e.user_id,
        count(DISTINCT e.device_id) FILTER (WHERE e.event_ts > :as_of - interval '30 days')                               AS device_count_30d,
        count(*) FILTER (WHERE e.event_type = 'login' AND e.event_ts > :as_of - interval '7 days')                       AS login_count_7d,
        count(*) FILTER (WHERE e.event_type = 'login_failed' AND e.event_ts > :as_of - interval '24 hours')              AS failed_login_count_24h,
        max(e.event_ts)                                                                                                   AS last_event_ts
    FROM raw.user_events AS e
    WHERE e.event_ts > :as_of - interval '30 days'
      AND e.event_ts <= :as_of
    GROUP BY e.user_id
)
SELECT
    u.user_id,
    floor(extract(epoch FROM (:as_of - u.created_at)) / 86400)::bigint AS account_age_days,
    u.country,
    u.is_verified,
    u.kyc_level,
    u.email_domain_risk,
    coalesce(l.device_count_30d, 0)        AS device_count_30d,
    coalesce(l.login_count_7d, 0)          AS login_count_7d,
    coalesce(l.failed_login_count_24h, 0)  AS failed_login_count_24h,
    greatest(u.created_at, l.last_event_ts) AS source_ts
FROM raw.users AS u
LEFT JOIN logins AS l ON l.user_id = u.user_id
WHERE u.created_at <= :as_of
""",
    "user_session_stats": """\
-- Browsing sessions and purchases per user, as of :as_of.
WITH sessions AS (
    SELECT
        c.user_id,
        c.session_id,
        min(c.event_ts) AS started_at,
        count(*)        AS events,
        bool_or(c.event_type = 'add_to_cart') AS had_cart,
        bool_or(c.event_type = 'purchase')    AS had_purchase
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '30 days'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id, c.session_id
),
clicks AS (
    SELECT c.user_id,
           count(*) FILTER (WHERE c.event_type = 'click' AND c.event_ts > :as_of - interval '24 hours') AS clicks_24h,
           max(c.event_ts) FILTER (WHERE c.event_type = 'click') AS last_click_ts,
           max(c.event_ts) AS last_event_ts
    FROM raw.clickstream AS c
    WHERE c.event_ts > :as_of - interval '30 days'
      AND c.event_ts <= :as_of
    GROUP BY c.user_id
)
SELECT
    s.user_id,
    count(*) FILTER (WHERE s.started_at > :as_of - interval '24 hours')                 AS sessions_24h,
    count(*) FILTER (WHERE s.started_at > :as_of - interval '7 days')                   AS sessions_7d,
    max(k.clicks_24h)                                                                    AS clicks_24h,
    avg(s.events) FILTER (WHERE s.started_at > :as_of - interval '7 days')::double precision AS avg_session_events_7d,
    count(*) FILTER (WHERE s.had_purchase)                                               AS purchases_30d,
    (count(*) FILTER (WHERE s.had_cart AND NOT s.had_purchase AND s.started_at > :as_of - interval '7 days'))::double precision
        / nullif(count(*) FILTER (WHERE s.had_cart AND s.started_at > :as_of - interval '7 days'), 0)
                                                                                         AS cart_abandon_rate_7d,
    max(k.last_click_ts)                                                                 AS last_click_ts,
    max(k.last_event_ts)                                                                 AS source_ts
FROM sessions AS s
JOIN clicks AS k ON k.user_id = s.user_id
GROUP BY s.user_id
""",
    "user_txn_stats": """\
-- Transaction velocity per user over windows ending at :as_of (exclusive start, inclusive end).
SELECT
    t.user_id,
    count(*) FILTER (WHERE t.event_ts > :as_of - interval '1 hour')                          AS txn_count_1h,
    count(*) FILTER (WHERE t.event_ts > :as_of - interval '24 hours')                        AS txn_count_24h,
    count(*)                                                                                 AS txn_count_7d,
    coalesce(sum(t.amount) FILTER (WHERE t.event_ts > :as_of - interval '24 hours'), 0)      AS txn_amount_sum_24h,
    avg(t.amount)                                                                            AS txn_amount_avg_7d,
    max(t.amount)                                                                            AS txn_amount_max_7d,
    count(DISTINCT t.merchant_id)                                                            AS distinct_merchants_7d,
    count(*) FILTER (WHERE t.status = 'declined' AND t.event_ts > :as_of - interval '24 hours') AS declined_count_24h,
    avg(CASE WHEN t.is_foreign THEN 1.0 ELSE 0.0 END)                                        AS foreign_txn_ratio_7d,
    max(t.event_ts)                                                                          AS last_txn_ts,
    max(t.event_ts)                                                                          AS source_ts
FROM raw.transactions AS t
WHERE t.event_ts > :as_of - interval '7 days'
  AND t.event_ts <= :as_of
GROUP BY t.user_id
""",
}


def _risingwave_plan(tmp_path: Path, *, before: bool) -> Path:
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO_PLAN, plan_dir)
    (plan_dir / "new_store.yaml").write_text("new_store: {dialect: risingwave, schema: features}\n")
    if before:
        for group, text in BEFORE.items():
            (plan_dir / "sql" / f"{group}.sql").write_text(text)
    return plan_dir


def _validate(
    plan_dir: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """``fsmigrate validate`` in this process (the CLI's own main: exit code, stdout, stderr)."""
    from airflow_fsmigration.cli import main

    capsys.readouterr()
    code = main(["validate", str(plan_dir), *extra])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["fsmigrate", "validate"], code, out.out, out.err)


@pytest.mark.unit
def test_validate_flags_the_old_forms_with_file_and_line_and_writes_rewrites(tmp_path, capsys):
    plan_dir = _risingwave_plan(tmp_path, before=True)
    out = tmp_path / "rewrites"
    run = _validate(plan_dir, capsys, "--rewrites", str(out))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    for where in (
        "user_txn_stats.sql:4",
        "item_popularity.sql:5",
        "merchant_stats.sql:5",
        "user_session_stats.sql:17",
    ):
        assert f"{plan_dir}/sql/{where}: groups." in run.stderr, where
    assert sorted(p.stem for p in out.glob("*.sql")) == sorted(BEFORE)
    for path in out.glob("*.sql"):  # the rewrites leave no FILTER window behind
        assert not [m for _, _, m in lint_sql(path.read_text()) if "FILTER" in m], path.name


@pytest.mark.unit
def test_the_new_forms_pass_and_the_clock_dependent_groups_are_plain_views(tmp_path, capsys):
    """account_age_days = floor((:as_of - created_at) / 1 day) has no streaming form: on RisingWave
    user_profile, and the groups reading it, are plain views computed at read time (warnings)."""
    from airflow_fsmigration.stores.risingwave_lint import read_time_groups

    plan = load_plan(_risingwave_plan(tmp_path, before=False))
    findings = lint_plan(plan)
    assert [f for f in findings if f.severity == "error"] == []
    assert read_time_groups(plan) == {"user_profile", "user_risk_profile", "fraud_decision_features"}
    assert {f.group for f in findings} == read_time_groups(plan)
    run = _validate(plan.source_dir, capsys)
    assert run.returncode == 0, run.stderr
    assert "user_profile.sql:32: groups.user_profile.definition: :as_of in the SELECT list" in run.stdout
    assert "risingwave: every definition is a query RisingWave accepts (3 as plain views" in run.stdout


@pytest.mark.unit
def test_the_demo_bug_still_injects_into_the_new_session_stats():
    from fsmig_dev.demo.data import buggy_session_stats_sql

    buggy = buggy_session_stats_sql((DEMO_PLAN / "sql" / "user_session_stats.sql").read_text())
    assert "raw.clickstream AS c" not in buggy and buggy.count("FROM clickstream_src AS c") == 2


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


def _rows(conn, sql_text: str, as_of: datetime) -> tuple[list[str], list[tuple]]:
    body = sql_text.replace(":as_of", "CAST(%(as_of)s AS timestamptz)").rstrip().rstrip(";")
    cur = conn.execute(f"SELECT * FROM ({body}) AS q ORDER BY 1", {"as_of": as_of})
    return [(d.name, d.type_code) for d in cur.description], cur.fetchall()


@pytest.mark.integration
@pytest.mark.parametrize("group", sorted(BEFORE))
def test_old_new_and_mechanical_forms_give_identical_rows_as_of_several_times(demo_events, demo_plan, group):
    import psycopg

    forms = {
        "new": demo_plan.definition_sql(group),
        "mechanical": rewrite_windows(BEFORE[group]),
    }
    assert forms["mechanical"] is not None
    with psycopg.connect(demo_events, autocommit=True) as conn:
        for as_of in AS_OFS:
            columns, old = _rows(conn, BEFORE[group], as_of)
            assert len(old) > 10, (group, as_of)
            for label, text in forms.items():
                assert _rows(conn, text, as_of) == (columns, old), (group, label, as_of)
