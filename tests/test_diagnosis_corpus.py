"""The diagnosis corpus end to end on a small event log: ground truth, product run, scorer.

Asserts what is exact today (verdicts and per-feature counts against the ground truth, a clean
scenario passing with no cause) and that the generator and the truth do what they say; it does
not assert diagnosis-quality thresholds (those are the scores ``python -m bench.diagnosis_corpus``
reports, see docs/diagnosis_corpus.md).
"""

from __future__ import annotations

import pytest

from bench.diagnosis_corpus import runner
from bench.diagnosis_corpus.scenarios import BY_NAME, FEATURES, SCENARIOS, definition_sql
from bench.diagnosis_corpus.score import causes_of, score

pytestmark = pytest.mark.integration

ENTITIES = 150


@pytest.fixture
def corpus(pg_url, redis_url, tmp_path):
    return runner.prepare(pg_url, redis_url, entities=ENTITIES, seed=7, workdir=tmp_path)


def test_corpus_truth_and_scores(corpus):
    log = corpus.event_log
    assert log.redelivered and log.late and log.on_bounds and log.charges and log.null_tips
    assert 0 < len(corpus.correct) <= ENTITIES
    assert len(SCENARIOS) >= 14 and sum(1 for s in SCENARIOS if not s.clean) >= 12

    clean = runner.run_scenario(corpus, BY_NAME["clean_exact"])
    assert clean.truth.verdict == "pass" and clean.truth.entities_changed == 0
    s = score(clean.scenario, clean.truth, clean.result)
    assert s.verdict_product == "pass" and s.clean_ok and s.counts_exact

    dedup = runner.run_scenario(corpus, BY_NAME["dedup_missing"])
    t = dedup.truth
    # re-deliveries change counts, sums and averages, never a distinct count or a last timestamp
    assert t.features["txn_count_7d"].differ > 0
    for f in ("distinct_merchants_24h", "distinct_merchants_7d", "last_txn_ts", "last_charge_ts"):
        assert t.features[f].total == 0, f
    assert all(ft.kinds in ({}, {"deduplication": ft.total}) for ft in t.features.values())
    s = score(dedup.scenario, t, dedup.result)
    assert s.verdict_truth == s.verdict_product == "fail"
    for fs in s.features:  # the product's per-feature counts are the truth's, to the value
        assert fs.exact, (fs.feature, fs.truth, fs.product)
    assert {fs.feature for fs in s.affected} == {f for f in FEATURES if t.features[f].total}

    mix = runner.run_scenario(corpus, BY_NAME["mix_bound_nulls"])
    t = mix.truth  # each defect alone attributes the mix's values: NULL tips never move a count
    assert set(t.features["txn_count_7d"].kinds) <= {"window_bound"}
    assert "null_handling" in t.features["tip_avg_7d"].kinds
    s = score(mix.scenario, t, mix.result)
    assert s.verdict_product == "fail" and s.counts_exact


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_every_definition_parses(name):
    import sqlglot

    s = BY_NAME[name]
    sqlglot.parse_one(definition_sql(s.defects, s.variant).replace(":as_of", "now()"), read="postgres")


def test_scorer_falls_back_to_explanations():
    """Before a result has ``causes``, its explanations are scored with kinds mapped to the contract's."""
    result = {
        "verdict": "fail",
        "features": {f: {"mismatched": 0} for f in FEATURES},
        "explanations": [
            {"kind": "timezone_shift", "feature": "last_txn_ts", "rows": 8},
            {
                "kind": "constant_offset",
                "feature": "last_charge_ts",
                "rows": 3,
                "params": {"offset": -86400.0},
            },
            {"kind": "missing_in_new", "feature": None, "rows": 2},
        ],
    }
    causes, source = causes_of(result)
    assert source == "explanations"
    assert [c.kind for c in causes] == ["time_zone", "late_events", "missing_in_new"]
    assert causes[2].features == {f: 2 for f in FEATURES}


def test_generator_is_deterministic(postgres, pg_url):
    """The same seed and size give the same rows (another seed does not)."""
    import uuid

    import psycopg
    from psycopg import sql

    from bench.diagnosis_corpus.generator import generate

    digest = (
        "SELECT md5(string_agg(t::text, '|' ORDER BY t::text)) FROM raw.transactions AS t "
        "UNION ALL SELECT md5(string_agg(c::text, '|' ORDER BY c::text)) FROM raw.charges AS c"
    )
    other = f"t_{uuid.uuid4().hex[:12]}"
    sums = []
    try:
        for url, seed in ((pg_url, 3), (postgres.create_database(other), 3), (pg_url, 4)):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET TimeZone = 'UTC'")
                generate(conn, 40, seed)
                sums.append(conn.execute(digest).fetchall())
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other)))
    assert sums[0] == sums[1] and sums[0] != sums[2]
