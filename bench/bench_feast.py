"""Feast's Redis online store: our direct reader against ``get_online_features`` on the same keys.

Builds the demo Feast repo (``fsmig_dev.feast_demo``) on embedded Postgres and Redis
(or ``--pg-url`` / ``--redis-url``), materializes ``--entities`` drivers with Feast, then measures
in the same run:

1. the baseline: Feast's ``get_online_features`` (in the Feast venv), all 7 features of
   ``driver_hourly_stats``, over ``--feast-keys`` keys in batches of ``--batch`` entity rows;
2. our :class:`FeastRedisOnlineSource` on the same keys and batch size;
3. our reader as the comparison uses it: all ``--entities`` keys in one call (pipelined in
   batches of 20k, decoded in bulk).

Entities per second are medians of ``--runs``; wall and process CPU time are both reported, since
on a shared 2-core VM the wall time includes waiting for a core. Goal: the direct reader at least
10x ``get_online_features``.

Run: ``python -m bench.bench_feast [--entities 100000] [--feast-keys 20000] [--batch 100] [--runs 3]``.
Writes ``bench/results/bench_feast.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips", "rating", "is_active", "city", "last_trip_ts"]

FEAST_TIMING_SCRIPT = r"""
import time
from feast import FeatureStore
store = FeatureStore(repo_path=PAYLOAD["repo"])
refs = [f"driver_hourly_stats:{f}" for f in PAYLOAD["features"]]
keys = PAYLOAD["keys"]
batch = PAYLOAD["batch"]
store.get_online_features(features=refs, entity_rows=[{"driver_id": k} for k in keys[:batch]]).to_dict()
runs = []
for _ in range(PAYLOAD["runs"]):
    wall, cpu = time.perf_counter(), time.process_time()
    rows = 0
    for i in range(0, len(keys), batch):
        out = store.get_online_features(features=refs, entity_rows=[{"driver_id": k} for k in keys[i:i + batch]]).to_dict()
        rows += len(out["driver_id"])
    runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, "rows": rows})
