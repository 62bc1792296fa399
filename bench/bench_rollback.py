"""Rollback end to end: from the call until a router in another process serves 100% from the old store.

Baseline, measured in the same run: a bare SET + PUBLISH of the routing JSON (what the mirror
does, without Postgres). Then the real paths:

1. ``Registry.rollback()``: row lock, update, audit row, commit, then the mirror's Lua SET + PUBLISH;
2. the same while ``--writers`` threads race ramps on the same row (compare-and-set), to show
   that the row lock keeps a rollback from being starved;
3. ``fsmigrate rollback PLAN GROUP --reason ...`` as a fresh process (Python start, plan load,
   connections from ``AIRFLOW_CONN_*``), the path an on-call engineer uses when Airflow is down.

The router child is ``bench.bench_router --child`` (reads 5 entities from the new store in a loop
and prints the first all-old read). Run: ``python -m bench.bench_rollback`` (embedded Postgres and
Redis; ``--quick`` for a smoke run). Writes ``bench/results/bench_rollback.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GROUP = "user_profile"
DEMO_PLAN = REPO / "include" / "demo_plan"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p95": pct(values, 95),
        "max": max(values),
        "n": len(values),
    }


class Child:
    """A router process that prints ``new|old <epoch>`` whenever the side it serves from changes."""

    def __init__(self, redis_url: str, pg_url: str, cpu: int | None) -> None:
        cmd = [sys.executable, "-m", "bench.bench_router", "--child", redis_url, pg_url, "--group", GROUP]
        if cpu is not None:
            cmd += ["--child-cpu", str(cpu)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)

    def next(self, want: str) -> float:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line:
            raise RuntimeError("the router child exited")
        side, ts = line
        if side != want:
            raise RuntimeError(f"router child reported {side}, expected {want}")
        return float(ts)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def bench_baseline(rd_url: str, pg_url: str, client, rounds: int, cpu: int | None) -> list[float]:
    from airflow_fsmigration.serving.routing import publish_state

    version = 1
    publish_state(client, GROUP, phase="cutover", ramp_pct=100, version=version)
    child = Child(rd_url, pg_url, cpu)
    deltas = []
    try:
        child.next("new")
        for _ in range(rounds):
            time.sleep(random.uniform(0.05, 0.15))
            version += 1
            t0 = time.time()
            publish_state(client, GROUP, phase="rolled_back", ramp_pct=0, version=version)
            deltas.append((child.next("old") - t0) * 1000)
            version += 1
            publish_state(client, GROUP, phase="cutover", ramp_pct=100, version=version)
            child.next("new")
    finally:
        child.stop()
    return deltas


def _cut_over(reg) -> None:
    """rolled_back/planned -> shadow -> 5% -> cutover (no plan on this registry, so no step check)."""
    if reg.state(GROUP).phase.value == "cutover":
        return
    reg.transition(GROUP, "shadow", actor="bench", reason="re-shadow")
    reg.ramp(GROUP, 5, actor="bench", reason="bench ramp", soak_passed=True)
    reg.ramp(GROUP, 100, actor="bench", reason="bench cutover")


def _all_new_pct() -> float:
    """A ramp below 100% at which every entity the router child reads is still on the new store."""
    from airflow_fsmigration.serving.bucketing import split, threshold_for

    ids = [f"u{i:06d}" for i in range(5)]  # what bench_router's child reads
    return next(p for p in (50, 75, 90, 99, 99.99) if not split(ids, threshold_for(p))[0])


def _ramp_writers(
    pg_url: str, client, n: int, stop: threading.Event, counts: dict[str, int]
) -> list[threading.Thread]:
    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.model import IllegalTransition, Phase, VersionConflict
    from airflow_fsmigration.registry.routing import Registry

    lock = threading.Lock()
    low = (
        _all_new_pct()
    )  # the child keeps reading the new store while writers race: only the rollback flips it

    def run() -> None:
        reg = Registry(pg_url, RoutingMirror(client))
        try:
            while not stop.is_set():
                try:
                    cur = reg.state(GROUP)
                    if cur.phase not in (Phase.RAMPING, Phase.CUTOVER):
                        time.sleep(0.001)
                        continue
                    nxt = low if cur.ramp_pct == 100 else 100
                    reg.ramp(GROUP, nxt, actor="writer", reason="race", expected_version=cur.version)
                    key = "ramps"
                except (VersionConflict, IllegalTransition):
                    key = "refused"
                with lock:
                    counts[key] = counts.get(key, 0) + 1
        finally:
            reg.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def bench_registry(
    rd_url: str, pg_url: str, client, rounds: int, writers: int, cpu: int | None
) -> tuple[list[float], list[float], list[float], list[float], dict[str, int]]:
    """(propagation ms, call ms) for a quiet registry, then the same under racing ramp writers."""
    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.routing import Registry

    reg = Registry(pg_url, RoutingMirror(client))
    _cut_over(reg)
    child = Child(rd_url, pg_url, cpu)
    quiet_prop, quiet_call, busy_prop, busy_call = [], [], [], []
    counts: dict[str, int] = {}
    try:
        child.next("new")
        for busy in (False, True):
            for _ in range(rounds):
                stop = threading.Event()
                threads = _ramp_writers(pg_url, client, writers, stop, counts) if busy else []
                time.sleep(random.uniform(0.05, 0.15))
                t0 = time.time()
                state = reg.rollback(GROUP, reason="bench", actor="bench")
                t1 = time.time()
                assert state.changed, state
                seen_old = child.next("old")
                stop.set()
                for t in threads:
                    t.join(10)
                (busy_prop if busy else quiet_prop).append((seen_old - t0) * 1000)
                (busy_call if busy else quiet_call).append((t1 - t0) * 1000)
                _cut_over(reg)
                child.next("new")
    finally:
        child.stop()
        reg.close()
    return quiet_prop, quiet_call, busy_prop, busy_call, counts


def bench_cli(rd_url: str, pg_url: str, client, rounds: int, cpu: int | None) -> list[float]:
    from airflow_fsmigration.registry.mirror import RoutingMirror
    from airflow_fsmigration.registry.routing import Registry
    from fsmig_dev.devservices import airflow_conn_env

    env = {
        **os.environ,
        **airflow_conn_env("fsmig_registry", pg_url),
        **airflow_conn_env("fsmig_legacy_redis", rd_url),
    }
    reg = Registry(pg_url, RoutingMirror(client))
    _cut_over(reg)
    child = Child(rd_url, pg_url, cpu)
    deltas = []
    try:
        child.next("new")
        for _ in range(rounds):
            t0 = time.time()
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "airflow_fsmigration.cli",
                    "rollback",
                    str(DEMO_PLAN),
                    GROUP,
                    "--reason",
                    "bench",
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"fsmigrate rollback failed: {proc.stderr}")
            deltas.append((child.next("old") - t0) * 1000)
            _cut_over(reg)
            child.next("new")
    finally:
        child.stop()
        reg.close()
    return deltas


def bench_import_floor(rounds: int) -> list[float]:
    """A new Python process that only imports psycopg and redis and loads the plan: the CLI's floor."""
    code = (
        "import psycopg, redis\n"
        "from airflow_fsmigration.plan import load_plan\n"
        f"load_plan({str(DEMO_PLAN)!r})\n"
    )
    out = []
    for _ in range(rounds):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
        out.append((time.time() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis-url")
    ap.add_argument("--pg-url")
    ap.add_argument("--entities", type=int, default=2000, help="entities seeded in both stores")
    ap.add_argument("--rounds", type=int, default=20, help="rollback rounds per in-process variant")
    ap.add_argument("--writers", type=int, default=8, help="racing ramp writers in the contention variant")
    ap.add_argument("--cli-rounds", type=int, default=5, help="rounds of the fsmigrate rollback process")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the router child and redis-server")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_rollback.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.cli_rounds, args.writers = 5, 2, 4
    logging.getLogger("airflow_fsmigration").setLevel(logging.ERROR)  # one warning per rollback otherwise

    import redis

    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.registry.routing import Registry
    from bench.bench_router import seed
    from fsmig_dev.devservices import Postgres, Redis, start_postgres, start_redis

    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2
    other_cpu = cpus[1] if pin else None
    pg = Postgres(url=args.pg_url) if args.pg_url else start_postgres()
    rd = Redis(url=args.redis_url) if args.redis_url else start_redis()
    try:
        pinned = "not pinned"
        if pin and rd._proc is not None:
            os.sched_setaffinity(rd._proc.pid, {other_cpu})
            pinned = f"router child and redis-server on CPU {other_cpu}; Postgres and this process unpinned"
        pg_url = pg.create_database("fsmig_bench_rollback", drop=True)
        client = redis.Redis.from_url(rd.url)
        client.flushdb()
        plan = load_plan(DEMO_PLAN)
        print(f"seeding {args.entities} entities ...", flush=True)
        seed(client, pg_url, plan, args.entities)

        print("baseline: bare SET + PUBLISH ...", flush=True)
        baseline = bench_baseline(rd.url, pg_url, client, args.rounds, other_cpu)

        client.delete(f"fsmig:routing:{GROUP}")  # the registry's versions start again at 1
        reg = Registry(pg_url)
        reg.ensure_schema()
        reg.register_plan(plan, actor="bench")
        reg.plan = None  # the bench cuts over in one step between rounds
        reg.close()
        print("registry rollback (quiet, then with racing writers) ...", flush=True)
        quiet, quiet_call, busy, busy_call, counts = bench_registry(
            rd.url, pg_url, client, args.rounds, args.writers, other_cpu
        )
        print("fsmigrate rollback process ...", flush=True)
        cli = bench_cli(rd.url, pg_url, client, args.cli_rounds, other_cpu)
        floor = bench_import_floor(args.cli_rounds)
    finally:
        rd.stop()
        pg.stop()

    base = summary(baseline)
    rows = [
        "| path | median ms | p95 ms | max ms | rounds | median vs baseline | goal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def row(name: str, values: list[float], goal: str = "") -> None:
        s = summary(values)
        rows.append(
            f"| {name} | {s['median']:.2f} | {s['p95']:.2f} | {s['max']:.2f} | {s['n']} | "
            f"{s['median'] / base['median']:.1f}x | {goal} |"
        )

    row("baseline: bare SET + PUBLISH -> router child 100% old", baseline)
    row("`Registry.rollback()` -> router child 100% old", quiet, "< 1000 ms")
    row("`Registry.rollback()` call alone (lock, update, audit, commit, mirror)", quiet_call)
    row(f"same, {args.writers} writers racing ramps on the row -> router child 100% old", busy, "< 1000 ms")
    row(f"`Registry.rollback()` call alone, {args.writers} racing writers", busy_call)
    row("`fsmigrate rollback` new process -> router child 100% old", cli, "< 1000 ms")
    row("floor of that: new Python process importing psycopg + redis, loading the plan", floor)
    header = [
        "## bench_rollback: rollback call -> a router in another process serves 100% from the old store",
        "",
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}. "
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Command: `python -m bench.bench_rollback {' '.join(argv if argv is not None else sys.argv[1:])}`. "
        f"Pinning: {pinned}. Racing writers: {counts.get('ramps', 0)} ramps committed, "
        f"{counts.get('refused', 0)} refused (CAS conflict or rolled back) during the contention rounds.",
        "Shared 2-core VM with other work running: absolute figures are noisy; ratios are from the same run.",
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
