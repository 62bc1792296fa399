"""``fsmigrate backfill`` (replay a group's definition over history) and ``fsmigrate pit``.

Both work with Airflow down: connections come from ``AIRFLOW_CONN_*``. A backfill whose window
the raw events do not cover is refused with the exact gap (exit 1) before anything is written;
the same command run again after a crash resumes at the first unfinished chunk (the run id is
derived from the parameters unless ``--run-id`` is given).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow_fsmigration.cli import bounded_int, emit_json, known_group, output_dir
from airflow_fsmigration.plan.durations import format_duration

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3
# A snapshot grid is refused above this many times before anything runs: `--every 1ms` over a
# day would be 86 million snapshot queries (and a grid that alone fills gigabytes of memory).
DEFAULT_MAX_SNAPSHOTS = 10_000


def _when(text: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time: use e.g. 2026-09-01 or 2026-09-01T06:00Z"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _cadence(text: str) -> timedelta:
    """A snapshot cadence: a duration of at least one second (``0s`` would never advance)."""
    from airflow_fsmigration.plan.durations import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < timedelta(seconds=1):
        raise argparse.ArgumentTypeError(f"--every {text} is under 1s: snapshot times are at least 1s apart")
    return value


def _sql_name(kind: str) -> Any:
    """An argparse type for a table or column name, by the plan's own rule (no injection shapes)."""
    from airflow_fsmigration.plan.names import column_name, relation_name

    check = relation_name if kind == "table" else column_name

    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _run_id(text: str) -> str:
    if not text.strip() or len(text) > 200 or any(ord(c) < 32 for c in text):
        raise argparse.ArgumentTypeError("a run id is 1..200 printable characters")
    return text


def _max_snapshots() -> int:
    """The default grid limit: ``$FSMIG_BACKFILL_MAX_SNAPSHOTS`` or 10,000 snapshot times."""
    try:
        return max(1, int(os.environ.get("FSMIG_BACKFILL_MAX_SNAPSHOTS", DEFAULT_MAX_SNAPSHOTS)))
    except ValueError:
        return DEFAULT_MAX_SNAPSHOTS


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _window_error(args: argparse.Namespace) -> str | None:
    """Argument errors a parser cannot see alone (start/end order, the grid's size), or None."""
    if args.start is not None and args.end is not None and args.end < args.start:
        return f"--end {_iso(args.end)} is before --start {_iso(args.start)}"
    if getattr(args, "every", None) is None:
        return None
    if args.start is None or args.end is None:
        return "--every needs --start and --end"
    count = (args.end - args.start) // args.every + 1
    if count > args.max_snapshots:
        return (
            f"the grid --start {_iso(args.start)} --end {_iso(args.end)} --every "
            f"{format_duration(args.every)} is {count:,} snapshot times, over the limit of "
            f"{args.max_snapshots:,}: use a coarser --every or a shorter window, or raise the limit with "
            "--max-snapshots N (or FSMIG_BACKFILL_MAX_SNAPSHOTS)"
        )
    return None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "backfill",
        help="recompute a group's features as of historical times in the new store (resumable)",
        description="Replay a group's SQL definition as of each snapshot time (--every) or each label "
        "row of a spine table (--spine), in checkpointed chunks. Refused when the raw events do not "
        "cover the window. Exit codes: 0 done, 1 refused (retention gap), 2 bad input, 3 a store did "
        "not answer.",
    )
    p.add_argument("plan", type=Path, help="plan YAML file or folder")
    p.add_argument("group", help="feature group to backfill")
    p.add_argument("--start", type=_when, help="first snapshot time (ISO 8601, UTC if no offset)")
    p.add_argument("--end", type=_when, help="last snapshot time (inclusive)")
    shape = p.add_mutually_exclusive_group(required=True)
    shape.add_argument("--every", type=_cadence, help="snapshot cadence, e.g. 1d or 1h (at least 1s)")
    shape.add_argument(
        "--spine",
        metavar="TABLE",
        type=_sql_name("table"),
        help="label spine table (schema.table) of entity and time rows",
    )
    p.add_argument(
        "--spine-entity-column",
        type=_sql_name("column"),
        help="entity column of the spine (default: the group's entity key)",
    )
    p.add_argument(
        "--spine-time-column",
        type=_sql_name("column"),
        help="label time column of the spine (default: its one timestamp column)",
    )
    p.add_argument(
        "--run-id", type=_run_id, help="run id (default: derived from the parameters, so a re-run resumes)"
    )
    p.add_argument(
        "--out", type=output_dir, help="also write the run's training snapshot as Parquet under DIR"
    )
    p.add_argument(
        "--snapshots-per-chunk",
        type=bounded_int(1, 10_000),
        default=1,
        help="snapshot times per chunk (grid)",
    )
    p.add_argument(
        "--labels-per-chunk",
        type=bounded_int(1, 10_000_000),
        default=100_000,
        help="labels per chunk (spine)",
    )
    p.add_argument(
        "--max-snapshots",
        type=bounded_int(1, 10_000_000),
        default=_max_snapshots(),
        help=f"refuse a grid of more snapshot times than this (default {DEFAULT_MAX_SNAPSHOTS:,}, "
        "or $FSMIG_BACKFILL_MAX_SNAPSHOTS)",
    )
    p.add_argument(
        "--strategy",
        choices=["auto", "lateral", "per_timestamp", "set"],
        default="auto",
        help="spine evaluation: one per label, one per distinct time, one range join of the labels "
        "(set), or chosen per chunk with the reason logged (default); see docs/performance.md",
    )
    p.add_argument(
        "--workers",
        type=bounded_int(1, 64),
        default=None,
        help="chunks run on this many store connections at once (default: 2 for a spine, 1 for a grid, "
        "or $FSMIG_BACKFILL_WORKERS)",
    )
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser(
        "pit",
        help="point-in-time validation: new as-of values vs the old offline store's history",
        description="Sample (entity, time) pairs from the old offline history and compare them with "
        "the new definition evaluated as of the same times. Exit 0 pass, 1 fail, 3 inconclusive.",
    )
    p.add_argument("plan", type=Path)
    p.add_argument("group")
    p.add_argument(
        "--sample", type=bounded_int(1, 10_000_000), default=1000, help="(entity, time) pairs (default 1000)"
    )
    p.add_argument(
        "--times",
        type=bounded_int(1, 100_000),
        default=10,
        help="distinct history times to sample (default 10)",
    )
    p.add_argument("--seed", type=bounded_int(-(2**63), 2**63 - 1), default=0)
    p.add_argument("--start", type=_when, help="sample history times from here")
    p.add_argument("--end", type=_when, help="sample history times up to here")
    p.add_argument(
        "--out",
        type=output_dir,
        default=Path(".fsmig/reports"),
        help="report folder (default .fsmig/reports)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the whole result as JSON ('-' = stdout)",
    )
    p.set_defaults(func=cmd_pit)


