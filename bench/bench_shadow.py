"""Shadow comparison end to end: legacy Redis vs a Postgres-wire new store, N entities x 10 features.

Compared in the same run, each measurement in a fresh subprocess (so peak memory is its own):

- **ours**: ``run_shadow`` with the project's readers (raw-protocol pipelined HMGET parsed with
  Arrow, ADBC for Postgres), both reads overlapped in threads, the vectorised engine;
- **naive**: redis-py pipelined ``HGETALL`` of the same keys, ``pandas.read_sql`` of the same
  rows, a pandas merge-and-compare, one after the other;
- **floor**: the Redis server's own ceiling for the same ``HGETALL`` calls: a raw pipelined
  ``HGETALL`` of exactly the bench's keys over a socket, replies received but not decoded (the
  end is found by a trailing ``PING``), and every reply checked to be a hit. (``redis-benchmark``
  is not used: its ``__rand_int__`` keys are 12-digit ids, so it would time a million misses.)
- **reladiff**: reladiff diffing the same data as two Postgres tables (exact-equality data).

Run: ``python -m bench.bench_shadow`` (embedded Postgres and Redis; ``--entities`` for size,
default 1,000,000; ``--quick`` = 100k). Writes ``bench/results/bench_shadow.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUP = "bench_group"
INTS = ("txn_count_1h", "txn_count_24h", "txn_count_7d", "declined_count_24h")
FLOATS = ("amount_sum_24h", "amount_avg_7d", "amount_max_7d", "foreign_ratio_7d", "risk_score")
TS = "last_txn_ts"
FEATURES = (*INTS, *FLOATS, TS)
KEY_PREFIX = "bench:shadow:"


def ids_for(n: int) -> list[str]:
    return [f"e{i:08d}" for i in range(n)]


def write_plan(folder: Path) -> Path:
    """A one-group plan whose new-store view reads a plain table (the values under test)."""
    (folder / "sql").mkdir(parents=True, exist_ok=True)
    cols = ", ".join(f"v.{f}" for f in FEATURES)
    (folder / "sql" / f"{GROUP}.sql").write_text(
        f"SELECT v.entity, {cols}, v.source_ts FROM bench.new_values AS v WHERE v.source_ts <= :as_of\n"
    )
    features = [{"name": f, "dtype": "int64"} for f in INTS]
    features += [{"name": f, "dtype": "float64", "atol": 1e-9, "rtol": 1e-9} for f in FLOATS]
    features.append({"name": TS, "dtype": "timestamp"})
    plan = {
        "version": 1,
        "name": "bench_shadow",
        "connections": {
            "legacy_online": "bench_redis",
            "legacy_offline": "bench_offline",
            "event_log": "bench_events",
            "new_store": "bench_new",
            "registry": "bench_registry",
            "model_metrics": "bench_metrics",
        },
        "defaults": {"shadow_sample_size": 0},
        "groups": {
            GROUP: {
                "entity_key": "entity",
                "definition": f"sql/{GROUP}.sql",
                "features": features,
                "legacy_online": {"key_template": KEY_PREFIX + "{entity}", "timestamp_field": "_ts"},
                "legacy_offline": {"table": "legacy.bench_history"},
                "sla": {"p99_ms": 10, "max_staleness": "5m"},
                "qps": {"peak": 10, "average": 1},
            }
        },
    }
    path = folder / "plan.yaml"
    path.write_text(json.dumps(plan, indent=2))
    return path


def frames(n: int, mismatch_rate: float, seed: int = 11):
    """The old store's frame and the new store's (a known share of values differs)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {"entity_id": pa.array(ids_for(n), pa.string())}
    for f in INTS:
        cols[f] = rng.integers(0, 500, n)
    for f in FLOATS:
        cols[f] = np.round(rng.gamma(2.0, 40.0, n), 4)
    base = np.datetime64("2026-11-20T00:00:00", "us")
    cols[TS] = pa.array(
        base - rng.integers(0, 7 * 86400, n).astype("timedelta64[s]"), pa.timestamp("us", tz="UTC")
    )
    cols["_source_ts"] = pa.array(np.full(n, base), pa.timestamp("us", tz="UTC"))
    old = pa.table(cols)
    new_cols = dict(cols)
    bad = rng.random(n) < mismatch_rate
    new_cols["txn_count_24h"] = np.where(bad, cols["txn_count_24h"] + 1, cols["txn_count_24h"])
    new_cols["amount_sum_24h"] = np.where(bad, cols["amount_sum_24h"] * 100, cols["amount_sum_24h"])
    return old, pa.table(new_cols), int(bad.sum())


