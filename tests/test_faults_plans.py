"""Fault suite: malformed plans are refused in bounded time, one line each with file and line.

Each case mutates a small valid plan (one YAML file, one SQL file) and runs ``fsmigrate
validate`` in-process: exit 2, every error line ``file:line: [field.path:] message``, no
traceback, each case within a few seconds (pytest-timeout stops a hang). A handful run as real
subprocesses to prove nothing reaches the terminal as a traceback. Figures: 60+ malformed
plans, 0 tracebacks, 0 hangs, every error with a line.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airflow_fsmigration.cli import main
from airflow_fsmigration.plan import PlanError, load_plan

pytestmark = pytest.mark.unit

PLAN = """\
version: 1
name: mini
nightly_schedule: "0 2 * * *"
connections:
  legacy_online: fsmig_legacy_redis
  legacy_offline: fsmig_legacy_offline
  event_log: fsmig_events
  new_store: fsmig_new_store
  registry: fsmig_registry
  model_metrics: fsmig_model_metrics
defaults:
  consistency_threshold: 0.995
  shadow_soak: 14d
  shadow_sample_size: 1000
  ramp_steps: [5, 50, 100]
  bake: 48h
  load_test_duration: 5m
  keep_warm: 30d
models:
  m1: {owner: a@example.com, training_datasets: [{location: "s3://x", cutoff: 2026-08-01, rows: 10}]}
groups:
  g1:
    entity_key: user_id
    definition: sql/g1.sql
    features:
      - {name: f1, dtype: int64}
      - {name: f2, dtype: float64, atol: 0.01, rtol: 0.001}
    legacy_online: {key_template: "fs:g1:{entity}", timestamp_field: _ts}
    legacy_offline: {table: legacy.g1_history, event_time_column: event_ts}
    event_sources:
      - {table: raw.events, time_column: event_ts, retention: 90d, longest_window: 7d}
    backfill_window: 30d
    models: [m1]
    sla: {p99_ms: 10, max_staleness: 5m}
    qps: {peak: 100, average: 10}
    criticality: low
