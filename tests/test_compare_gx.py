"""GX verdicts over comparison results and the schema-parity suite (GX runs for real, in memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from airflow_fsmigration.compare.engine import Verdict, compare_tables
from tests.test_compare_engine import frame, make_group

REPO = Path(__file__).resolve().parent.parent

GROUP = make_group(
    [
        {"name": "cnt", "dtype": "int64"},
        {"name": "amt", "dtype": "float64", "atol": 0.01},
        {"name": "seen", "dtype": "timestamp"},
        {"name": "opt", "dtype": "float64", "null_policy": "nulls_never_match"},
    ]
)


def _tables(n: int, bad_cnt: int):
    ids = [f"e{i}" for i in range(n)]
    base = np.arange(n)
    seen = np.full(n, np.datetime64("2026-11-01T00:00:00", "us"))
    old = frame(GROUP, entity_id=ids, cnt=base, amt=base / 10, seen=seen, opt=base * 1.0)
    cnt = base.copy()
    cnt[:bad_cnt] += 5
    new = frame(GROUP, entity_id=ids, cnt=cnt, amt=base / 10, seen=seen, opt=base * 1.0)
    return old, new


@pytest.mark.unit
def test_gx_verdict_agrees_with_engine_and_writes_docs(tmp_path):
    from airflow_fsmigration.compare.gx import gx_verdict, status_frame

    old, new = _tables(1000, 3)
    passing = compare_tables(GROUP, old, new, threshold=0.995, requested=1000)
    frame_ = status_frame(passing)
    assert len(frame_) == 1000 and (frame_["cnt"] == "mismatch").sum() == 3
    v = gx_verdict(passing, docs_dir=tmp_path / "gx")
    assert v.success and v.verdict is Verdict.PASS is passing.verdict
    cnt = next(r for r in v.results if r["column"] == "cnt")
    assert cnt["unexpected_percent"] == pytest.approx(0.3)
    assert v.docs_index and (tmp_path / "gx" / "index.html").exists()

    old, new = _tables(1000, 6)
    failing = compare_tables(GROUP, old, new, threshold=0.995, requested=1000)
    v = gx_verdict(failing)
    assert failing.verdict is Verdict.FAIL and v.verdict is Verdict.FAIL
    assert [r["column"] for r in v.failed] == ["cnt"]


@pytest.mark.unit
def test_gx_user_expectations_and_inconclusive_stays_inconclusive():
    import great_expectations.expectations as gxe

    from airflow_fsmigration.compare.gx import gx_verdict

    old, new = _tables(200, 0)
    r = compare_tables(GROUP, old, new, requested=200)
    strict = gx_verdict(r, extra_expectations=[gxe.ExpectTableRowCountToBeBetween(min_value=500)])
    assert (
        strict.verdict is Verdict.FAIL
        and strict.failed[0]["expectation"] == "expect_table_row_count_to_be_between"
    )
    short = compare_tables(GROUP, old, new, requested=300)
    v = gx_verdict(short)
    assert v.verdict is Verdict.INCONCLUSIVE and not v.success


@pytest.mark.unit
def test_status_frame_without_flags_rebuilds_the_same_shares():
    from airflow_fsmigration.compare.gx import status_frame

    old, new = _tables(100, 7)
    r = compare_tables(GROUP, old, new)
    kept = status_frame(r)
    r.flags = None
    rebuilt = status_frame(r)
    assert kept["cnt"].value_counts().to_dict() == rebuilt["cnt"].value_counts().to_dict()


@pytest.mark.unit
def test_schema_parity_checks_names_types_and_declared_nullability_only():
    from airflow_fsmigration.compare.gx import schema_parity

    good = {
        "user_id": "text",
        "cnt": "bigint",
        "amt": "double precision",
        "seen": "timestamp with time zone",
        "opt": "numeric",
        "source_ts": "timestamp with time zone",
    }
    assert schema_parity(GROUP, good).success
    # Null counts that differ are a data difference: the shadow comparison's to explain, not
    # a schema failure (the demo's time-zone bug used to stop at schema parity this way).
    old, new = _tables(50, 0)
    new = new.set_column(
        new.column_names.index("opt"), "opt", new.column("opt").to_pandas().where(lambda s: s > 2)
    )
    assert schema_parity(GROUP, good, result=compare_tables(GROUP, old, new)).success
    bad = {**good, "seen": "timestamp without time zone", "amt": "real"}
    del bad["cnt"]
    # "cnt" keeps nulls as values (null_equals_null): a NOT NULL declaration would drop them;
    # "opt" (nulls_never_match) may be declared NOT NULL.
    declared = {**dict.fromkeys(bad, True), "opt": False}
    v = schema_parity(GROUP, {**bad, "cnt": "bigint"}, nullable={**declared, "cnt": False})
    assert not v.success
    by_column = {
        r["column"]: r["observed_value"] for r in v.results if r["expectation"] == "fsmig_column_parity"
    }
    assert set(by_column) == {"cnt", "amt", "seen"}
    assert "use timestamptz" in by_column["seen"] and "double precision" in by_column["amt"]
    assert "declared NOT NULL" in by_column["cnt"]
    missing = schema_parity(GROUP, bad, nullable=declared)
    assert {r["column"]: r["observed_value"] for r in missing.failed if r["column"]}["cnt"] == (
        "column missing from the new view"
    )


@pytest.mark.unit
def test_gx_start_up_noise_stays_out_of_the_log_and_our_warnings_stay_in(tmp_path):
    """Importing GX and building a context logs ~200 INFO lines; a task log must not carry them."""
    import subprocess
    import sys

    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s|%(message)s')\n"
        "from airflow_fsmigration.compare.gx import schema_parity\n"
        "from tests.test_compare_gx import GROUP\n"
        "good = {'user_id': 'text', 'cnt': 'bigint', 'amt': 'double precision',\n"
        "        'seen': 'timestamp with time zone', 'opt': 'numeric'}\n"
        "assert schema_parity(GROUP, good).success\n"
        "logging.getLogger('airflow_fsmigration.compare').warning('ours stays')\n"
        "logging.getLogger('great_expectations').warning('gx warnings stay')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=str(REPO)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    noise = [line for line in lines if line.startswith("great_expectations") and "warnings stay" not in line]
    assert noise == [], noise[:5]
    assert "airflow_fsmigration.compare|ours stays" in lines
    assert "great_expectations|gx warnings stay" in lines
