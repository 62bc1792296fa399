"""FeatureRouter against a real legacy Redis and a real Postgres new store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_fsmigration.semantics import format_key
from airflow_fsmigration.serving.backends import LegacyRedisBackend, PostgresBackend
from airflow_fsmigration.serving.bucketing import bucket_of, routes_to_new, threshold_for
from airflow_fsmigration.serving.router import FeatureRouter, ServingError
from airflow_fsmigration.serving.routing import publish_state, routing_key
from airflow_fsmigration.serving.stats import read_window

GROUP = "user_profile"
OLD_KYC, NEW_KYC = 1, 2  # the one value that tells which store served an entity


def seed_stores(plan, redis_client, pg_url: str, n: int, *, new_kyc: int = NEW_KYC) -> list[str]:
    """n users in both stores; identical features except kyc_level (old 1, new ``new_kyc``)."""
    ids = [f"u{i:06d}" for i in range(n)]
    template = plan.groups[GROUP].legacy_online.key_template
    pipe = redis_client.pipeline(transaction=False)
    for i, e in enumerate(ids):
        pipe.hset(
            format_key(template, e),
            mapping={
                "account_age_days": json.dumps(i),
                "country": json.dumps("DE"),
                "is_verified": json.dumps(i % 2 == 0),
                "kyc_level": json.dumps(OLD_KYC),
                "email_domain_risk": json.dumps(0.25),
                "device_count_30d": "3",
                "login_count_7d": "7",
                # failed_login_count_24h absent: a null
                "_ts": json.dumps("2026-01-01T00:00:00Z"),
            },
        )
    pipe.execute()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA features")
        conn.execute(
            "CREATE TABLE features.user_profile (user_id text PRIMARY KEY, account_age_days bigint, country text,"
            " is_verified boolean, kyc_level bigint, email_domain_risk numeric, device_count_30d bigint,"
            " login_count_7d bigint, failed_login_count_24h bigint, source_ts timestamptz)"
        )
        with conn.cursor().copy("COPY features.user_profile FROM STDIN") as copy:
            for i, e in enumerate(ids):
                copy.write_row((e, i, "DE", i % 2 == 0, new_kyc, "0.25", 3, 7, None, "2026-01-01T00:00:00Z"))
    return ids


def make_router(plan, redis_client, pg_url, **kw) -> FeatureRouter:
    kw.setdefault("stats_flush_s", 0)
    router = FeatureRouter(
        redis_client,
        LegacyRedisBackend.from_plan(redis_client, plan),
        PostgresBackend(pg_url, plan, statement_timeout_ms=1000, read_timeout_ms=1000),  # not a timeout test
        plan=plan,
        **kw,
    )
    assert not kw.get("listen", True) or router.wait_ready(5)
    return router


def served_from_new(rows) -> set[str]:
    return {e for e, r in rows.items() if r["kyc_level"] == NEW_KYC}


# -- bucketing -------------------------------------------------------------------------------


@pytest.mark.unit
def test_bucket_is_stable_across_processes_and_hash_seeds():
    ids = ["u000001", "merchant-42", "ü-ñ", ""]
    here = [bucket_of(e) for e in ids]
    assert here == [bucket_of(e) for e in ids] and all(0 <= b < 10_000 for b in here)
    code = (
        f"from airflow_fsmigration.serving.bucketing import bucket_of; print([bucket_of(e) for e in {ids!r}])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        )
        assert out.stdout.strip() == str(here)
    # Pinned values: changing the hash would move live traffic between stores.
    assert bucket_of("u000001") == 1009 and bucket_of("merchant-42") == 8786


@pytest.mark.unit
def test_ramp_is_monotone_and_proportional():
    ids = [f"user_{i}" for i in range(50_000)]
    previous: set[str] = set()
    for pct in (0, 1, 5, 25, 50, 99.5, 100):
        on_new = {e for e in ids if routes_to_new(e, pct)}
        assert previous <= on_new  # nobody moves back as the ramp grows
        assert abs(len(on_new) / len(ids) - pct / 100) < 0.01
        previous = on_new
    assert len(previous) == len(ids)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        threshold_for(101)


# -- routing ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_router_honours_ramp_and_returns_typed_rows(demo_plan, redis_client, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 2000)
    publish_state(redis_client, GROUP, phase="ramping", ramp_pct=30, version=3)
    with make_router(demo_plan, redis_client, pg_url) as router:
        rows = {}
        for i in range(0, len(ids), 200):
            rows.update(router.get_features(GROUP, ids[i : i + 200]))
        assert len(rows) == 2000
        new_side = served_from_new(rows)
        assert new_side == {e for e in ids if bucket_of(e) < 3000}
        assert 0.27 < len(new_side) / 2000 < 0.33
        singles = {e for e in ids[:200] if served_from_new(router.get_features(GROUP, [e]))}
        assert singles == new_side & set(ids[:200])  # the one-entity fast path routes alike
        old_row, new_row = rows["u000001"], rows["u000004"]
        for row in (old_row, new_row):  # both stores give the same typed shape
            assert set(row) == set(demo_plan.groups[GROUP].feature_names)
            assert row["country"] == "DE" and row["failed_login_count_24h"] is None
            assert row["email_domain_risk"] == 0.25 and isinstance(row["email_domain_risk"], float)
        assert rows["u000001"]["is_verified"] is False and rows["u000002"]["is_verified"] is True
        assert router.get_features(GROUP, ["nobody"]) == {}
        flushed = router.flush_stats()
        stats = read_window(
            redis_client,
            GROUP,
            datetime.now(UTC) - timedelta(minutes=1),
            datetime.now(UTC) + timedelta(minutes=1),
        )
        # 10 batches hit both stores, 200 single lookups one store each, "nobody" the old one.
        assert stats["old"].count + stats["new"].count == flushed == 10 + 10 + 200 + 1
        assert stats["new"].errors == 0 and stats["new"].p99_ms is not None


@pytest.mark.integration
def test_missing_malformed_rolled_back_and_frozen_states(demo_plan, redis_client, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 300)
    with make_router(demo_plan, redis_client, pg_url, listen=False) as router:
        assert router.ramp_pct(GROUP) == 0 and not served_from_new(router.get_features(GROUP, ids))
        redis_client.set(routing_key(GROUP), b"{not json")
        router.refresh()
        assert router.ramp_pct(GROUP) == 0
        publish_state(redis_client, GROUP, phase="frozen", ramp_pct=50, version=4)
        router.refresh()
        assert router.ramp_pct(GROUP) == 50
        publish_state(redis_client, GROUP, phase="rolled_back", ramp_pct=50, version=5)
        router.refresh()
        assert router.ramp_pct(GROUP) == 0 and not served_from_new(router.get_features(GROUP, ids))
        publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=6)
        router.refresh()
        assert served_from_new(router.get_features(GROUP, ids)) == set(ids)


@pytest.mark.integration
def test_published_change_applies_within_a_second(demo_plan, redis_client, redis_url, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 200)
    publish_state(redis_client, GROUP, phase="cutover", ramp_pct=100, version=7)
    # A long refresh interval: only the publish can explain a fast change.
    with make_router(demo_plan, redis.Redis.from_url(redis_url), pg_url, refresh_s=60) as router:
        assert served_from_new(router.get_features(GROUP, ids)) == set(ids)
        t0 = time.monotonic()
        publish_state(redis_client, GROUP, phase="rolled_back", ramp_pct=0, version=8)
        while router.ramp_pct(GROUP) != 0 and time.monotonic() - t0 < 2:
            time.sleep(0.001)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, f"rollback took {elapsed:.3f}s to reach the router"
        assert served_from_new(router.get_features(GROUP, ids)) == set()
        # An older version arriving late does not undo the rollback.
        publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=7)
        time.sleep(0.2)
        assert router.ramp_pct(GROUP) == 0


@pytest.mark.integration
def test_rollback_reaches_a_router_in_another_process(demo_plan, redis_client, redis_url, pg_url):
    seed_stores(demo_plan, redis_client, pg_url, 10)
    publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=1)
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_router", "--child", redis_url, pg_url, "--group", GROUP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent),
    )
    try:
        assert child.stdout.readline().split()[0] == "new"  # the child serves from the new store
        t0 = time.time()
        publish_state(redis_client, GROUP, phase="rolled_back", ramp_pct=0, version=2)
        kind, ts = child.stdout.readline().split()
        assert kind == "old"
        assert float(ts) - t0 < 1.0
    finally:
        child.kill()
        child.wait(5)


# -- circuit breaker -------------------------------------------------------------------------


@pytest.mark.integration
def test_breaker_opens_when_new_store_dies_and_callers_see_no_error(
    demo_plan, postgres, redis_client, redis_url, pg_url
):
    ids = seed_stores(demo_plan, redis_client, pg_url, 100)
    publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=1)
    with (
        make_router(demo_plan, redis_client, pg_url, breaker_fail_max=3, breaker_reset_s=30) as router,
        make_router(
            demo_plan, redis.Redis.from_url(redis_url), pg_url, breaker_fail_max=3, breaker_reset_s=30
        ) as peer,
    ):
        assert served_from_new(router.get_features(GROUP, ids[:10])) == set(ids[:10])
        # Kill the new store: drop its database, terminating the router's connections.
        dbname = urlsplit(pg_url).path.lstrip("/")
        with psycopg.connect(postgres.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
        for i in range(20):
            rows = router.get_features(GROUP, ids[i * 5 : i * 5 + 5])  # never raises
            assert len(rows) == 5 and not served_from_new(rows)
        breaker = router.breaker(GROUP)
        assert breaker.state == "open" and breaker.trips == 1
        assert router.fallbacks == 100
        router.flush_stats()
        window = (datetime.now(UTC) - timedelta(minutes=1), datetime.now(UTC) + timedelta(minutes=1))
        stats = read_window(redis_client, GROUP, *window)
        assert stats["new"].errors == 3 and stats["new"].count == 4  # 1 good read + 3 failures, then no calls
        assert stats["new"].rejected == 17  # the breaker sent the remaining requests to the old store
        assert stats["old"].count == 20 and stats["old"].errors == 0
        # The trip was shared: the peer opens without a failure of its own.
        deadline = time.monotonic() + 2
        while peer.breaker(GROUP).state != "open" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert peer.breaker(GROUP).state == "open"
        assert not served_from_new(peer.get_features(GROUP, ids[:10]))


@pytest.mark.integration
def test_breaker_half_opens_and_closes_when_store_recovers(demo_plan, redis_client, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 20)
    publish_state(redis_client, GROUP, phase="ramping", ramp_pct=100, version=1)

    class Flaky:
        name = "new"

        def __init__(self, inner):
            self.inner, self.down, self.calls = inner, True, 0

        def read(self, group, entity_ids):
            self.calls += 1
            if self.down:
                raise psycopg.OperationalError("injected: connection refused")
            return self.inner.read(group, entity_ids)

        def close(self):
            self.inner.close()

    flaky = Flaky(PostgresBackend(pg_url, demo_plan))
    router = FeatureRouter(
        redis_client,
        LegacyRedisBackend.from_plan(redis_client, demo_plan),
        flaky,
        breaker_fail_max=2,
        breaker_reset_s=0.3,
        stats_flush_s=0,
        share_trips=False,
    )
    with router:
        for _ in range(5):
            assert not served_from_new(router.get_features(GROUP, ids))
        assert flaky.calls == 2 and router.breaker(GROUP).state == "open"
        flaky.down = False
        time.sleep(0.35)
        assert served_from_new(router.get_features(GROUP, ids)) == set(ids)  # trial read succeeded
        assert router.breaker(GROUP).state == "closed" and flaky.calls == 3


@pytest.mark.integration
def test_old_store_failure_is_an_error_naming_the_group(demo_plan, pg_url):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    router = FeatureRouter(
        dead,
        LegacyRedisBackend.from_plan(dead, demo_plan),
        PostgresBackend(pg_url, demo_plan),
        listen=False,
        stats_flush_s=0,
        share_trips=False,
    )
    with router:
        assert router.ramp_pct(GROUP) == 0  # Redis down: the safe side
        with pytest.raises(ServingError, match="group 'user_profile': the legacy store failed"):
            router.get_features(GROUP, ["u1"])


# -- shadow sampling -------------------------------------------------------------------------


@pytest.mark.integration
def test_shadow_sampling_counts_matches_and_mismatches(demo_plan, redis_client, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 40, new_kyc=OLD_KYC)
    with psycopg.connect(pg_url, autocommit=True) as conn:  # 4 entities differ beyond tolerance
        conn.execute(
            "UPDATE features.user_profile SET email_domain_risk = 0.5 WHERE user_id = ANY(%s)", (ids[:4],)
        )
        conn.execute(
            "UPDATE features.user_profile SET email_domain_risk = 0.25005 WHERE user_id = ANY(%s)",
            (ids[4:8],),
        )
    with make_router(
        demo_plan, redis_client, pg_url, shadow_rate=1.0, shadow_max_per_s=1000, listen=False
    ) as router:
        for i in range(0, 40, 4):
            router.get_features(GROUP, ids[i : i + 4])
        deadline = time.monotonic() + 5
        while router.shadow_compared < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (router.shadow_compared, router.shadow_mismatched) == (40, 4)  # atol 0.0001 absorbs 0.00005
        router.flush_stats()
        stats = read_window(
            redis_client,
            GROUP,
            datetime.now(UTC) - timedelta(minutes=1),
            datetime.now(UTC) + timedelta(minutes=1),
        )
        assert (stats["new"].shadow_matches, stats["new"].shadow_mismatches) == (36, 4)
        assert stats["new"].count == 0 and stats["old"].count == 10  # shadow reads are not serving traffic


@pytest.mark.integration
def test_shadow_comparison_decodes_and_judges_like_the_comparator(demo_plan, redis_client, pg_url):
    """ "1.0" and "f" are the old values 1 and False; an undecodable one differs; int tolerances apply.

    Fails on the old code: "1.0" and "f" did not decode in the json encoding (served as null and
    counted as mismatches), and an int64 feature's atol was ignored.
    """
    g = demo_plan.groups[GROUP]
    features = tuple(
        f.model_copy(update={"atol": 1.0}) if f.name == "device_count_30d" else f for f in g.features
    )
    plan = demo_plan.model_copy(
        update={"groups": {**demo_plan.groups, GROUP: g.model_copy(update={"features": features})}}
    )
    ids = seed_stores(plan, redis_client, pg_url, 12, new_kyc=OLD_KYC)
    key = g.legacy_online.key_template.format
    redis_client.hset(key(entity=ids[0]), "kyc_level", "1.0")
    redis_client.hset(key(entity=ids[1]), "is_verified", "f")  # new store: False (odd index)
    redis_client.hset(key(entity=ids[2]), "kyc_level", "junk")
    with psycopg.connect(pg_url, autocommit=True) as conn:  # within device_count_30d's atol of 1
        conn.execute("UPDATE features.user_profile SET device_count_30d = 4 WHERE user_id = %s", (ids[3],))
    with make_router(
        plan, redis_client, pg_url, shadow_rate=1.0, shadow_max_per_s=1000, listen=False
    ) as router:
        rows = router.get_features(GROUP, ids)
        assert (rows[ids[0]]["kyc_level"], rows[ids[1]]["is_verified"], rows[ids[2]]["kyc_level"]) == (
            1,
            False,
            None,
        )
        assert router.old.decode_errors == 1
        deadline = time.monotonic() + 5
        while router.shadow_compared < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (router.shadow_compared, router.shadow_mismatched) == (12, 1)


@pytest.mark.integration
def test_shadow_rate_limit(demo_plan, redis_client, pg_url):
    ids = seed_stores(demo_plan, redis_client, pg_url, 5, new_kyc=OLD_KYC)
    with make_router(
        demo_plan, redis_client, pg_url, shadow_rate=1.0, shadow_max_per_s=3, listen=False
    ) as router:
        t0 = time.monotonic()
        for _ in range(200):
            router.get_features(GROUP, ids[:1])
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 5
        while router._shadow_queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        # 3 tokens at start, 3 more per second of the loop: far below the 200 requests.
        assert 3 <= router.shadow_compared <= 3 + int(elapsed * 3) + 1
        assert router.shadow_errors == 0 and router.shadow_dropped == 0


@pytest.mark.integration
def test_routing_redis_down_keeps_last_known_routing(demo_plan, redis_client, pg_url):
    """The mirror's Redis dies at 100%: the router keeps serving the new store; a fresh router defaults to old."""
    from fsmig_dev.devservices import start_redis

    ids = seed_stores(demo_plan, redis_client, pg_url, 50)
    routing_server = start_redis()  # routing mirror on its own Redis, which we then kill
    routing = redis.Redis.from_url(routing_server.url, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        publish_state(routing, GROUP, phase="ramping", ramp_pct=100, version=1)
        router = FeatureRouter(
            routing,
            LegacyRedisBackend.from_plan(redis_client, demo_plan),
            PostgresBackend(pg_url, demo_plan),
            stats_client=redis_client,
            stats_flush_s=0,
        )
        with router:
            assert router.wait_ready(5)
            assert served_from_new(router.get_features(GROUP, ids)) == set(ids)
            routing_server.stop()
            deadline = time.monotonic() + 1.5
            while router._subscribed.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not router._subscribed.is_set()  # the listener noticed the outage
            assert router.ramp_pct(GROUP) == 100
            assert served_from_new(router.get_features(GROUP, ids)) == set(ids)
            assert router.routing_age_s() is not None and router.routing_age_s() > 0
            fresh = FeatureRouter(
                routing,
                LegacyRedisBackend.from_plan(redis_client, demo_plan),
                PostgresBackend(pg_url, demo_plan),
                stats_client=redis_client,
                stats_flush_s=0,
                listen=False,
            )
            with fresh:
                assert fresh.ramp_pct(GROUP) == 0 and not served_from_new(fresh.get_features(GROUP, ids))
    finally:
        routing_server.stop()


@pytest.mark.unit
def test_decode_memo_keeps_the_meaning_and_counts_every_bad_value(demo_plan):
    from airflow_fsmigration.serving.backends import DECODE_MEMO_MAX

    backend = LegacyRedisBackend.from_plan(None, demo_plan)
    raw = {b"kyc_level": b"x1", b"account_age_days": b"42.0", b"country": b'"DE"'}
    rows = [backend.decode_row(GROUP, f"e{i}", raw) for i in range(3)]  # the 2nd and 3rd hit the memo
    assert all(r["account_age_days"] == 42 and r["country"] == "DE" and r["kyc_level"] is None for r in rows)
    assert backend.decode_errors == 3 and all(r.undecodable == {"kyc_level"} for r in rows)
    for i in range(DECODE_MEMO_MAX + 10):
        backend.decode_row(GROUP, "e", {b"account_age_days": str(i).encode()})
    memo = next(m for _f, name, _d, m in backend._spec(GROUP)[2] if name == "account_age_days")
    assert len(memo) == DECODE_MEMO_MAX  # bounded; later values are decoded, not kept
    assert backend.decode_row(GROUP, "e", {b"account_age_days": b"5000"})["account_age_days"] == 5000


@pytest.mark.unit
def test_serving_imports_no_airflow():
    code = (
        "import sys\n"
        "import airflow_fsmigration.serving.router, airflow_fsmigration.serving.backends, "
        "airflow_fsmigration.serving.loadtest, airflow_fsmigration.serving.stats\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.integration
def test_breaker_opens_when_the_new_store_server_is_stopped(demo_plan, redis_client):
    from fsmig_dev.devservices import start_postgres

    server = start_postgres()  # a new store of its own, so that it can really be stopped
    try:
        ids = seed_stores(demo_plan, redis_client, server.url, 30)
        publish_state(redis_client, GROUP, phase="cutover", ramp_pct=100, version=1)
        with make_router(
            demo_plan, redis_client, server.url, breaker_fail_max=2, breaker_reset_s=30
        ) as router:
            assert served_from_new(router.get_features(GROUP, ids)) == set(ids)
            server.stop()
            for i in range(10):
                rows = router.get_features(GROUP, ids[i * 3 : i * 3 + 3])  # no error reaches the caller
                assert sorted(rows) == ids[i * 3 : i * 3 + 3] and not served_from_new(rows)
            assert router.breaker(GROUP).state == "open" and router.fallbacks == 30
    finally:
        server.stop()