"""
SQL = "SELECT user_id, count(*) AS f1, sum(amount) AS f2\nFROM raw.events WHERE event_ts <= :as_of GROUP BY user_id\n"
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)

# (id, edit, text the error must contain). An edit is (old, new) on plan.yaml, or a function
# of the plan folder.
Edit = tuple[str, str] | Callable[[Path], None]


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        target = folder / name
        target.write_bytes(data if isinstance(data, bytes) else data.encode())

    return edit


CASES: list[tuple[str, Edit, str]] = [
    # top level
    ("version_2", ("version: 1", "version: 2"), "reads plan version 1, got version 2"),
    ("version_text", ("version: 1", 'version: "1"'), "version"),
    ("name_bad", ("name: mini", "name: Mini-Plan"), "not a valid name"),
    ("name_missing", ("name: mini\n", ""), "required field is missing"),
    ("connection_missing", ("  new_store: fsmig_new_store\n", ""), "required field is missing"),
    (
        "connection_space",
        ("new_store: fsmig_new_store", "new_store: fsmig new store"),
        "not an Airflow connection id",
    ),
    (
        "connection_quote",
        ("new_store: fsmig_new_store", 'new_store: "x\'; DROP"'),
        "not an Airflow connection id",
    ),
    ("cron_minute_61", ('"0 2 * * *"', '"61 2 * * *"'), "not a cron expression"),
    ("cron_words", ('"0 2 * * *"', '"every night"'), "not a cron expression"),
    ("cron_int", ('"0 2 * * *"', "5"), "nightly_schedule"),
    ("unknown_top_key", ("version: 1\n", "version: 1\nnmae: x\n"), "unknown key 'nmae'"),
    # defaults
    (
        "threshold_high",
        ("consistency_threshold: 0.995", "consistency_threshold: 1.5"),
        "less than or equal to 1",
    ),
    ("threshold_nan", ("consistency_threshold: 0.995", "consistency_threshold: .nan"), "finite number"),
    ("soak_zero", ("shadow_soak: 14d", "shadow_soak: 0s"), "must be between 1s and 366d"),
    ("soak_negative", ("shadow_soak: 14d", "shadow_soak: -1d"), "bad duration"),
    ("bake_zero", ("bake: 48h", "bake: 0s"), "must be between 1s and 366d, got 0s"),
    ("bake_ms", ("bake: 48h", "bake: 500ms"), "must be between 1s"),
    ("bake_huge", ("bake: 48h", "bake: 99999999999999d"), "longer than the limit of 36600d"),
    ("bake_inf", ("bake: 48h", "bake: .inf"), "finite"),
    ("bake_words", ("bake: 48h", "bake: 48 hours please"), "bad duration"),
    ("bake_bool", ("bake: 48h", "bake: true"), "expected a duration"),
    ("bake_long_text", ("bake: 48h", "bake: " + "1s" * 100), "longer than 64 characters"),
    ("load_test_month", ("load_test_duration: 5m", "load_test_duration: 30d"), "between 1s and 1d"),
    ("keep_warm_huge", ("keep_warm: 30d", "keep_warm: 100000d"), "longer than the limit"),
    ("defaults_typo", ("  bake: 48h\n", "  bake: 48h\n  baek: 1h\n"), "did you mean 'bake'"),
    ("ramp_descending", ("ramp_steps: [5, 50, 100]", "ramp_steps: [50, 5, 100]"), "strictly increase"),
    ("ramp_not_100", ("ramp_steps: [5, 50, 100]", "ramp_steps: [5, 50]"), "must be 100"),
    ("sample_negative", ("shadow_sample_size: 1000", "shadow_sample_size: -1"), "greater than or equal to 0"),
    (
        "sample_huge",
        ("shadow_sample_size: 1000", "shadow_sample_size: 100000000000000000000"),
        "shadow_sample_size",
    ),
    (
        "trigger_pct",
        ("  keep_warm: 30d\n", "  keep_warm: 30d\n  rollback_triggers: {error_rate_pct: 500}\n"),
        "less than or equal to 100",
    ),
    # models
    ("cutoff_not_date", ("cutoff: 2026-08-01", "cutoff: not-a-date"), "cutoff"),
    ("rows_negative", ("rows: 10", "rows: -5"), "greater than or equal to 0"),
    # groups
    ("group_upper", ("  g1:\n", "  G1:\n"), "not a valid name"),
    ("group_too_long", ("  g1:\n", f"  {'g' * 45}:\n"), "the limit is 40"),
    ("entity_space", ("entity_key: user_id", 'entity_key: "user id"'), "not a valid name"),
    (
        "feature_duplicate",
        ("{name: f2, dtype: float64", "{name: f1, dtype: float64"),
        "duplicate feature 'f1'",
    ),
    ("dtype_unknown", ("{name: f1, dtype: int64}", "{name: f1, dtype: int32}"), "dtype"),
    ("atol_inf", ("atol: 0.01", "atol: .inf"), "finite number"),
    ("atol_negative", ("atol: 0.01", "atol: -1"), "greater than or equal to 0"),
    ("rtol_nan", ("rtol: 0.001", "rtol: .nan"), "finite number"),
    (
        "null_policy",
        ("{name: f1, dtype: int64}", "{name: f1, dtype: int64, null_policy: maybe}"),
        "null_policy",
    ),
    ("key_no_entity", ('"fs:g1:{entity}"', '"fs:g1"'), "key_template"),
    ("key_space", ('"fs:g1:{entity}"', '"fs g1:{entity}"'), "without spaces or control characters"),
    ("ts_field_space", ("timestamp_field: _ts", 'timestamp_field: "a b"'), "hash field"),
    (
        "table_injection",
        ("legacy.g1_history", '"legacy.g1_history; DROP TABLE x"'),
        "cannot be a Postgres name",
    ),
    ("table_three_parts", ("legacy.g1_history", "a.b.c"), "must be 'table' or 'schema.table'"),
    ("table_empty", ("legacy.g1_history", '""'), "cannot be a Postgres name"),
    ("table_too_long", ("legacy.g1_history", "legacy." + "t" * 70), "63 bytes"),
    (
        "column_control",
        ("event_time_column: event_ts", 'event_time_column: "event\\tts"'),
        "cannot be a Postgres name",
    ),
    (
        "column_quote",
        ("event_time_column: event_ts}", "event_time_column: event_ts, entity_column: 'x\"; drop'}"),
        "cannot be a Postgres name",
    ),
    ("source_injection", ("table: raw.events", 'table: "raw.events\' OR 1=1"'), "cannot be a Postgres name"),
    ("retention_zero", ("retention: 90d", "retention: 0s"), "must be between 1s"),
    ("window_huge", ("longest_window: 7d", "longest_window: 99999999999999d"), "longer than the limit"),
    ("p99_zero", ("p99_ms: 10", "p99_ms: 0"), "greater than 0"),
    ("p99_inf", ("p99_ms: 10", "p99_ms: .inf"), "finite number"),
    ("qps_average_above_peak", ("average: 10", "average: 1000"), "above peak QPS"),
    ("qps_huge", ("peak: 100", "peak: 1.0e+12"), "less than or equal to"),
    ("criticality", ("criticality: low", "criticality: extreme"), "criticality"),
    (
        "depends_unknown",
        ("criticality: low", "criticality: low\n    depends_on: [g2]"),
        "unknown upstream group 'g2'",
    ),
    (
        "depends_self",
        ("criticality: low", "criticality: low\n    depends_on: [g1]"),
        "cannot depend on itself",
    ),
    ("model_unknown", ("models: [m1]", "models: [m9]"), "unknown model 'm9'"),
    (
        "features_empty",
        (
            "features:\n      - {name: f1, dtype: int64}\n      - {name: f2, dtype: float64, atol: 0.01, rtol: 0.001}\n",
            "features: []\n",
        ),
        "at least one feature",
    ),
    ("groups_list", ("groups:\n  g1:", "groups:\n  - g1:"), "must be a mapping"),
    (
        "group_scalar",
        ("  g1:\n    entity_key: user_id\n", "  g1: hello\n  g9:\n    entity_key: user_id\n"),
        "groups.g1",
    ),
    # SQL definitions
    ("sql_missing", ("definition: sql/g1.sql", "definition: sql/nope.sql"), "not found"),
    (
        "sql_control_char",
        ("definition: sql/g1.sql", 'definition: "sql/g1\\0.sql"'),
        "without control characters",
    ),
    ("sql_directory", ("definition: sql/g1.sql", "definition: sql"), "not found"),
    ("sql_binary", _write("sql/g1.sql", bytes(range(256)) * 4), "is binary (a NUL byte at offset 0)"),
    (
        "sql_latin1",
        _write("sql/g1.sql", "SELECT 'caf\xe9' AS f1".encode("latin-1")),
        "not UTF-8 text (byte 0xe9",
    ),
    ("sql_too_big", _write("sql/g1.sql", "-- x\n" * 220_000), "over the limit of 1,048,576"),
    ("sql_not_sql", _write("sql/g1.sql", "SELEC user_id FROM (((("), "SQL does not parse"),
    ("sql_unterminated", _write("sql/g1.sql", "SELECT 'open AS f1"), "SQL does not parse"),
    ("sql_missing_column", _write("sql/g1.sql", "SELECT user_id, 1 AS f1 FROM t"), "does not select f2"),
    ("sql_two_statements", _write("sql/g1.sql", SQL + ";\nDROP TABLE x;"), "exactly one SELECT"),
    ("sql_draft", _write("sql/g1.sql", "-- TODO(fsmigrate): write it\n"), "draft stub"),
    # whole files
    ("alias_bomb", _write("plan.yaml", BOMB), "YAML aliases expand to more than 100,000 values"),
    (
        "deep_flow",
        _write("plan.yaml", "name: x\nconnections: " + "[" * 5000 + "]" * 5000 + "\n"),
        "nest deeper than 32",
    ),
    (
        "deep_block",
        _write("plan.yaml", "name: x\n" + "".join("  " * i + "a:\n" for i in range(200))),
        "nest deeper than 32",
    ),
    ("binary_plan", _write("plan.yaml", bytes(range(256)) * 40), "binary (a NUL byte"),
    ("nul_in_text", _write("plan.yaml", PLAN.replace("description", "x") + "\x00\n"), "binary (a NUL byte"),
    (
        "latin1_plan",
        _write("plan.yaml", (PLAN + "description: caf\xe9\n").encode("latin-1")),
        "not UTF-8 text",
    ),
    ("yaml_syntax", ("connections:\n", "connections: {\n"), "not valid YAML"),
    ("duplicate_key", ("version: 1\n", "version: 1\nname: again\n"), "not valid YAML"),
    ("tab_indent", ("    entity_key: user_id", "\tentity_key: user_id"), "not valid YAML"),
    ("control_char", ("version: 1\n", "version: 1\ndescription: a\x07b\n"), "not valid YAML"),
    ("undefined_alias", ("version: 1\n", "version: 1\ndescription: *nope\n"), "not valid YAML"),
    ("plan_is_list", _write("plan.yaml", "- a\n- b\n"), "must be a mapping of sections"),
    ("plan_is_scalar", _write("plan.yaml", "hello\n"), "must be a mapping of sections"),
    ("empty_plan", _write("plan.yaml", ""), "required field is missing"),
    ("complex_key", ("version: 1\n", "version: 1\n? [a, b]\n: c\n"), "unknown key"),
]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "plan"
    (folder / "sql").mkdir(parents=True)
    (folder / "plan.yaml").write_text(PLAN)
    (folder / "sql" / "g1.sql").write_text(SQL)
    return folder


def _apply(folder: Path, edit: Edit) -> None:
    if callable(edit):
        edit(folder)
        return
    old, new = edit
    text = (folder / "plan.yaml").read_text()
    assert old in text, f"fixture text {old!r} not in the plan"
    (folder / "plan.yaml").write_text(text.replace(old, new, 1))


ERROR_LINE = re.compile(r"^  \S+:\d+: (\S+: )?\S")


def test_the_base_plan_is_valid(tmp_path: Path) -> None:
    plan = load_plan(_folder(tmp_path))
    assert list(plan.groups) == ["g1"]


def test_suite_size() -> None:
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("edit", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_plan_is_one_located_line_each_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Edit, says: str
) -> None:
    folder = _folder(tmp_path)
    _apply(folder, edit)
    started = time.monotonic()
    code = main(["validate", str(folder)])
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.out + captured.err
    assert seconds < 5, f"took {seconds:.1f} s"
    assert "Traceback" not in captured.err
    assert re.match(r"the migration plan has \d+ errors?:$", lines[0]), lines
    assert lines[1:] and all(ERROR_LINE.match(line) for line in lines[1:]), lines
    assert str(folder) in lines[1]
    assert says in captured.err, captured.err


def test_size_limit_names_the_knob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_fsmigration.plan import loader

    folder = _folder(tmp_path)
    monkeypatch.setattr(loader, "MAX_PLAN_BYTES", 500)
    with pytest.raises(PlanError) as exc:
        load_plan(folder)
    [issue] = exc.value.issues
    assert issue.line == 1
    assert "over the limit of 500: split it or set FSMIG_PLAN_MAX_BYTES" in issue.message


def test_top_level_errors_carry_their_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _apply(folder, ("version: 1", "version: 2"))
    _apply(folder, ('"0 2 * * *"', '"61 2 * * *"'))
    with pytest.raises(PlanError) as exc:
        load_plan(folder)
    lines = {i.path: i.line for i in exc.value.issues}
    assert lines == {"version": 1, "nightly_schedule": 3}


def test_injection_shaped_table_fails_pit_as_bad_input_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path)
    _apply(folder, ("legacy.g1_history", '"legacy.g1_history; DROP TABLE x"'))
    assert main(["pit", str(folder), "g1"]) == 2
    assert "cannot be a Postgres name" in capsys.readouterr().err


SUBPROCESS_CASES = ["alias_bomb", "binary_plan", "deep_flow", "bake_huge", "sql_binary", "table_injection"]


@pytest.mark.timeout(120)
def test_real_processes_print_no_traceback(tmp_path: Path) -> None:
    """The known findings as real ``python -m airflow_fsmigration.cli`` processes, a few seconds each."""
    by_id = {c[0]: c for c in CASES}
    for case_id in SUBPROCESS_CASES:
        _, edit, says = by_id[case_id]
        folder = _folder(tmp_path / case_id)
        _apply(folder, edit)
        proc = subprocess.run(
            [sys.executable, "-m", "airflow_fsmigration.cli", "validate", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2, (case_id, proc.stderr)
        assert "Traceback" not in proc.stderr, (case_id, proc.stderr)
        assert says in proc.stderr, (case_id, proc.stderr)
