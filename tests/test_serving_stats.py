"""Serving stats: exact counts and merged percentiles through a real Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_fsmigration.serving.stats import StatsRecorder, StatsUnavailable, read_window


def _window(seconds_back: float = 60, seconds_ahead: float = 60) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(seconds=seconds_back), now + timedelta(seconds=seconds_ahead)


@pytest.mark.integration
def test_two_recorders_merge_exact_counts_and_percentiles(redis_client):
    # Two recorders stand for two serving processes writing the same buckets.
    a = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0)
    b = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0)
    for i in range(1, 1001):  # old: 1..1000 us, 7 errors
        (a if i % 2 else b).record("user_profile", "old", i, error=i <= 7)
    for _ in range(300):
        a.record("user_profile", "new", 5_000)
    b.record("user_profile", "new", 80_000, error=True)
    a.record_shadow("user_profile", True)
    a.record_shadow("user_profile", False)
    b.record_shadow("user_profile", True)
    b.record_rejected("user_profile")
    a.record("other_group", "old", 10)
    assert a.flush() == 801
    assert b.flush() == 501

    start, end = _window()
    stats = read_window(redis_client, "user_profile", start, end)
    old, new = stats["old"], stats["new"]
    assert (old.count, old.errors) == (1000, 7)
    assert old.error_rate == pytest.approx(0.007)
    assert old.p50_ms == pytest.approx(0.5, rel=0.01)
    assert old.p99_ms == pytest.approx(0.99, rel=0.01)
    assert old.max_ms == pytest.approx(1.0, rel=0.01)
    assert (new.count, new.errors) == (301, 1)
    assert new.p50_ms == pytest.approx(5.0, rel=0.01)
    assert new.max_ms == pytest.approx(80.0, rel=0.01)
    assert (new.shadow_matches, new.shadow_mismatches, new.rejected) == (2, 1, 1)
    assert read_window(redis_client, "other_group", start, end)["old"].count == 1


@pytest.mark.integration
def test_window_selects_buckets_and_empty_window_has_no_percentiles(redis_client):
    rec = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0)
    rec.record("g", "old", 100)
    rec.flush()
    time.sleep(1.1)
    # The start of the current 1 s bucket: the first flush is in an earlier bucket, the next one not.
    middle = datetime.fromtimestamp(int(time.time()), UTC)
    rec.record("g", "old", 200)
    rec.record("g", "old", 300)
    rec.flush()
    start, end = _window()
    assert read_window(redis_client, "g", start, end)["old"].count == 3
    assert read_window(redis_client, "g", middle, end)["old"].count == 2
    assert read_window(redis_client, "g", start, middle)["old"].count == 1
    empty = read_window(redis_client, "g", end, end + timedelta(seconds=10))
    assert empty["new"].count == 0 and empty["new"].p99_ms is None and empty["new"].error_rate == 0.0


@pytest.mark.integration
def test_background_thread_flushes_without_explicit_call(redis_client):
    rec = StatsRecorder(redis_client, bucket_s=1, flush_interval_s=0.05)
    try:
        for _ in range(25):
            rec.record("g", "new", 42)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if read_window(redis_client, "g", *_window())["new"].count == 25:
                break
            time.sleep(0.02)
        assert read_window(redis_client, "g", *_window())["new"].count == 25
    finally:
        rec.close()


@pytest.mark.integration
def test_flush_keeps_data_while_redis_is_down_and_read_says_unavailable(redis_url, redis_client):
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    rec = StatsRecorder(dead, bucket_s=1, flush_interval_s=0)
    rec.record("g", "old", 10)
    assert rec.flush() == 0 and rec.flush_failures == 1
    with pytest.raises(StatsUnavailable, match="group 'g'"):
        read_window(dead, "g", *_window())
    rec._client = redis_client  # Redis is back: the pending flush goes out with the next one
    rec.record("g", "old", 20)
    assert rec.flush() == 2
    assert read_window(redis_client, "g", *_window())["old"].count == 2
