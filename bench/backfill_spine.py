"""Spine backfill of bench_backfill: each strategy end to end vs DuckDB computing the same features.

Measured in the same run, interleaved, medians over ``repeat``: wall time, CPU-seconds of this
process (all its threads) and of the Postgres server (the postmaster and every backend, exited
ones included, from /proc), for

- ``lateral`` on one connection (one evaluation per label: the path before issue 17),
- ``auto`` with the product's defaults (two store connections; the strategy and its reason
  are taken from the log),
- ``set`` on one connection (the definition lifted over the labels, :mod:`airflow_fsmigration.backfill.setbased`),
- DuckDB running the very same lifted SQL (rendered by sqlglot for DuckDB) over the events and
  labels already in memory (read once from Postgres through ADBC as Arrow, not timed).

All Postgres variants must write the same table (rows and checksum: bit for bit); DuckDB's
integer totals must equal them.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

GROUP = "user_txn_stats"


def server_cpu(conn: Any) -> float | None:
    """CPU seconds of the local Postgres server so far: postmaster + live children + reaped children."""
    try:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        pm = int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except Exception:
        return None
    tck = os.sysconf("SC_CLK_TCK")

    def stat(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    f = stat(pm)
    total = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                c = stat(int(entry.name))
            except OSError:
                continue
            if int(c[1]) == pm:
                total += int(c[11]) + int(c[12])
    return total / tck


class _StrategyLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if " evaluated " in msg:
            strategy, reason = msg.split(" evaluated ", 1)[1].split(": ", 1)
            self.reasons.setdefault(strategy, reason)


def measure(conn: Any, url: str, plan: Any, repeat: int, labels: int) -> tuple[list[str], list[str], dict]:
    """Table rows and notes for the per-second spine ``ml.labels_sec``."""
    from airflow_fsmigration.backfill import replay

    handler = _StrategyLog()
    logger = logging.getLogger("airflow_fsmigration.backfill")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    # autovacuum after the deletes between runs would land in the next run's server CPU
    replay.ensure_output_table(conn, plan, GROUP, "spine", replay.output_table_name(plan, GROUP, "spine"))
    conn.execute("ALTER TABLE features_history.user_txn_stats_labels SET (autovacuum_enabled = false)")
    variants = {
        "lateral, 1 connection (per label, the path before issue 17)": {"strategy": "lateral", "workers": 1},
        "auto, product defaults (2 connections)": {},
        "set, 1 connection (labels joined once, grouped per label)": {"strategy": "set", "workers": 1},
    }
    runs: dict[str, list[tuple[float, float, float | None]]] = {k: [] for k in variants}
    chose: dict[str, str] = {}
    results: dict[str, tuple[int, int]] = {}
    try:
        for i in range(repeat):
            for name, kw in variants.items():
                run_id = f"spine-{list(variants).index(name)}-{i}"
                handler.reasons.clear()
                p0, s0 = time.process_time(), server_cpu(conn)
                t = time.perf_counter()
                res = replay.run_backfill(plan, GROUP, conn, conn, spine="ml.labels_sec", run_id=run_id, **kw)
                wall = time.perf_counter() - t
                s1 = server_cpu(conn)
                ours = time.process_time() - p0
                srv = None if s0 is None or s1 is None else s1 - s0
                runs[name].append((wall, ours, srv))
                results.setdefault(name, (res.rows, res.checksum))
                chose[name] = (
                    "; ".join(f"{k}: {v}" for k, v in handler.reasons.items()) + f" ({res.chunks} chunks)"
                )
                assert (res.rows, res.checksum) == results[name], (name, res.rows, res.checksum)
                print(
                    f"  spine {name}: {wall:.2f} s ({labels / wall:,.0f} labels/s), CPU ours {ours:.2f} s,"
                    f" Postgres {srv if srv is None else round(srv, 2)} s",
                    flush=True,
                )
                if i < repeat - 1 or name != next(iter(variants)):
                    conn.execute(
                        "DELETE FROM features_history.user_txn_stats_labels WHERE run_id = %s", (run_id,)
                    )
                    conn.execute("VACUUM features_history.user_txn_stats_labels")  # not timed
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    same = len(set(results.values())) == 1
    assert same, results
    duck = _duckdb(conn, url, plan, repeat, f"spine-0-{repeat - 1}")
    med = statistics.median
    rows: list[str] = []
    stats: dict[str, Any] = {}
    for name, rs in runs.items():
        w, o = med(r[0] for r in rs), med(r[1] for r in rs)
        srv = [r[2] for r in rs if r[2] is not None]
        s = med(srv) if srv else None
        stats[name] = (w, o, s)
        rows.append(
            f"| (b) spine {name} | {', '.join(f'{r[0]:.2f}' for r in rs)} | {w:.2f} | {labels / w:,.0f} |"
            f" {o:.2f} | {'n/a' if s is None else f'{s:.2f}'} | {'n/a' if s is None else f'{o + s:.2f}'} |"
        )
    notes = [
        f"all three Postgres variants wrote the same table: {results[next(iter(results))][0]:,} rows, checksum "
        f"{results[next(iter(results))][1]} (bit for bit)",
        *(f"{name}: {why}" for name, why in chose.items()),
    ]
    if duck is not None:
        secs, cpus, totals, load_s, version, want = duck
        w, o = med(secs), med(cpus)
        stats["duckdb"] = (w, o, 0.0)
        rows.append(
            f"| (c) DuckDB {version}: the same lifted SQL, data in memory | {', '.join(f'{x:.2f}' for x in secs)} |"
            f" {w:.2f} | {labels / w:,.0f} | {o:.2f} | 0 | {o:.2f} |"
        )
        notes.append(
            f"DuckDB read {load_s:.2f} s of events and labels from Postgres through ADBC (not included); its totals "
            f"equal Postgres: rows {totals[0]:,}, sum(txn_count_7d) {totals[1]:,}, sum(distinct_merchants_7d) "
            f"{totals[2]:,}, sum(declined_count_24h) {totals[3]:,}"
        )
        assert totals == want, (totals, want)
    return rows, notes, stats


def _duckdb(conn: Any, url: str, plan: Any, repeat: int, run_id: str):  # type: ignore[no-untyped-def]
    try:
        import duckdb
    except ImportError:
        return None
    import adbc_driver_postgresql.dbapi as adbc

    from airflow_fsmigration.backfill.setbased import LABELS_MARK, lifted_sql

    t = time.perf_counter()
    with adbc.connect(url) as ac, ac.cursor() as cur:
        cur.execute("SELECT user_id, merchant_id, amount, status, is_foreign, event_ts FROM raw.transactions")
        events = cur.fetch_arrow_table()
        cur.execute("SELECT label_id, user_id, label_ts FROM ml.labels_sec")
        labels = cur.fetch_arrow_table()
    load_s = time.perf_counter() - t
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute("CREATE SCHEMA raw")
    db.register("events_arrow", events)
    db.register("labels_arrow", labels)
    db.execute("CREATE TABLE raw.transactions AS SELECT * FROM events_arrow")
    db.execute("CREATE TABLE labels AS SELECT * FROM labels_arrow")
    lifted = lifted_sql(plan, GROUP, dialect="duckdb")
    assert lifted is not None
    rel = "(SELECT DISTINCT user_id AS fsmig_e, label_ts AS fsmig_ts FROM labels)"
    query = (
        "SELECT count(*), sum(d.txn_count_7d), sum(d.distinct_merchants_7d), sum(d.declined_count_24h)"
        f" FROM labels AS s LEFT JOIN ({lifted.replace(LABELS_MARK, rel)}\n) AS d"
        " ON d.fsmig_e = s.user_id AND d.fsmig_ts = s.label_ts"
    )
    secs, cpus = [], []
    for _ in range(repeat):
        p0, t = time.process_time(), time.perf_counter()
        got = db.execute(query).fetchone()
        secs.append(time.perf_counter() - t)
        cpus.append(time.process_time() - p0)
    totals = tuple(int(x or 0) for x in got)
    want = conn.execute(
        "SELECT count(*), sum(txn_count_7d), sum(distinct_merchants_7d), sum(declined_count_24h)"
        " FROM features_history.user_txn_stats_labels WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return secs, cpus, totals, load_s, duckdb.__version__, tuple(int(x or 0) for x in want)
