"""``fsmigrate validate`` and ``fsmigrate assess``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from airflow_fsmigration.cli import output_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "validate", help="check a plan; print OK and the waves, or every error with file and line"
    )
    p.add_argument("plan", type=Path, help="plan YAML file or folder of YAML files")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("assess", help="write the inventory report (Markdown and HTML) for a plan")
    p.add_argument("plan", type=Path)
    p.add_argument(
        "--out",
        type=output_dir,
        default=Path(".fsmig/reports"),
        help="output folder (default .fsmig/reports)",
    )
    p.add_argument(
        "--no-retention",
        action="store_true",
        help="skip the retention audit (which reads the event-log connection)",
    )
    p.set_defaults(func=cmd_assess)


def cmd_validate(args: argparse.Namespace) -> int:
    from airflow_fsmigration.plan import compute_waves, load_plan
    from airflow_fsmigration.plan.definitions import dependency_findings
    from airflow_fsmigration.plan.graph import risk_tier

    plan = load_plan(args.plan)
    waves = compute_waves(plan)
    features = sum(len(g.features) for g in plan.groups.values())
    print(f"OK: plan '{plan.name}': {len(plan.groups)} groups, {features} features, {len(waves.waves)} waves")
    for i, wave in enumerate(waves.waves, start=1):
        names = ", ".join(f"{g} ({risk_tier(plan, plan.groups[g])})" for g in wave)
        print(f"  wave {i}: {names}")
    for finding in dependency_findings(plan):
        print(f"  warning: {finding}")
    return 0


def cmd_assess(args: argparse.Namespace) -> int:
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.assess import write_assessment

    plan = load_plan(args.plan)
    result = write_assessment(plan, args.out, retention=not args.no_retention)
    print(result.summary)
    print(f"report: {result.html_path}")
    print(f"markdown: {result.markdown_path}")
    return 0
