"""``fsmigrate shadow PLAN GROUP``: one shadow comparison, a summary, an HTML report.

Connections come from the plan's connection ids via ``AIRFLOW_CONN_*`` (no Airflow needed).
Exit 0 pass, 1 fail, 3 inconclusive (a store did not answer, or too few entities compared).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "shadow",
        help="compare a group between the old and the new store; print a summary and write an HTML report",
    )
    p.add_argument("plan", type=Path, help="plan YAML file or folder")
    p.add_argument("group", help="feature group to compare")
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        help="entities to compare (default: the plan's shadow_sample_size; 0 = all)",
    )
    p.add_argument("--shard", default=None, help="only hash shard K of N, as K/N with K from 0 (e.g. 0/4)")
    p.add_argument(
        "--out", type=Path, default=Path(".fsmig/reports"), help="report folder (default .fsmig/reports)"
    )
    p.add_argument("--chunk-size", type=int, default=100_000, help="entities per read/compare chunk")
    p.add_argument("--no-record", action="store_true", help="do not record the run in the registry")
    p.add_argument(
        "--no-gx", action="store_true", help="skip the Great Expectations suites (saves a few seconds)"
    )
    p.set_defaults(func=cmd_shadow)


def cmd_shadow(args: argparse.Namespace) -> int:
    from airflow_fsmigration.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
    from airflow_fsmigration.compare.engine import Verdict
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.compare.shadow import parse_shard, run_shadow
    from airflow_fsmigration.connections import connect_postgres, postgres_url, redis_url
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.shadow import write_shadow_report
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plan = load_plan(args.plan)
    if args.group not in plan.groups:
        print(
            f"error: plan '{plan.name}' has no group '{args.group}'; groups: {', '.join(sorted(plan.groups))}",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        print(f"error: --shard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    group = plan.groups[args.group]
    conns = plan.connections

    # The registry first: if it is down, fail before comparing rather than compare and lose the run.
    registry = None if args.no_record else connect_postgres(conns.registry, autocommit=True)
    store = ResultStore(registry) if registry is not None else None
    old = RedisOnlineSource(redis_url(conns.legacy_online), plan, conns.legacy_online)
    new = NewStore(postgres_url(conns.new_store), plan, conns.new_store)
    try:
        result = run_shadow(
            plan,
            group,
            old,
            new,
            sample_size=args.sample,
            shard=shard,
            chunk_size=args.chunk_size,
            results=store,
        )
        gx = schema = None
        out = args.out
        if not args.no_gx:
            from airflow_fsmigration.compare.gx import gx_verdict, schema_parity

            docs = out / "gx" / group.name
            gx = gx_verdict(result, docs_dir=docs)
            schema = schema_parity(group, new.columns(group), result=result, docs_dir=docs)
        series = store.series(group.name) if store is not None else []
        soak = store.soak_status(plan, group.name) if store is not None else None
        path = write_shadow_report(result, out, series=series, gx=gx, schema=schema, soak=soak)
    finally:
        new.close()
        if registry is not None:
            registry.close()

    print(result.summary())
    if gx is not None:
        print(
            f"  GX {gx.suite}: {gx.verdict}; {schema.suite if schema else ''}: {schema.verdict if schema else ''}"
        )
        for r in [*gx.failed, *(schema.failed if schema else [])]:
            print(f"    failed: {r['expectation']} {r.get('column') or ''} {r.get('observed_value') or ''}")
    if soak is not None:
        print(f"  soak: {'green' if soak.satisfied else 'not yet'}: {soak.reason}")
    print(f"report: {path}")
    verdicts = {result.verdict} | ({gx.verdict} if gx is not None else set())
    if Verdict.INCONCLUSIVE in verdicts:
        return EXIT_INCONCLUSIVE
    if Verdict.FAIL in verdicts or (schema is not None and not schema.success):
        return EXIT_FAILED
    return EXIT_OK
