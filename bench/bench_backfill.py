"""Backfill replay: chunked, checkpointed as-of replay vs the same definition as one plain statement.

Data: ``raw.transactions`` generated in Postgres (``--events`` rows over ``--users`` users, spread
over the snapshot window plus the 7-day feature window), the demo plan's ``user_txn_stats``
definition. Measured in the same run, medians over ``--repeat`` alternating repetitions:

- (a) **grid**: ``run_backfill`` (retention audit, chunk plan in the registry, one chunk per
  snapshot day, DELETE + INSERT .. RETURNING with a row checksum per chunk, checkpoint, progress
  log) vs the **floor**: the same ``unnest(times) CROSS JOIN LATERAL (definition)`` as ONE plain
  ``INSERT .. SELECT`` in the same database. Both tables are checked equal (rows and checksum).
- (b) **spine**: labels per second end to end for a label table with a distinct time per label
  (per-label evaluation, entity filter pushed into the definition) and for one with daily label
  times (one evaluation per distinct time). Exactness: every daily-spine label is checked against
  the grid snapshot of the same day and entity; ``--verify`` per-second labels against the
  definition evaluated alone at the label's time.
- (c) **outside references** on the same data (read once through ADBC into Arrow): DuckDB running
  the same definition SQL, and a hand-written pandas version; totals are checked equal.

Run: ``python -m bench.bench_backfill`` (embedded Postgres; defaults 1M events / 10k users /
10 daily snapshots / 100k-label spine), ``--full`` for the issue's 10M / 100k / 30 / 1M.
The bench database uses the C collation (``--server-collation`` keeps the server's default):
text keys then sort the way DuckDB and pandas compare them; and ``work_mem`` 64MB (``--work-mem``)
so a snapshot's aggregation sorts in memory; both sides of every ratio get the same settings. Writes ``bench/results/bench_backfill.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

GROUP = "user_txn_stats"
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def grid_plain_sql(plan: Any, group: str, table: str) -> Any:
    """The floor: every snapshot time in ONE plain INSERT .. SELECT, no chunks, no checksum.

    Benchmark-only (and the exactness test's reference), so it lives here, not in the wheel.
    """
    from psycopg import sql

    from airflow_fsmigration.backfill.sql import _cols, _ident, as_of_sql, definition_columns

    cols = definition_columns(plan, group)
    body = sql.SQL(as_of_sql(plan, group, "fsmig_g.as_of"))  # type: ignore[arg-type]
    return sql.SQL(
        "INSERT INTO {t} (run_id, as_of, {cols}) SELECT %(run_id)s, fsmig_g.as_of, {dcols}"
        " FROM unnest(%(times)s::timestamptz[]) AS fsmig_g(as_of) CROSS JOIN LATERAL ({body}) AS fsmig_d"
    ).format(t=_ident(table), cols=_cols(cols), dcols=_cols(cols, "fsmig_d"), body=body)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--snapshots", type=int, default=10, help="daily snapshots")
    p.add_argument("--labels", type=int, default=100_000, help="label spine rows")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--verify", type=int, default=20, help="per-second labels checked against the bare definition"
    )
    p.add_argument("--full", action="store_true", help="10M events, 100k users, 30 snapshots, 1M labels")
    p.add_argument("--url", help="Postgres admin URL (default: embedded pgserver)")
    p.add_argument("--server-collation", action="store_true", help="keep the server's default collation")
    p.add_argument("--work-mem", default="64MB", help="work_mem of the bench database (both sides get it)")
    p.add_argument("--skip-refs", action="store_true", help="skip the DuckDB and pandas references")
    p.add_argument(
        "--only",
        choices=["all", "grid", "spine"],
        default="all",
        help="measure only the grid or only the spines",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "bench_backfill.md")
    a = p.parse_args(argv)
    if a.full:
        a.events, a.users, a.snapshots, a.labels = 10_000_000, 100_000, 30, 1_000_000
    return a


def _timed(fn):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def _backend_cpu(conn) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds the connection's Postgres backend has used (local server): robust to a busy machine."""
    fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_timed(conn, fn):  # type: ignore[no-untyped-def]
    """(wall s, CPU s of the backend plus this process, value)."""
    b0, p0 = _backend_cpu(conn), time.process_time()
    wall, value = _timed(fn)
    return wall, _backend_cpu(conn) - b0 + time.process_time() - p0, value


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    server = None
    if not a.url:
        from fsmig_dev.devservices import start_postgres

        server = start_postgres()
        a.url = server.url
    try:
        return _run(a, argv)
    finally:
        if server is not None:
            server.stop()


def _run(a: argparse.Namespace, argv: list[str] | None) -> int:
    import psycopg
    from psycopg import sql

    from airflow_fsmigration.backfill import replay
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev import synthetic

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    plan = load_plan(REPO / "include" / "demo_plan")
    admin = a.url
    from urllib.parse import urlsplit

    dbname = "bench_backfill"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        if a.server_collation:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        else:
            c.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'").format(
                    sql.Identifier(dbname)
                )
            )
        c.execute(
            sql.SQL("ALTER DATABASE {} SET work_mem = {}").format(
                sql.Identifier(dbname), sql.Literal(a.work_mem)
            )
        )
    url = urlsplit(admin)._replace(path=f"/{dbname}").geturl()
    conn = psycopg.connect(url, autocommit=True)
    snap_start = T0 + timedelta(days=8)
    snap_end = snap_start + timedelta(days=a.snapshots - 1)
    data_end = snap_end + timedelta(days=1)
    print(f"generating {a.events:,} events for {a.users:,} users ...", flush=True)
    gen_s, _ = _timed(
        lambda: synthetic.create_transactions(conn, events=a.events, users=a.users, start=T0, end=data_end)
    )
    conn.execute("VACUUM ANALYZE raw.transactions")
    print(f"  {gen_s:.1f} s", flush=True)
    every = timedelta(days=1)
    times = replay.grid_times(snap_start, snap_end, every)
    table = replay.output_table_name(plan, GROUP, "grid")
    replay.ensure_output_table(conn, plan, GROUP, "grid", table)
    replay.ensure_registry(conn)
    tident = sql.Identifier(*table.split("."))

    def clear(run_id: str) -> None:
        conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s").format(tident), (run_id,))
        conn.execute("DELETE FROM fsmig.backfill_runs WHERE run_id = %s", (run_id,))
        conn.execute(sql.SQL("VACUUM {}").format(tident))

    floor_s, chunked_s, floor_cpu, chunked_cpu = [], [], [], []
    floor_sum = chunked_sum = None
    for i in range(a.repeat if a.only != "spine" else 0):
        order = ("floor", "chunked") if i % 2 == 0 else ("chunked", "floor")
        for which in order:
            if which == "floor":
                s, cpu, _ = _cpu_timed(
                    conn,
                    lambda i=i: conn.execute(
                        grid_plain_sql(plan, GROUP, table), {"run_id": f"floor-{i}", "times": times}
                    ),
                )
                floor_s.append(s)
                floor_cpu.append(cpu)
                run = replay.BackfillRun(f"floor-{i}", GROUP, "grid", table, {}, ())
                floor_sum = replay.table_checksum(conn, plan, run)
                clear(f"floor-{i}")
            else:
                s, cpu, res = _cpu_timed(
                    conn,
                    lambda i=i: replay.run_backfill(
                        plan,
                        GROUP,
                        conn,
                        conn,
                        start=snap_start,
                        end=snap_end,
                        every=every,
                        run_id=f"chunked-{i}",
                    ),
                )
                chunked_s.append(s)
                chunked_cpu.append(cpu)
                chunked_sum = (res.rows, res.checksum)
                assert replay.table_checksum(conn, plan, replay.load_run(conn, f"chunked-{i}")) == chunked_sum
                if i < a.repeat - 1:
                    clear(f"chunked-{i}")
            print(f"  grid {which}: {s:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    assert floor_sum == chunked_sum, (floor_sum, chunked_sum)
    grid_rows = chunked_sum[0] if chunked_sum else 0
    if a.only == "grid":
        a.labels = 0

    # (b) spines
    print(f"spine of {a.labels:,} labels ...", flush=True)
    synthetic.create_spine(
        conn,
        labels=a.labels,
        users=a.users,
        start=snap_start,
        end=snap_end + timedelta(days=1),
        table="ml.labels_sec",
    )
    synthetic.create_spine(
        conn,
        labels=a.labels,
        users=a.users,
        start=snap_start,
        end=snap_end + timedelta(days=1),
        table="ml.labels_daily",
        distinct_times=a.snapshots,
    )
    from bench import backfill_spine

    spine_rows, spine_notes, spine_stats = [], [], {}
    spine_daily_s: list[float] = []
    daily_choice = ""
    if a.labels:
        spine_rows, spine_notes, spine_stats = backfill_spine.measure(conn, url, plan, a.repeat, a.labels)
        handler = backfill_spine._StrategyLog()
        logging.getLogger("airflow_fsmigration.backfill").addHandler(handler)
        logging.getLogger("airflow_fsmigration.backfill").setLevel(logging.INFO)
        for i in range(a.repeat):
            s, res_daily = _timed(
                lambda i=i: replay.run_backfill(
                    plan, GROUP, conn, conn, spine="ml.labels_daily", run_id=f"daily-{i}"
                )
            )
            spine_daily_s.append(s)
            print(f"  daily spine: {s:.2f} s ({a.labels / s:,.0f} labels/s)", flush=True)
            assert res_daily.rows == a.labels
        logging.getLogger("airflow_fsmigration.backfill").removeHandler(handler)
        daily_choice = "; ".join(f"{k}: {v}" for k, v in handler.reasons.items())
    last = a.repeat - 1
    labels_table = replay.output_table_name(plan, GROUP, "spine")
    daily_exact, verified = "daily labels not checked against the grid (one part only)", 0
    if a.labels and grid_rows:
        daily_exact = _daily_vs_grid(conn, plan, labels_table, tident, last, a.labels)
    if a.labels:
        verified = _verify(conn, plan, labels_table, f"spine-0-{last}", a.verify)
    refs: dict[str, list[float]] = {}
    ref_notes: list[str] = []
    if not a.skip_refs and grid_rows:
        refs, ref_notes = _references(url, plan, times, conn, table, f"chunked-{last}", a.repeat)
    conn.close()
    return _report(
        a,
        argv,
        grid_rows,
        floor_s,
        chunked_s,
        floor_cpu,
        chunked_cpu,
        chunked_sum,
        spine_rows,
        spine_notes,
        spine_stats,
        spine_daily_s,
        daily_choice,
        daily_exact,
        verified,
        refs,
        ref_notes,
        gen_s,
    )


def _daily_vs_grid(conn, plan, labels_table, tident, last, labels):  # type: ignore[no-untyped-def]
    """How many daily labels equal the grid snapshot of their day (integers exactly, floats within 1e-9)."""
    from psycopg import sql

    cols = [c for c in replay_columns(plan) if c != "user_id"]
    floats = {f.name for f in plan.groups[GROUP].features if str(f.dtype) == "float64"}
    conn.execute("BEGIN")
    conn.execute(
        "SET LOCAL enable_nestloop = off"
    )  # a hash join; the (run_id, time) index invites a slow loop

    def close(c: str) -> sql.Composable:
        lc, gc = sql.Identifier("l", c), sql.Identifier("g", c)
        if c in floats:
            return sql.SQL(
                "(({l} IS NULL AND {g} IS NULL) OR abs({l} - {g}) <= 1e-9 * greatest(abs({g}), 1))"
            ).format(l=lc, g=gc)
        return sql.SQL("{l} IS NOT DISTINCT FROM {g}").format(l=lc, g=gc)

    bits, equal = conn.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE ROW({lc}) IS NOT DISTINCT FROM ROW({gc})), count(*) FILTER (WHERE {ok})"
            " FROM {lt} AS l LEFT JOIN {gt} AS g ON g.run_id = %s AND g.as_of = l.label_ts"
            " AND g.user_id = l.user_id WHERE l.run_id = %s"
        ).format(
            lt=sql.Identifier(*labels_table.split(".")),
            gt=tident,
            lc=sql.SQL(", ").join(sql.Identifier("l", c) for c in cols),
            gc=sql.SQL(", ").join(sql.Identifier("g", c) for c in cols),
            ok=sql.SQL(" AND ").join(close(c) for c in cols),
        ),
        (f"chunked-{last}", f"daily-{last}"),
    ).fetchone()
    conn.execute("COMMIT")
    # a daily label at a day whose snapshot lacks the user must be all-null: the LEFT JOIN row compares equal then
    text = (
        f"{equal:,} of {labels:,} daily labels equal the grid snapshot of their day (integers and times "
        f"exactly, floats within 1e-9 relative), {bits:,} bit for bit"
    )
    print(f"  daily spine exactness: {text}", flush=True)
    return text


