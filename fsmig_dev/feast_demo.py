"""The demo Feast repository of the tests and the Feast benchmark: definitions, config, rows.

Development-only (kept out of the provider's wheel): it writes a small Feast repo pointing at
our Postgres and Redis, fills its batch tables with deterministic rows, and runs ``feast apply``
and ``materialize`` in the Feast interpreter, so the direct readers can be checked against Feast.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_fsmigration.feast_import import FEAST_VENV, PROJECT_ROOT, FeastUnavailable, run_in_feast

log = logging.getLogger("airflow_fsmigration.feast")

DEMO_PROJECT = "fsmig_demo"

DEMO_DEFINITIONS = '''"""A small Feast repo for fsmigrate's tests, benchmark and demo: three views, two services."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Array, Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64, description="A driver")
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)

driver_stats_source = PostgreSQLSource(
    name="driver_stats_source",
    table="public.driver_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
customer_source = PostgreSQLSource(
    name="customer_source",
    query="SELECT customer_id, ltv, segment, event_timestamp FROM public.customers",
    timestamp_field="event_timestamp",
)

driver_hourly_stats = FeatureView(
    name="driver_hourly_stats",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[
        Field(name="conv_rate", dtype=Float32, description="Conversion rate"),
        Field(name="acc_rate", dtype=Float64),
        Field(name="avg_daily_trips", dtype=Int64),
        Field(name="rating", dtype=Int32),
        Field(name="is_active", dtype=Bool),
        Field(name="city", dtype=String),
        Field(name="last_trip_ts", dtype=UnixTimestamp),
    ],
    source=driver_stats_source,
    online=True,
    owner="mobility-ml@example.com",
    description="Hourly driver statistics",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(seconds=0),
    schema=[Field(name="ltv", dtype=Float64), Field(name="segment", dtype=String)],
    source=customer_source,
    online=True,
)

driver_lists_source = PostgreSQLSource(
    name="driver_lists_source",
    table="public.driver_lists",
    timestamp_field="event_timestamp",
)

driver_lists = FeatureView(
    name="driver_lists",
    entities=[driver],
    ttl=timedelta(days=7),
    schema=[
        Field(name="recent_trip_ids", dtype=Array(Int64)),
        Field(name="embedding", dtype=Array(Float32), description="A 4-d driver embedding"),
        Field(name="scores", dtype=Array(Float64)),
        Field(name="zones", dtype=Array(String)),
    ],
    source=driver_lists_source,
    online=True,
    tags={"team": "recs"},
)

recommender = FeatureService(
    name="recommender",
    features=[driver_lists, driver_hourly_stats[["conv_rate"]]],
    owner="recs-ml@example.com",
    tags={"tier": "1"},
)

driver_activity = FeatureService(
    name="driver_activity",
    features=[driver_hourly_stats, customer_profile[["ltv"]]],
    description="Features of the ETA model",
)
'''


def demo_feature_store_yaml(pg_url: str, redis_url: str, project: str = DEMO_PROJECT) -> str:
    """``feature_store.yaml`` pointing Feast at our Postgres (offline) and Redis (online)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    pg = urlsplit(pg_url)
    query = parse_qs(pg.query)
    host = query.get("host", [pg.hostname or "localhost"])[0]
    rd = urlsplit(redis_url)
    db = (rd.path or "/0").lstrip("/") or "0"
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry: data/registry.db\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{rd.hostname}:{rd.port or 6379},db={db}"\n'
        "offline_store:\n"
        "  type: postgres\n"
        f'  host: "{host}"\n'
        f"  port: {pg.port or int(query.get('port', ['5432'])[0])}\n"
        f'  database: "{pg.path.lstrip("/")}"\n'
        "  db_schema: public\n"
        f'  user: "{unquote(pg.username or "postgres")}"\n'
        f'  password: "{unquote(pg.password or "")}"\n'
        "  sslmode: disable\n"
    )


def write_demo_repo(path: str | os.PathLike[str], pg_url: str, redis_url: str) -> Path:
    """Write the demo Feast repo (definitions and config) to ``path``."""
    repo = Path(path)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(demo_feature_store_yaml(pg_url, redis_url))
    (repo / "definitions.py").write_text(DEMO_DEFINITIONS)
    return repo


def load_demo_data(
    pg_url: str, *, drivers: int = 300, customers: int = 50, now: datetime | None = None
) -> dict:
    """Fill ``public.driver_stats`` and ``public.customers`` with deterministic rows; returns counts.

    Drivers ``1..drivers`` each have 1-3 rows. Every 7th driver's newest row is 3 days old, past
    the view's 1-day TTL (stale in the online store once materialized); every 11th has NULL
    ``conv_rate`` and ``city`` in its newest row; every 13th has a duplicate event time whose
    later ``created`` wins. Rows in the future (every 17th driver) are not materialized.
    """
    from datetime import timedelta

    import psycopg

    now = now or datetime.now(UTC).replace(microsecond=0)
    cities = ["Lisbon", "Porto", "Faro", "Braga"]
    rows: list[tuple[Any, ...]] = []
    for d in range(1, drivers + 1):
        n = 1 + d % 3
        newest = now - (timedelta(days=3) if d % 7 == 0 else timedelta(minutes=10 + d % 50))
        for k in range(n):
            ts = newest - timedelta(hours=5 * k)
            null = d % 11 == 0 and k == 0
            rows.append(
                (
                    d,
                    ts,
                    ts + timedelta(seconds=1),
                    None if null else round(0.01 * (d % 97) + 0.001 * k, 3),
                    0.5 + (d % 13) / 100 + k / 1000,
                    (d * 7 + k) % 40,
                    d % 5 + 1,
                    d % 2 == 0,
                    None if null else cities[(d + k) % 4],
                    ts - timedelta(minutes=d % 90),
                )
            )
        if d % 13 == 0:
            # Same event time, created later: Feast keeps this one.
            r: list[Any] = list(rows[-n])
            r[2] = r[2] + timedelta(seconds=5)
            r[5] = 999
            rows.append(tuple(r))
        if d % 17 == 0:
            rows.append((d, now + timedelta(days=1), now, 0.99, 0.99, 1, 1, True, "Future", now))
    customers_rows: list[tuple[Any, ...]] = [
        (
            f"c{c:04d}",
            float(c) * 12.5 if c % 9 else None,
            ["gold", "silver", "bronze"][c % 3],
            now - timedelta(days=c),
        )
        for c in range(1, customers + 1)
    ]
    list_rows = [_list_row(d, now) for d in range(1, min(drivers, LIST_DRIVERS) + 1)]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.driver_stats, public.customers, public.driver_lists")
        conn.execute(
            "CREATE TABLE public.driver_lists (driver_id bigint, event_timestamp timestamptz, "
            "recent_trip_ids bigint[], embedding real[], scores double precision[], zones text[])"
        )
        conn.execute(
            "CREATE TABLE public.driver_stats (driver_id bigint, event_timestamp timestamptz, created timestamptz, "
            "conv_rate real, acc_rate double precision, avg_daily_trips bigint, rating integer, "
            "is_active boolean, city text, last_trip_ts timestamptz)"
        )
        conn.execute(
            "CREATE TABLE public.customers (customer_id text, ltv double precision, segment text, "
            "event_timestamp timestamptz)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY public.driver_stats FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cur.copy("COPY public.customers FROM STDIN") as copy:
                for row in customers_rows:
                    copy.write_row(row)
            cur.executemany("INSERT INTO public.driver_lists VALUES (%s, %s, %s, %s, %s, %s)", list_rows)
    return {
        "driver_rows": len(rows),
        "customer_rows": len(customers_rows),
        "list_rows": len(list_rows),
        "now": now.isoformat(),
    }


#: Drivers with a row of the list view (the first ones; the benchmark's 100k need none).
LIST_DRIVERS = 400


def _list_row(d: int, now: datetime) -> tuple[Any, ...]:
    """Driver ``d``'s lists: every 5th has empty lists, every 6th NULL ones, ids above 2^32 and negative."""
    from datetime import timedelta

    ts = now - timedelta(minutes=5 + d % 30)
    if d % 6 == 0:
        return (d, ts, None, None, None, None)
    if d % 5 == 0:
        return (d, ts, [], [], [], [])
    ids = [d * 2**33, -d, 0][: 1 + d % 3]
    emb = [round(0.1 * ((d + k) % 7) - 0.3, 2) for k in range(4)]
    return (d, ts, ids, emb, [d / 3, -1e-300, 1e300][: 1 + d % 3], ["Lisbon", "", "Zürich 🚕"][: 1 + d % 3])


# Runs inside the Feast venv: `feast apply` and materialize a window into the online store.
APPLY_AND_MATERIALIZE_SCRIPT = r"""
import os
from datetime import datetime
from pathlib import Path
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total

repo = Path(PAYLOAD["repo"]).resolve()
os.chdir(repo)
config = load_repo_config(repo, repo / "feature_store.yaml")
apply_total(config, repo, skip_source_validation=True)
store = FeatureStore(repo_path=str(repo))
start = datetime.fromisoformat(PAYLOAD["start"])
end = datetime.fromisoformat(PAYLOAD["end"])
store.materialize(start_date=start, end_date=end)
RESULT = {"views": [fv.name for fv in store.list_feature_views()]}
"""


def apply_and_materialize(
    repo_path: str | os.PathLike[str], start: datetime, end: datetime, *, python: str | None = None
) -> dict:
    """``feast apply`` the repo and materialize ``[start, end]`` (in the Feast interpreter)."""
    return run_in_feast(
        APPLY_AND_MATERIALIZE_SCRIPT,
        {"repo": str(Path(repo_path).resolve()), "start": start.isoformat(), "end": end.isoformat()},
        python=python,
        cwd=repo_path,
    )


def ensure_feast_venv(path: str | os.PathLike[str] | None = None, *, python: str | None = None) -> str:
    """The Feast interpreter of ``path`` (default ``<project>/.venv-feast``), created when missing.

    Creating it installs ``requirements-feast.txt`` (about a minute here); an existing one is reused.
    """
    venv = Path(path) if path else PROJECT_ROOT / FEAST_VENV
    exe = venv / "bin" / "python"
    if exe.exists():
        return str(exe)
    reqs = PROJECT_ROOT / "requirements-feast.txt"
    spec = ["-r", str(reqs)] if reqs.is_file() else ["feast[redis,postgres]==0.67.0"]
    log.info("creating %s with Feast (%s)", venv, " ".join(spec))
    base = python or sys.executable
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(exe), "-m", "pip", "install", "-q", *spec], check=True, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as exc:
        raise FeastUnavailable(
            f"could not create {venv}: {' '.join(map(str, exc.cmd))} failed:\n{(exc.stderr or '')[-2000:]}"
        ) from exc
    return str(exe)
