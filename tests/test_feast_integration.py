"""Feast itself against our direct readers, on a real Feast repo (Redis online, Postgres offline).

Feast runs in its own virtualenv (``.venv-feast``, built here when missing: Feast pins pandas<3,
which Airflow 3.3 cannot share) through one subprocess that applies the repo, materializes it and
records what ``get_online_features`` and ``get_historical_features`` return. The readers run in
this process and must return exactly the same values, entity by entity.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_fsmigration import feast_draft as fdr
from airflow_fsmigration import feast_import as fi
from fsmig_dev import feast_demo as fd

pytestmark = pytest.mark.integration

DRIVERS, CUSTOMERS = 300, 40
MISSING_DRIVERS = ["900001", "900002", "900003", "-5", "0"]
MISSING_CUSTOMERS = ["nobody", "c9999"]
LIST_FEATURES = {
    "recent_trip_ids": "list_int64",
    "embedding": "list_float32",
    "scores": "list_float64",
    "zones": "list_string",
}
DRIVER_FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips", "rating", "is_active", "city", "last_trip_ts"]

# Runs in the Feast venv: apply + materialize, then record Feast's answers.
TRUTH_SCRIPT = r"""
import os
from datetime import datetime
from pathlib import Path
import pandas as pd
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total

repo = Path(PAYLOAD["repo"]).resolve()
os.chdir(repo)
apply_total(load_repo_config(repo, repo / "feature_store.yaml"), repo, skip_source_validation=True)
store = FeatureStore(repo_path=str(repo))
store.materialize(datetime.fromisoformat(PAYLOAD["start"]), datetime.fromisoformat(PAYLOAD["end"]))

