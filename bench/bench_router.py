"""FeatureRouter overheads against a raw Redis HGETALL measured in the same run.

Measures:
1. the routing decision per entity (CRC-32 bucketing; mmh3 shown for comparison when installed);
2. the breaker check per request (the router's fast path vs pybreaker's ``call()``);
3. the router's added p50/p99 per single-entity lookup over a raw HGETALL, with the benchmark
   pinned to one core and redis-server to the other (``os.sched_setaffinity``); the typed
   decode of the hash is shown separately, since a raw HGETALL returns undecoded bytes;
4. the time from a rollback (SET + PUBLISH in the registry's mirror format) until a router in
   another process serves 100% from the old store.

Run: ``python -m bench.bench_router`` (embedded Postgres and Redis) or with
``--redis-url/--pg-url``. Sizes are flags; ``--quick`` for a smoke run.
Writes ``bench/results/bench_router.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from airflow_fsmigration.semantics import format_key

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GROUP = "user_profile"


def _plan():
    from airflow_fsmigration.plan import load_plan

    return load_plan(REPO / "include" / "demo_plan")


def seed(redis_client, pg_url: str, plan, n: int) -> list[str]:
    """n user_profile entities in the legacy Redis (JSON encoding) and in a new-store table."""
    import psycopg

    ids = [f"u{i:07d}" for i in range(n)]
    template = plan.groups[GROUP].legacy_online.key_template
    pipe = redis_client.pipeline(transaction=False)
    for i, e in enumerate(ids):
        pipe.hset(
            format_key(template, e),
            mapping={
                "account_age_days": str(i % 3000),
                "country": json.dumps("DE"),
                "is_verified": "true",
                "kyc_level": "1",
                "email_domain_risk": "0.25",
                "device_count_30d": "3",
                "login_count_7d": "7",
                "failed_login_count_24h": "0",
                "_ts": json.dumps("2026-01-01T00:00:00Z"),
            },
        )
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS features CASCADE")
        conn.execute("CREATE SCHEMA features")
        conn.execute(
            "CREATE TABLE features.user_profile (user_id text PRIMARY KEY, account_age_days bigint, country text,"
            " is_verified boolean, kyc_level bigint, email_domain_risk double precision, device_count_30d bigint,"
            " login_count_7d bigint, failed_login_count_24h bigint, source_ts timestamptz)"
        )
        with conn.cursor().copy("COPY features.user_profile FROM STDIN") as copy:
            for i, e in enumerate(ids):
                copy.write_row((e, i % 3000, "DE", True, 2, 0.25, 3, 7, 0, "2026-01-01T00:00:00Z"))
    return ids


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


# -- 1. routing decision ---------------------------------------------------------------------


def bench_decision(n: int, reps: int) -> dict[str, float]:
    from airflow_fsmigration.serving.bucketing import split, threshold_for

    ids = [f"user_{i:08d}" for i in range(n)]
    thr = threshold_for(50)
    out = {}
    times = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        split(ids, thr)
        times.append((time.perf_counter_ns() - t) / n)
    out["crc32 split (router path)"] = statistics.median(times)
    out["crc32 split best run"] = min(times)
    try:
        import mmh3

        h = mmh3.hash
        times = []
        for _ in range(reps):
            t = time.perf_counter_ns()
            old: list[str] = []
            new: list[str] = []
            for e in ids:
                (new if h(e, signed=False) % 10000 < thr else old).append(e)
            times.append((time.perf_counter_ns() - t) / n)
        out["mmh3 split (comparison)"] = statistics.median(times)
        out["mmh3 split best run"] = min(times)
    except ImportError:
        pass
    times = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        for _e in ids:
            pass
        times.append((time.perf_counter_ns() - t) / n)
    out["empty loop (baseline)"] = statistics.median(times)
    return out


# -- 2. breaker check ------------------------------------------------------------------------


def bench_breaker(n: int, reps: int) -> dict[str, float]:
    import pybreaker

    from airflow_fsmigration.serving.router import GroupBreaker

    def noop() -> None:
        return None

    b = GroupBreaker("g", 5, 10, lambda g: None)
    cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=10)
    rng = range(n)

    def run(fn) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter_ns()
            for _i in rng:
                fn()
            times.append((time.perf_counter_ns() - t) / n)
        return statistics.median(times)

    direct = run(noop)
    router_path = run(lambda: b.allows() and b.call(noop))
    pyb = run(lambda: cb.call(noop))
    return {
        "direct call (baseline)": direct,
        "router breaker (allows + call)": router_path,
        "router breaker overhead": router_path - direct,
        "pybreaker call()": pyb,
        "pybreaker overhead": pyb - direct,
    }


def bench_router_cpu(redis_client, calls: int, reps: int) -> dict[str, float]:
    """The router's own cost per single-entity call, with instant in-memory backends (no I/O)."""
    from airflow_fsmigration.serving.router import FeatureRouter
    from airflow_fsmigration.serving.routing import publish_state

    row = {"f": 1}

    class Instant:
        def __init__(self, name: str) -> None:
            self.name = name

        def read(self, group, ids):
            return {ids[0]: row}

        def close(self) -> None:
            pass

    old = Instant("old")
    ids = [f"user_{i:08d}" for i in range(calls)]
    out = {}

    def run(fn) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter_ns()
            for e in ids:
                fn((e,))
            times.append((time.perf_counter_ns() - t) / calls)
        return statistics.median(times)

    out["instant backend called directly"] = run(lambda batch: old.read("cpu_group", batch))
    for pct_, version in ((0, 1), (50, 2), (100, 3)):
        publish_state(redis_client, "cpu_group", phase="ramping", ramp_pct=pct_, version=version)
        router = FeatureRouter(redis_client, Instant("old"), Instant("new"), listen=False, stats_flush_s=0)
        try:
            router.refresh()
            router.ramp_pct("cpu_group")
            out[f"router at {pct_}%"] = run(lambda batch, r=router: r.get_features("cpu_group", batch))
        finally:
            router.close()
    return out


