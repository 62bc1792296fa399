"""``make demo``: embedded Postgres and Redis, a generated legacy feature store, the whole migration.

Steps: start the servers (data under ``.fsmig/demo`` so a rerun with the same sizes reuses it),
generate the data (or reuse it; earlier runs' registry state is forgotten), validate the plan,
write and print the assessment, deploy the new store and shadow-compare every group, then run
every group's generated migrate DAG wave by wave under ``dag.test()`` with soak and bake windows
of seconds (:mod:`fsmig_dev.demo.migrate`), print a one-screen summary and write
``demo_report.html``. See :mod:`fsmig_dev.demo.data` for what is generated and where.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("fsmig_dev.demo")

REPO_PLAN = Path(__file__).resolve().parents[2] / "include" / "demo_plan"
GENERATOR_VERSION = 3  # bump when the generated data changes shape, so stale demo data is regenerated
DATABASES = {"events": "fsmig_events", "legacy": "fsmig_legacy", "registry": "fsmig_registry"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fsmig_dev.demo.migrate import TimeScale

    p = argparse.ArgumentParser(prog="python -m fsmig_dev.demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--entities", type=int, default=100_000, help="users (merchants 1/50, items 1/20); default 100000"
    )
    p.add_argument("--days", type=int, default=90, help="days of raw events (default 90)")
    p.add_argument("--seed", type=float, default=0.42, help="Postgres setseed value in [-1, 1]")
    p.add_argument("--history-entities", type=int, default=2_000, help="users in the legacy offline history")
    p.add_argument("--plan", type=Path, default=REPO_PLAN, help="the demo plan (correct definitions)")
    p.add_argument(
        "--data-dir", type=Path, default=Path(".fsmig/demo"), help="server data and the demo plan copy"
    )
    p.add_argument("--out", type=Path, default=Path(".fsmig/reports"), help="report folder")
    p.add_argument("--regenerate", action="store_true", help="regenerate the data even if it matches")
    p.add_argument("--no-bug", action="store_true", help="deploy the correct definitions (no planted bug)")
    p.add_argument(
        "--shadow-sample",
        type=int,
        default=20_000,
        help="entities per shadow comparison (0 = all; default 20000)",
    )
    p.add_argument("--no-shadow", action="store_true", help="stop after the assessment")
    p.add_argument(
        "--no-migrate", action="store_true", help="stop after the shadow comparison (no Airflow DAG runs)"
    )
    p.add_argument(
        "--inject-breach",
        default="merchant_stats",
        metavar="GROUP",
        help="healthy group whose models lose AUC mid-ramp, to show the automatic rollback "
        "(default merchant_stats; 'none' to skip)",
    )
    p.add_argument(
        "--breach-at", type=float, default=50.0, help="ramp %% at which the AUC drops (default 50)"
    )
    scale = TimeScale()
    p.add_argument(
        "--soak", type=float, default=scale.soak_s, help=f"shadow soak in seconds (default {scale.soak_s:g})"
    )
    p.add_argument(
        "--bake",
        type=float,
        default=scale.bake_s,
        help=f"bake per ramp step in seconds (default {scale.bake_s:g})",
    )
    p.add_argument(
        "--migrate-sample",
        type=int,
        default=scale.sample,
        help=f"entities per shadow comparison in the DAGs (default {scale.sample})",
    )
    p.add_argument(
        "--pit-samples",
        type=int,
        default=scale.pit_samples,
        help=f"(entity, time) pairs of each point-in-time check (default {scale.pit_samples})",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _fingerprint(args: argparse.Namespace) -> str:
    """What the generated data depends on: sizes, seed, bug switch and the plan's files."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [GENERATOR_VERSION, args.entities, args.days, args.seed, args.history_entities, not args.no_bug]
        ).encode()
    )
    for path in sorted(args.plan.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(args.plan).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _start_postgres(data_dir: Path) -> Any:
    """Embedded Postgres on ``data_dir`` that stops (keeping its data) when we stop it."""
    import pgserver

    from fsmig_dev.devservices import Postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    return Postgres(url=server.get_uri(), _server=server)


def _existing_databases(admin_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def _reusable(
    stamp_path: Path, fingerprint: str, urls: dict[str, str], redis_url: str
) -> dict[str, Any] | None:
    """The previous run's environment when its data is still there and was made with the same inputs."""
    import psycopg
    import redis

    if not stamp_path.exists():
        return None
    stamp = json.loads(stamp_path.read_text())
    if stamp.get("fingerprint") != fingerprint:
        log.info("demo data was generated with other sizes or another plan: regenerating")
        return None
    try:
        with psycopg.connect(urls["events"], connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM raw.users").fetchone()
            users = row[0] if row else None
        client = redis.Redis.from_url(redis_url)
        keys = client.dbsize()
        client.close()
    except Exception as exc:  # a half-made database: start over
        log.info("previous demo data is incomplete (%s): regenerating", exc)
        return None
    expected = sum(v for k, v in stamp["env"]["counts"].items() if k.startswith("redis:"))
    if users != stamp["env"]["entities"]["user_id"] or keys != expected:
        log.info(
            "previous demo data does not match its stamp (users %s, redis keys %s): regenerating", users, keys
        )
        return None
    return stamp


def configure_logging(*, verbose: bool) -> None:
    """Progress lines on stdout for the demo entry points; pgserver's own chatter kept down."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
    )
    for noisy in ("pgserver", "pgserver.postgres_server", "pgserver.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    migrate = not (args.no_shadow or args.no_migrate)
    if migrate:  # Airflow reads its home when first imported: before anything can import it
        from fsmig_dev.demo.migrate import configure_airflow

        configure_airflow(args.data_dir / "airflow")

    from airflow_fsmigration.cli import main as fsmigrate
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.reports.assess import write_assessment
    from fsmig_dev.demo.data import DemoEnvironment, generate_demo
    from fsmig_dev.devservices import start_redis

    started = time.perf_counter()
    timings: dict[str, float] = {}
    data_dir = args.data_dir.resolve()
    stamp_path = data_dir / "env.json"
    fingerprint = _fingerprint(args)

    t0 = time.perf_counter()
    log.info("starting embedded Postgres (%s) and Redis", data_dir / "pg")
    pg = _start_postgres(data_dir / "pg")
    rd = start_redis(data_dir=data_dir / "redis")
    timings["start servers"] = time.perf_counter() - t0
    try:
        urls = {role: pg.database_url(name) for role, name in DATABASES.items()}
        existing = _existing_databases(pg.url)
        have_all = all(name in existing for name in DATABASES.values())
        stamp = None if args.regenerate or not have_all else _reusable(stamp_path, fingerprint, urls, rd.url)
        t0 = time.perf_counter()
        if stamp is None:
            stamp_path.unlink(missing_ok=True)  # a half-generated world must not look reusable
            for role, name in DATABASES.items():
                urls[role] = pg.create_database(name, drop=name in existing)
            log.info(
                "generating the legacy feature store: %s users, %d days of events, history for %s users",
                f"{args.entities:,}",
                args.days,
                f"{args.history_entities:,}",
            )
            env = generate_demo(
                urls["events"],
                urls["legacy"],
                urls["registry"],
                rd.url,
                load_plan(args.plan),
                entities=args.entities,
                days=args.days,
                seed=args.seed,
                history_entities=args.history_entities,
                plan_dir=data_dir / "plan",
                inject_bug=not args.no_bug,
            )
            if _save_redis(rd.url):
                stamp_path.write_text(
                    json.dumps({"fingerprint": fingerprint, "env": env.to_dict()}, indent=2)
                )
            timings["generate data"] = time.perf_counter() - t0
        else:
            env = _env_from_stamp(stamp["env"], urls, rd.url, DemoEnvironment)
            log.info(
                "reusing demo data generated as of %s (use --regenerate to rebuild)", env.now.isoformat()
            )
            timings["reuse data"] = time.perf_counter() - t0
        env.apply_env()
        if stamp is not None:
            from fsmig_dev.demo.migrate import reset_migration_state

            plan = env.load_plan()
            reset_migration_state(env.urls[plan.connections.registry], rd.url)

        print("\n== fsmigrate validate ==", flush=True)
        t0 = time.perf_counter()
        code = fsmigrate(["validate", str(env.plan_dir)])
        timings["validate"] = time.perf_counter() - t0
        if code != 0:
            return code

        print("\n== fsmigrate assess ==", flush=True)
        t0 = time.perf_counter()
        result = write_assessment(env.load_plan(), args.out, retention=True, now=env.now)
        timings["assess"] = time.perf_counter() - t0
        print(result.summary)
        print(f"\nHTML report: {result.html_path.resolve()}")
        print(f"Markdown:    {result.markdown_path.resolve()}")

        _print_environment(env)
        if not args.no_shadow:
            t0 = time.perf_counter()
            outcome = _deploy_and_shadow(env, args, fsmigrate)
            timings["deploy + shadow"] = time.perf_counter() - t0
            _print_shadow_outcome(env, outcome)
            migration = None
            if migrate:
                t0 = time.perf_counter()
                migration = _migrate(env, args, data_dir)
                timings["migrate"] = time.perf_counter() - t0
                timings.update({f"  {k}": v for k, v in migration[0].timings.items()})
            report = write_demo_report(
                env, outcome, args.out, assessment=result.html_path, migration=migration
            )
            print(f"\nDemo report: {report.resolve()}")
        timings["total"] = time.perf_counter() - started
        print("\n== timings ==")
        for step, seconds in {**{f"  {k}": v for k, v in env.timings.items()}, **timings}.items():
            print(f"  {step:<22}{seconds:8.1f} s")
        return 0
    finally:
        rd.stop()
        pg.stop()


EXIT_NAMES = {0: "pass", 1: "FAIL", 2: "bad input", 3: "inconclusive"}


def _deploy_and_shadow(env: Any, args: argparse.Namespace, fsmigrate: Any) -> dict[str, str]:
    """Deploy the plan's definitions to the new store, then shadow-compare every group, wave by wave."""
    from airflow_fsmigration.plan.graph import compute_waves
    from airflow_fsmigration.stores.new_store import NewStore

    plan = env.load_plan()
    conn_id = plan.connections.new_store
    print("\n== deploy the definitions to the new store ==", flush=True)
    with NewStore(env.urls[conn_id], plan, conn_id) as store:
        order = store.deploy_all()
    print(f"  {len(order)} views in schema '{plan.new_store.schema_name}': {', '.join(order)}")
    outcome = {}
    for wave_no, wave in enumerate(compute_waves(plan).waves, start=1):
        for name in wave:
            print(f"\n== shadow comparison: wave {wave_no}, {name} ==", flush=True)
            code = fsmigrate(
                [
                    "shadow",
                    str(env.plan_dir),
                    name,
                    "--sample",
                    str(args.shadow_sample),
                    "--no-gx",
                    "--out",
                    str(args.out),
                ]
            )
            outcome[name] = EXIT_NAMES.get(code, f"exit {code}")
    return outcome


def _print_shadow_outcome(env: Any, outcome: dict[str, str]) -> None:
    print("\n== shadow outcome ==")
    for name, verdict in outcome.items():
        print(f"  {name:<26}{verdict}")
    failed = sorted(g for g, v in outcome.items() if v != "pass")
    if env.bug is None:
        print("  (no bug planted)" if not failed else f"  unexpected differences in: {', '.join(failed)}")
        return
    if env.bug.group in failed:
        print(f"  found the planted bug in '{env.bug.group}': {env.bug.description}")
    else:
        print(f"  the planted bug in '{env.bug.group}' was NOT found")
    others = [g for g in failed if g != env.bug.group]
    if others:
        print(f"  also not passing: {', '.join(others)} (downstream of the bug, or see their reports)")


def _latest_shadow(out_dir: Path, group: str) -> tuple[dict[str, Any], Path] | tuple[None, None]:
    """The newest shadow result JSON the shadow CLI wrote for ``group``, and its HTML report."""
    files = sorted(out_dir.glob(f"shadow_{group}_*.json"))
    if not files:
        return None, None
    return json.loads(files[-1].read_text()), files[-1].with_suffix(".html")


def _migrate(env: Any, args: argparse.Namespace, data_dir: Path) -> tuple[Any, list[Any]]:
    """Run the migrate DAGs, then print the one-screen summary; returns (outcome, group stories)."""
    from fsmig_dev.demo.migrate import TimeScale, run_migration
    from fsmig_dev.demo.report import collect, summary_lines

    inject = None if args.inject_breach.lower() == "none" else (args.inject_breach, args.breach_at)
    scale = TimeScale(
        soak_s=args.soak, bake_s=args.bake, sample=args.migrate_sample, pit_samples=args.pit_samples
    )
    outcome = run_migration(env, work_dir=data_dir / "migration", scale=scale, inject=inject)
    plan = env.load_plan()
    stories = collect(
        plan,
        registry_url=env.urls[plan.connections.registry],
        redis_url=env.urls[plan.connections.legacy_online],
        since=outcome.started_at,
        until=outcome.finished_at,
        runs=outcome.runs,
    )
    print("\n== summary ==")
    for line in summary_lines(stories):
        print(line)
    if env.bug is not None:
        bug = next(s for s in stories if s.group == env.bug.group)
        cut = bug.phase in ("cutover", "warm", "ready_to_decommission", "decommissioned")
        print(
            f"\n  planted bug in '{env.bug.group}': "
            + (
                "CUT OVER despite the bug"
                if cut
                else f"kept off the new store ({bug.phase}, {bug.ramp_pct:g}%)"
            )
        )
    return outcome, stories


def write_demo_report(
    env: Any,
    outcome: dict[str, str],
    out_dir: Path,
    *,
    assessment: Path,
    migration: tuple[Any, list[Any]] | None = None,
) -> Path:
    """One page: every group's shadow verdict and match rate, its main explanation, links to the reports;
    with ``migration``, what the DAGs did per group (timeline, match-rate trend, ramp, latency, rollbacks)."""
    from airflow_fsmigration.plan.graph import compute_waves, risk_tier
    from airflow_fsmigration.reports import html as h

    plan = env.load_plan()
    waves = compute_waves(plan)
    rows, names, rates, thresholds = [], [], [], []
    for name in waves.order:
        data, html_path = _latest_shadow(out_dir, name)
        rate = data.get("match_rate") if data else None
        causes = (data or {}).get("causes") or []
        top = (data or {}).get("explanations") or []
        main = max(top, key=lambda e: e.get("rows", 0)) if top else None
        if causes:  # the root cause first: the features it moves and the proof
            c = causes[0]
            main = {
                "kind": f"{c['kind']} ({'proven by replay' if c.get('proven') else 'value pattern'})",
                "feature": ", ".join(c.get("features", {})),
                "evidence": c.get("fix", ""),
            }
        rows.append(
            [
                waves.wave_of(name),
                name,
                h.badge(risk_tier(plan, plan.groups[name])),
                h.badge(outcome.get(name, "not run").lower()),
                None if rate is None else f"{rate:.4%}",
                (data or {}).get("entities_compared"),
                h.Markup("<b>{}</b> {}: {}").format(main["kind"], main.get("feature") or "", main["evidence"])
                if main
                else None,
                h.Markup('<a href="{}">report</a>').format(html_path.name) if html_path else None,
            ]
        )
        names.append(name)
        rates.append(0.0 if rate is None else rate * 100)
        thresholds.append(plan.settings_for(name).consistency_threshold * 100)
    parts = [
        h.paragraph(
            h.Markup("Logical now {} (the event-log clock is frozen there). Inventory: {}.").format(
                env.now.isoformat(), h.Markup('<a href="{}">assessment</a>').format(assessment.name)
            )
        ),
        h.bar_chart(
            names,
            rates,
            title="Shadow match rate per group (dashed: default threshold)",
            ylabel="% of values that agree",
            threshold=min(thresholds),
            ylim=(min(80.0, *rates), 100.5),
        ),
        h.table(["wave", "group", "risk", "shadow", "match rate", "entities", "main explanation", ""], rows),
    ]
    if env.bug is not None:
        found = outcome.get(env.bug.group) == "FAIL"
        parts.append(
            h.section(
                "The planted bug",
                h.paragraph(
                    f"{'Found' if found else 'NOT found'} in '{env.bug.group}': {env.bug.description}.",
                    kind=None if found else "bad",
                ),
                h.paragraph(h.Markup("The buggy definition: {}").format(h.code(str(env.bug.sql_path)))),
            )
        )
    if migration is not None:
        from fsmig_dev.demo.report import migration_sections

        run, stories = migration
        parts.append(
            migration_sections(stories, started=run.started_at, outcome=run, link_base=out_dir.resolve())
        )
    else:
        parts.append(h.paragraph("The migration step was skipped (--no-migrate).", kind="warn"))
    path = out_dir / "demo_report.html"
    h.write_page(
        path, h.page(f"Demo migration: {plan.name}", h.Markup("\n").join(parts), subtitle=plan.description)
    )
    return path


def _save_redis(url: str, timeout: float = 600.0) -> bool:
    """Snapshot Redis into its data dir (BGSAVE), so the next run starts with the online store loaded.

    Returns False (and the data is regenerated next time) when the snapshot does not finish.
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=60)
    try:
        before = client.lastsave()
        client.bgsave()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not info.get("rdb_bgsave_in_progress") and client.lastsave() != before:
                return info.get("rdb_last_bgsave_status") == "ok"
            time.sleep(0.5)
        log.warning("Redis snapshot did not finish in %.0f s: the next run regenerates the data", timeout)
        return False
    except redis.RedisError as exc:
        log.warning("Redis snapshot failed (%s): the next run regenerates the data", exc)
        return False
    finally:
        client.close()


def _env_from_stamp(data: dict[str, Any], urls: dict[str, str], redis_url: str, cls: Any) -> Any:
    """Rebuild the environment of a previous run, pointing at this run's server addresses."""
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo.data import DemoBug, connection_urls
    from fsmig_dev.devservices import airflow_conn_env

    plan_dir = Path(data["plan_dir"])
    conn_urls = connection_urls(
        load_plan(plan_dir),
        events_url=urls["events"],
        legacy_url=urls["legacy"],
        registry_url=urls["registry"],
        redis_url=redis_url,
    )
    env: dict[str, str] = {}
    for conn_id, url in conn_urls.items():
        env.update(airflow_conn_env(conn_id, url))
    bug = data.get("bug")
    return cls(
        plan_dir=plan_dir,
        now=datetime.fromisoformat(data["now"]).astimezone(UTC),
        urls=conn_urls,
        conn_env=env,
        bug=None
        if bug is None
        else DemoBug(**{**bug, "features": tuple(bug["features"]), "sql_path": Path(bug["sql_path"])}),
        entities=data["entities"],
        counts=data["counts"],
        timings={},
    )


def _print_environment(env: Any) -> None:
    counts = env.counts
    raw = {k: v for k, v in counts.items() if k.startswith("raw.")}
    redis_keys = sum(v for k, v in counts.items() if k.startswith("redis:"))
    history = {k: v for k, v in counts.items() if k.startswith("legacy.")}
    print("\n== demo data ==")
    print(f"  logical now:        {env.now.isoformat()}")
    print("  raw events:         " + ", ".join(f"{k} {v:,}" for k, v in raw.items()))
    purged = {k: v for k, v in counts.items() if k.startswith("purged:")}
    if purged:
        print("  purged (retention): " + ", ".join(f"{k[7:]} {v:,}" for k, v in purged.items()))
    print(
        f"  legacy online:      {redis_keys:,} Redis hashes in {len([k for k in counts if k.startswith('redis:')])} groups"
    )
    print(f"  legacy offline:     {sum(history.values()):,} history rows in {len(history)} tables")
    print(f"  plan migrated:      {env.plan_dir}")
    if env.bug:
        print(
            f"  planted bug:        group '{env.bug.group}' in the new store ({env.bug.sql_path.name}); "
            "the shadow comparison should find and explain it"
        )


if __name__ == "__main__":
    sys.exit(main())
