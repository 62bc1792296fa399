"""The Redis mirror of the routing registry: published after commit, never regresses, reconciled."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from airflow_fsmigration.registry.mirror import CHANNEL, RoutingMirror, parse_doc, routing_key
from airflow_fsmigration.registry.model import Backend, Phase, RoutingState
from airflow_fsmigration.registry.routing import Registry
from fsmig_dev.devservices import free_port

GROUP = "merchant_stats"


@pytest.fixture
def registry(pg_url, redis_client, demo_plan):
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=demo_plan)
    reg.ensure_schema()
    reg.register_plan(demo_plan)
    yield reg
    reg.close()


def _state(version: int, phase: Phase = Phase.RAMPING, pct: float = 5.0) -> RoutingState:
    return RoutingState(
        GROUP, phase, pct, Backend.NEW if pct else Backend.OLD, version, datetime(2026, 11, 25, tzinfo=UTC)
    )


@pytest.mark.unit
def test_parse_doc_treats_anything_odd_as_missing():
    good = _state(3).mirror_json()
    assert parse_doc(good) == json.loads(good)
    assert parse_doc(None) is None
    assert parse_doc(b"not json") is None
    assert parse_doc('{"group": "x"}') is None
    assert parse_doc(good.replace('"new"', '"both"')) is None
    assert parse_doc(good.replace('"ramp_pct":5.0', '"ramp_pct":500')) is None


@pytest.mark.integration
def test_contract_key_and_channel_hear_each_commit(registry, redis_client):
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    time.sleep(0.05)
    registry.transition(GROUP, "shadow", actor="t", reason="deployed")
    state = registry.ramp(GROUP, 5, actor="t", reason="soak green", soak_passed=True)
    messages = []
    deadline = time.monotonic() + 2
    while len(messages) < 2 and time.monotonic() < deadline:
        m = pubsub.get_message(timeout=0.1)
        if m:
            messages.append(json.loads(m["data"]))
    pubsub.close()
    assert [m["phase"] for m in messages] == ["shadow", "ramping"]
    doc = json.loads(redis_client.get(routing_key(GROUP)))
    assert doc == messages[-1]
    assert set(doc) == {"group", "phase", "ramp_pct", "active_backend", "version", "updated_at"}
    assert doc == {
        "group": GROUP,
        "phase": "ramping",
        "ramp_pct": 5.0,
        "active_backend": "new",
        "version": state.version,
        "updated_at": state.updated_at.isoformat(),
    }
    assert datetime.fromisoformat(doc["updated_at"]).tzinfo is not None


@pytest.mark.integration
def test_mirror_never_moves_backwards(redis_client):
    mirror = RoutingMirror(redis_client)
    assert mirror.write(_state(5, pct=50)) is True
    assert mirror.write(_state(4, pct=5)) is False  # a slow publisher that lost the race
    assert mirror.read(GROUP)["version"] == 5
    assert mirror.write(_state(5, pct=50)) is False  # same version, same text: no second publish
    assert mirror.write(_state(6, Phase.ROLLED_BACK, 0)) is True
    assert mirror.read(GROUP)["active_backend"] == "old"


@pytest.mark.integration
def test_publish_failure_after_commit_is_repaired_by_reconcile(pg_url, registry, redis_client, demo_plan):
    # A Redis that does not answer: nothing listens on this port.
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    cut_off = Registry(pg_url, RoutingMirror(dead), plan=demo_plan)
    cut_off.transition(GROUP, "shadow", actor="t", reason="deployed")
    committed = cut_off.ramp(GROUP, 5, actor="t", reason="soak green", soak_passed=True)
    cut_off.close()
    mirror = RoutingMirror(redis_client)
    assert registry.state(GROUP).version == committed.version  # the commit stands
    assert mirror.read(GROUP)["phase"] == "planned"  # serving still sees the old state
    assert mirror.diff(committed) == f"stale (version 1 < {committed.version})"

    report = mirror.reconcile(registry)
    assert report.repaired == {GROUP: f"stale (version 1 < {committed.version})"}
    assert len(report.ok) == 7 and not report.failed
    assert mirror.read(GROUP) == committed.mirror_doc()
    assert mirror.reconcile(registry).clean


@pytest.mark.integration
def test_reconcile_repairs_deleted_corrupted_and_foreign_keys(registry, redis_client):
    mirror = RoutingMirror(redis_client)
    redis_client.delete(routing_key(GROUP))
    redis_client.set(routing_key("user_profile"), b"\x00garbage")
    ahead = json.loads(redis_client.get(routing_key("item_popularity")))
    ahead.update(version=99, ramp_pct=100.0, active_backend="new", phase="cutover")
    redis_client.set(routing_key("item_popularity"), json.dumps(ahead))
    redis_client.set(routing_key("some_other_plans_group"), b"{}")

    assert mirror.read(GROUP) is None and mirror.read("user_profile") is None
    report = mirror.reconcile(registry)
    assert report.repaired == {
        GROUP: "missing",
        "user_profile": "unreadable",
        "item_popularity": "ahead of Postgres (version 99 > 1)",
    }
    assert report.unknown == ["some_other_plans_group"]
    for group in (GROUP, "user_profile", "item_popularity"):
        assert mirror.read(group) == registry.state(group).mirror_doc()
    assert "3 repaired" in report.summary()
    assert mirror.reconcile(registry).repaired == {}