RESULT = runs
"""


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load})"


def _median_rate(runs: list[dict], n: int) -> tuple[float, float, float]:
    wall = statistics.median(r["wall"] for r in runs)
    cpu = statistics.median(r["cpu"] for r in runs)
    return n / wall, wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000, help="drivers materialized (default 100000)")
    parser.add_argument(
        "--feast-keys", type=int, default=20_000, help="keys read through Feast (default 20000)"
    )
    parser.add_argument("--batch", type=int, default=100, help="entity rows per get_online_features call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("FSMIG_BENCH_POSTGRES_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("FSMIG_BENCH_REDIS_URL"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_feast.md")
    args = parser.parse_args(argv)

    import psycopg

    from airflow_fsmigration import feast_import as fi
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource
    from fsmig_dev import feast_demo as fd
    from fsmig_dev.devservices import start_postgres, start_redis

    started = datetime.now(UTC)
    python = fd.ensure_feast_venv()
    pg = None if args.pg_url else start_postgres()
    rd = None if args.redis_url else start_redis()
    try:
        admin = args.pg_url or pg.url
        redis_url = args.redis_url or rd.url
        name = "fsmig_bench_feast"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        from urllib.parse import urlsplit

        pg_url = urlsplit(admin)._replace(path=f"/{name}").geturl()
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        workdir = Path(tempfile.mkdtemp(prefix="fsmig_bench_feast_"))
        repo_path = fd.write_demo_repo(workdir, pg_url, redis_url)
        now = datetime.now(UTC).replace(microsecond=0)
        t = time.perf_counter()
        counts = fd.load_demo_data(pg_url, drivers=args.entities, customers=100, now=now)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        fd.apply_and_materialize(repo_path, now - timedelta(days=30), now, python=python)
        materialize_s = time.perf_counter() - t
        print(
            f"loaded {counts['driver_rows']} rows in {load_s:.1f} s; Feast materialized in {materialize_s:.1f} s"
        )
        repo = fi.load_feast_repo(repo_path, python=python)

        all_keys = list(range(1, args.entities + 1))
        step = max(1, args.entities // args.feast_keys)
        keys = all_keys[::step][: args.feast_keys]
        feast_runs = fi.run_in_feast(
            FEAST_TIMING_SCRIPT,
            {
                "repo": str(repo_path),
                "features": FEATURES,
                "keys": keys,
                "batch": args.batch,
                "runs": args.runs,
            },
            python=python,
            cwd=repo_path,
        )
        assert all(r["rows"] == len(keys) for r in feast_runs)
        feast_rate, feast_wall, feast_cpu = _median_rate(feast_runs, len(keys))
        print(f"get_online_features: {feast_rate:,.0f} entities/s")

        source = FeastRedisOnlineSource(redis_url, repo)
        group = _group(repo)
        ids = [str(k) for k in keys]
        source.read(group, ids[: args.batch])
        small_runs = []
        for _ in range(args.runs):
            wall, cpu, rows = time.perf_counter(), time.process_time(), 0
            for i in range(0, len(ids), args.batch):
                rows += source.read(group, ids[i : i + args.batch]).num_rows
            small_runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
            assert rows == len(ids), rows
        small_rate, small_wall, small_cpu = _median_rate(small_runs, len(ids))
        print(f"direct reader, batches of {args.batch}: {small_rate:,.0f} entities/s")

        # The floor of any reader making one round trip per batch: Redis PING latency right now.
        pings = []
        for _ in range(200):
            t = time.perf_counter()
            source.client.ping()
            pings.append(time.perf_counter() - t)
        rtt = statistics.median(pings)
        print(f"Redis round trip (PING, median): {rtt * 1e3:.2f} ms")

        bulk_ids = [str(k) for k in all_keys]
        bulk_runs = []
        for _ in range(args.runs):
            wall, cpu = time.perf_counter(), time.process_time()
            rows = source.read(group, bulk_ids).num_rows
            bulk_runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
            assert rows == len(bulk_ids), rows
        bulk_rate, bulk_wall, bulk_cpu = _median_rate(bulk_runs, len(bulk_ids))
        print(f"direct reader, bulk: {bulk_rate:,.0f} entities/s")
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop()

    table = [
        "| reader | keys | batch | entities/s (wall) | vs Feast | entities per CPU-s | vs Feast (CPU) | wall s | CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    feast_cpu_rate = len(keys) / feast_cpu
    for label, n, batch, rate, wall, cpu in (
        ("Feast `get_online_features` (baseline)", len(keys), args.batch, feast_rate, feast_wall, feast_cpu),
        (
            "`FeastRedisOnlineSource.read`, same keys and batches",
            len(ids),
            args.batch,
            small_rate,
            small_wall,
            small_cpu,
        ),
        (
            "`FeastRedisOnlineSource.read`, one call (as the comparison reads)",
            len(bulk_ids),
            "all",
            bulk_rate,
            bulk_wall,
            bulk_cpu,
        ),
    ):
        table.append(
            f"| {label} | {n:,} | {batch} | {rate:,.0f} | {rate / feast_rate:.1f}x | {n / cpu:,.0f} | "
            f"{n / cpu / feast_cpu_rate:.1f}x | {wall:.2f} | {cpu:.2f} |"
        )
    text = "\n".join(
        [
            "## bench_feast: direct Feast Redis reader vs `get_online_features`",
            "",
            f"- Machine: {_machine()}",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC; Feast 0.67.0 in `.venv-feast`; {args.runs} runs each, medians",
            f"- Data: {args.entities:,} drivers x 7 features (`driver_hourly_stats` of the demo repo), "
            f"materialized by Feast in {materialize_s:.1f} s",
            f"- Command: `python -m bench.bench_feast --entities {args.entities} --feast-keys {args.feast_keys} "
            f"--batch {args.batch} --runs {args.runs}`",
            "",
            *table,
            "",
            f"Redis round trip (PING, median of 200) during the run: {rtt * 1e3:.2f} ms, so one round trip per "
            f"batch of {args.batch} caps any reader at {args.batch / rtt:,.0f} entities/s on this machine now.",
            "",
            "Goal: the direct reader at least 10x `get_online_features`. Both sides return the same values "
            "(tests/test_feast_integration.py checks every entity). CPU time is the client process's own "
            "(Feast's subprocess, or ours including the pipeline's writer thread); on a shared VM the wall "
            "time also counts waiting for a core.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


def _group(repo):
    from airflow_fsmigration.plan.model import FeatureGroup

    view = repo.views["driver_hourly_stats"]
    return FeatureGroup.model_validate(
        {
            "name": "driver_hourly_stats",
            "entity_key": "driver_id",
            "entity_dtype": "int64",
            "definition": "unused.sql",
            "features": [{"name": f.name, "dtype": f.dtype} for f in view.features],
            "legacy_online": {"key_template": "feast:{entity}"},
            "legacy_offline": {"table": "unused"},
            "sla": {"p99_ms": 10, "max_staleness": "1h"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )


if __name__ == "__main__":
    sys.exit(main())
