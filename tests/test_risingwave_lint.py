"""RisingWave's streaming rules on definitions: findings with file and line, and an exact rewrite.

The rewrite's exactness on real Postgres, and the demo's definitions before and after issue 18,
are in ``tests/test_risingwave_demo_sql.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_fsmigration.stores.risingwave_lint import entity_key_leads_pk, lint_sql
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
def test_the_rewrite_is_offered_only_for_the_shape_it_is_exact_for():
    assert rewrite_windows(WINDOWS).count("LEFT JOIN") == 1
    having = WINDOWS.replace("GROUP BY t.user_id", "GROUP BY t.user_id HAVING count(*) > 1")
    positional = WINDOWS.replace("GROUP BY t.user_id", "GROUP BY 1")
    ored = WINDOWS.replace("interval '1 hour')", "interval '1 hour' OR t.amount > 5)")
    plain = "SELECT t.user_id, count(*) AS n FROM raw.t AS t WHERE t.ts > :as_of - interval '1 day' GROUP BY t.user_id"
    for sql in (having, positional, ored, plain):
        assert rewrite_windows(sql) is None, sql
    unqualified = (
        "SELECT user_id, count(*) FILTER (WHERE ts > :as_of - interval '1 hour') AS n_1h, count(*) AS n\n"
        "FROM raw.t WHERE ts > :as_of - interval '1 day' GROUP BY user_id"
    )
    out = rewrite_windows(unqualified)
    assert out is not None and "COALESCE(w1.n_1h, 0) AS n_1h" in out and ":as_of - INTERVAL '1 HOUR'" in out
    assert lint_sql(out, "user_id") == []
