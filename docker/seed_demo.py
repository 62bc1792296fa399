"""The compose stack's seed job: a legacy feature store to migrate, and its raw events in RisingWave.

1. Generates the demo world (``fsmig_dev.demo.data.generate_demo``) in the stack's Postgres and
   Redis: raw events in ``events``, the legacy offline history in ``legacy_offline``, the legacy
   online store in Redis, model metrics in ``fsmig_registry``. No frozen clock: RisingWave's
   ``NOW()`` is the wall clock, so the legacy stores are computed as of the seed time.
2. Mirrors every ``raw.*`` table into RisingWave as a table of the same name (entity tables keep
   their primary key) in batches, then ``FLUSH``, so the plan's definitions read the same events
   in the new store as the legacy pipeline did.

Runs once: when RisingWave already holds ``raw.transactions`` rows it does nothing
(``FSMIG_SEED_FORCE=1`` regenerates). Sizes: ``FSMIG_SEED_ENTITIES`` (users, default 20000),
``FSMIG_SEED_DAYS`` (default 90). URLs come from the plan's ``AIRFLOW_CONN_*`` variables.

``--legacy-pipeline``: instead, play the old feature pipeline that keeps the legacy online store
fresh: every ``FSMIG_LEGACY_REFRESH_S`` seconds (default 300) recompute every group as of now from
the raw events and rewrite its Redis hashes. RisingWave's views follow the wall clock; without
this the legacy values would stay at the seed time and drift from them window by window.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import psycopg

log = logging.getLogger("fsmig.seed")

PLAN = os.environ.get("FSMIG_PLAN", "/opt/airflow/include/demo_plan")
# Postgres column type -> RisingWave column type (RisingWave's numeric takes no precision/scale).
RW_TYPES = {
    "text": "varchar",
    "character varying": "varchar",
    "numeric": "numeric",
    "integer": "int",
    "bigint": "bigint",
    "boolean": "boolean",
    "double precision": "double precision",
    "timestamp with time zone": "timestamptz",
}
PRIMARY_KEYS = {"users": "user_id", "merchants": "merchant_id", "items": "item_id"}
BATCH = 5000


def url(conn_id: str) -> str:
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:
        sys.exit(f"seed: AIRFLOW_CONN_{conn_id.upper()} is not set (the plan's connection '{conn_id}')")
    return value


def already_seeded(rw_url: str) -> bool:
    with psycopg.connect(rw_url, autocommit=True) as rw:
        exists = rw.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'raw' AND table_name = 'transactions'"
        ).fetchone()
        return bool(exists) and rw.execute("SELECT count(*) FROM raw.transactions").fetchone()[0] > 0


def mirror_raw(events_url: str, rw_url: str) -> dict[str, int]:
    """Copy every raw.* table of the event log into RisingWave; returns rows per table."""
    counts: dict[str, int] = {}
    with (
        psycopg.connect(events_url) as pg,
        psycopg.connect(rw_url, autocommit=True) as rw,
    ):  # pg: one read transaction (server-side cursor)
        rw.execute("CREATE SCHEMA IF NOT EXISTS raw")
        tables = [
            r[0]
            for r in pg.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw' ORDER BY 1"
            ).fetchall()
        ]
        for table in tables:
            cols = pg.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'raw' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            spec = [f'"{name}" {RW_TYPES.get(dtype, "varchar")}' for name, dtype in cols]
            if table in PRIMARY_KEYS:
                spec.append(f'PRIMARY KEY ("{PRIMARY_KEYS[table]}")')
            rw.execute(f'DROP TABLE IF EXISTS raw."{table}" CASCADE')
            rw.execute(f'CREATE TABLE raw."{table}" ({", ".join(spec)})')
            names = ", ".join(f'"{name}"' for name, _ in cols)
            marks = ", ".join(["%s"] * len(cols))
            n = 0
            with pg.cursor(name=f"seed_{table}") as cur:
                cur.execute(f'SELECT {names} FROM raw."{table}"')
                while rows := cur.fetchmany(BATCH):
                    with rw.cursor() as out:
                        out.executemany(f'INSERT INTO raw."{table}" ({names}) VALUES ({marks})', rows)
                    n += len(rows)
            counts[table] = n
            log.info("raw.%s: %s rows into RisingWave", table, f"{n:,}")
        if "risingwave" in str(rw.execute("SELECT version()").fetchone()[0]).lower():
            rw.execute("FLUSH")  # make the inserts visible to the views (a Postgres target needs nothing)
    return counts


def legacy_pipeline(plan: object) -> int:
    """Rewrite the legacy online store as of now, forever (the old pipeline the migration replaces)."""
    from datetime import UTC, datetime

    import redis

    from fsmig_dev.demo.data import write_online_store

    c = plan.connections  # type: ignore[attr-defined]
    every = float(os.environ.get("FSMIG_LEGACY_REFRESH_S", "300"))
    while True:
        t0 = time.perf_counter()
        client = redis.Redis.from_url(url(c.legacy_online))
        try:
            with psycopg.connect(url(c.event_log), autocommit=True) as events:
                counts = write_online_store(
                    events, client, plan, now=datetime.now(UTC).replace(microsecond=0)
                )  # type: ignore[arg-type]
        finally:
            client.close()
        took = time.perf_counter() - t0
        log.info("legacy online store refreshed in %.0fs: %s", took, counts)
        time.sleep(max(1.0, every - took))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s seed: %(message)s")
    from airflow_fsmigration.plan import load_plan
    from fsmig_dev.demo.data import generate_demo

    plan = load_plan(PLAN)
    if "--legacy-pipeline" in sys.argv[1:]:
        return legacy_pipeline(plan)
    c = plan.connections
    rw_url = url(c.new_store)
    if already_seeded(rw_url) and os.environ.get("FSMIG_SEED_FORCE") != "1":
        log.info("RisingWave already holds raw events: nothing to do (FSMIG_SEED_FORCE=1 regenerates)")
        return 0
    t0 = time.perf_counter()
    generate_demo(
        url(c.event_log),
        url(c.legacy_offline),
        url(c.registry),
        url(c.legacy_online),
        plan,
        entities=int(os.environ.get("FSMIG_SEED_ENTITIES", "20000")),
        days=int(os.environ.get("FSMIG_SEED_DAYS", "90")),
        inject_bug=False,
        frozen_clock=False,
    )
    counts = mirror_raw(url(c.event_log), rw_url)
    log.info("seeded in %.0fs: %s", time.perf_counter() - t0, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
