"""``fsmigrate loadtest``: drive the new store through the router's read path at the plan's rate."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from airflow_fsmigration.cli import bounded_int, bounded_seconds


def register(sub: Any) -> None:
    p = sub.add_parser(
        "loadtest",
        help="load-test a group's new store through the router at load_test_multiplier x peak QPS",
    )
    p.add_argument("plan", type=Path)
    p.add_argument("group")
    p.add_argument(
        "--duration",
        type=bounded_seconds(0.1, 86_400),
        default=None,
        help="seconds, at most a day (default: the plan's load_test_duration)",
    )
    p.add_argument(
        "--processes",
        type=bounded_int(1, 256),
        default=1,
        help="generator processes (one Python process tops out early)",
    )
    p.add_argument(
        "--entities",
        type=bounded_int(1, 10_000_000),
        default=10_000,
        help="entity ids sampled from the legacy store",
    )
    p.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from airflow_fsmigration.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INCONCLUSIVE
    from airflow_fsmigration.connections import postgres_url, redis_url
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.serving.loadtest import LoadTestOutcome, load_test_for_group
    from airflow_fsmigration.serving.router import build_router
    from airflow_fsmigration.stores.feast_online import online_source_for

    plan = load_plan(args.plan)
    if args.group not in plan.groups:
        print(
            f"error: plan '{plan.name}' has no group '{args.group}' (groups: {', '.join(sorted(plan.groups))})"
        )
        return EXIT_BAD_INPUT
    online = redis_url(plan.connections.legacy_online)
    new_store = postgres_url(plan.connections.new_store)
    ids = online_source_for(plan, online, plan.connections.legacy_online).entity_ids(
        args.group, limit=args.entities
    )
    if not ids:
        print(f"inconclusive: no entities of '{args.group}' in {plan.connections.legacy_online} to request")
        return EXIT_INCONCLUSIVE
    mirror = redis_url(plan.connections.mirror)
    factory = functools.partial(
        build_router, str(args.plan), online, new_store, mirror_url=mirror, listen=False
    )
    target: Any = factory if args.processes > 1 else factory()
    result = load_test_for_group(
        target, plan, args.group, ids, duration_s=args.duration, processes=args.processes
    )
    print(result.summary())
    return {LoadTestOutcome.PASS: 0, LoadTestOutcome.FAIL: EXIT_FAILED}.get(result.outcome, EXIT_INCONCLUSIVE)