# -- 3. added latency per lookup ---------------------------------------------------------------


def bench_lookup(
    redis_client, router, backend, plan, ids: list[str], lookups: int, block: int
) -> dict[str, dict]:
    import random

    template = plan.groups[GROUP].legacy_online.key_template
    rng = random.Random(7)
    sample = [rng.choice(ids) for _ in range(lookups)]
    keys = [format_key(template, e) for e in sample]
    results: dict[str, list[float]] = {
        "raw HGETALL": [],
        "backend read (HGETALL + decode)": [],
        "router get_features": [],
    }
    ns = time.perf_counter_ns
    hgetall = redis_client.hgetall
    read = backend.read
    get = router.get_features
    # Warm up connections and caches.
    for k, e in zip(keys[:2000], sample[:2000], strict=True):
        hgetall(k)
        get(GROUP, (e,))
    # Interleave blocks so drift on this shared VM hits all variants alike.
    for start in range(0, lookups, block):
        chunk = range(start, min(start + block, lookups))
        lat = results["raw HGETALL"]
        for i in chunk:
            t = ns()
            hgetall(keys[i])
            lat.append((ns() - t) / 1000)
        lat = results["backend read (HGETALL + decode)"]
        for i in chunk:
            t = ns()
            read(GROUP, (sample[i],))
            lat.append((ns() - t) / 1000)
        lat = results["router get_features"]
        for i in chunk:
            t = ns()
            get(GROUP, (sample[i],))
            lat.append((ns() - t) / 1000)
    return {
        name: {"p50": pct(v, 50), "p99": pct(v, 99), "mean": statistics.fmean(v), "n": len(v)}
        for name, v in results.items()
    }


# -- 4. rollback propagation -------------------------------------------------------------------