def replay_columns(plan):  # type: ignore[no-untyped-def]
    from airflow_fsmigration.backfill import replay

    return replay.definition_columns(plan, GROUP)


def _verify(conn, plan, labels_table, run_id, n):  # type: ignore[no-untyped-def]
    """``n`` sampled per-second labels against the bare definition evaluated alone at the label's time."""
    from psycopg import sql

    from airflow_fsmigration.plan.definitions import render_as_of

    cols = [c for c in replay_columns(plan) if c != "user_id"]
    floats = {f.name for f in plan.groups[GROUP].features if str(f.dtype) == "float64"}
    one = render_as_of(plan, GROUP)
    sample = conn.execute(
        sql.SQL(
            "SELECT user_id, label_ts, {c} FROM {lt} WHERE run_id = %s ORDER BY hashtext(user_id || label_ts::text)"
            " LIMIT %s"
        ).format(
            c=sql.SQL(", ").join(sql.Identifier(c) for c in cols), lt=sql.Identifier(*labels_table.split("."))
        ),
        (run_id, n),
    ).fetchall()
    verified = 0
    for row in sample:
        user, ts, values = row[0], row[1], tuple(row[2:])
        direct = conn.execute(
            f"SELECT * FROM ({one}) AS d WHERE d.user_id = %(u)s", {"as_of": ts, "u": user}
        ).fetchall()
        expected = tuple(direct[0][1:]) if direct else (None,) * len(cols)
        for c, v, e in zip(cols, values, expected, strict=True):
            if c in floats and v is not None and e is not None:
                assert abs(v - e) <= 1e-9 * max(abs(e), 1), (user, ts, c, v, e)
            else:
                assert v == e, (user, ts, c, v, e)
        verified += 1
    print(
        f"  per-second spine: {verified} sampled labels equal the bare definition at their time", flush=True
    )
    return verified


