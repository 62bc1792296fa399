"""``fsmigrate``: the command line, usable when Airflow is down.

Each area registers its subcommands from its own module (``register(subparsers)``), so the
parts of the product stay independent. Exit codes: 0 ok; 1 the check failed (a mismatch, a
breach); 2 bad input (an invalid plan, an unknown group, a missing connection, a bad argument);
3 inconclusive (a store did not answer, not enough data): never reported as a pass.

Arguments are checked before any work starts, each error one line (:class:`Parser`); the
argument types below are shared by the command modules so limits read the same everywhere.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

# Subcommand modules, in the order they appear in --help.
COMMAND_MODULES = (
    "airflow_fsmigration.cli.plan_commands",
    "airflow_fsmigration.cli.shadow_commands",
    "airflow_fsmigration.cli.routing_commands",
    "airflow_fsmigration.cli.serving_commands",
    "airflow_fsmigration.cli.backfill_commands",
    "airflow_fsmigration.cli.feast_commands",
)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCONCLUSIVE = 0, 1, 2, 3
# File-system errors about paths the user gave: bad input, not an outage.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fsmigrate backfill: error: ... (see --help)``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high`` (counts and sizes that bound the work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low:,}..{high:,}")
        return value

    parse.__name__ = "integer"
    return parse


def bounded_seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds in ``low..high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} s is out of range: use {low:g}..{high:g} seconds")
        return value

    parse.__name__ = "seconds"
    return parse


def output_dir(text: str) -> Path:
    """An argparse type: a folder to write into; refused when it (or a parent) is a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output folder is blank")
    path = Path(text)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        which = "is" if probe == path else f"is inside {probe}, which is"
        raise argparse.ArgumentTypeError(f"{text} {which} a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK):
        raise argparse.ArgumentTypeError(f"{probe} is not writable")
    return path


def output_file(text: str) -> Path:
    """An argparse type: a file to write; refused when it is a folder or its folder cannot exist."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the output file name is blank")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    output_dir(str(path.parent) if str(path.parent) else ".")
    return path


def known_group(plan: Any, name: str) -> str | None:
    """``name`` if the plan has that group; else print one line naming the known ones and None."""
    if name not in plan.groups:
        print(
            f"error: plan '{plan.name}' has no group {name!r}; known: {', '.join(sorted(plan.groups))}",
            file=sys.stderr,
        )
        return None
    return name


def emit_json(source: Path, target: Path) -> None:
    """Copy a written result's JSON to ``target`` (``-``: standard output)."""
    data = source.read_text()
    if str(target) == "-":
        print(data)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(data)
    print(f"json: {target}")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fsmigrate",
        description="Run feature store migrations safely: assess, shadow, ramp, roll back, backfill.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from airflow_fsmigration.connections import ConnectionNotFound, StoreUnavailable
    from airflow_fsmigration.plan import PlanError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2) and --help (exit 0)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except PlanError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except ConnectionNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StoreUnavailable as exc:
        print(f"inconclusive: {exc}", file=sys.stderr)
        return EXIT_INCONCLUSIVE
    except _PATH_ERRORS as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Last resort: never a traceback on the terminal, and never exit 1 ("the data disagree")
        # for a crash. The run did not reach a verdict, so it is inconclusive.
        if os.environ.get("FSMIG_DEBUG"):
            raise
        detail = " ".join(str(exc).split())[:300]
        print(
            f"inconclusive: unexpected {type(exc).__name__}: {detail} (a bug: rerun with FSMIG_DEBUG=1 "
            "for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INCONCLUSIVE


if __name__ == "__main__":
    sys.exit(main())