def child_main(redis_url: str, pg_url: str, group: str, cpu: int | None) -> None:
    """A router in its own process: print ``new|old <epoch>`` each time the serving side changes."""
    import redis

    from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend
    from airflow_fsmigration.serving.router import FeatureRouter

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    plan = _plan()
    client = redis.Redis.from_url(redis_url)

    class Counting:
        name = "new"

        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0

        def read(self, g, ids):
            self.calls += 1
            return self.inner.read(g, ids)

        def close(self) -> None:
            self.inner.close()

    new = Counting(PostgresBackend(pg_url, plan))
    router = FeatureRouter(
        client, LegacyRedisBackend.from_plan(client, plan), new, plan=plan, stats_flush_s=0
    )
    router.wait_ready(10)
    from airflow_fsmigration.serving.bucketing import bucket_of, threshold_for

    # Entities on the new side from the first ramp step on, so any ramp > 0 reads the new store.
    ids = [e for e in (f"u{i:06d}" for i in range(100_000)) if bucket_of(e) < threshold_for(1)][:5]
    current = None
    while True:
        before = new.calls
        router.get_features(group, ids)
        side = "new" if new.calls > before else "old"
        if side != current:
            print(side, repr(time.time()), flush=True)
            current = side


def _child(redis_url: str, pg_url: str, cpu: int | None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bench.bench_router", "--child", redis_url, pg_url, "--group", GROUP]
    if cpu is not None:
        cmd += ["--child-cpu", str(cpu)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)


def _expect(child: subprocess.Popen[str], side: str) -> float:
    line = child.stdout.readline().split()  # type: ignore[union-attr]
    if not line or line[0] != side:
        raise RuntimeError(f"router child reported {line!r}, expected {side!r}")
    return float(line[1])


def _summary(deltas: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(deltas),
        "p95_ms": pct(deltas, 95),
        "max_ms": max(deltas),
        "rounds": len(deltas),
    }


def bench_rollback(
    redis_url: str, pg_url: str, redis_client, rounds: int, cpu: int | None
) -> dict[str, float]:
    """Rollback as a bare mirror write: SET + PUBLISH in the registry's format."""
    import random

    from airflow_fsmigration.serving.routing import publish_state

    version = 1000
    publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=version)
    child = _child(redis_url, pg_url, cpu)
    deltas = []
    try:
        _expect(child, "new")
        for _ in range(rounds):
            time.sleep(random.uniform(0.05, 0.15))
            version += 1
            t0 = time.time()
            publish_state(redis_client, GROUP, phase="rolled_back", ramp_pct=0, version=version)
            deltas.append((_expect(child, "old") - t0) * 1000)
            version += 1
            publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=version)
            _expect(child, "new")
    finally:
        child.kill()
        child.wait(10)
    return _summary(deltas)


