"""The label's entity filter pushed into a definition must not change any label's features.

Each definition is replayed for a label spine twice on real Postgres: per label with the entity
filter pushed in (the ``lateral`` strategy, which ``auto`` picks for most spines) and as a full
evaluation of the definition alone at each label's time, filtered on its output. They must give
the same rows. The first four are the counterexamples of issue 14 (a filter pushed into a CTE
whose consumer computes across entities); the last three keep the speed path: the filter still
reaches the raw table's SELECT.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airflow_fsmigration.backfill import replay
from fsmig_dev import synthetic

T0 = datetime(2026, 9, 1, tzinfo=UTC)
GROUP = "user_txn_stats"
WINDOW = "t.event_ts > :as_of - interval '7 days' AND t.event_ts <= :as_of"
BASE = (
    f"base AS (SELECT t.user_id, count(*) AS n FROM raw.transactions AS t WHERE {WINDOW} GROUP BY t.user_id)"
)

# name -> (definition body selecting user_id and two features f0, f1; filters expected in it)
CASES = {
    "share_of_total": (
        f"WITH {BASE} SELECT b.user_id, b.n AS f0, b.n::float8 / sum(b.n) OVER () AS f1 FROM base AS b",
        0,
    ),
    "percent_rank": (
        f"WITH {BASE} SELECT b.user_id, b.n AS f0, percent_rank() OVER (ORDER BY b.n) AS f1 FROM base AS b",
        0,
    ),
    "join_on_another_column": (
        f"WITH {BASE}, tiers AS (SELECT b.n % 3 AS tier, sum(b.n) AS total FROM base AS b GROUP BY b.n % 3)"
        " SELECT b.user_id, b.n AS f0, x.total AS f1 FROM base AS b JOIN tiers AS x ON x.tier = b.n % 3",
        1,  # the outer row-wise SELECT only; base feeds tiers across entities
    ),
    "scalar_subquery_over_others": (
        f"WITH {BASE} SELECT b.user_id, b.n AS f0, (SELECT max(o.n) FROM base AS o) AS f1 FROM base AS b",
        0,
    ),
    "same_key_pass_through_cte": (
        f"WITH {BASE} SELECT b.user_id, b.n AS f0, b.n * 2 AS f1 FROM base AS b",
        2,
    ),
    "same_key_join": (
        f"WITH {BASE}, top AS (SELECT t.user_id, max(t.amount) AS mx FROM raw.transactions AS t"
        f" WHERE {WINDOW} GROUP BY t.user_id)"
        " SELECT b.user_id, b.n AS f0, m.mx AS f1 FROM base AS b JOIN top AS m ON m.user_id = b.user_id",
        3,
    ),
    "partition_by_entity_window": (
        "WITH ev AS (SELECT t.user_id, count(*) OVER (PARTITION BY t.user_id) AS c,"
        " rank() OVER (PARTITION BY t.user_id ORDER BY t.amount DESC) AS r"
        f" FROM raw.transactions AS t WHERE {WINDOW})"
        " SELECT e.user_id, max(e.c) AS f0, count(*) FILTER (WHERE e.r = 1) AS f1 FROM ev AS e GROUP BY e.user_id",
        2,
    ),
}


def _plan_with(plan, tmp_path, body: str):
    """The demo plan with ``user_txn_stats`` defined by ``body`` (other features selected as NULL)."""
    feats = plan.groups[GROUP].feature_names
    rest = ", ".join(f"NULL::bigint AS {f}" for f in feats[2:])
    path = tmp_path / "def.sql"
    path.write_text(f"SELECT q.user_id, q.f0 AS {feats[0]}, q.f1 AS {feats[1]}, {rest} FROM ({body}) AS q\n")
    g = plan.groups[GROUP].model_copy(update={"definition": str(path)})
    return plan.model_copy(update={"groups": {**plan.groups, GROUP: g}})


@pytest.fixture
def labels(pg_conn):
    conn = pg_conn
    synthetic.create_transactions(conn, events=4_000, users=40, start=T0, end=T0 + timedelta(days=10))
    conn.execute("CREATE TABLE public.labels (user_id text, ts timestamptz)")
    conn.execute(
        "INSERT INTO public.labels SELECT 'u' || (i * 7 %% 45), %s + i * interval '5 hours 13 minutes'"
        " FROM generate_series(1, 40) AS i",
        (T0 + timedelta(days=2),),
    )
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def _reference(conn, plan) -> list[tuple]:
    """The definition evaluated alone at each label's time, then filtered on its output."""
    feats = plan.groups[GROUP].feature_names
    body = replay.as_of_sql(plan, GROUP, "%(ts)s::timestamptz")
    cols = ", ".join(f"d.{f}" for f in feats)
    rows = []
    for user, ts in conn.execute("SELECT user_id, ts FROM public.labels ORDER BY ts, user_id").fetchall():
        found = conn.execute(
            f"SELECT {cols} FROM ({body}) AS d WHERE d.user_id = %(e)s", {"ts": ts, "e": user}
        ).fetchall()
        assert len(found) <= 1
        rows.append((ts, user, *(found[0] if found else (None,) * len(feats))))
    return rows


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_pushed_down_replay_equals_full_evaluation(demo_plan, tmp_path, labels, case):
    body, filters = CASES[case]
    plan = _plan_with(demo_plan, tmp_path, body)
    conn = labels
    spine = replay.SpineSpec("public.labels", "user_id", "ts")
    lo, hi = conn.execute("SELECT min(ts), max(ts) + interval '1 second' FROM public.labels").fetchone()
    got = conn.execute(
        replay.spine_select_sql(plan, GROUP, spine, "lateral").as_string(conn) + " ORDER BY 1, 2",
        {"lo": lo, "hi": hi},
    ).fetchall()
    want = _reference(conn, plan)
    assert sum(1 for r in want if r[2] is not None) >= 30  # most labels have features
    assert [tuple(r) for r in got] == want
    # and the filter went exactly as far as it may (the wrapper SELECT over the body counts one)
    pushed = replay.entity_filtered_sql(plan, GROUP, "L.ts", "L.e")
    assert pushed.count("= L.e") == filters + 1, pushed


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "filters"),
    [
        # a CTE read twice, once on the key and once across entities: not filtered
        (f"WITH {BASE} SELECT b.user_id, b.n AS f0, o.n AS f1 FROM base AS b JOIN base AS o ON o.n = b.n", 1),
        # a self-join on the key: both references ask for the same filter
        (
            f"WITH {BASE} SELECT b.user_id, b.n AS f0, o.n AS f1 FROM base AS b JOIN base AS o ON o.user_id = b.user_id",
            2,
        ),
        # LIMIT, DISTINCT ON another column, a window partitioned by another column
        (
            f"WITH {BASE} SELECT b.user_id, b.n AS f0, 1 AS f1 FROM (SELECT * FROM base ORDER BY n LIMIT 5) AS b",
            1,
        ),
        (f"WITH {BASE} SELECT DISTINCT ON (b.n) b.user_id, b.n AS f0, 1 AS f1 FROM base AS b", 0),
        (
            f"WITH {BASE} SELECT b.user_id, b.n AS f0, rank() OVER (PARTITION BY b.n ORDER BY b.user_id) AS f1 FROM base AS b",
            0,
        ),
        # an aggregate not grouped by the key, and a grouping set
        (
            f"WITH {BASE} SELECT b.user_id, b.n AS f0, 1 AS f1 FROM base AS b WHERE b.n > (SELECT avg(n) FROM base)",
            0,
        ),
        (
            f"WITH {BASE} SELECT b.user_id, sum(b.n) AS f0, 1 AS f1 FROM base AS b GROUP BY ROLLUP (b.user_id)",
            0,
        ),
        # UNION ALL of two same-key branches: both filtered
        (
            f"SELECT t.user_id, count(*) AS f0, 0 AS f1 FROM raw.transactions AS t WHERE {WINDOW} GROUP BY t.user_id"
            " UNION ALL SELECT u.user_id, 0, 1 FROM raw.transactions AS u",
            2,
        ),
    ],
)
def test_filter_stops_where_a_consumer_crosses_entities(demo_plan, tmp_path, body, filters):
    plan = _plan_with(demo_plan, tmp_path, body)
    pushed = replay.entity_filtered_sql(plan, GROUP, "L.ts", "L.e")
    assert pushed.count("= L.e") == filters + 1, pushed


@pytest.mark.integration
@pytest.mark.parametrize("case", ["share_of_total", "same_key_join"])
def test_auto_spine_backfill_equals_full_evaluation(demo_plan, tmp_path, labels, case):
    """End to end: ``auto`` evaluates per timestamp when the filter reaches no table, else per label."""
    from airflow_fsmigration.backfill.pushdown import filter_reaches_tables

    plan = _plan_with(demo_plan, tmp_path, CASES[case][0])
    assert filter_reaches_tables(plan, GROUP) is (case == "same_key_join")
    conn = labels
    res = replay.run_backfill(plan, GROUP, conn, conn, spine="public.labels", check_retention=False)
    feats = ", ".join(plan.groups[GROUP].feature_names)
    got = conn.execute(
        f"SELECT label_ts, user_id, {feats} FROM {res.output_table} WHERE run_id = %s ORDER BY 1, 2",
        (res.run_id,),
    ).fetchall()
    assert [tuple(r) for r in got] == _reference(conn, plan)