# --------------------------------------------------------------------------- setup


def start_services(args: argparse.Namespace, workdir: Path) -> dict:
    """Servers and an empty database; the data is loaded by the ``setup`` worker (see below)."""
    from fsmig_dev.devservices import Postgres, start_postgres, start_redis

    pg = Postgres(url=args.pg_url) if args.pg_url else start_postgres(workdir / "pg")
    rd = None if args.redis_url else start_redis()
    return {
        "pg_url": pg.create_database("fsmig_bench_shadow", drop=True),
        "redis_url": args.redis_url or rd.url,
        "plan": str(write_plan(workdir / "plan")),
        "entities": args.entities,
        "mismatch_rate": args.mismatch_rate,
        "chunk_size": args.chunk_size,
        "_servers": (pg, rd),
    }


def worker_setup(state: dict) -> dict:
    """Write the old frame to Redis and the new one to Postgres (in a worker: the parent stays small,
    so the workers it starts do not inherit its peak RSS)."""
    import adbc_driver_postgresql.dbapi as adbc
    import psycopg

    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    t0 = time.perf_counter()
    plan = load_plan(state["plan"])
    old, new, bad = frames(state["entities"], state["mismatch_rate"])
    source = RedisOnlineSource(state["redis_url"], plan, "bench_redis")
    source.client.flushdb()
    source.write(plan.groups[GROUP], old)
    pg_url = state["pg_url"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bench")
    names = [
        "entity" if c == "entity_id" else "source_ts" if c == "_source_ts" else c for c in new.column_names
    ]
    with adbc.connect(pg_url) as conn, conn.cursor() as cur:
        cur.adbc_ingest("new_values", new.rename_columns(names), mode="create", db_schema_name="bench")
        cur.adbc_ingest("rd_old", old.rename_columns(names), mode="create", db_schema_name="bench")
        cur.adbc_ingest(
            "rd_new", old.rename_columns(names), mode="create", db_schema_name="bench"
        )  # exact copy
        conn.commit()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("new_values", "rd_old", "rd_new"):
            conn.execute(f"ALTER TABLE bench.{table} ADD PRIMARY KEY (entity)")
            conn.execute(f"VACUUM ANALYZE bench.{table}")
    NewStore(pg_url, plan, "bench_new").deploy(GROUP)
    return {"seconds": time.perf_counter() - t0, "bad": bad}


# --------------------------------------------------------------------------- workers


def worker_ours(state: dict) -> dict:
    import adbc_driver_postgresql.dbapi  # noqa: F401  (imports outside the timer, as in the naive worker)
    import hiredis  # noqa: F401
    import pyarrow.compute  # noqa: F401

    from airflow_fsmigration.compare.engine import compare_tables
    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    plan = load_plan(state["plan"])
    ids = ids_for(state["entities"])
    t0 = time.perf_counter()
    old = RedisOnlineSource(state["redis_url"], plan, "bench_redis")
    new = NewStore(state["pg_url"], plan, "bench_new")
    result = run_shadow(plan, GROUP, old, new, entity_ids=ids, chunk_size=state["chunk_size"])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the parts below add theirs
    # the parts alone, one after the other, to show where the time goes (not part of the figure)
    g = plan.groups[GROUP]
    p0 = time.perf_counter()
    old_t = old.read(g, ids)
    p1 = time.perf_counter()
    new_t = new.read(g, ids)
    p2 = time.perf_counter()
    compare_tables(g, old_t, new_t)
    p3 = time.perf_counter()
    new.close()
    stats = result.features
    return {
        "seconds": seconds,
        "maxrss_mb": peak,
        "phases": {"Redis read": p1 - p0, "new-store read": p2 - p1, "compare": p3 - p2},
        "compared": result.entities_compared,
        "mismatched": {k: v.mismatched for k, v in stats.items() if v.mismatched},
        "explanations": [f"{e.kind}:{e.feature}:{e.rows}" for e in result.explanations],
    }


def worker_scan(state: dict) -> dict:
    """``run_shadow`` with sample 0: a chunked full scan of both stores (no id list held), optionally
    one shard (``FSMIG_BENCH_SHARD=K/N``), to show how peak memory grows with the entities compared."""
    import adbc_driver_postgresql.dbapi  # noqa: F401
    import hiredis  # noqa: F401
    import pyarrow.compute  # noqa: F401

    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    plan = load_plan(state["plan"])
    shard = os.environ.get("FSMIG_BENCH_SHARD") or None
    t0 = time.perf_counter()
    old = RedisOnlineSource(state["redis_url"], plan, "bench_redis")
    new = NewStore(state["pg_url"], plan, "bench_new")
    result = run_shadow(plan, GROUP, old, new, sample_size=0, shard=shard, chunk_size=state["chunk_size"])
    seconds = time.perf_counter() - t0
    new.close()
    return {"seconds": seconds, "compared": result.entities_compared, "shard": shard}


def worker_naive(state: dict) -> dict:
    import numpy as np
    import pandas as pd
    import redis
    import sqlalchemy

    ids = ids_for(state["entities"])
    t0 = time.perf_counter()
    client = redis.Redis.from_url(state["redis_url"])
    hashes = []
    for start in range(0, len(ids), 10_000):
        pipe = client.pipeline(transaction=False)
        for e in ids[start : start + 10_000]:
            pipe.hgetall(KEY_PREFIX + e)
        hashes.extend(pipe.execute())
    t_redis = time.perf_counter()
    old = pd.DataFrame.from_records([{k.decode(): v.decode() for k, v in h.items()} for h in hashes])
    old["entity_id"] = ids
    for f in (*INTS, *FLOATS):
        old[f] = pd.to_numeric(old[f])
    old[TS] = pd.to_datetime(old[TS], utc=True, format="ISO8601")
    t_parse = time.perf_counter()
    url = state["pg_url"].replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sqlalchemy.create_engine(url)
    cols = ", ".join(FEATURES)
    new = pd.read_sql(
        sqlalchemy.text(
            f"SELECT CAST(entity AS text) AS entity_id, {cols} FROM features.{GROUP} WHERE entity = ANY(:ids)"
        ),
        engine,
        params={"ids": ids},
    )
    engine.dispose()
    t_sql = time.perf_counter()
    merged = old.merge(new, on="entity_id", how="outer", suffixes=("_old", "_new"), indicator=True)
    both = merged["_merge"] == "both"
    mismatched = {}
    for f in FEATURES:
        a, b = merged[f + "_old"], merged[f + "_new"]
        if f in FLOATS:
            ok = np.isclose(a, b, atol=1e-9, rtol=1e-9) | (a.isna() & b.isna())
        else:
            ok = (a == b) | (a.isna() & b.isna())
        mismatched[f] = int((~ok & both).sum())
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "phases": {
            "redis-py HGETALL": t_redis - t0,
            "decode to pandas": t_parse - t_redis,
            "pandas.read_sql": t_sql - t_parse,
            "pandas compare": seconds - (t_sql - t0),
        },
        "compared": len(merged),
        "mismatched": {k: v for k, v in mismatched.items() if v},
    }


