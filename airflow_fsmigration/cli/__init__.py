"""``fsmigrate``: the command line, usable when Airflow is down.

Each area registers its subcommands from its own module (``register(subparsers)``), so the
parts of the product stay independent. Exit codes: 0 ok; 1 the check failed (a mismatch, a
breach); 2 bad input (an invalid plan, an unknown group, a missing connection); 3 inconclusive
(a store did not answer, not enough data): never reported as a pass.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
