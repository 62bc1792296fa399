"""Feast's wire formats decoded without Feast, and the plan draft, checked without a Feast install.

The reference encoder is protobuf itself, with a vendored copy of the scalar part of
``feast/types/Value.proto`` (same field numbers), so the bulk decoder is checked against the
library that Feast uses to write the values.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from airflow_fsmigration import feast_draft as fdr
from airflow_fsmigration import feast_import as fi
from airflow_fsmigration.stores import feast_codec as fc
from airflow_fsmigration.stores import feast_online as fo

pytestmark = pytest.mark.unit


def _value_class():
    """``feast.types.Value`` (scalar fields, a list field and null_val) built from a descriptor."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FileDescriptorProto(
        name="fsmig_test_value.proto", package="fsmigtest", syntax="proto3"
    )
    null = f.enum_type.add(name="Null")
    null.value.add(name="NULL", number=0)
    lst = f.message_type.add(name="Int64List")
    lst.field.add(name="val", number=1, type=3, label=3)
    msg = f.message_type.add(name="Value")
    msg.oneof_decl.add(name="val")
    T = descriptor_pb2.FieldDescriptorProto
    for name, number, typ, type_name in [
        ("bytes_val", 1, T.TYPE_BYTES, None),
        ("string_val", 2, T.TYPE_STRING, None),
        ("int32_val", 3, T.TYPE_INT32, None),
        ("int64_val", 4, T.TYPE_INT64, None),
        ("double_val", 5, T.TYPE_DOUBLE, None),
        ("float_val", 6, T.TYPE_FLOAT, None),
        ("bool_val", 7, T.TYPE_BOOL, None),
        ("unix_timestamp_val", 8, T.TYPE_INT64, None),
        ("int64_list_val", 14, T.TYPE_MESSAGE, ".fsmigtest.Int64List"),
        ("null_val", 19, T.TYPE_ENUM, ".fsmigtest.Null"),
        ("json_val", 32, T.TYPE_STRING, None),
        ("uuid_val", 36, T.TYPE_STRING, None),
    ]:
        field = msg.field.add(name=name, number=number, type=typ, label=1, oneof_index=0)
        if type_name:
            field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fsmigtest.Value"))


Value = _value_class()


def enc(**kwargs) -> bytes:
    return Value(**kwargs).SerializeToString()


@pytest.fixture(params=["bulk", "loop"])
def decoder_path(request, monkeypatch):
    """Every decoding test runs through both paths: numpy over the column, and the small-batch loop."""
    monkeypatch.setattr(fc, "SMALL_DECODE", -1 if request.param == "bulk" else 10**9)
    return request.param


def test_integers_including_negative_int32_and_extremes(decoder_path):
    ints = [0, 1, -1, 127, 128, 300, -300, 2**31 - 1, -(2**31), 2**62, 2**63 - 1, -(2**63)]
    raw = [enc(int64_val=v) for v in ints] + [enc(int32_val=v) for v in (5, -5, -(2**31))]
    out = fc.decode_values(raw, "int64")
    assert out.to_pylist() == [*ints, 5, -5, -(2**31)]


def test_floats_doubles_and_ints_into_float64(decoder_path):
    raw = [
        enc(double_val=0.1),
        enc(float_val=0.1),
        enc(double_val=-1e300),
        enc(int64_val=-7),
        enc(double_val=math.inf),
    ]
    out = fc.decode_values(raw, "float64").to_pylist()
    assert out[0] == 0.1
    assert out[1] == struct.unpack("<f", struct.pack("<f", 0.1))[0]  # float32, exactly as Feast returns it
    assert out[2:] == [-1e300, -7.0, math.inf]
    assert math.isnan(fc.decode_values([enc(double_val=math.nan)], "float64")[0].as_py())


def test_nulls_absent_fields_and_null_val_are_arrow_nulls(decoder_path):
    raw = [None, b"", enc(null_val=0), enc(int64_val=3)]
    assert fc.decode_values(raw, "int64").to_pylist() == [None, None, None, 3]
    assert fc.decode_values([None, b"", enc(string_val="x")], "string").to_pylist() == [None, None, "x"]