def _report(a, argv, grid_rows, floor_s, chunked_s, floor_cpu, chunked_cpu, chunked_sum, spine_rows,  # type: ignore[no-untyped-def]
            spine_notes, spine_stats, spine_daily_s, daily_choice, daily_exact, verified, refs, ref_notes, gen_s):  # fmt: skip
    med = statistics.median
    lines = [
        "# bench_backfill: chunked as-of replay vs one plain statement; spine strategies vs DuckDB",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores ({_cpu()}), load average at end {os.getloadavg()[0]:.1f} (shared with other work)",
        f"- data: {a.events:,} events, {a.users:,} users, {a.snapshots} daily snapshots ({grid_rows:,} snapshot rows), "
        f"spines of {a.labels:,} labels; group `{GROUP}` of the demo plan; Postgres "
        f"{'server collation' if a.server_collation else 'C collation'}, work_mem {a.work_mem}; medians of {a.repeat} alternating runs",
        f"- command: `python -m bench.bench_backfill {' '.join(argv if argv is not None else sys.argv[1:])}`",
    ]
    if grid_rows:
        f, c = med(floor_s), med(chunked_s)
        lines += [
            "",
            "| grid measurement | median s | rate | ratio |",
            "|---|---:|---:|---:|",
            f"| (a) floor: one plain INSERT .. SELECT of all snapshots | {f:.2f} | {grid_rows / f:,.0f} rows/s | 1.00 |",
            f"| (a) run_backfill: chunked, checkpointed, checksummed, audited | {c:.2f} | {grid_rows / c:,.0f} rows/s | "
            f"{c / f:.2f} |",
            f"| (a) floor, CPU s (Postgres backend + client) | {med(floor_cpu):.2f} | | 1.00 |",
            f"| (a) run_backfill, CPU s (Postgres backend + client) | {med(chunked_cpu):.2f} | | "
            f"{med(chunked_cpu) / med(floor_cpu):.2f} |",
        ]
        for name, secs in refs.items():
            lines.append(
                f"| (c) {name} | {med(secs):.2f} | {grid_rows / med(secs):,.0f} rows/s | {med(secs) / f:.2f} |"
            )
        lines += [
            "",
            f"- grid exactness: chunked and plain tables equal (rows {grid_rows:,}, checksum {chunked_sum[1]})",
            f"- chunking overhead over the floor: {(c / f - 1) * 100:+.1f}% wall (ratio of medians), "
            f"{(statistics.median(x / y for x, y in zip(chunked_s, floor_s, strict=True)) - 1) * 100:+.1f}% "
            f"(median of the paired runs' ratios), {(med(chunked_cpu) / med(floor_cpu) - 1) * 100:+.1f}% CPU "
            "(goal: at most +20%). CPU time is the steadier figure on a shared machine.",
            *[f"- {n}" for n in ref_notes],
        ]
    if spine_rows:
        lines += [
            "",
            f"Spine of {a.labels:,} labels, each at its own second (CPU: this process's threads; Postgres: the whole server):",
            "",
            "| spine measurement | runs (s) | median s | labels/s | CPU ours s | CPU Postgres s | CPU total s |",
            "|---|---|---:|---:|---:|---:|---:|",
            *spine_rows,
            f"| (b) spine, {a.snapshots} daily label times, auto | {', '.join(f'{x:.2f}' for x in spine_daily_s)} |"
            f" {med(spine_daily_s):.2f} | {a.labels / med(spine_daily_s):,.0f} | | | |",
            "",
            *[f"- {n}" for n in spine_notes],
            f"- daily spine, auto chose: {daily_choice}",
            f"- {daily_exact}; {verified} sampled per-second labels equal the bare definition at their time",
        ]
        names = list(spine_stats)
        lat, auto = spine_stats[names[0]], spine_stats[names[1]]
        lines.append(
            f"- same-run ratios (wall): auto / lateral {auto[0] / lat[0]:.2f}x, set / lateral "
            f"{spine_stats[names[2]][0] / lat[0]:.2f}x"
        )
        if "duckdb" in spine_stats:
            d = spine_stats["duckdb"]
            total = auto[1] + (auto[2] or 0)
            lines.append(
                f"- ours (auto) vs DuckDB: labels/s {d[0] / auto[0]:.2f}x DuckDB's rate (goal >= 1.00x); "
                f"CPU-seconds {total:.2f} vs {d[1]:.2f} ({total / d[1]:.1f}x)"
            )
    lines.append(f"- data generation: {gen_s:.1f} s (not part of any figure).")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _references(url, plan, times, conn, table, run_id, repeat):  # type: ignore[no-untyped-def]
    """DuckDB (the same definition SQL) and pandas (hand-written) on the same events, read once via ADBC."""
    import adbc_driver_postgresql.dbapi as adbc

    from airflow_fsmigration.plan.definitions import render_as_of

    notes = []
    with adbc.connect(url) as ac, ac.cursor() as cur:
        t = time.perf_counter()
        cur.execute("SELECT user_id, merchant_id, amount, status, is_foreign, event_ts FROM raw.transactions")
        events = cur.fetch_arrow_table()
        load_s = time.perf_counter() - t
    notes.append(
        f"references read {events.num_rows:,} events from Postgres through ADBC in {load_s:.2f} s (not included)"
    )
    want = conn.execute(
        f"SELECT count(*), sum(txn_count_7d), sum(distinct_merchants_7d), sum(declined_count_24h) FROM {table}"
        " WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    want = tuple(int(x) for x in want)
    out: dict[str, list[float]] = {}
    try:
        import duckdb

        db = duckdb.connect()
        db.execute("SET TimeZone = 'UTC'")
        db.execute("CREATE SCHEMA raw")
        db.register("events_arrow", events)
        db.execute("CREATE TABLE raw.transactions AS SELECT * FROM events_arrow")
        body = render_as_of(plan, GROUP, param="fsmig_g.as_of")
        query = (
            "SELECT fsmig_g.as_of, d.* FROM (SELECT unnest($times) AS as_of) AS fsmig_g, LATERAL ("
            + body
            + "\n) AS d"
        )
        secs = []
        for _ in range(repeat):
            t = time.perf_counter()
            res = db.execute(
                "SELECT count(*), sum(txn_count_7d), sum(distinct_merchants_7d), sum(declined_count_24h) FROM ("
                + query
                + ")",
                {"times": times},
            ).fetchone()
            secs.append(time.perf_counter() - t)
        got = tuple(int(x) for x in res)
        assert got == want, ("duckdb", got, want)
        out[f"DuckDB {duckdb.__version__}: the same definition SQL, LATERAL over the snapshot times"] = secs
        notes.append(f"DuckDB totals equal Postgres: rows {got[0]:,}, sum(txn_count_7d) {got[1]:,}")
    except ImportError:
        notes.append("DuckDB not installed: `pip install duckdb` for the DuckDB reference")
    secs = []
    for _ in range(repeat):
        t = time.perf_counter()
        got = _pandas_snapshots(events, times)
        secs.append(time.perf_counter() - t)
    assert got == want, ("pandas", got, want)
    out["pandas (hand-written user_txn_stats, sorted once, window slices)"] = secs
    notes.append("pandas totals equal Postgres")
    return out, notes


def _pandas_snapshots(events, times):  # type: ignore[no-untyped-def]
    """``user_txn_stats`` at each time in pandas: slice the sorted events, group by user."""
    import numpy as np
    import pandas as pd

    df = events.to_pandas().sort_values("event_ts", kind="stable").reset_index(drop=True)
    ts = df["event_ts"].dt.tz_convert(None).to_numpy()
    total = [0, 0, 0, 0]
    for as_of in times:
        at = np.datetime64(as_of.replace(tzinfo=None), "us")
        ts_naive = ts
        lo = np.searchsorted(ts_naive, at - np.timedelta64(7, "D"), side="right")
        hi = np.searchsorted(ts_naive, at, side="right")
        w = df.iloc[lo:hi]
        w_ts = ts_naive[lo:hi]
        in24 = w_ts > at - np.timedelta64(24, "h")
        frame = pd.DataFrame(
            {
                "user_id": w["user_id"].to_numpy(),
                "c1": w_ts > at - np.timedelta64(1, "h"),
                "c24": in24,
                "amt24": np.where(in24, w["amount"].to_numpy(), 0.0),
                "dec24": (w["status"].to_numpy() == "declined") & in24,
                "foreign": w["is_foreign"].to_numpy().astype(float),
                "amount": w["amount"].to_numpy(),
                "merchant_id": w["merchant_id"].to_numpy(),
                "ts": w_ts,
            }
        )
        g = frame.groupby("user_id", sort=False)
        agg = g.agg(
            c1=("c1", "sum"),
            c24=("c24", "sum"),
            n=("c1", "size"),
            amt24=("amt24", "sum"),
            avg=("amount", "mean"),
            mx=("amount", "max"),
            merchants=("merchant_id", "nunique"),
            dec24=("dec24", "sum"),
            foreign=("foreign", "mean"),
            last=("ts", "max"),
        )
        total[0] += len(agg)
        total[1] += int(agg["n"].sum())
        total[2] += int(agg["merchants"].sum())
        total[3] += int(agg["dec24"].sum())
    return tuple(total)


if __name__ == "__main__":
    sys.exit(main())