def worker_floor(state: dict) -> dict:
    """The server's ceiling: every HGETALL sent pipelined, replies received but never decoded."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(state["redis_url"])
    keys = [(KEY_PREFIX + e).encode() for e in ids_for(state["entities"])]
    payload = (
        b"".join(b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys)
        + b"*1\r\n$4\r\nPING\r\n"
    )
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    sender = threading.Thread(target=sock.sendall, args=(payload,))
    sender.start()
    received = 0
    misses = 0  # empty replies (a key that does not exist): the floor must do the same work
    tail = b""
    while True:
        got = sock.recv_into(view)
        received += got
        chunk = tail + bytes(view[:got])
        misses += chunk.count(b"\r\n*0\r\n") - tail.count(b"\r\n*0\r\n")
        tail = chunk[-7:]
        if tail == b"+PONG\r\n":
            break
    seconds = time.perf_counter() - t0
    sender.join()
    sock.close()
    hits = len(keys) - misses
    if hits != len(keys):
        raise RuntimeError(
            f"floor: {misses} of {len(keys)} HGETALL replies were empty: it did not read the same keys"
        )
    return {
        "seconds": seconds,
        "bytes": received,
        "hits": hits,
        "method": "raw pipelined HGETALL, replies not decoded",
    }


def worker_reladiff(state: dict) -> dict:
    import logging

    from reladiff import connect_to_table, diff_tables

    logging.getLogger("reladiff").setLevel(logging.WARNING)
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(state["pg_url"])  # a dict, since sqeleton's URI parser drops ?host=<socket dir>
    db = {"driver": "postgresql", "database": info.get("dbname"), "user": info.get("user")}
    db.update({k: info[k] for k in ("host", "port", "password") if info.get(k)})
    t0 = time.perf_counter()
    a = connect_to_table(db, "bench.rd_old", "entity")
    b = connect_to_table(db, "bench.rd_new", "entity")
    diffs = list(diff_tables(a, b, extra_columns=FEATURES))
    return {"seconds": time.perf_counter() - t0, "diffs": len(diffs)}


WORKERS = {
    "setup": worker_setup,
    "ours": worker_ours,
    "scan": worker_scan,
    "naive": worker_naive,
    "floor": worker_floor,
    "reladiff": worker_reladiff,
}


def run_worker(name: str, state_path: Path, timeout: float, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_shadow", "--worker", name, "--state", str(state_path)],
        cwd=HERE.parent,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode:
        raise RuntimeError(f"worker {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def machine() -> str:
    return (
        f"{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def write_report(path: Path, args: argparse.Namespace, runs: dict[str, list[dict]], state: dict) -> str:
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items() if v and k != "scan"}
    rss = {k: max(r["maxrss_mb"] for r in v) for k, v in runs.items() if v and k != "scan"}
    n = state["entities"]
    ours = med["ours"]
    rows = [
        "| approach | runs (s) | median (s) | entities/s | ours / this | peak RSS (MB) |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "ours": "ours: run_shadow (raw HMGET + Arrow, ADBC, overlapped, numpy engine)",
        "naive": "naive: redis-py HGETALL + pandas.read_sql + pandas compare",
        "floor": f"floor: {runs['floor'][0].get('method', '')}" if runs.get("floor") else "floor",
        "reladiff": "reladiff diff_tables, two Postgres tables, exact-equality data",
    }
    for k in ("ours", "naive", "floor", "reladiff"):
        if k not in med:
            continue
        secs = ", ".join(f"{r['seconds']:.2f}" for r in runs[k])
        rows.append(
            f"| {labels[k]} | {secs} | {med[k]:.2f} | {n / med[k]:,.0f} | {ours / med[k]:.2f}x | {rss[k]:.0f} |"
        )
    lines = [
        f"## bench_shadow: shadow comparison end to end, {n:,} entities x {len(FEATURES)} features",
        "",
        f"Date: {datetime.now(UTC).isoformat(timespec='seconds')}. Machine: {machine()}.",
        f"Command: `python -m bench.bench_shadow --entities {n} --repeat {args.repeat}`. "
        f"Data: {len(INTS)} int64, {len(FLOATS)} float64, 1 timestamp feature plus a source-time field; "
        f"{state['bad']} entities ({args.mismatch_rate:.1%}) differ in 2 features. Each run is a fresh "
        "subprocess (peak RSS is its own, `resource.getrusage`).",
        "",
        *rows,
        "",
    ]
    if "naive" in med:
        lines.append(f"- ours / naive: **{ours / med['naive']:.2f}** (goal < 0.3)")
    if "floor" in med:
        lines.append(f"- ours / Redis server floor: **{ours / med['floor']:.2f}x** (goal within 1.6x)")
    if "reladiff" in med:
        lines.append(f"- reladiff / ours: {med['reladiff'] / ours:.2f}x")
    lines.append(
        f"- goal of <= 3 s for 1M x 10: {'met' if ours <= 3 and n >= 1_000_000 else 'not met'} ({ours:.2f} s)"
    )
    if runs.get("naive"):
        phases = runs["naive"][0].get("phases", {})
        lines.append("- naive phases (first run): " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    for r in runs.get("scan", []):
        lines.append(
            f"- full scan (sample 0, no id list) {'shard ' + r['shard'] if r['shard'] else 'of all'}: "
            f"{r['compared']:,} entities in {r['seconds']:.2f} s, peak RSS {r['maxrss_mb']:.0f} MB"
        )
    if runs.get("ours"):
        phases = runs["ours"][0].get("phases", {})
        lines.append(
            "- ours, each part alone (first run, not overlapped): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
        )
        lines.append(f"- ours found: {', '.join(runs['ours'][0]['explanations'])}")
    if runs.get("naive"):
        lines.append(f"- naive found mismatches: {runs['naive'][0]['mismatched']}")
    if runs.get("reladiff"):
        lines.append(f"- reladiff differences found: {runs['reladiff'][0]['diffs']} (exact copy)")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="100k entities, 1 repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=250_000)
    ap.add_argument("--mismatch-rate", type=float, default=0.001)
    ap.add_argument(
        "--skip", action="append", default=[], choices=["ours", "naive", "floor", "reladiff", "scan"]
    )
    ap.add_argument("--redis-url")
    ap.add_argument("--pg-url")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_shadow.md"))
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        state = json.loads(Path(args.state).read_text())
        out = WORKERS[args.worker](state)
        out.setdefault("maxrss_mb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(out))
        return 0

    if args.quick:
        args.entities, args.repeat = 100_000, 1
    workdir = Path(tempfile.mkdtemp(prefix="fsmig_bench_shadow_"))
    state = start_services(args, workdir)
    pg, rd = state.pop("_servers")
    state_path = workdir / "state.json"
    state_path.write_text(json.dumps(state))
    timeout = max(600.0, args.entities / 1000)
    loaded = run_worker("setup", state_path, timeout * 3)
    state["bad"] = loaded["bad"]
    print(
        f"setup: {args.entities} entities written to Redis and Postgres in {loaded['seconds']:.1f} s",
        flush=True,
    )
    runs: dict[str, list[dict]] = {k: [] for k in WORKERS if k not in args.skip and k != "setup"}
    try:
        for i in range(args.repeat):
            for name in ("floor", "ours", "naive"):
                if name in runs:
                    r = run_worker(name, state_path, timeout)
                    runs[name].append(r)
                    print(
                        f"run {i + 1} {name}: {r['seconds']:.2f} s, peak RSS {r['maxrss_mb']:.0f} MB",
                        flush=True,
                    )
        if "scan" in runs:  # memory as the compared population grows: a quarter, then all
            for shard in ("0/4", ""):
                r = run_worker("scan", state_path, timeout, env={"FSMIG_BENCH_SHARD": shard})
                runs["scan"].append(r)
                print(f"full scan {shard or 'all'}: {r['compared']} entities in {r['seconds']:.2f} s, "
                      f"peak RSS {r['maxrss_mb']:.0f} MB", flush=True)  # fmt: skip
        if "reladiff" in runs:  # slow and single-threaded: once
            r = run_worker("reladiff", state_path, timeout * 3)
            runs["reladiff"].append(r)
            print(f"reladiff: {r['seconds']:.2f} s, {r['diffs']} differences", flush=True)
        print(write_report(Path(args.out), args, runs, state))
    finally:
        if rd is not None:
            rd.stop()
        if not args.pg_url:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