def test_strings_short_long_unicode_and_json(decoder_path):
    long = "ü" * 300  # a two-byte length varint
    raw = [enc(string_val=""), enc(string_val="Lisbon"), enc(string_val=long), enc(json_val='{"a": 1}')]
    raw.append(enc(uuid_val="0b1c"))
    assert fc.decode_values(raw, "string").to_pylist() == ["", "Lisbon", long, '{"a": 1}', "0b1c"]


def test_bools_and_unix_timestamps(decoder_path):
    assert fc.decode_values([enc(bool_val=True), enc(bool_val=False), None], "bool").to_pylist() == [
        True,
        False,
        None,
    ]
    when = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
    raw = [enc(unix_timestamp_val=int(when.timestamp())), enc(unix_timestamp_val=fc.NULL_TIMESTAMP_INT)]
    assert fc.decode_values(raw, "timestamp").to_pylist() == [when, None]


def test_wrong_or_unsupported_types_raise_naming_the_feature(decoder_path):
    with pytest.raises(ValueError, match=r"feature 'x'.*int64_list_val|field 14"):
        fc.decode_values([enc(int64_list_val={"val": [1, 2]})], "int64", what="feature 'x'")
    with pytest.raises(ValueError, match="string_val, which a int64 column cannot hold"):
        fc.decode_values([enc(int64_val=1), enc(string_val="a")], "int64")
    with pytest.raises(ValueError, match="not a single scalar"):
        fc.decode_values([enc(int64_val=1) + b"\x00"], "int64")


def test_event_timestamps_from_protobuf_timestamp(decoder_path):
    from google.protobuf.timestamp_pb2 import Timestamp

    times = [datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)]
    raw = []
    for t in times:
        ts = Timestamp()
        ts.FromDatetime(t)
        raw.append(ts.SerializeToString())
    raw += [Timestamp().SerializeToString(), None]
    out, found = fc.decode_timestamps(raw)
    assert out.to_pylist() == [*times, datetime(1970, 1, 1, tzinfo=UTC), None]
    assert found.tolist() == [True, True, True, False]


def _view(key_type: str) -> fi.FeastView:
    key = "driver_id" if key_type != "STRING" else "customer_id"
    return fi.FeastView(
        name="v", join_keys=(fi.FeastField(key, key_type),), features=(fi.FeastField("f", "INT64"),)
    )


def test_entity_keys_follow_feasts_v3_serialization():
    # serialize_entity_key(EntityKey(join_keys=["driver_id"], entity_values=[Value(int64_val=1001)]), 3) + project
    expected = (
        struct.pack("<I", 1)
        + struct.pack("<II", 2, 9)
        + b"driver_id"
        + struct.pack("<II", 4, 8)
        + struct.pack("<q", 1001)
        + b"proj"
    )
    assert fc.redis_keys(_view("INT64"), "proj", ["1001"]) == [expected]
    assert fc.parse_redis_key(_view("INT64"), "proj", expected) == "1001"
    assert fc.parse_redis_key(_view("INT64"), "other", expected) is None
    s_expected = (
        struct.pack("<IIII", 1, 2, 11, 0)[:12]
        + b"customer_id"
        + struct.pack("<II", 2, 3)
        + "cü".encode()
        + b"p"
    )
    assert fc.redis_keys(_view("STRING"), "p", ["cü"]) == [s_expected]


@pytest.mark.parametrize(
    ("key_type", "ids"),
    [("INT64", ["1", "-5", "0", str(2**63 - 1)]), ("INT32", ["7", "-7"]), ("STRING", ["a", "", "ü" * 40])],
)
def test_vectorised_keys_equal_the_reference(key_type, ids):
    view = _view(key_type)
    assert fc.redis_key_array(view, "proj", pa.array(ids)).to_pylist() == fc.redis_keys(view, "proj", ids)
    for key, entity in zip(fc.redis_keys(view, "proj", ids), ids, strict=True):
        assert fc.parse_redis_key(view, "proj", key) == entity


