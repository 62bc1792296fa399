"""``fsmigrate shadow PLAN GROUP``: one shadow comparison, a summary, an HTML report.

Connections come from the plan's connection ids via ``AIRFLOW_CONN_*`` (no Airflow needed).
Exit 0 pass, 1 fail, 3 inconclusive (a store did not answer, or too few entities compared).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from airflow_fsmigration.cli import bounded_int, output_dir

    p = sub.add_parser(
        "shadow",
        help="compare a group between the old and the new store; print a summary and write an HTML report",
    )
    p.add_argument("plan", type=Path, help="plan YAML file or folder")
    p.add_argument("group", help="feature group to compare")
    p.add_argument(
        "--sample",
        type=bounded_int(0, 10**9),
        default=None,
        help="entities to compare (default: the plan's shadow_sample_size; 0 = all)",
    )
    p.add_argument("--shard", default=None, help="only hash shard K of N, as K/N with K from 0 (e.g. 0/4)")
    p.add_argument(
        "--out",
        type=output_dir,
        default=Path(".fsmig/reports"),
        help="report folder (default .fsmig/reports)",
    )
    p.add_argument(
        "--chunk-size",
        type=bounded_int(1, 10_000_000),
        default=100_000,
        help="entities per read/compare chunk",
    )
    p.add_argument("--no-record", action="store_true", help="do not record the run in the registry")
    p.add_argument(
        "--no-gx", action="store_true", help="skip the Great Expectations suites (saves a few seconds)"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the whole result (verdict, counts, root causes with their rewrites) as JSON to FILE ('-' = stdout)",
    )
    p.add_argument(
        "--no-diagnose", action="store_true", help="skip the root-cause diagnosis (re-read and replay)"
    )
    p.add_argument(
        "--as-of",
        default=None,
        metavar="TIME",
        help="the time both stores' data describe (ISO 8601, e.g. a frozen snapshot): recorded as the "
        "run's logical time and used by the diagnosis replay (default: now)",
    )
    p.set_defaults(func=cmd_shadow)

    d = sub.add_parser("deploy", help="deploy a group's definition to the new store (idempotent)")
    d.add_argument("plan", type=Path, help="plan YAML file or folder")
    d.add_argument("group", help="feature group to deploy (its upstream groups must be deployed)")
    d.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from airflow_fsmigration.cli import EXIT_BAD_INPUT, EXIT_OK, known_group
    from airflow_fsmigration.connections import postgres_url
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.base import UpstreamNotDeployed
    from airflow_fsmigration.stores.new_store import DeployError, NewStore

    plan = load_plan(args.plan)
    if known_group(plan, args.group) is None:
        return EXIT_BAD_INPUT
    with NewStore(postgres_url(plan.connections.new_store), plan, plan.connections.new_store) as store:
        try:
            store.deploy(args.group)
        except (DeployError, UpstreamNotDeployed) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(f"deployed {plan.view_name(args.group)} in connection '{plan.connections.new_store}'")
    return EXIT_OK


def cmd_shadow(args: argparse.Namespace) -> int:
    from airflow_fsmigration.cli import (
        EXIT_BAD_INPUT,
        EXIT_FAILED,
        EXIT_INCONCLUSIVE,
        EXIT_OK,
        emit_json,
        known_group,
    )
    from airflow_fsmigration.compare.engine import Verdict
    from airflow_fsmigration.compare.results import ResultStore
    from airflow_fsmigration.compare.shadow import parse_shard, run_shadow
    from airflow_fsmigration.connections import connect_postgres, postgres_url, redis_url
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.shadow import write_shadow_report
    from airflow_fsmigration.stores.feast_online import online_source_for
    from airflow_fsmigration.stores.new_store import NewStore

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    plan = load_plan(args.plan)
    if known_group(plan, args.group) is None:
        return EXIT_BAD_INPUT
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        print(f"error: --shard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    group = plan.groups[args.group]
    conns = plan.connections
    describes = None
    if args.as_of:
        try:
            describes = datetime.fromisoformat(args.as_of)
        except ValueError:
            print(
                f"error: --as-of {args.as_of!r} is not an ISO 8601 time (e.g. 2026-11-20T12:00:00+00:00)",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        if describes.tzinfo is None:
            describes = describes.replace(tzinfo=UTC)

    # The registry first: if it is down, fail before comparing rather than compare and lose the run.
    registry = None if args.no_record else connect_postgres(conns.registry, autocommit=True)
    store = ResultStore(registry) if registry is not None else None
    old = online_source_for(plan, redis_url(conns.legacy_online), conns.legacy_online)
    new = NewStore(postgres_url(conns.new_store), plan, conns.new_store)
    try:
        problem = _not_comparable(plan, group, new)
        if problem is not None:
            print(f"inconclusive: {problem}", file=sys.stderr)
            return EXIT_INCONCLUSIVE
        result = run_shadow(
            plan,
            group,
            old,
            new,
            sample_size=args.sample,
            shard=shard,
            chunk_size=args.chunk_size,
            results=store,
            diagnose=not args.no_diagnose,
            describes=describes,
        )
        gx = schema = None
        out = args.out
        if not args.no_gx:
            from airflow_fsmigration.compare.gx import gx_verdict, schema_parity

            docs = out / "gx" / group.name
            gx = gx_verdict(result, docs_dir=docs)
            schema = schema_parity(group, new.columns(group), docs_dir=docs)
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
    if args.json is not None:
        emit_json(path.with_suffix(".json"), args.json)
    verdicts = {result.verdict} | ({gx.verdict} if gx is not None else set())
    if Verdict.INCONCLUSIVE in verdicts:
        return EXIT_INCONCLUSIVE
    if Verdict.FAIL in verdicts or (schema is not None and not schema.success):
        return EXIT_FAILED
    return EXIT_OK


def _not_comparable(plan: Any, group: Any, new: Any) -> str | None:
    """Why the new store cannot be compared at all (not deployed, entity key of another type)."""
    from airflow_fsmigration.stores.new_store import DeployError

    try:
        columns = new.columns(group)
    except DeployError as exc:
        return f"{exc} (fsmigrate deploy {plan.source_dir} {group.name})"
    key_type = columns.get(group.entity_key)
    if key_type is None:
        return (
            f"group '{group.name}': the new store's view {plan.view_name(group.name)} has no column "
            f"'{group.entity_key}' (the plan's entity_key): select it in the definition and deploy again"
        )
    wanted = {
        "int64": {"bigint", "integer", "smallint"},
        "string": {"text", "character varying", "character"},
    }
    expected = wanted.get(str(group.entity_dtype))
    if expected is not None and key_type not in expected:
        return (
            f"group '{group.name}': entity key '{group.entity_key}' is {key_type} in the new store but "
            f"{group.entity_dtype} in the plan (entity_dtype): cast it in the definition "
            f"(e.g. {group.entity_key}::{'bigint' if str(group.entity_dtype) == 'int64' else 'text'}) or fix the plan"
        )
    return None
