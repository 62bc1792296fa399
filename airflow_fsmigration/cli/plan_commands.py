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
    p.add_argument(
        "--rewrites",
        type=output_dir,
        default=None,
        metavar="DIR",
        help="with new_store.dialect risingwave: write the mechanical rewrite of each definition "
        "RisingWave refuses (windows in FILTER clauses) to DIR/<group>.sql",
    )
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
    lint = (
        _lint_risingwave(plan, getattr(args, "rewrites", None))
        if str(plan.new_store.dialect) == "risingwave"
        else []
    )
    if lint is None:
        return 2
    waves = compute_waves(plan)
    features = sum(len(g.features) for g in plan.groups.values())
    print(f"OK: plan '{plan.name}': {len(plan.groups)} groups, {features} features, {len(waves.waves)} waves")
    for i, wave in enumerate(waves.waves, start=1):
        names = ", ".join(f"{g} ({risk_tier(plan, plan.groups[g])})" for g in wave)
        print(f"  wave {i}: {names}")
    for finding in dependency_findings(plan):
        print(f"  warning: {finding}")
    for line in lint:
        print(f"  {line}")
    return 0


def _lint_risingwave(plan: Any, rewrites: Path | None) -> list[str] | None:
    """RisingWave's streaming rules on every definition: None after printing the errors (exit 2),
    else the lines to print after the waves (warnings, rewrites written)."""
    import sys

    from airflow_fsmigration.plan.definitions import DefinitionError
    from airflow_fsmigration.stores.risingwave_lint import lint_plan
    from airflow_fsmigration.stores.risingwave_rewrite import rewrite_windows

    def rewrite(group: str) -> str | None:
        try:
            return rewrite_windows(plan.definition_sql(group))
        except DefinitionError:
            return None

    findings = lint_plan(plan)
    errors = [f for f in findings if f.severity == "error"]
    lines = [f"warning: {f}" for f in findings if f.severity != "error"]
    if rewrites is None:
        offered = sorted(g for g in {f.group for f in errors} if rewrite(g) is not None)
        if offered:
            lines.append(
                f"a mechanical rewrite exists for {', '.join(offered)}: "
                f"fsmigrate validate {plan.source_dir} --rewrites DIR writes it"
            )
    if rewrites is not None:
        rewrites.mkdir(parents=True, exist_ok=True)
        for group in sorted({f.group for f in errors}):
            text = rewrite(group)
            if text is not None:
                (rewrites / f"{group}.sql").write_text(text)
                lines.append(
                    f"rewrite: {rewrites / f'{group}.sql'} (one temporal-filtered subquery per window)"
                )
    if not errors:
        from airflow_fsmigration.stores.risingwave_lint import read_time_groups

        plain = sorted(read_time_groups(plan))
        note = f" ({len(plain)} as plain views computed at read time: {', '.join(plain)})" if plain else ""
        return [*lines, f"risingwave: every definition is a query RisingWave accepts{note}"]
    count = len(errors)
    print(
        f"the definitions have {count} error{'s' if count != 1 else ''} for new_store.dialect risingwave:",
        file=sys.stderr,
    )
    for f in errors:
        print(f"  {f}", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    return None


def cmd_assess(args: argparse.Namespace) -> int:
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.assess import write_assessment

    plan = load_plan(args.plan)
    result = write_assessment(plan, args.out, retention=not args.no_retention)
    print(result.summary)
    print(f"report: {result.html_path}")
    print(f"markdown: {result.markdown_path}")
    return 0