def test_feature_fields_are_feasts_murmur3():
    import mmh3

    field = fc.mmh3_field("driver_hourly_stats", "conv_rate")
    assert len(field) == 4
    assert struct.unpack("<I", field)[0] == mmh3.hash("driver_hourly_stats:conv_rate", signed=False)


def test_stale_boundary_is_feasts_ttl_rule():
    now = datetime(2026, 11, 25, tzinfo=UTC)
    ts = [now - timedelta(days=1), now - timedelta(days=1, microseconds=1), now, None]
    frame = pa.table(
        {
            "entity_id": ["edge", "past", "fresh", "nots"],
            "_source_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        }
    )
    assert fo.stale_rows(frame, 86400, now).column("entity_id").to_pylist() == ["past"]
    assert fo.stale_rows(frame, 0, now).num_rows == 0


REPO_DUMP = {
    "repo": "/repos/rides",
    "project": "Rides-Prod",
    "entity_key_serialization_version": 3,
    "online_store": {"type": "redis", "connection_string": "redis:6379"},
    "offline_store": {"type": "postgres", "host": "pg", "database": "feast"},
    "entities": [{"name": "driver", "join_key": "driver_id", "value_type": "INT64"}],
    "feature_views": [
        {
            "name": "driver_stats",
            "entities": ["driver"],
            "join_keys": [{"name": "driver_id", "value_type": "INT64"}],
            "features": [
                {"name": "conv_rate", "value_type": "FLOAT"},
                {"name": "trips", "value_type": "INT64"},
                {"name": "recent_ids", "value_type": "INT64_LIST"},
            ],
            "ttl_seconds": 7200,
            "source": {
                "name": "src",
                "kind": "PostgreSQLSource",
                "timestamp_field": "ts",
                "created_timestamp_column": None,
                "field_mapping": {"trips_total": "trips"},
                "table": "raw.driver_stats",
                "query": None,
            },
        },
        {
            "name": "pair_stats",
            "entities": ["driver", "rider"],
            "join_keys": [
                {"name": "driver_id", "value_type": "INT64"},
                {"name": "rider_id", "value_type": "INT64"},
            ],
            "features": [{"name": "n", "value_type": "INT64"}],
            "ttl_seconds": 0,
            "source": None,
        },
    ],
    "feature_services": [
        {
            "name": "ETA Model",
            "views": [{"name": "driver_stats", "view": "driver_stats", "features": ["trips"]}],
        }
    ],
    "skipped": {"on_demand_feature_views": ["odfv_x"], "stream_feature_views": []},
}


def test_draft_fails_validation_on_each_marker_then_validates_when_filled(tmp_path):
    from airflow_fsmigration.plan import PlanError, load_plan

    repo = fi.FeastRepo.from_dict(REPO_DUMP)
    draft = fdr.draft_plan(repo, tmp_path / "plan.yaml")
    assert [p.name for p in draft.sql_paths] == ["driver_stats.sql"]
    assert draft.todos == [
        "sql/driver_stats.sql: write the SELECT for group 'driver_stats'",
        "groups.driver_stats.sla",
        "groups.driver_stats.qps",
    ]
    assert any("pair_stats" in s and "2 join keys" in s for s in draft.skipped)
    assert any("recent_ids" in s and "INT64_LIST" in s for s in draft.skipped)
    assert any("odfv_x" in s for s in draft.skipped)
    with pytest.raises(PlanError) as exc:
        load_plan(tmp_path / "plan.yaml")
    messages = [i.message for i in exc.value.issues]
    assert len(messages) == 4 and all("TODO(fsmigrate): fill in" in m for m in messages)
    text = (tmp_path / "plan.yaml").read_text()
    for placeholder, value in (
        ("serving p99 latency in ms", "10"),
        ("e.g. 5m or 1h", "2h"),
        ("peak reads per second", "500"),
        ("average reads per second", "100"),
    ):
        text = text.replace(f'"TODO(fsmigrate): fill in: {placeholder}"', value)
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(PlanError, match=r"driver_stats\.sql is still a draft stub"):
        load_plan(tmp_path / "plan.yaml")
    sql = (tmp_path / "sql" / "driver_stats.sql").read_text().splitlines()
    suggestion = sql[sql.index(fdr.SUGGESTION_MARKER) + 1 :]
    assert "--   trips_total AS trips," in suggestion  # field_mapping: the source column behind the feature
    assert "--   AND ts >= :as_of - interval '7200 seconds'  -- Feast TTL 2h" in suggestion
    (tmp_path / "sql" / "driver_stats.sql").write_text("\n".join(s.removeprefix("-- ") for s in suggestion))
    plan = load_plan(tmp_path / "plan.yaml")
    assert plan.name == "rides_prod"
    group = plan.groups["driver_stats"]
    assert [(f.name, str(f.dtype), f.rtol) for f in group.features] == [
        ("conv_rate", "float64", 1e-7),
        ("trips", "int64", 0.0),
    ]
    assert group.models == ("eta_model",) and group.sla.max_staleness == timedelta(hours=2)
    # The plan itself says where Feast keeps the data: no side file is written or needed.
    assert not list(tmp_path.glob("*.feast.json"))
    assert group.legacy_online.layout == "feast" and group.legacy_online.project == "Rides-Prod"
    assert group.legacy_online.view == "driver_stats"
    assert group.legacy_online.entity_key_serialization_version == 3
    assert group.ttl == timedelta(hours=2)
    assert group.legacy_offline.layout == "feast"
    assert group.legacy_offline.columns == {"trips": "trips_total"}
    built = fi.find_feast_repo(plan)
    assert (
        built is not None
        and built.project == "Rides-Prod"
        and built.default_mapping() == {"driver_stats": "driver_stats"}
    )
    view = built.views["driver_stats"]
    original = repo.views["driver_stats"]
    assert view.ttl_seconds == 7200 and view.join_keys == original.join_keys
    assert fi.feast_feature_names(view, group) == ["conv_rate", "trips"]
    assert view.source.column_for("trips") == "trips_total" and view.source.table == "raw.driver_stats"
    # The same layout, byte for byte, as the definitions dumped from Feast.
    ids = pa.array(["1", "-7", str(2**40)])
    assert fc.redis_key_array(view, built.project, ids) == fc.redis_key_array(original, repo.project, ids)


def test_a_service_spanning_a_skipped_view_or_feature_is_flagged_loudly(tmp_path, caplog):
    dump = {
        **REPO_DUMP,
        "feature_services": [
            {
                "name": "Pricing",
                "owner": "pricing@example.com",
                "tags": {"team": "pricing"},
                "views": [
                    {"name": "driver_stats", "view": "driver_stats", "features": ["trips", "recent_ids"]},
                    {"name": "pair_stats", "view": "pair_stats", "features": ["n"]},
                ],
            },
            {
                "name": "ETA Model",
                "views": [{"name": "driver_stats", "view": "driver_stats", "features": ["conv_rate"]}],
            },
        ],
    }
    draft = fdr.draft_plan(fi.FeastRepo.from_dict(dump), tmp_path / "plan.yaml")
    text = (tmp_path / "plan.yaml").read_text()
    assert len(draft.incomplete_models) == 1
    (item,) = draft.incomplete_models
    assert "pricing" in item and "pair_stats:n" in item and "driver_stats:recent_ids" in item
    assert "INCOMPLETE: 2 of 3 features not migrated" in text
    assert "# WARNING(fsmigrate): NOT MIGRATED, the model loses pair_stats:n (2 join keys" in text
    assert "# reads (1): driver_stats.trips" in text and "# reads (1): driver_stats.conv_rate" in text
    assert 'owner: "pricing@example.com"' in text and '# Feast tags: {"team": "pricing"}' in text
    assert "import-feast: model 'pricing'" in caplog.text


def test_feast_layout_fields_are_checked_by_the_plan():
    from pydantic import ValidationError

    from airflow_fsmigration.plan.model import LegacyOffline, LegacyOnline

    lo = LegacyOnline.model_validate({"layout": "feast", "project": "p", "view": "v"})
    assert lo.key_template == "feast:p:v:{entity}"  # descriptive only; the Feast reader builds keys
    with pytest.raises(ValidationError, match="needs the Feast project"):
        LegacyOnline.model_validate({"layout": "feast"})
    with pytest.raises(ValidationError, match="implement v3"):
        LegacyOnline.model_validate(
            {"layout": "feast", "project": "p", "entity_key_serialization_version": 2}
        )
    with pytest.raises(ValidationError, match="only for a Feast store"):
        LegacyOnline.model_validate({"key_template": "k:{entity}", "project": "p"})
    with pytest.raises(ValidationError, match="needs its query"):
        LegacyOffline.model_validate({"layout": "feast", "table": "feast_query:src"})


def test_a_side_file_still_works_with_a_deprecation_notice(demo_plan, tmp_path, caplog):
    import json
    import shutil

    from airflow_fsmigration.plan import load_plan

    plan_dir = tmp_path / "plan"
    shutil.copytree(demo_plan.source_dir, plan_dir)
    (plan_dir / "old.feast.json").write_text(json.dumps(REPO_DUMP))
    repo = fi.find_feast_repo(load_plan(plan_dir))
    assert repo is not None and repo.project == "Rides-Prod"
    assert "deprecated" in caplog.text and "layout: feast" in caplog.text


def test_versioned_online_views_and_old_key_encodings_are_refused_clearly():
    with pytest.raises(ValueError, match="versioning"):
        fi.FeastRepo.from_dict({**REPO_DUMP, "online_versioning": True})
    with pytest.raises(ValueError, match="serialization v2"):
        fi.FeastRepo.from_dict({**REPO_DUMP, "entity_key_serialization_version": 2})


def test_missing_feast_interpreter_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv(fi.FEAST_PYTHON_ENV, str(tmp_path / "nope" / "python"))
    monkeypatch.setattr(fi, "PROJECT_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(fi.FeastUnavailable, match="make feast-venv"):
        fi.feast_python()


def test_unreachable_stores_name_the_connection():
    from airflow_fsmigration.connections import StoreUnavailable
    from airflow_fsmigration.plan.model import FeatureGroup
    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource
    from fsmig_dev.devservices import free_port

    repo = fi.FeastRepo.from_dict(REPO_DUMP)
    group = FeatureGroup.model_validate(
        {
            "name": "driver_stats",
            "entity_key": "driver_id",
            "entity_dtype": "int64",
            "definition": "unused.sql",
            "features": [{"name": "trips", "dtype": "int64"}],
            "legacy_online": {"key_template": "feast:{entity}"},
            "legacy_offline": {"table": "unused"},
            "sla": {"p99_ms": 10, "max_staleness": "1h"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )
    port = free_port()
    online = FeastRedisOnlineSource(f"redis://127.0.0.1:{port}/0", repo, conn_id="feast_online")
    with pytest.raises(StoreUnavailable, match="connection 'feast_online'"):
        online.read(group, ["1", "2"])
    offline = FeastPostgresOfflineSource(
        f"postgresql://postgres@127.0.0.1:{port}/feast", repo, conn_id="feast_offline"
    )
    with pytest.raises(StoreUnavailable, match="connection 'feast_offline'"):
        offline.read(group, ["1"])


def test_plans_without_feast_definitions_keep_the_generic_readers(demo_plan):
    from airflow_fsmigration.stores.feast_offline import offline_source_for
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource, online_source_for
    from airflow_fsmigration.stores.postgres_offline import PostgresOfflineSource
    from airflow_fsmigration.stores.redis_online import RedisOnlineSource

    online = online_source_for(demo_plan, "redis://127.0.0.1:1/0")
    assert type(online) is RedisOnlineSource and not isinstance(online, FeastRedisOnlineSource)
    assert type(offline_source_for(demo_plan, "postgresql://x@127.0.0.1:1/db")) is PostgresOfflineSource
