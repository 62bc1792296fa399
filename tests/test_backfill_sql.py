"""The entity filter pushed into a definition: only where it keeps the result exact."""

from __future__ import annotations

import pytest

from airflow_fsmigration.backfill import replay


def _with_sql(plan, tmp_path, text: str):
    path = tmp_path / "def.sql"
    path.write_text(text)
    g = plan.groups["user_txn_stats"].model_copy(update={"definition": str(path)})
    return plan.model_copy(update={"groups": {**plan.groups, "user_txn_stats": g}})


@pytest.mark.unit
def test_pushdown_into_grouped_selects_and_inlined_upstreams(demo_plan):
    text = replay.entity_filtered_sql(demo_plan, "user_txn_stats", "L.ts", "L.e")
    # every SELECT reading the raw table is filtered (one, or one per window in the RisingWave form)
    reads = text.upper().count("FROM RAW.TRANSACTIONS AS T")
    assert reads >= 1 and text.count("t.user_id = L.e") == reads and "<= L.ts" in text
    derived = replay.entity_filtered_sql(demo_plan, "user_risk_profile", "L.ts", "L.e")
    # at least upstream user_profile (outer select and its logins CTE), user_txn_stats, and the outer select
    assert derived.count("= L.e") >= 4


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        "SELECT t.user_id, rank() OVER (ORDER BY t.amount) AS txn_count_1h FROM raw.transactions AS t",
        "SELECT t.user_id, t.amount AS txn_count_1h FROM raw.transactions AS t ORDER BY t.amount LIMIT 10",
        "SELECT max(t.user_id) AS user_id, count(*) AS txn_count_1h FROM raw.transactions AS t",
        "SELECT DISTINCT ON (t.amount) t.user_id, t.amount AS txn_count_1h FROM raw.transactions AS t",
    ],
)
def test_no_pushdown_where_it_would_change_results(demo_plan, tmp_path, body):
    names = ", ".join(f"NULL AS {f}" for f in demo_plan.groups["user_txn_stats"].feature_names[1:])
    plan = _with_sql(
        demo_plan, tmp_path, f"SELECT q.*, {names} FROM ({body} WHERE t.event_ts <= :as_of) AS q"
    )
    # only the outer pass-through select (no aggregate, no window) may be filtered
    assert replay.entity_filtered_sql(plan, "user_txn_stats", "L.ts", "L.e").count(
        "= L.e"
    ) == 0 or "q.user_id = L.e" in (replay.entity_filtered_sql(plan, "user_txn_stats", "L.ts", "L.e"))
    inner = replay.entity_filtered_sql(plan, "user_txn_stats", "L.ts", "L.e").split("FROM (", 1)[1]
    assert "= L.e" not in inner.split(") AS q")[0]
