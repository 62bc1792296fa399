"""Store readers: the legacy Redis reader and the Postgres (ADBC) reader against the naive stack.

For N entities x 10 features (4 float64, 4 int64, a bool, a string, plus ``_ts``), written in
the legacy layout to a real Redis and as a history table to a real Postgres, measures (medians
of ``--repeats`` runs, all in this process, one after another):

Redis
1. ``RedisOnlineSource.read``: pipelined HMGET, vectorised reply parsing into typed Arrow;
2. the naive baseline: redis-py pipelined ``HGETALL`` of the same keys (batches of 10k; the
   replies stay Python dicts of bytes, no typing, so the baseline is flattered);
3. the floor: the server's own ceiling, a raw-socket pipelined ``HGETALL`` of the same keys that
   only counts the reply bytes (no parsing at all), and the same for ``HMGET`` (``redis-benchmark``
   is not used: it would read one key n times, or random 12-digit ids that do not exist).

Postgres
4. ``PostgresOfflineSource.read`` (latest row per entity, ``DISTINCT ON`` with the ids bound
   as one array parameter) through ADBC, to a typed Arrow frame;
5. ``pandas.read_sql`` of the same query text with the same ids, over psycopg;
6. the plain ``SELECT`` of the table through ADBC and through ``pandas.read_sql`` (driver only).

Run: ``python -m bench.bench_readers [--entities 200000] [--repeats 3]`` (the issue's size is
``--entities 1000000``). Writes ``bench/results/bench_readers.md``. Uses embedded servers unless
``FSMIG_BENCH_REDIS_URL`` / ``FSMIG_BENCH_POSTGRES_URL`` are set.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FEATURES = (
    [{"name": f"f{i}", "dtype": "float64"} for i in range(4)]
    + [{"name": f"i{i}", "dtype": "int64"} for i in range(4)]
    + [{"name": "flag", "dtype": "bool"}, {"name": "category", "dtype": "string"}]
)


def make_group() -> Any:
    from airflow_fsmigration.plan.model import FeatureGroup

    return FeatureGroup.model_validate(
        {
            "name": "bench_readers",
            "entity_key": "entity",
            "definition": "sql/none.sql",
            "features": FEATURES,
            "legacy_online": {
                "key_template": "fs:bench:{entity}",
                "encoding": "string",
                "timestamp_field": "_ts",
            },
            "legacy_offline": {
                "table": "legacy.bench_history",
                "event_time_column": "event_ts",
                "entity_column": "entity",
            },
            "sla": {"p99_ms": 10, "max_staleness": "5m"},
            "qps": {"peak": 1, "average": 1},
        },
        strict=False,
    )


def make_frame(n: int) -> Any:
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(42)
    cols: dict[str, Any] = {"entity_id": pa.array([f"user_{i:07d}" for i in range(n)])}
    for i in range(4):
        cols[f"f{i}"] = pa.array(np.round(rng.normal(100, 50, n), 4))
    for i in range(4):
        cols[f"i{i}"] = pa.array(rng.integers(0, 1_000_000, n))
    cols["flag"] = pa.array(rng.integers(0, 2, n) == 1)
    cols["category"] = pa.array(np.array(["grocery", "travel", "electronics", "fuel"])[rng.integers(0, 4, n)])
    micros = 1_764_000_000_000_000 + rng.integers(0, 86_400_000_000, n)
    cols["_source_ts"] = pa.array(micros).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(cols)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(median wall s, median process CPU s, last result)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        result = None
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def redis_py_hgetall(url: str, keys: list[str]) -> int:
    import redis

    client = redis.Redis.from_url(url)
    got = 0
    for start in range(0, len(keys), 10_000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 10_000]:
            pipe.hgetall(key)
        got += sum(1 for r in pipe.execute() if r)
    client.close()
    return got


def raw_floor(params: dict[str, Any], keys: Any, command: bytes, fields: list[bytes]) -> int:
    """Pipelined commands over a raw socket; the replies are only counted in bytes, never parsed."""
    import pyarrow.compute as pc

    from airflow_fsmigration.stores.redis_online import _data_view, _Raw, _resp_bulk

    head = b"*%d\r\n$%d\r\n%s\r\n" % (2 + len(fields), len(command), command)
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
    raw = _Raw(params, "bench")
    sock = raw.sock
    chunks = [keys.slice(i, 20_000) for i in range(0, len(keys), 20_000)]

    def writer() -> None:
        for chunk in chunks:
            sock.sendall(_data_view(pc.binary_join_element_wise(head, _resp_bulk(chunk), tail, b"")))
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    buf = bytearray(1 << 22)
    total, last, misses = 0, b"", 0
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            raise ConnectionError("server closed the connection")
        total += n
        if command == b"HGETALL":  # an empty reply is a key that does not exist: count the hits
            chunk = last + bytes(buf[:n])
            misses += chunk.count(b"\r\n*0\r\n") - last.count(b"\r\n*0\r\n")
        last = (last + bytes(buf[max(0, n - 7) : n]))[-7:]
        if last == b"+PONG\r\n":
            break
    thread.join()
    raw.close()
    if misses:
        raise RuntimeError(f"floor: {misses} of {len(keys)} HGETALL replies were empty: not the same keys")
    return total


def load_postgres(url: str, frame: Any) -> None:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow as pa

    table = frame.rename_columns(
        ["entity" if c == "entity_id" else "event_ts" if c == "_source_ts" else c for c in frame.column_names]
    )
    table = table.select(["entity", "event_ts", *[f["name"] for f in FEATURES]])
    with adbc.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("CREATE SCHEMA IF NOT EXISTS legacy")
        cur.execute("DROP TABLE IF EXISTS legacy.bench_history")
        cur.adbc_ingest(
            "bench_history", pa.Table.from_batches(table.to_batches()), mode="create", db_schema_name="legacy"
        )
        cur.execute("CREATE INDEX ON legacy.bench_history (entity, event_ts DESC)")
        cur.execute("ANALYZE legacy.bench_history")
        cur.close()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.node()}, {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; load average at start {load:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--skip-naive", action="store_true", help="skip the slow redis-py and pandas baselines"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_readers.md")
    args = parser.parse_args(argv)

    import pyarrow as pa
    import pyarrow.compute as pc
    from redis.connection import parse_url

    from airflow_fsmigration.stores.postgres_offline import PostgresOfflineSource
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource
    from fsmig_dev.devservices import start_postgres, start_redis

    started = datetime.now(UTC)
    where = machine()
    n, repeats = args.entities, args.repeats
    servers: list[Any] = []
    redis_url = os.environ.get("FSMIG_BENCH_REDIS_URL")
    pg_url = os.environ.get("FSMIG_BENCH_POSTGRES_URL")
    try:
        if not redis_url:
            servers.append(start_redis())
            redis_url = servers[-1].url
        if not pg_url:
            servers.append(start_postgres())
            pg_url = servers[-1].create_database("bench_readers", drop=True)
        group = make_group()
        frame = make_frame(n)
        ids = frame.column("entity_id").combine_chunks()
        print(f"{n} entities x {len(FEATURES)} features; {where}", flush=True)

        source = RedisOnlineSource(redis_url, None, "bench_redis")
        source.client.flushdb()
        t0 = time.perf_counter()
        source.write(group, frame)
        write_s = time.perf_counter() - t0
        print(f"Redis written in {write_s:.1f} s", flush=True)
        t0 = time.perf_counter()
        load_postgres(pg_url, frame)
        print(f"Postgres loaded in {time.perf_counter() - t0:.1f} s", flush=True)

        rows: list[tuple[str, str, float, float]] = []  # (section, label, wall, cpu)

        def run(section: str, label: str, fn: Callable[[], Any]) -> Any:
            wall, cpu, result = timed(fn, repeats)
            rows.append((section, label, wall, cpu))
            print(f"  {label}: {wall:.3f} s wall, {cpu:.3f} s CPU", flush=True)
            return result

        got = run(
            "redis",
            "ours: RedisOnlineSource.read (HMGET, vectorised parse, typed Arrow)",
            lambda: source.read(group, ids),
        )
        expected = frame.cast(got.schema)
        assert got.num_rows == n and got.sort_by("entity_id").equals(expected.sort_by("entity_id")), (
            "read differs"
        )
        keys = pc.binary_join_element_wise("fs:bench:", ids, "").cast(pa.binary())
        if not args.skip_naive:
            key_list = keys.cast(pa.string()).to_pylist()
            found = run(
                "redis",
                "naive: redis-py pipelined HGETALL (10k per pipeline, untyped)",
                lambda: redis_py_hgetall(redis_url, key_list),
            )
            assert found == n
        params = dict(parse_url(redis_url))
        params.pop("connection_class", None)
        fields = [f["name"].encode() for f in FEATURES] + [b"_ts"]
        floor_note = (
            "a raw-socket pipelined HGETALL / HMGET of the same keys whose replies are counted in bytes, "
            "never parsed (redis-benchmark is not used: it would read one key n times, or random "
            "12-digit ids that do not exist)"
        )
        print(f"  floor: {floor_note}", flush=True)
        run(
            "redis",
            "floor: raw socket pipelined HGETALL, replies not parsed",
            lambda: raw_floor(params, keys, b"HGETALL", []),
        )
        run(
            "redis",
            "floor: raw socket pipelined HMGET (our command), replies not parsed",
            lambda: raw_floor(params, keys, b"HMGET", fields),
        )

        offline = PostgresOfflineSource(pg_url, None, "bench_pg")
        got_pg = run(
            "postgres",
            "ours: PostgresOfflineSource.read (ADBC, DISTINCT ON, ids as one array)",
            lambda: offline.read(group, ids),
        )
        assert got_pg.num_rows == n
        from airflow_fsmigration.stores import _pg

        query = _pg.render(offline._latest_query(group, ids=True, as_of=False))
        plain = "SELECT * FROM legacy.bench_history"
        conn = offline._arrow()
        run(
            "postgres",
            "ADBC: plain SELECT of the table (driver only)",
            lambda: _pg.fetch_table(conn, plain, None, "bench_pg", "pg"),
        )
        if not args.skip_naive:
            import pandas as pd
            import psycopg

            id_list = ids.to_pylist()
            pandas_query = query.replace("$1", "%(ids)s")

            def pandas_read(sql: str, params: Any = None) -> Any:
                with psycopg.connect(pg_url) as pconn, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return pd.read_sql(sql, pconn, params=params)

            df = run(
                "postgres",
                "naive: pandas.read_sql of the same query and ids (psycopg)",
                lambda: pandas_read(pandas_query, {"ids": id_list}),
            )
            assert len(df) == n
            run(
                "postgres",
                "naive: pandas.read_sql plain SELECT of the table (driver only)",
                lambda: pandas_read(plain),
            )
        offline.close()
    finally:
        for server in servers:
            server.stop()

    def wall(label_start: str) -> float:
        """The wall time of the row starting with ``label_start`` (NaN when it was skipped)."""
        return next((w for _, label, w, _ in rows if label.startswith(label_start)), float("nan"))

    def cpu(label_start: str) -> float:
        return next((c for _, label, _, c in rows if label.startswith(label_start)), float("nan"))

    ours_r, naive_r = wall("ours: RedisOnlineSource"), wall("naive: redis-py")
    floor_h, floor_m = wall("floor: raw socket pipelined HGETALL"), wall("floor: raw socket pipelined HMGET")
    ours_p, naive_p = wall("ours: PostgresOfflineSource"), wall("naive: pandas.read_sql of the same")
    adbc_plain, pandas_plain = wall("ADBC: plain"), wall("naive: pandas.read_sql plain")
    ratios = []
    if not args.skip_naive:
        cpu_ratio = cpu("ours: RedisOnlineSource") / cpu("naive: redis-py")
        ratios += [
            f"- Redis, ours vs redis-py HGETALL: **{ours_r / naive_r:.2f}x** the time ({naive_r / ours_r:.1f}x faster)",
            f"- Redis CPU of this process, ours vs redis-py: **{cpu_ratio:.2f}x** (steadier than wall time on a shared machine)",
            f"- Postgres, ours vs pandas.read_sql of the same query: **{ours_p / naive_p:.2f}x** the time "
            f"({naive_p / ours_p:.1f}x faster)",
            f"- Postgres driver only, ADBC vs pandas.read_sql plain SELECT: **{adbc_plain / pandas_plain:.2f}x**",
        ]
    ratios.append(
        f"- Redis, ours vs raw HGETALL floor: **{ours_r / floor_h:.2f}x**; "
        f"vs raw HMGET floor (same command, no parsing): **{ours_r / floor_m:.2f}x**"
    )

    lines = [
        "## bench_readers: legacy Redis reader and Postgres (ADBC) reader vs the naive stack",
        "",
        f"Machine: {where}. Date: {started:%Y-%m-%d %H:%M} UTC.",
        f"Command: `python -m bench.bench_readers --entities {n} --repeats {repeats}`"
        + (" --skip-naive" if args.skip_naive else "")
        + f". {n} entities x {len(FEATURES)} features (4 float64, 4 int64, bool, string) + `_ts`; "
        f"medians of {repeats} runs. Shared 2-core VM with other work running: wall times include waiting for a core.",
        f"Floor: {floor_note}.",
        "",
        "| store | reader | wall (median) | CPU of this process (median) | rows/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for section, label, w, c in rows:
        lines.append(f"| {section} | {label} | {w:.3f} s | {c:.3f} s | {n / w:,.0f} |")
    lines += ["", *ratios, ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
