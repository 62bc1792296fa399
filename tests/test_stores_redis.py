"""The legacy Redis online reader against a real Redis: every dtype, both encodings, nulls, absent keys."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from airflow_fsmigration.connections import StoreUnavailable
from airflow_fsmigration.plan.model import FeatureGroup
from airflow_fsmigration.stores.base import FeatureSource, HistoryUnavailable
from airflow_fsmigration.stores.frames import feature_schema
from airflow_fsmigration.stores.redis_online import RedisOnlineSource
from fsmig_dev.devservices import free_port

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 24, 12, 30, 15, 250000, tzinfo=UTC)


def make_group(
    encoding: str, *, ts_field: str | None = "_ts", template: str = "fs:g:{entity}"
) -> FeatureGroup:
    return FeatureGroup.model_validate(
        {
            "name": "g",
            "entity_key": "user_id",
            "definition": "sql/g.sql",
            "features": [
                {"name": "n", "dtype": "int64"},
                {"name": "x", "dtype": "float64"},
                {"name": "flag", "dtype": "bool"},
                {"name": "label", "dtype": "string"},
                {"name": "seen", "dtype": "timestamp"},
            ],
            "legacy_online": {"key_template": template, "encoding": encoding, "timestamp_field": ts_field},
            "legacy_offline": {"table": "legacy.g_history"},
            "sla": {"p99_ms": 10, "max_staleness": "5m"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )


STRING_HASHES = {
    "u1": {
        "n": "42",
        "x": "3.14",
        "flag": "true",
        "label": "plain text",
        "seen": "2026-11-24T12:30:15.250000+00:00",
        "_ts": "1764000000.5",
    },
    "u2": {
        "n": "-7",
        "x": "nan",
        "flag": "0",
        "label": "with\r\nnewline $5 *3",
        "seen": "2026-11-24T14:30:15+02:00",
        "_ts": "1764000001",
    },
    "u3": {"flag": "1", "_ts": "1764000002.000001"},  # nulls are absent fields
    "u4": {"x": "1e-05", "flag": "false", "label": "", "_ts": "2026-11-24T12:30:15.250000+00:00"},
    "ü 5": {"n": "0", "label": "日本"},
}

JSON_HASHES = {
    "u1": {
        "n": "42",
        "x": "3.14",
        "flag": "true",
        "label": '"plain text"',
        "seen": '"2026-11-24T12:30:15.250000+00:00"',
        "_ts": "1764000000.5",
    },
    "u2": {
        "n": "-7",
        "x": "NaN",
        "flag": "false",
        "label": '"with\\r\\nnewline \\"q\\" $5"',
        "seen": '"2026-11-24T14:30:15+02:00"',
        "_ts": "1764000001",
    },
    "u3": {
        "n": "null",
        "x": "null",
        "flag": "true",
        "label": "null",
        "seen": "null",
        "_ts": "1764000002.000001",
    },
    "u4": {"x": "1e-05", "flag": "false", "label": '""', "_ts": "1764000003"},
    "ü 5": {"n": "0", "label": '"日本"'},
}


def _load(client, hashes):
    for entity, mapping in hashes.items():
        client.hset(f"fs:g:{entity}", mapping=mapping)


def _expected_common(frame: pa.Table) -> None:
    rows = {r["entity_id"]: r for r in frame.to_pylist()}
    assert sorted(rows) == ["u1", "u2", "u3", "u4", "ü 5"]  # "missing" is absent, not a row of nulls
    assert rows["u1"] == {
        "entity_id": "u1",
        "n": 42,
        "x": 3.14,
        "flag": True,
        "label": "plain text",
        "seen": T1,
        "_source_ts": datetime(2025, 11, 24, 16, 0, 0, 500000, tzinfo=UTC),
    }
    assert rows["u2"]["n"] == -7 and rows["u2"]["x"] != rows["u2"]["x"]  # NaN
    assert rows["u2"]["flag"] is False
    assert rows["u2"]["seen"] == datetime(2026, 11, 24, 12, 30, 15, tzinfo=UTC)  # +02:00 normalised to UTC
    assert rows["u3"] == {
        "entity_id": "u3",
        "n": None,
        "x": None,
        "flag": True,
        "label": None,
        "seen": None,
        "_source_ts": datetime(2025, 11, 24, 16, 0, 2, 1, tzinfo=UTC),
    }
    assert rows["u4"]["x"] == 1e-05 and rows["u4"]["flag"] is False and rows["u4"]["label"] == ""
    assert rows["ü 5"]["n"] == 0 and rows["ü 5"]["label"] == "日本" and rows["ü 5"]["_source_ts"] is None


def test_string_encoding_every_dtype(redis_url, redis_client):
    group = make_group("string")
    _load(redis_client, STRING_HASHES)
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    frame = source.read(group, ["u1", "missing", "u2", "u3", "u4", "ü 5"])
    assert frame.schema == feature_schema(group)
    assert frame.num_rows == 5
    _expected_common(frame)
    rows = {r["entity_id"]: r for r in frame.to_pylist()}
    assert rows["u2"]["label"] == "with\r\nnewline $5 *3"
    assert rows["u4"]["_source_ts"] == T1  # ISO in the timestamp field is accepted too


def test_json_encoding_every_dtype(redis_url, redis_client):
    group = make_group("json")
    _load(redis_client, JSON_HASHES)
    source = RedisOnlineSource(redis_client, None, "fsmig_legacy_redis")  # a client works as well as a URL
    frame = source.read(group, ["u1", "missing", "u2", "u3", "u4", "ü 5"])
    assert frame.schema == feature_schema(group)
    _expected_common(frame)
    rows = {r["entity_id"]: r for r in frame.to_pylist()}
    assert rows["u2"]["label"] == 'with\r\nnewline "q" $5'


@pytest.mark.parametrize("encoding", ["string", "json"])
def test_write_then_read_round_trip(redis_url, encoding):
    group = make_group(encoding)
    n = 2_500
    frame = pa.table(
        {
            "entity_id": [f"e{i}" for i in range(n)],
            "n": [None if i % 7 == 0 else i * 3 - 1000 for i in range(n)],
            "x": [None if i % 5 == 0 else i / 3 for i in range(n)],
            "flag": [None if i % 11 == 0 else i % 2 == 0 for i in range(n)],
            "label": [None if i % 13 == 0 else f'v"{i}\\\n' if i % 3 == 0 else f"v{i}" for i in range(n)],
            "seen": [
                None if i % 17 == 0 else datetime(2026, 1, 1, tzinfo=UTC).replace(microsecond=i)
                for i in range(n)
            ],
            "_source_ts": [datetime(2026, 2, 1, 0, 0, i % 60, i, tzinfo=UTC) for i in range(n)],
        }
    )
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis", batch_size=1000)  # several batches
    assert source.write(group, frame) == n
    ids = [f"e{i}" for i in range(n)] + ["nope"]
    back = source.read(group, ids)
    assert back.num_rows == n
    assert back.equals(frame.cast(feature_schema(group)))


def test_entity_whose_fields_are_all_null_is_present(redis_url, redis_client):
    group = make_group("string", ts_field=None)
    redis_client.hset("fs:g:only_other", mapping={"unrelated": "1"})
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    frame = source.read(group, ["only_other", "absent"])
    assert frame.column("entity_id").to_pylist() == ["only_other"]
    assert frame.column("n").null_count == 1 and frame.column("_source_ts").null_count == 1


def test_listing_sharding_scan_and_freshness(redis_url, redis_client):
    group = make_group("string", template="fs:{{x}}:{entity}:v1")  # escaped braces in the template
    ids = [f"k{i}" for i in range(300)]
    pipe = redis_client.pipeline()
    for i, entity in enumerate(ids):
        pipe.hset(f"fs:{{x}}:{entity}:v1", mapping={"n": str(i), "_ts": str(1764000000 + i)})
    pipe.hset("fs:{x}:other:v2", mapping={"n": "1"})  # another version's key: not ours
    pipe.execute()
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    assert source.entity_ids(group) == sorted(ids)
    assert len(source.entity_ids(group, limit=10)) == 10
    shards = [source.entity_ids(group, shard=(i, 3)) for i in range(3)]
    assert sorted(x for s in shards for x in s) == sorted(ids)
    assert sum(len(s) for s in shards) == 300
    chunks = list(source.scan(group, chunk_size=64, shard=(1, 3)))
    assert all(c.num_rows == 64 for c in chunks[:-1]) and 0 < chunks[-1].num_rows <= 64
    scanned = [x for c in chunks for x in c.column("entity_id").to_pylist()]
    assert sorted(scanned) == sorted(shards[1])
    assert source.freshness(group) == datetime.fromtimestamp(1764000299, tz=UTC)
    assert isinstance(source, FeatureSource)


def test_no_history_in_the_online_store(redis_url):
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    with pytest.raises(HistoryUnavailable, match=r"keeps only the current value of group 'g'") as info:
        source.read_as_of(make_group("string"), ["u1"], T1)
    assert isinstance(info.value, NotImplementedError)


def test_bad_value_is_flagged_undecodable_not_fatal(redis_url, redis_client, caplog):
    """One undecodable value is a null plus a flag; the rest of the batch (and "42.0") still reads."""
    redis_client.hset("fs:g:u1", mapping={"n": "forty-two", "flag": "t"})
    redis_client.hset("fs:g:u2", mapping={"n": "42.0", "flag": "F"})
    redis_client.hset("fs:g:u3", mapping={"n": "9007199254740993", "flag": "maybe"})
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    with caplog.at_level("WARNING", logger="airflow_fsmigration.stores"):
        table = source.read(make_group("string"), ["u1", "u2", "u3"])
    rows = {r["entity_id"]: r for r in table.to_pylist()}
    assert [rows[e]["n"] for e in ("u1", "u2", "u3")] == [None, 42, 9007199254740993]
    assert [rows[e]["_undecodable.n"] for e in ("u1", "u2", "u3")] == [True, False, False]
    assert [rows[e]["flag"] for e in ("u1", "u2", "u3")] == [True, False, None]
    assert [rows[e]["_undecodable.flag"] for e in ("u1", "u2", "u3")] == [False, False, True]
    assert "_undecodable.label" not in table.column_names
    assert "group 'g', feature 'n': 1 value(s)" in caplog.text and "forty-two" in caplog.text


def test_wrong_key_type_is_a_clear_error(redis_url, redis_client):
    redis_client.set("fs:g:u1", "not a hash")
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    with pytest.raises(ValueError, match=r"refused HMGET.*WRONGTYPE"):
        source.read(make_group("string"), ["u1"])


def test_unreachable_redis_names_the_connection():
    source = RedisOnlineSource(f"redis://127.0.0.1:{free_port()}/0", None, "fsmig_legacy_redis")
    with pytest.raises(StoreUnavailable, match=r"connection 'fsmig_legacy_redis' \(Redis\) did not answer"):
        source.read(make_group("string"), ["u1"])
    with pytest.raises(StoreUnavailable, match=r"fsmig_legacy_redis"):
        source.entity_ids(make_group("string"))


def test_values_that_look_like_protocol_still_read_exactly(redis_url, redis_client):
    """A value containing a line break then a RESP header defeats the fast parser; hiredis takes over."""
    group = make_group("string", ts_field=None)
    tricky = "x\n$3\r\nabc\r\n*2"
    for i in range(50):
        redis_client.hset(f"fs:g:e{i}", mapping={"n": str(i), "label": tricky if i == 20 else f"v{i}"})
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis", batch_size=16)
    frame = source.read(group, [f"e{i}" for i in range(50)])
    assert frame.column("n").to_pylist() == list(range(50))
    assert frame.column("label").to_pylist() == [tricky if i == 20 else f"v{i}" for i in range(50)]


def test_duplicate_ids_give_one_row_each(redis_url, redis_client):
    redis_client.hset("fs:g:a", mapping={"n": "1"})
    redis_client.hset("fs:g:b", mapping={"n": "2"})
    source = RedisOnlineSource(redis_url, None, "fsmig_legacy_redis")
    frame = source.read(make_group("string", ts_field=None), ["b", "a", "b", "zz", "a"])
    assert frame.column("entity_id").to_pylist() == ["b", "a"]
    assert frame.column("n").to_pylist() == [2, 1]


def test_raw_connection_survives_back_to_back_pipelines(redis_url, redis_client, monkeypatch):
    # The existence checks reuse one raw connection for a pipeline per batch. A writer thread
    # that is still winding down after a complete pipeline must not get the socket shut down
    # under the next one (failure injection: the writer lingers after its last send).
    import time

    from redis.connection import parse_url

    from airflow_fsmigration.stores import redis_online

    run = redis_online._Writer.run

    def lingering(self):
        run(self)
        time.sleep(0.3)

    monkeypatch.setattr(redis_online._Writer, "run", lingering)
    redis_client.set("k1", "1")
    raw = redis_online._Raw(dict(parse_url(redis_url)), "legacy_online")
    try:
        for _ in range(3):
            replies = [
                r for batch in raw.pipeline(iter([(b"*2\r\n$6\r\nEXISTS\r\n$2\r\nk1\r\n", 1)])) for r in batch
            ]
            assert replies == [1]
    finally:
        raw.close()


def test_reader_giving_up_early_does_not_hang_on_the_writer(redis_url):
    # 25 MB of commands: the writer blocks in sendall once the socket buffers fill, because
    # nobody reads the replies after the first batch; closing the generator must unblock it.
    import time

    from redis.connection import parse_url

    from airflow_fsmigration.stores import redis_online

    cmd = b"*2\r\n$6\r\nEXISTS\r\n$2\r\nk1\r\n" * 20_000
    raw = redis_online._Raw(dict(parse_url(redis_url)), "legacy_online")
    try:
        replies = raw.pipeline(iter([(cmd, 20_000)] * 50))
        assert len(next(replies)) == 20_000
        started = time.monotonic()
        replies.close()
        assert time.monotonic() - started < 10
    finally:
        raw.close()
