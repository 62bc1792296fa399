"""Build the corpus's two stores and run the product's shadow comparison on each scenario.

- **Legacy online store** (Redis): the correct definition as of ``AS_OF``, one hash per entity at
  the plan's key template, written with the demo's encoder (:func:`fsmig_dev.demo.data.value_encoder`,
  the legacy ``string`` encoding), not with the product's writer, so the comparison reads data it
  did not write itself.
- **New store** (the same Postgres database as the raw tables, one schema per scenario): the
  scenario's defective definition deployed as a live view by the product's
  :meth:`NewStore.deploy_all`, with the database's ``now()`` frozen at ``AS_OF``
  (:func:`fsmig_dev.demo.data.freeze_clock`), so both stores describe the same moment.
- **The product**: ``run_shadow(plan, group, old, new, sample_size=0)`` with its own readers.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.diagnosis_corpus import generator, truth
from bench.diagnosis_corpus.scenarios import FEATURES, GROUP, KEY_TEMPLATE, Scenario, write_plan

log = logging.getLogger("bench.diagnosis_corpus")


@dataclass
class Corpus:
    """A loaded event log and legacy store, ready for scenarios."""

    pg_url: str
    redis_url: str
    workdir: Path
    event_log: generator.EventLog
    correct: truth.Values = field(repr=False)
    seconds: float = 0.0


def write_legacy(redis_url: str, correct: truth.Values) -> int:
    """The legacy online store: one hash per entity, legacy ``string`` encoding, ``_ts`` source time."""
    import redis

    from bench.diagnosis_corpus.scenarios import plan_dict
    from fsmig_dev.demo.data import encode_source_ts, value_encoder

    group = plan_dict(Scenario("legacy"), "legacy")["groups"][GROUP]
    encoders = [(f["name"], value_encoder(f["dtype"], "string")) for f in group["features"]]
    client = redis.Redis.from_url(redis_url)
    try:
        stale = list(client.scan_iter(match=KEY_TEMPLATE.format(entity="*"), count=10_000))
        for i in range(0, len(stale), 10_000):
            client.delete(*stale[i : i + 10_000])
        pipe = client.pipeline(transaction=False)
        for n, (entity, values) in enumerate(sorted(correct.items()), 1):
            mapping = {}
            for (name, encode), value in zip(encoders, values, strict=False):
                text = encode(value)
                if text is not None:
                    mapping[name] = text
            ts = encode_source_ts(values[len(FEATURES)], "string")
            if ts is not None:
                mapping["_ts"] = ts
            pipe.hset(KEY_TEMPLATE.format(entity=entity), mapping=mapping)
            if n % 5000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return len(correct)


def prepare(pg_url: str, redis_url: str, *, entities: int, seed: int, workdir: Path | None = None) -> Corpus:
    """Generate the event log in ``pg_url``, freeze its clock at ``AS_OF`` and fill the legacy store."""
    import psycopg

    from fsmig_dev.demo.data import freeze_clock

    t0 = time.perf_counter()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        event_log = generator.generate(conn, entities, seed)
        freeze_clock(conn, generator.AS_OF)
        correct = truth.compute(conn)
    write_legacy(redis_url, correct)
    return Corpus(
        pg_url=pg_url,
        redis_url=redis_url,
        workdir=workdir or Path(tempfile.mkdtemp(prefix="fsmig_diag_")),
        event_log=event_log,
        correct=correct,
        seconds=time.perf_counter() - t0,
    )


@dataclass
class Run:
    """One scenario: its truth, the product's result (as a dict) and timings."""

    scenario: Scenario
    truth: truth.Truth
    result: Any  # the ComparisonResult
    plan_path: Path
    seconds_truth: float
    seconds_product: float


def run_scenario(corpus: Corpus, scenario: Scenario) -> Run:
    """Deploy the scenario's definition, compute its ground truth, run the product's comparison."""
    import psycopg

    from airflow_fsmigration.compare.shadow import run_shadow
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.new_store import NewStore
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    schema = f"diag_{scenario.name}"
    plan_path = write_plan(corpus.workdir / scenario.name, scenario, schema)
    plan = load_plan(plan_path)
    t0 = time.perf_counter()
    with psycopg.connect(corpus.pg_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        t = truth.ground_truth(conn, scenario, corpus.correct)
    seconds_truth = time.perf_counter() - t0
    new = NewStore(corpus.pg_url, plan, "diag_new")
    old = RedisOnlineSource(corpus.redis_url, plan, "diag_redis")
    try:
        new.deploy_all()
        t1 = time.perf_counter()
        result = run_shadow(plan, GROUP, old, new, sample_size=0)
        seconds_product = time.perf_counter() - t1
    finally:
        new.close()
        old.close()
    log.info("scenario %s: truth %.2f s, product %.2f s", scenario.name, seconds_truth, seconds_product)
    return Run(scenario, t, result, plan_path, seconds_truth, seconds_product)