def plain(v):
    if v is None:
        return None
    if hasattr(v, "isoformat"):
        ts = pd.Timestamp(v)
        if pd.isna(ts):
            return None
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ["ts", int(ts.value // 1000)]
    if isinstance(v, float) or type(v).__name__.startswith("float"):
        return None if v != v else float(v)
    if type(v).__name__.startswith("int"):
        return int(v)
    if type(v).__name__.startswith("bool"):
        return bool(v)
    return v

online = {}
for view, spec in PAYLOAD["online"].items():
    rows = [{spec["key"]: (int(e) if spec["int"] else e)} for e in spec["ids"]]
    refs = [f"{view}:{f}" for f in spec["features"]]
    resp = store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True)
    data = resp.to_dict()
    names = list(resp.proto.metadata.feature_names.val)
    out = {"values": {}, "ts_us": {}, "status": {}}
    for i, name in enumerate(names):
        if "__" not in name:
            continue
        feat = name.split("__", 1)[1]
        res = resp.proto.results[i]
        out["values"][feat] = [plain(v) for v in data[name]]
        out["ts_us"][feat] = [t.seconds * 1_000_000 + t.nanos // 1000 for t in res.event_timestamps]
        out["status"][feat] = [int(s) for s in res.statuses]
    online[view] = out

historical = {}
for view, spec in PAYLOAD["historical"].items():
    df = pd.DataFrame({
        spec["key"]: [int(e) if spec["int"] else e for e in spec["ids"]],
        "event_timestamp": pd.to_datetime(spec["times"], utc=True, format="ISO8601"),
        "row_id": list(range(len(spec["ids"]))),
    })
    refs = [f"{view}:{f}" for f in spec["features"]]
    res = store.get_historical_features(entity_df=df, features=refs).to_df()
    res = res.sort_values("row_id")
    historical[view] = {
        "row_id": [int(r) for r in res["row_id"]],
        "values": {f: [plain(v) for v in res[f].tolist()] for f in spec["features"]},
    }
RESULT = {"online": online, "historical": historical, "dump": DUMP}
"""


def _group(repo: fi.FeastRepo, view_name: str):
    from airflow_fsmigration.plan.model import FeatureGroup

    view = repo.views[view_name]
    return FeatureGroup.model_validate(
        {
            "name": fi.plan_name(view.name),
            "entity_key": view.join_keys[0].name,
            "entity_dtype": view.join_keys[0].dtype,
            "definition": "unused.sql",
            "features": [{"name": f.name, "dtype": f.dtype} for f in view.features],
            "legacy_online": {"key_template": "feast:{entity}"},
            "legacy_offline": {"table": "unused"},
            "sla": {"p99_ms": 10, "max_staleness": "1h"},
            "qps": {"peak": 10, "average": 1},
        },
        strict=False,
    )


def _spine(now: datetime) -> dict[str, dict]:
    """Spine rows: every TTL edge that matters (just inside, just outside, before any row)."""
    driver_ids, driver_times = [], []
    for d in [*range(1, 61), 77, 91, 143, 900001]:
        for at in (now, now - timedelta(hours=4), now - timedelta(days=1), now - timedelta(days=2, hours=23)):
            driver_ids.append(str(d))
            driver_times.append(at)
    # Exact edges: at a row's own event time (ts <= t keeps it; every 13th driver has a tie there,
    # which the later `created` wins), one microsecond before it, and exactly one TTL after it
    # (ts >= t - ttl keeps it) or a microsecond more.
    for d in [*range(1, 27), 39, 52]:
        newest = now - timedelta(minutes=10 + d % 50)
        for at in (
            newest,
            newest - timedelta(microseconds=1),
            newest + timedelta(days=1),
            newest + timedelta(days=1, microseconds=1),
        ):
            driver_ids.append(str(d))
            driver_times.append(at)
    customer_ids, customer_times = [], []
    for c in [*range(1, 13), 9999]:
        for at in (now, now - timedelta(days=5), now - timedelta(days=30)):
            customer_ids.append(f"c{c:04d}")
            customer_times.append(at)
    return {
        "driver_hourly_stats": {"ids": driver_ids, "times": driver_times},
        "customer_profile": {"ids": customer_ids, "times": customer_times},
    }


@pytest.fixture(scope="module")
def feast_world(postgres, redis_server, tmp_path_factory):
    """A materialized Feast repo on the test servers, and Feast's own answers about it."""
    python = fd.ensure_feast_venv()
    pg_url = postgres.create_database(f"feast_{datetime.now(UTC):%H%M%S%f}", drop=True)
    redis_url = redis_server.url
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    now = datetime.now(UTC).replace(microsecond=0)
    repo_path = fd.write_demo_repo(tmp_path_factory.mktemp("feast_repo"), pg_url, redis_url)
    counts = fd.load_demo_data(pg_url, drivers=DRIVERS, customers=CUSTOMERS, now=now)
    spine = _spine(now)
    payload = {
        "repo": str(repo_path),
        "start": (now - timedelta(days=30)).isoformat(),
        "end": now.isoformat(),
        "online": {
            "driver_hourly_stats": {
                "key": "driver_id",
                "int": True,
                "ids": [str(d) for d in range(1, DRIVERS + 1)] + MISSING_DRIVERS,
                "features": DRIVER_FEATURES,
            },
            "customer_profile": {
                "key": "customer_id",
                "int": False,
                "ids": [f"c{c:04d}" for c in range(1, CUSTOMERS + 1)] + MISSING_CUSTOMERS,
                "features": ["ltv", "segment"],
            },
            "driver_lists": {
                "key": "driver_id",
                "int": True,
                "ids": [str(d) for d in range(1, DRIVERS + 1)] + MISSING_DRIVERS,
                "features": list(LIST_FEATURES),
            },
        },
        "historical": {
            "driver_hourly_stats": {
                "key": "driver_id",
                "int": True,
                "features": DRIVER_FEATURES,
                "ids": spine["driver_hourly_stats"]["ids"],
                "times": [t.isoformat() for t in spine["driver_hourly_stats"]["times"]],
            },
            "customer_profile": {
                "key": "customer_id",
                "int": False,
                "features": ["ltv", "segment"],
                "ids": spine["customer_profile"]["ids"],
                "times": [t.isoformat() for t in spine["customer_profile"]["times"]],
            },
        },
    }
    # One Feast process for everything (each start costs seconds): parse the repo like `feast plan`,
    # then apply, materialize and ask Feast.
    script = fi.DUMP_SCRIPT + "\nDUMP = RESULT\n" + TRUTH_SCRIPT
    truth = fi.run_in_feast(script, payload, python=python, cwd=repo_path)
    repo = fi.FeastRepo.from_dict(truth["dump"])
    return {
        "repo_path": repo_path,
        "repo": repo,
        "pg_url": pg_url,
        "redis_url": redis_url,
        "now": now,
        "payload": payload,
        "truth": truth,
        "spine": spine,
        "counts": counts,
        "python": python,
    }


def _plain(value):
    if isinstance(value, datetime):
        return ["ts", int(value.timestamp()) * 1_000_000 + value.microsecond]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def test_repo_dump_matches_the_definitions(feast_world):
    repo = feast_world["repo"]
    assert repo.project == fd.DEMO_PROJECT
    driver = repo.views["driver_hourly_stats"]
    assert [(k.name, k.value_type) for k in driver.join_keys] == [("driver_id", "INT64")]
    assert [(f.name, f.value_type) for f in driver.features] == [
        ("conv_rate", "FLOAT"),
        ("acc_rate", "DOUBLE"),
        ("avg_daily_trips", "INT64"),
        ("rating", "INT32"),
        ("is_active", "BOOL"),
        ("city", "STRING"),
        ("last_trip_ts", "UNIX_TIMESTAMP"),
    ]
    assert driver.ttl_seconds == 86400
    assert (
        driver.source.table == "public.driver_stats" and driver.source.created_timestamp_column == "created"
    )
    customer = repo.views["customer_profile"]
    assert customer.ttl_seconds == 0 and customer.source.query.startswith("SELECT customer_id")
    assert sorted(s["name"] for s in repo.services) == ["driver_activity", "recommender"]
    lists = repo.views["driver_lists"]
    assert [(f.name, f.value_type) for f in lists.features] == [
        ("recent_trip_ids", "INT64_LIST"),
        ("embedding", "FLOAT_LIST"),
        ("scores", "DOUBLE_LIST"),
        ("zones", "STRING_LIST"),
    ]


@pytest.mark.parametrize("path", ["pooled", "pipelined"])
@pytest.mark.parametrize("view", ["driver_hourly_stats", "customer_profile"])
def test_direct_redis_reader_returns_exactly_what_feast_serves(feast_world, view, path):
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource

    repo, now = feast_world["repo"], feast_world["now"]
    spec = feast_world["payload"]["online"][view]
    truth = feast_world["truth"]["online"][view]
    # Small reads go over the pooled connection, large ones over the raw pipeline (batches of 64 here).
    source = FeastRedisOnlineSource(
        feast_world["redis_url"],
        repo,
        conn_id="feast_online",
        clock=lambda: now,
        small_read=2000 if path == "pooled" else 0,
        batch_size=64,
    )
    frame = source.read(_group(repo, view), spec["ids"])
    rows = {r["entity_id"]: r for r in frame.to_pylist()}
    absent = present = 0
    for i, entity in enumerate(spec["ids"]):
        # Feast marks every entity PRESENT, found or not (no TTL, no NOT_FOUND on Redis).
        assert {truth["status"][f][i] for f in spec["features"]} == {1}
        if entity not in rows:
            absent += 1
            assert all(truth["values"][f][i] is None for f in spec["features"]), entity
            assert {truth["ts_us"][f][i] for f in spec["features"]} == {0}, entity
            continue
        present += 1
        row = rows[entity]
        for f in spec["features"]:
            assert _plain(row[f]) == truth["values"][f][i], (entity, f)
            assert _plain(row["_source_ts"])[1] == truth["ts_us"][f][i], (entity, f)
    # Customer c<N>'s row is N days old: only the 30 inside the 30-day materialization window are online.
    expected_present = DRIVERS if view == "driver_hourly_stats" else 30
    assert (present, absent) == (expected_present, len(spec["ids"]) - expected_present)
    assert frame.num_rows == expected_present


def test_nulls_and_ties_come_through_as_feast_materialized_them(feast_world):
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource

    repo = feast_world["repo"]
    source = FeastRedisOnlineSource(feast_world["redis_url"], repo)
    frame = source.read(_group(repo, "driver_hourly_stats"), [str(d) for d in range(1, DRIVERS + 1)])
    assert frame.column("conv_rate").null_count == DRIVERS // 11
    assert frame.column("city").null_count == DRIVERS // 11
    assert frame.column("acc_rate").null_count == 0
    trips = frame.column("avg_daily_trips").to_pylist()
    assert trips.count(999) == DRIVERS // 13  # the later-created duplicate won, as in Feast


def test_values_past_ttl_are_reported_as_stale_in_the_legacy_store(feast_world):
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource

    repo, now = feast_world["repo"], feast_world["now"]
    source = FeastRedisOnlineSource(feast_world["redis_url"], repo, clock=lambda: now)
    group = _group(repo, "driver_hourly_stats")
    ids = [str(d) for d in range(1, DRIVERS + 1)] + MISSING_DRIVERS
    result = source.read_detailed(group, ids)
    expected = sorted(str(d) for d in range(7, DRIVERS + 1, 7))
    assert sorted(result.stale.column("entity_id").to_pylist()) == expected
    assert min(result.stale.column("age_s").to_pylist()) > 86400
    # Feast serves them as present values: the frame keeps them, the finding lists them.
    served = feast_world["truth"]["online"]["driver_hourly_stats"]["values"]["acc_rate"]
    assert all(served[int(e) - 1] is not None for e in expected)
    report = source.stale_report(group)  # scans every entity of the view
    assert (report.checked, report.present, report.stale_count) == (DRIVERS, DRIVERS, len(expected))
    assert report.stale_entity_ids == sorted(expected)[:20]
    assert "stale in the legacy store" in report.summary
    customers = source.stale_report(_group(repo, "customer_profile"))
    assert customers.stale_count == 0 and customers.ttl_seconds == 0  # no TTL: nothing is stale


def test_redis_listing_scan_and_freshness(feast_world):
    from airflow_fsmigration.stores.base import FeatureSource
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource

    repo, now = feast_world["repo"], feast_world["now"]
    source = FeastRedisOnlineSource(feast_world["redis_url"], repo)
    assert isinstance(source, FeatureSource)
    group = _group(repo, "driver_hourly_stats")
    ids = source.entity_ids(group)
    assert ids == sorted(str(d) for d in range(1, DRIVERS + 1))
    assert source.entity_ids(_group(repo, "customer_profile")) == [f"c{c:04d}" for c in range(1, 31)]
    shard = source.entity_ids(group, shard=(0, 3))
    assert 0 < len(shard) < DRIVERS and set(shard) <= set(ids)
    frames = list(source.scan(group, chunk_size=128))
    assert [f.num_rows for f in frames] == [128, 128, DRIVERS - 256]
    newest = source.freshness(group)
    assert now - timedelta(minutes=60) < newest <= now


@pytest.mark.parametrize("view", ["driver_hourly_stats", "customer_profile"])
def test_offline_as_of_reads_match_get_historical_features(feast_world, view):
    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource

    repo = feast_world["repo"]
    spine = feast_world["spine"][view]
    truth = feast_world["truth"]["historical"][view]
    features = feast_world["payload"]["historical"][view]["features"]
    assert truth["row_id"] == list(range(len(spine["ids"])))  # one Feast row per spine row
    with FeastPostgresOfflineSource(feast_world["pg_url"], repo, conn_id="feast_offline") as source:
        source.spine_chunk = 97  # several set-based chunks, each its own temporary-table load
        ours = source.read_spine(_group(repo, view), spine["ids"], spine["times"])
        # The former per-row reader: the same rows, value for value.
        assert source.read_spine_per_row(_group(repo, view), spine["ids"], spine["times"]).equals(ours)
    rows = {r["_row"]: r for r in ours.to_pylist()}
    matched = 0
    for i in range(len(spine["ids"])):
        if i not in rows:
            assert all(truth["values"][f][i] is None for f in features), (i, spine["ids"][i])
            continue
        matched += 1
        assert rows[i]["entity_id"] == spine["ids"][i]
        for f in features:
            assert _plain(rows[i][f]) == truth["values"][f][i], (i, spine["ids"][i], f)
    # The spine holds rows outside the TTL and before any data: some, but not all, match.
    assert 0 < matched < len(spine["ids"])
    found_by_feast = sum(
        any(truth["values"][f][i] is not None for f in features) for i in range(len(spine["ids"]))
    )
    assert matched == found_by_feast


def test_offline_read_as_of_one_time_honours_the_ttl(feast_world):
    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource

    repo, now = feast_world["repo"], feast_world["now"]
    group = _group(repo, "driver_hourly_stats")
    with FeastPostgresOfflineSource(feast_world["pg_url"], repo, clock=lambda: now) as source:
        current = source.read(group, [str(d) for d in range(1, DRIVERS + 1)] + MISSING_DRIVERS)
        # Every 7th driver's newest row is 3 days old: past the 1-day TTL, so absent, unlike online.
        assert current.num_rows == DRIVERS - DRIVERS // 7
        assert not {str(d) for d in range(7, DRIVERS + 1, 7)} & set(current.column("entity_id").to_pylist())
        earlier = source.read_as_of(group, ["7", "14"], now - timedelta(days=2, hours=23))
        assert earlier.column("entity_id").to_pylist() == ["7", "14"]
        assert source.entity_ids(group) == sorted(str(d) for d in range(1, DRIVERS + 1))
        assert sum(f.num_rows for f in source.scan(group, as_of=now)) == current.num_rows
        assert source.freshness(group) == now + timedelta(days=1)  # the future rows of every 17th driver


def test_import_feast_drafts_a_plan_that_validates_once_filled(feast_world, tmp_path, capsys):
    from airflow_fsmigration.cli import main
    from airflow_fsmigration.plan import PlanError, load_plan

    out = tmp_path / "plan.yaml"
    code = main(
        [
            "import-feast",
            str(feast_world["repo_path"]),
            "--out",
            str(out),
            "--feast-python",
            feast_world["python"],
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed, printed_err = captured.out, captured.err
    assert "2 groups from Feast project 'fsmig_demo'" in printed and "layout: feast" in printed
    with pytest.raises(PlanError) as exc:
        load_plan(out)
    todo_issues = [i for i in exc.value.issues if "TODO(fsmigrate)" in i.message]
    assert len(todo_issues) == 8  # sla.p99_ms, sla.max_staleness, qps.peak, qps.average for 2 groups
    _fill_draft(out)
    plan = load_plan(out)
    assert sorted(plan.groups) == ["customer_profile", "driver_hourly_stats"]
    driver = plan.groups["driver_hourly_stats"]
    assert driver.entity_key == "driver_id" and driver.entity_dtype == "int64"
    assert [(f.name, str(f.dtype)) for f in driver.features] == [
        ("conv_rate", "float64"),
        ("acc_rate", "float64"),
        ("avg_daily_trips", "int64"),
        ("rating", "int64"),
        ("is_active", "bool"),
        ("city", "string"),
        ("last_trip_ts", "timestamp"),
    ]
    assert driver.models == ("driver_activity", "recommender") and "driver_activity" in plan.models
    # The recommender service reads the list view, which the plan cannot hold yet: said loudly.
    assert "INCOMPLETE: 4 of 5 features not migrated" in out.read_text()
    assert "WARNING: model 'recommender'" in printed_err and "driver_lists:embedding" in printed_err
    assert plan.groups["customer_profile"].entity_dtype == "string"
    assert driver.legacy_online.layout == "feast" and driver.ttl == timedelta(days=1)
    assert driver.feature("last_trip_ts").atol == 1  # Feast's online store keeps whole seconds
    assert main(["import-feast", str(feast_world["repo_path"]), "--out", str(out)]) == 2  # no overwrite

    # The completed plan reads Feast's stores by group name, through the plan's Feast definitions.
    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource, offline_source_for
    from airflow_fsmigration.stores.feast_online import FeastRedisOnlineSource, online_source_for

    online = online_source_for(plan, feast_world["redis_url"])
    assert isinstance(online, FeastRedisOnlineSource) and online.conn_id == "feast_online"
    frame = online.read("driver_hourly_stats", ["1", "2", "900001"])
    assert frame.column("entity_id").to_pylist() == ["1", "2"]
    with offline_source_for(plan, feast_world["pg_url"]) as offline:
        assert isinstance(offline, FeastPostgresOfflineSource) and offline.conn_id == "feast_offline"
        assert offline.read_as_of("customer_profile", ["c0001"], feast_world["now"]).num_rows == 1


def _fill_draft(plan_path: Path) -> None:
    """What a person does: SLA and QPS from serving metrics, SQL from the suggestion."""
    text = plan_path.read_text()
    for placeholder, value in (
        ("serving p99 latency in ms", "10"),
        ("e.g. 5m or 1h", "1h"),
        ("peak reads per second", "200"),
        ("average reads per second", "50"),
    ):
        text = text.replace(f'"TODO(fsmigrate): fill in: {placeholder}"', value)
    assert "TODO(fsmigrate): fill in" not in text
    plan_path.write_text(text)
    for sql_file in (plan_path.parent / "sql").glob("*.sql"):
        lines = sql_file.read_text().splitlines()
        start = lines.index(fdr.SUGGESTION_MARKER) + 1
        sql_file.write_text("\n".join(line.removeprefix("-- ") for line in lines[start:]) + "\n")


def _drafted_plan_alone(feast_world, tmp_path: Path) -> Path:
    """A drafted, filled plan copied to a folder of its own: plan.yaml and sql/, nothing else."""
    import shutil

    draft_dir = tmp_path / "draft"
    draft_dir.mkdir()
    fdr.draft_plan(feast_world["repo"], draft_dir / "plan.yaml")
    _fill_draft(draft_dir / "plan.yaml")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(draft_dir / "plan.yaml", alone / "plan.yaml")
    shutil.copytree(draft_dir / "sql", alone / "sql")
    return alone / "plan.yaml"


def test_a_drafted_plan_copied_alone_still_reads_feast(feast_world, tmp_path):
    """Issue 15: a plan copied without its side file read 0 of N rows with no error."""
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.feast_offline import offline_source_for
    from airflow_fsmigration.stores.feast_online import online_source_for

    plan = load_plan(_drafted_plan_alone(feast_world, tmp_path))
    ids = [str(d) for d in range(1, DRIVERS + 1)] + MISSING_DRIVERS
    online = online_source_for(plan, feast_world["redis_url"])
    assert online.read("driver_hourly_stats", ids).num_rows == DRIVERS
    customers = [f"c{c:04d}" for c in range(1, CUSTOMERS + 1)]
    assert online.read("customer_profile", customers).num_rows == 30
    with offline_source_for(plan, feast_world["pg_url"]) as offline:
        assert offline.read_as_of("customer_profile", ["c0001"], feast_world["now"]).num_rows == 1
        now = feast_world["now"]
        current = offline.read_as_of("driver_hourly_stats", ids, now)
        assert current.num_rows == DRIVERS - DRIVERS // 7  # the plan's ttl: 1d applies


def test_a_read_that_finds_none_of_the_keys_is_inconclusive_not_empty(feast_world, tmp_path):
    from airflow_fsmigration.connections import StoreUnavailable
    from airflow_fsmigration.plan import load_plan
    from airflow_fsmigration.stores.feast_online import online_source_for

    path = _drafted_plan_alone(feast_world, tmp_path)
    good = online_source_for(load_plan(path), feast_world["redis_url"])
    assert good.read("driver_hourly_stats", MISSING_DRIVERS).num_rows == 0  # absent entities: an answer
    text = path.read_text()
    path.write_text(text.replace('project: "fsmig_demo"', 'project: "fsmig_prod"'))
    wrong = online_source_for(load_plan(path), feast_world["redis_url"])
    with pytest.raises(StoreUnavailable) as exc:
        wrong.read("driver_hourly_stats", [str(d) for d in range(1, 501)])
    message = str(exc.value)
    assert "none of the 500 entities" in message and "'fsmig_prod'" in message
    assert "project(s) 'fsmig_demo'" in message  # where the keys are
    path.write_text(text.replace('view: "customer_profile"', 'view: "customer_profiles"'))
    with pytest.raises(StoreUnavailable, match="is the view name right"):
        online_source_for(load_plan(path), feast_world["redis_url"]).read("customer_profile", ["c0001"])


def test_point_in_time_reader_names_the_index_it_wants(feast_world, caplog):
    import psycopg

    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource

    repo = feast_world["repo"]
    group = _group(repo, "driver_hourly_stats")
    want = 'CREATE INDEX ON "public"."driver_stats" ("driver_id", "event_timestamp")'
    with FeastPostgresOfflineSource(feast_world["pg_url"], repo) as source:
        assert source.index_advice(group) == want
        assert want in caplog.text
        assert source.index_advice(_group(repo, "customer_profile")) is None  # a query source: no advice
    with psycopg.connect(feast_world["pg_url"], autocommit=True) as conn:
        conn.execute(want.replace("CREATE INDEX ON", "CREATE INDEX fsmig_test_pit ON"))
    try:
        with FeastPostgresOfflineSource(feast_world["pg_url"], repo) as source:
            assert source.index_advice(group) is None
            spine = feast_world["spine"]["driver_hourly_stats"]
            with_index = source.read_spine(group, spine["ids"], spine["times"])
            assert with_index.equals(source.read_spine_per_row(group, spine["ids"], spine["times"]))
    finally:
        with psycopg.connect(feast_world["pg_url"], autocommit=True) as conn:
            conn.execute("DROP INDEX public.fsmig_test_pit")


def test_feast_list_values_decode_exactly_as_feast_serves_them(feast_world):
    """Array(Int64/Float32/Float64/String) features, read from Redis and decoded without Feast."""
    import redis

    from airflow_fsmigration.stores.feast_codec import decode_list_values, mmh3_field, redis_keys

    repo = feast_world["repo"]
    view = repo.views["driver_lists"]
    spec = feast_world["payload"]["online"]["driver_lists"]
    truth = feast_world["truth"]["online"]["driver_lists"]
    client = redis.Redis.from_url(feast_world["redis_url"])
    keys = redis_keys(view, repo.project, spec["ids"])
    fields = [mmh3_field(view.name, f) for f in LIST_FEATURES]
    with client.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.hmget(k, fields)
        replies = pipe.execute()
    seen = {"empty": 0, "null": 0, "values": 0}
    for j, (feature, dtype) in enumerate(LIST_FEATURES.items()):
        column = decode_list_values([r[j] for r in replies], dtype, what=feature).to_pylist()
        for i, entity in enumerate(spec["ids"]):
            expected = truth["values"][feature][i]
            assert column[i] == expected, (entity, feature, column[i], expected)
            if j == 0 and int(entity) <= fd.LIST_DRIVERS:
                seen["empty" if expected == [] else "null" if expected is None else "values"] += 1
    # Empty lists and NULL lists both occur and stay distinct (Feast serves [] and None).
    assert seen["empty"] and seen["null"] and seen["values"]


def test_an_offline_read_of_entities_the_source_never_held_is_inconclusive(feast_world):
    from airflow_fsmigration.connections import StoreUnavailable
    from airflow_fsmigration.stores.feast_offline import FeastPostgresOfflineSource

    repo, now = feast_world["repo"], feast_world["now"]
    group = _group(repo, "driver_hourly_stats")
    with FeastPostgresOfflineSource(feast_world["pg_url"], repo, conn_id="feast_offline") as source:
        # Driver 7's newest row is past the 1-day TTL: no row now, and that is an answer.
        assert source.read_as_of(group, ["7", "14"], now).num_rows == 0
        with pytest.raises(
            StoreUnavailable, match=r"none of the 3 spine rows found a row in public\.driver_stats"
        ):
            source.read_as_of(group, ["900001", "900002", "900003"], now)
