"""``fsmigrate import-feast FEAST_REPO``: draft a migration plan from a Feast repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from airflow_fsmigration.cli import output_file


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import-feast",
        help="draft a plan (YAML + SQL stubs) from a Feast repository, for a person to complete",
        description=(
            "Parse a Feast repository the way `feast plan` does (in the Feast virtualenv, "
            "without touching its stores) and write a draft plan: one group per feature view, one "
            "model per feature service. SQL definitions, SLA and QPS are left as TODO(fsmigrate) "
            "markers that fail `fsmigrate validate` until filled."
        ),
    )
    p.add_argument("repo", type=Path, metavar="FEAST_REPO", help="folder holding feature_store.yaml")
    p.add_argument(
        "--out",
        type=output_file,
        default=Path("plan.yaml"),
        help="draft plan file to write (default plan.yaml)",
    )
    p.add_argument(
        "--feast-python",
        default=None,
        help="Python interpreter that has Feast (default: $FSMIG_FEAST_PYTHON, then .venv-feast)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing plan file")
    p.set_defaults(func=cmd_import_feast)


def cmd_import_feast(args: argparse.Namespace) -> int:
    from airflow_fsmigration.cli import EXIT_BAD_INPUT
    from airflow_fsmigration.feast_draft import draft_plan
    from airflow_fsmigration.feast_import import FeastRepo, FeastUnavailable, dump_feast_repo

    if args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to overwrite it", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        repo = FeastRepo.from_dict(dump_feast_repo(args.repo, python=args.feast_python))
    except (FileNotFoundError, ValueError, FeastUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    draft = draft_plan(repo, args.out)
    print(
        f"drafted {draft.plan_path}: {len(draft.sql_paths)} groups from Feast project '{repo.project}' "
        f"({len(repo.services)} feature services as models); the plan holds Feast's layout (layout: feast)"
    )
    print(
        f"fill in these {len(draft.todos)} items (marked TODO(fsmigrate)), then run `fsmigrate validate {args.out}`:"
    )
    for todo in draft.todos:
        print(f"  - {todo}")
    for skipped in draft.skipped:
        print(f"  not drafted: {skipped}")
    for item in draft.incomplete_models:
        print(f"WARNING: {item}", file=sys.stderr)
    return 0