def cmd_backfill(args: argparse.Namespace) -> int:
    import logging

    from airflow_fsmigration.backfill.replay import BackfillError, run_backfill
    from airflow_fsmigration.backfill.retention import RetentionGapError
    from airflow_fsmigration.backfill.snapshots import SnapshotSchemaError, export_snapshots
    from airflow_fsmigration.connections import connect_postgres
    from airflow_fsmigration.plan import load_plan

    problem = _window_error(args)
    if problem:
        print(f"fsmigrate backfill: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    plan = load_plan(args.plan)
    group = known_group(plan, args.group)
    if group is None:
        return EXIT_BAD_INPUT
    c = plan.connections
    store = connect_postgres(c.new_store, autocommit=True, application_name="fsmigrate-backfill")
    registry = connect_postgres(c.registry, autocommit=True) if c.registry != c.new_store else store
    events = connect_postgres(c.event_log, autocommit=True) if c.event_log != c.new_store else store
    try:
        result = run_backfill(
            plan,
            group,
            store,
            registry,
            event_conn=events,
            start=args.start,
            end=args.end,
            every=args.every,
            spine=args.spine,
            spine_entity_column=args.spine_entity_column,
            spine_time_column=args.spine_time_column,
            run_id=args.run_id,
            snapshots_per_chunk=args.snapshots_per_chunk,
            labels_per_chunk=args.labels_per_chunk,
            strategy=args.strategy,
            workers=args.workers,
        )
        print(
            f"backfill of '{group}' done: run {result.run_id}, {result.rows} rows in {result.chunks} chunks "
            f"({result.chunks_resumed} resumed) into {result.output_table}, checksum {result.checksum}, "
            f"{result.seconds:.1f} s"
        )
        if args.out:
            export = export_snapshots(plan, result.run_id, store, registry, args.out)
            print(
                f"snapshot: {export.rows} rows in {len(export.files)} Parquet file(s); manifest {export.manifest}"
            )
        return EXIT_OK
    except RetentionGapError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (BackfillError, SnapshotSchemaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for conn in {id(x): x for x in (store, registry, events)}.values():
            conn.close()


def cmd_pit(args: argparse.Namespace) -> int:
    from airflow_fsmigration.backfill.pit import validate_point_in_time
    from airflow_fsmigration.connections import connect_postgres, postgres_url
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.feast_offline import offline_source_for

    problem = _window_error(args)
    if problem:
        print(f"fsmigrate pit: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    plan = load_plan(args.plan)
    group = known_group(plan, args.group)
    if group is None:
        return EXIT_BAD_INPUT
    c = plan.connections
    store = connect_postgres(c.new_store, autocommit=True)
    offline_conn = connect_postgres(c.legacy_offline, autocommit=True)
    try:
        with offline_source_for(plan, postgres_url(c.legacy_offline), c.legacy_offline) as offline:
            result = validate_point_in_time(
                plan,
                group,
                store,
                offline,
                offline_conn=offline_conn,
                sample_size=args.sample,
                n_times=args.times,
                seed=args.seed,
                start=args.start,
                end=args.end,
            )
    finally:
        store.close()
        offline_conn.close()
    from airflow_fsmigration.reports.shadow import write_shadow_report

    print(result.comparison.summary())
    print(result.summary)
    path = write_shadow_report(result.comparison, args.out, kind="pit")
    print(f"report: {path}")
    if args.json is not None:
        emit_json(path.with_suffix(".json"), args.json)
    return {"pass": EXIT_OK, "fail": EXIT_FAILED}.get(result.verdict, EXIT_INCONCLUSIVE)