def bench_registry_rollback(
    redis_url: str, pg, pg_url: str, redis_client, plan, rounds: int, cpu: int | None
) -> dict[str, float]:
    """Rollback through ``Registry.rollback()``: Postgres transaction + audit row + mirror publish."""
    import random

    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.routing import Registry

    reg_url = pg.create_database("fsmig_bench_registry", drop=True)
    reg = Registry(reg_url, RoutingMirror(redis_client), plan=plan)
    reg.ensure_schema()
    reg.register_plan(plan)
    redis_client.delete(f"fsmig:routing:{GROUP}")
    child = _child(redis_url, pg_url, cpu)
    deltas = []
    try:
        _expect(child, "old")
        for _ in range(rounds):
            reg.transition(GROUP, "shadow", actor="bench", reason="bench round")
            reg.ramp(GROUP, 5, actor="bench", reason="bench round", soak_passed=True)
            _expect(child, "new")
            time.sleep(random.uniform(0.05, 0.15))
            t0 = time.time()
            reg.rollback(GROUP, actor="bench", reason="bench rollback")
            deltas.append((_expect(child, "old") - t0) * 1000)
    finally:
        child.kill()
        child.wait(10)
        reg.close()
    return _summary(deltas)


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--pg-url")
    ap.add_argument("--entities", type=int, default=20_000, help="entities seeded in both stores")
    ap.add_argument("--decision-ids", type=int, default=200_000, help="ids per routing-decision run")
    ap.add_argument("--breaker-calls", type=int, default=200_000)
    ap.add_argument("--lookups", type=int, default=30_000, help="single-entity lookups per variant")
    ap.add_argument("--block", type=int, default=500, help="lookups per interleaved block")
    ap.add_argument("--rollbacks", type=int, default=20, help="rollback rounds")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_router.md"))
    ap.add_argument("--child", nargs=2, metavar=("REDIS_URL", "PG_URL"), help=argparse.SUPPRESS)
    ap.add_argument("--group", default=GROUP, help=argparse.SUPPRESS)
    ap.add_argument("--child-cpu", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1], args.group, args.child_cpu)
        return 0
    if args.quick:
        args.entities, args.decision_ids, args.breaker_calls = 2000, 20_000, 20_000
        args.lookups, args.rollbacks, args.reps = 3000, 5, 3

    import redis

    from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend
    from airflow_fsmigration.serving.router import FeatureRouter
    from airflow_fsmigration.serving.routing import publish_state
    from fsmig_dev.devservices import Postgres, Redis, start_postgres, start_redis

    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    bench_cpu, server_cpu = (cpus[0], cpus[1]) if pin else (None, None)
    pg = Postgres(url=args.pg_url) if args.pg_url else start_postgres()
    rd = Redis(url=args.redis_url) if args.redis_url else start_redis()
    try:
        pinned_note = "not pinned"
        if pin:
            os.sched_setaffinity(0, {cpus[0]})
            if rd._proc is not None:
                os.sched_setaffinity(rd._proc.pid, {cpus[1]})
                pinned_note = f"benchmark on CPU {bench_cpu}, redis-server on CPU {server_cpu}"
            else:
                pinned_note = f"benchmark on CPU {bench_cpu} (external redis-server not pinned)"
        pg_url = pg.create_database("fsmig_bench_router", drop=True)
        client = redis.Redis.from_url(rd.url)
        client.flushdb()
        plan = _plan()
        print(f"seeding {args.entities} entities ...", flush=True)
        ids = seed(client, pg_url, plan, args.entities)

        print("1. routing decision ...", flush=True)
        decision = bench_decision(args.decision_ids, args.reps)
        print("2. breaker check ...", flush=True)
        breaker = bench_breaker(args.breaker_calls, args.reps)

        print("3a. router CPU cost ...", flush=True)
        cpu_cost = bench_router_cpu(client, args.breaker_calls // 4, args.reps)
        print("3b. lookup latency ...", flush=True)
        publish_state(client, GROUP, phase="shadow", ramp_pct=0, version=1)
        backend = LegacyRedisBackend.from_plan(client, plan)
        router = FeatureRouter(
            client, LegacyRedisBackend.from_plan(client, plan), PostgresBackend(pg_url, plan), plan=plan
        )
        router.wait_ready(10)
        try:
            lookup = bench_lookup(client, router, backend, plan, ids, args.lookups, args.block)
        finally:
            router.close()

        print("4. rollback propagation ...", flush=True)
        rollback = bench_rollback(rd.url, pg_url, client, args.rollbacks, server_cpu)
        print("5. rollback through the registry ...", flush=True)
        try:
            reg_rollback: dict[str, float] | None = bench_registry_rollback(
                rd.url, pg, pg_url, client, plan, args.rollbacks, server_cpu
            )
        except ImportError as exc:  # the registry is another area; report without it if absent
            print(f"registry rollback skipped: {exc}", flush=True)
            reg_rollback = None
    finally:
        rd.stop()
        pg.stop()

    raw = lookup["raw HGETALL"]
    rtr = lookup["router get_features"]
    bk = lookup["backend read (HGETALL + decode)"]
    added_p99 = rtr["p99"] - raw["p99"]
    added_p50 = rtr["p50"] - raw["p50"]
    routing_only_p99 = rtr["p99"] - bk["p99"]
    routing_only_p50 = rtr["p50"] - bk["p50"]
    crc = decision["crc32 split (router path)"]
    rows = [
        "| measure | value | goal | ratio to baseline |",
        "| --- | --- | --- | --- |",
        f"| routing decision per entity (CRC-32, split), median (best run) | {crc:.0f} ns "
        f"({decision['crc32 split best run']:.0f} ns) | <= 250 ns | "
        f"{crc / (raw['p50'] * 1000):.2%} of a raw HGETALL p50 |",
    ]
    if "mmh3 split (comparison)" in decision:
        rows.append(
            f"| same with mmh3 (not used), median (best run) | {decision['mmh3 split (comparison)']:.0f} ns "
            f"({decision['mmh3 split best run']:.0f} ns) | | |"
        )
    rows += [
        f"| empty Python loop per entity (floor) | {decision['empty loop (baseline)']:.0f} ns | | |",
        f"| breaker check per request, router fast path | {breaker['router breaker overhead']:.0f} ns | <= 1000 ns | "
        f"{breaker['router breaker overhead'] / breaker['pybreaker overhead']:.2f}x pybreaker call() |",
        f"| pybreaker `call()` per request (comparison) | {breaker['pybreaker overhead']:.0f} ns | | |",
        "| router's own CPU per 1-entity call, instant backends, at 0% / 50% / 100% | "
        + " / ".join(
            f"{cpu_cost[f'router at {p}%'] - cpu_cost['instant backend called directly']:.0f}"
            for p in (0, 50, 100)
        )
        + f" ns | | {(cpu_cost['router at 50%'] - cpu_cost['instant backend called directly']) / 1000 / raw['p50']:.1%}"
        " of a raw HGETALL p50 (at 50%) |",
        f"| raw HGETALL p50 / p99 (baseline) | {raw['p50']:.1f} / {raw['p99']:.1f} us | | 1.00 |",
        f"| LegacyRedisBackend.read p50 / p99 (HGETALL + typed decode) | {bk['p50']:.1f} / {bk['p99']:.1f} us | | "
        f"{bk['p99'] / raw['p99']:.2f}x p99 |",
        f"| router get_features p50 / p99 (1 entity, ramp 0) | {rtr['p50']:.1f} / {rtr['p99']:.1f} us | | "
        f"{rtr['p99'] / raw['p99']:.2f}x p99 |",
        f"| router added p99 over raw HGETALL (incl. decode) | {added_p99:+.1f} us ({added_p99 / raw['p99']:+.1%}) | "
        f"<= 10% | p50 {added_p50:+.1f} us ({added_p50 / raw['p50']:+.1%}) |",
        f"| router added p99 over the decoding read (routing + breaker + stats) | {routing_only_p99:+.1f} us "
        f"({routing_only_p99 / raw['p99']:+.1%} of raw p99) | <= 10% | p50 {routing_only_p50:+.1f} us "
        f"({routing_only_p50 / raw['p50']:+.1%}) |",
        f"| rollback -> other process 100% old, median / p95 / max | {rollback['median_ms']:.2f} / "
        f"{rollback['p95_ms']:.2f} / {rollback['max_ms']:.2f} ms | < 1000 ms | "
        f"{rollback['median_ms'] / 1000:.2%} of the goal |",
    ]
    if reg_rollback is not None:
        rows.append(
            f"| `Registry.rollback()` -> other process 100% old, median / p95 / max | "
            f"{reg_rollback['median_ms']:.2f} / {reg_rollback['p95_ms']:.2f} / {reg_rollback['max_ms']:.2f} ms | "
            f"< 1000 ms | {reg_rollback['median_ms'] / 1000:.2%} of the goal |"
        )
    header = [
        "## bench_router: FeatureRouter overheads vs a raw Redis HGETALL",
        "",
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}. "
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Command: `python -m bench.bench_router {' '.join(argv or sys.argv[1:])}`. "
        f"Pinning: {pinned_note}. Medians of {args.reps} runs for per-entity/per-call costs; "
        f"{lookup['raw HGETALL']['n']} single-entity lookups per variant, interleaved in blocks of {args.block}; "
        f"{rollback['rounds']} rollback rounds each as a bare mirror write (SET + PUBLISH in the registry format) "
        "and through `Registry.rollback()` (transaction, audit row, mirror publish; from a 5% ramp); the child "
        "router process reads 5 new-side entities in a loop and reports the first all-old read.",
        f"Shared 2-core VM with other work running (load average {os.getloadavg()[0]:.1f} at the end): absolute "
        "figures are noisy and inflated, ratios are from the same run. A p99 here is mostly CPU-scheduler "
        "delay from the other work, which pinning cannot remove; the p50 rows show the per-call cost better.",
        "",
    ]
    text = "\n".join(header + rows) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
