"""Fault suite: malformed CLI invocations are refused before any work, one line each, exit 2.

Covers the commands of plan, backfill, pit, loadtest, assess and import-feast (the routing
commands have their own checks). Each invocation runs in-process; a handful also as real
``python -m airflow_fsmigration.cli`` processes to prove no traceback reaches the terminal.
Figures: 30+ malformed invocations, 0 tracebacks, each refused in under 2 s without
touching a store (no connection is configured here, so any store access would fail loudly).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.cli import main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "include" / "demo_plan")
A_FILE = str(REPO / "README.md")
DAY = ["--start", "2026-09-01", "--end", "2026-09-02"]
BACKFILL = ["backfill", DEMO, "user_txn_stats"]

# (id, argv, text the one error line must contain)
CASES: list[tuple[str, list[str], str]] = [
    ("every_1ms", [*BACKFILL, "--every", "1ms", *DAY], "under 1s"),
    (
        "grid_over_limit",
        [*BACKFILL, "--every", "1s", *DAY],
        "is 86,401 snapshot times, over the limit of 10,000",
    ),
    (
        "grid_over_own_limit",
        [*BACKFILL, "--every", "1h", *DAY, "--max-snapshots", "10"],
        "over the limit of 10:",
    ),
    (
        "max_snapshots_zero",
        [*BACKFILL, "--every", "1h", *DAY, "--max-snapshots", "0"],
        "--max-snapshots: 0 is out of range",
    ),
    (
        "end_before_start",
        [*BACKFILL, "--every", "1d", "--start", "2026-09-05", "--end", "2026-09-01"],
        "is before --start",
    ),
    ("every_zero", [*BACKFILL, "--every", "0s", *DAY], "under 1s"),
    ("every_words", [*BACKFILL, "--every", "5 parsecs", *DAY], "bad duration"),
    ("every_huge", [*BACKFILL, "--every", "99999999999999d", *DAY], "longer than the limit"),
    ("every_without_window", [*BACKFILL, "--every", "1d"], "--every needs --start and --end"),
    (
        "start_not_a_time",
        [*BACKFILL, "--every", "1d", "--start", "yesterday", "--end", "2026-09-02"],
        "not an ISO 8601 time",
    ),
    (
        "every_and_spine",
        [*BACKFILL, "--every", "1d", "--spine", "labels.spine", *DAY],
        "not allowed with argument",
    ),
    ("neither_every_nor_spine", [*BACKFILL, *DAY], "one of the arguments --every --spine is required"),
    (
        "snapshots_per_chunk_zero",
        [*BACKFILL, "--every", "1d", *DAY, "--snapshots-per-chunk", "0"],
        "0 is out of range",
    ),
    (
        "labels_per_chunk_negative",
        [*BACKFILL, "--spine", "l.s", "--labels-per-chunk", "-1"],
        "-1 is out of range",
    ),
    ("chunk_not_a_number", [*BACKFILL, "--spine", "l.s", "--labels-per-chunk", "lots"], "not a whole number"),
    ("out_is_a_file", [*BACKFILL, "--every", "1d", *DAY, "--out", A_FILE], "is a file, not a folder"),
    ("out_inside_a_file", [*BACKFILL, "--every", "1d", *DAY, "--out", A_FILE + "/snap"], "which is a file"),
    ("spine_injection", [*BACKFILL, "--spine", "labels.s; DROP TABLE x"], "cannot be a Postgres name"),
    (
        "spine_column_quote",
        [*BACKFILL, "--spine", "l.s", "--spine-time-column", 'label"; ts'],
        "cannot be a Postgres name",
    ),
    ("run_id_blank", [*BACKFILL, "--every", "1d", *DAY, "--run-id", " "], "run id is 1..200 printable"),
    ("unknown_option", [*BACKFILL, "--spine", "l.s", "--evry", "1d"], "unrecognized arguments: --evry"),
    ("missing_group", ["backfill", DEMO], "the following arguments are required"),
    ("unknown_group", ["backfill", DEMO, "nope", "--every", "1d", *DAY], "has no group 'nope'"),
    ("pit_sample_zero", ["pit", DEMO, "user_txn_stats", "--sample", "0"], "0 is out of range"),
    ("pit_times_negative", ["pit", DEMO, "user_txn_stats", "--times", "-3"], "-3 is out of range"),
    (
        "pit_end_before_start",
        ["pit", DEMO, "user_txn_stats", "--start", "2026-09-05", "--end", "2026-09-01"],
        "is before --start",
    ),
    ("pit_seed_text", ["pit", DEMO, "user_txn_stats", "--seed", "abc"], "not a whole number"),
    ("loadtest_negative", ["loadtest", DEMO, "merchant_stats", "--duration", "-5"], "out of range"),
    ("loadtest_inf", ["loadtest", DEMO, "merchant_stats", "--duration", "inf"], "out of range"),
    ("loadtest_nan", ["loadtest", DEMO, "merchant_stats", "--duration", "nan"], "out of range"),
    ("loadtest_week", ["loadtest", DEMO, "merchant_stats", "--duration", "604800"], "out of range"),
    (
        "loadtest_processes_zero",
        ["loadtest", DEMO, "merchant_stats", "--processes", "0"],
        "0 is out of range",
    ),
    ("loadtest_entities_zero", ["loadtest", DEMO, "merchant_stats", "--entities", "0"], "0 is out of range"),
    ("assess_out_file", ["assess", DEMO, "--out", A_FILE], "is a file, not a folder"),
    ("feast_out_folder", ["import-feast", DEMO, "--out", str(REPO)], "is a folder, not a file"),
    ("unknown_command", ["migrate-everything"], "invalid choice"),
    ("validate_no_plan", ["validate"], "the following arguments are required: plan"),
]


def test_suite_size() -> None:
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("argv", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_invocation_is_one_line_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NEW_STORE", "REGISTRY", "EVENTS", "LEGACY_OFFLINE", "LEGACY_REDIS"):
        monkeypatch.delenv(f"AIRFLOW_CONN_FSMIG_{name}", raising=False)
    started = time.monotonic()
    code = main(argv)
    seconds = time.monotonic() - started
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert code == 2, captured
    assert seconds < 2, f"took {seconds:.1f} s"
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert says in lines[0], lines[0]


def test_grid_limit_can_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_fsmigration.cli import backfill_commands as bc

    start = datetime(2026, 9, 1, tzinfo=UTC)
    args = argparse.Namespace(start=start, end=start + timedelta(days=1), every=timedelta(seconds=1))
    assert "86,401 snapshot times" in (
        bc._window_error(argparse.Namespace(**vars(args), max_snapshots=10_000)) or ""
    )
    assert bc._window_error(argparse.Namespace(**vars(args), max_snapshots=100_000)) is None
    monkeypatch.setenv("FSMIG_BACKFILL_MAX_SNAPSHOTS", "123")
    assert bc._max_snapshots() == 123
    monkeypatch.setenv("FSMIG_BACKFILL_MAX_SNAPSHOTS", "lots")
    assert bc._max_snapshots() == bc.DEFAULT_MAX_SNAPSHOTS


def test_help_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backfill", "--help"]) == 0
    assert "--max-snapshots" in capsys.readouterr().out


def test_an_unexpected_crash_is_one_line_and_inconclusive(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last resort: a bug is exit 3 with one line, never a traceback and never 1 ("data disagree")."""
    from airflow_fsmigration.cli import plan_commands

    def boom(args: argparse.Namespace) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(plan_commands, "cmd_validate", boom)
    monkeypatch.delenv("FSMIG_DEBUG", raising=False)
    assert main(["validate", DEMO]) == 3
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("inconclusive: unexpected KeyError: 'surprise'") and "FSMIG_DEBUG=1" in line


SUBPROCESS_CASES = ["grid_over_limit", "end_before_start", "out_is_a_file", "loadtest_negative", "every_1ms"]


@pytest.mark.timeout(120)
def test_real_processes_print_one_line_and_no_traceback() -> None:
    by_id = {c[0]: c for c in CASES}
    for case_id in SUBPROCESS_CASES:
        _, argv, says = by_id[case_id]
        proc = subprocess.run(
            [sys.executable, "-m", "airflow_fsmigration.cli", *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        assert proc.returncode == 2, (case_id, proc.stderr)
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr, (case_id, lines)
