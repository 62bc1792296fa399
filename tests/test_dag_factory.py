"""The DAG factory and the DAG file: shapes, docs, params, parse-time behaviour (no DB, no servers)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_fsmigration.dag_factory import (
    FactoryOptions,
    build_dags,
    cutover_uri,
    dag_id,
    dag_ids,
)

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "include" / "demo_plan"
DAG_FILE = REPO / "dags" / "fsmigration_dags.py"
HEAVY = ("pandas", "great_expectations", "polars", "matplotlib", "sqlglot")


@pytest.fixture(scope="module")
def dags(demo_plan):
    return build_dags(demo_plan, str(DEMO))


def _order(dag):
    return [t.task_id for t in dag.topological_sort()]


@pytest.mark.unit
def test_one_migrate_rollback_backfill_dag_per_group_and_one_nightly(dags, demo_plan):
    assert len(dags) == 3 * len(demo_plan.groups) + 1 == 25
    assert set(dags) == set(dag_ids(demo_plan))
    nightly = dags[dag_id("nightly_consistency", plan=demo_plan)]
    assert nightly.timetable.expression == demo_plan.nightly_schedule == "0 2 * * *"
    assert [t.task_id for t in nightly.tasks] == ["active_groups", "shadow_compare"]
    assert nightly.get_task("shadow_compare").upstream_task_ids == {"active_groups"}


@pytest.mark.unit
def test_migrate_dag_runs_the_playbook_in_order(dags, demo_plan):
    # user_profile: 3000 QPS peak >= 1000 -> load-tested; default ramp 5/50/100
    dag = dags["fsmig__user_profile__migrate"]
    assert _order(dag) == [
        "upstream_gate",
        "deploy",
        "schema_parity",
        "shadow_compare",
        "shadow_soak",
        "point_in_time",
        "load_test",
        "ramp_5",
        "bake_5",
        "ramp_50",
        "bake_50",
        "ramp_100",
        "bake_100",
        "keep_warm",
        "ready_to_decommission",
        "rollback",
    ]
    rollback = dag.get_task("rollback")
    assert rollback.trigger_rule == "one_failed"
    assert rollback.upstream_task_ids == {"bake_5", "bake_50", "bake_100"}
    assert rollback.breach_task_ids == ["bake_5", "bake_50", "bake_100"]
    assert [a.uri for a in dag.get_task("ramp_100").outlets] == [cutover_uri(demo_plan, "user_profile")]
    assert dag.get_task("ramp_50").outlets == []
    assert dag.schedule is None
    assert dag.max_active_runs == 1


@pytest.mark.unit
def test_load_test_only_for_high_traffic_groups_and_per_group_ramp_steps(dags, demo_plan):
    for name in demo_plan.groups:
        tasks = set(dags[f"fsmig__{name}__migrate"].task_ids)
        assert ("load_test" in tasks) == demo_plan.is_high_traffic(name), name
        steps = demo_plan.settings_for(name).ramp_steps
        assert {t for t in tasks if t.startswith("ramp_")} == {f"ramp_{s}" for s in steps}
        assert {t for t in tasks if t.startswith("bake_")} == {f"bake_{s}" for s in steps}
    assert not all(demo_plan.is_high_traffic(n) for n in demo_plan.groups)
    fraud = dags["fsmig__fraud_decision_features__migrate"]
    assert [t for t in _order(fraud) if t.startswith("ramp_")] == [
        "ramp_1",
        "ramp_5",
        "ramp_25",
        "ramp_50",
        "ramp_100",
    ]


@pytest.mark.unit
def test_gate_and_bake_intervals_follow_the_plan_durations(dags, demo_plan):
    dag = dags["fsmig__user_profile__migrate"]
    bake = dag.get_task("bake_50")
    # 48 h bake: checked every 10 minutes (the cap), timeout twice the bake plus slack
    assert bake.poke_interval == 600
    assert bake.timeout == 2 * 48 * 3600 + 120
    assert bake.deferrable is True
    assert dag.get_task("upstream_gate").mode == "reschedule"
    assert dag.get_task("upstream_gate").deferrable is False


@pytest.mark.unit
def test_seconds_scale_plan_polls_proportionally(demo_plan):
    settings = demo_plan.defaults.model_copy(
        update={
            "bake": demo_plan.defaults.bake.__class__(seconds=5),
            "shadow_soak": demo_plan.defaults.bake.__class__(seconds=6),
            "keep_warm": demo_plan.defaults.bake.__class__(seconds=4),
        }
    )
    plan = demo_plan.model_copy(update={"defaults": settings})
    dag = build_dags(plan, str(DEMO), only="fsmig__user_txn_stats__migrate")["fsmig__user_txn_stats__migrate"]
    assert dag.get_task("bake_5").poke_interval == pytest.approx(0.25)
    assert dag.get_task("shadow_soak").poke_interval == pytest.approx(0.3)
    assert dag.get_task("keep_warm").poke_interval == pytest.approx(0.2)


@pytest.mark.unit
def test_downstream_migrate_dags_can_be_scheduled_on_upstream_cutover_assets(demo_plan):
    built = build_dags(demo_plan, str(DEMO), options=FactoryOptions(schedule_on_upstream=True))
    risk = built["fsmig__user_risk_profile__migrate"]
    uris = {a.uri for a in risk.timetable.asset_condition.objects}
    assert uris == {cutover_uri(demo_plan, "user_txn_stats"), cutover_uri(demo_plan, "user_profile")}
    assert {a.uri for a in risk.get_task("upstream_gate").inlets} == uris
    # a group with no upstream stays manual
    assert built["fsmig__user_txn_stats__migrate"].schedule is None


@pytest.mark.unit
def test_large_groups_map_the_shadow_comparison_over_shards(demo_plan):
    built = build_dags(demo_plan, str(DEMO), options=FactoryOptions(shadow_shards={"user_txn_stats": 4}))
    task = built["fsmig__user_txn_stats__migrate"].get_task("shadow_compare")
    assert type(task).__name__ == "MappedOperator"
    assert task.expand_input.value == {"shard": [0, 1, 2, 3]}
    assert task.partial_kwargs["num_shards"] == 4
    assert (
        type(built["fsmig__user_profile__migrate"].get_task("shadow_compare")).__name__
        == "ShadowCompareOperator"
    )


@pytest.mark.unit
def test_docs_tags_owners_and_runbook(dags, demo_plan):
    dag = dags["fsmig__user_txn_stats__migrate"]
    doc = dag.doc_md
    for text in (
        "fraud_gbdt_v7",
        "fraud_rules_shadow",
        "p99 10 ms",
        "peak 12000",
        "AUC drop > 0.5%",
        "p99 up > 20 ms",
        "error rate > 0.1%",
        "fsmig__user_txn_stats__rollback",
        f"fsmigrate rollback {DEMO} user_txn_stats",
        "downstream**: user_risk_profile",
    ):
        assert text in doc, text
    assert dag.owner == "risk-data@example.com"
    assert {"fsmigration", "migrate", "wave:1", "plan:fraud_recs_platform"} <= set(dag.tags)
    assert dag.dag_display_name.startswith("w1 · user_txn_stats")
    assert dags["fsmig__fraud_decision_features__migrate"].dag_display_name.startswith("w3 ·")


@pytest.mark.unit
def test_rollback_form_requires_a_reason(dags):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dags["fsmig__user_profile__rollback"]
    assert dag.schedule is None
    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError):
        params.validate()  # no reason at all
    with pytest.raises(ParamValidationError):
        params["reason"] = "too short"
    params["reason"] = "AUC fell on the fraud dashboard"
    assert params.validate()["reason"] == "AUC fell on the fraud dashboard"
    assert dag.get_task("rollback").reason == "{{ params.reason }}"


@pytest.mark.unit
def test_backfill_form_schema(dags):
    from airflow.sdk.exceptions import ParamValidationError

    dag = dags["fsmig__user_txn_stats__backfill"]
    assert _order(dag) == ["validate_form", "replay"]
    params = copy.deepcopy(dag.params)
    params["start"] = "2026-10-01T00:00:00+00:00"
    params["end"] = "2026-10-08T00:00:00+00:00"
    params["cadence"] = "1d"
    assert params.validate()["cadence"] == "1d"
    with pytest.raises(ParamValidationError):
        params["cadence"] = "3d"
    with pytest.raises(ParamValidationError):
        params["start"] = "last tuesday"
    with pytest.raises(ParamValidationError):
        params["spine_table"] = "labels; drop table x"
    params["spine_table"] = "ml.fraud_labels"
    assert params.validate()["spine_table"] == "ml.fraud_labels"


@pytest.mark.unit
def test_forms_guide_no_null_label_plan_units_and_lengths_in_the_schema(dags, demo_plan):
    """What the trigger form is built from: each param's description and JSON schema."""

    def form(dag_id_: str) -> dict:
        params = dags[dag_id_].params
        return {k: params.get_param(k).dump() for k in params}

    backfill = form("fsmig__user_txn_stats__backfill")
    cadence = backfill["cadence"]["schema"]
    labels = cadence["values_display"]
    # every choice, the empty one included, has a label: the dropdown never reads "null"
    assert set(labels) == {"null" if v is None else v for v in cadence["enum"]}
    assert all("null" not in label for label in labels.values())
    text = json.dumps(backfill, default=str)
    assert not re.search(r"\d+ days?, \d+:\d\d:\d\d", text)  # timedelta's str(), not the plan's units
    window = demo_plan.groups["user_txn_stats"].backfill_window
    from airflow_fsmigration.plan.durations import format_duration

    assert f"at most {format_duration(window)}" in backfill["start"]["description"]
    reason = form("fsmig__user_txn_stats__rollback")["reason"]["schema"]
    # the UI copies minLength/maxLength onto the input and flags an empty required field itself
    assert (reason["minLength"], reason["maxLength"], reason["type"]) == (10, 2000, "string")
    assert "At least 10 characters" in reason["description_md"]


@pytest.mark.unit
def test_parsing_context_builds_only_the_dag_being_run(demo_plan):
    only = build_dags(demo_plan, str(DEMO), only="fsmig__merchant_stats__backfill")
    assert list(only) == ["fsmig__merchant_stats__backfill"]
    everything = build_dags(demo_plan, str(DEMO), only="some_other_files_dag")
    assert len(everything) == 25


def _parse_in_subprocess(plan: Path, cache: Path, extra_env: dict[str, str] | None = None) -> dict:
    code = textwrap.dedent(
        f"""
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag({str(DAG_FILE)!r}, safe_mode=False)
        print(json.dumps({{"dags": sorted(bag.dag_ids), "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
                          "heavy": [m for m in {HEAVY!r} if m in sys.modules],
                          "asset_scheduled": sorted(d for d, dag in bag.dags.items()
                                                    if type(dag.timetable).__name__ == "AssetTriggeredTimetable")}}))
        """
    )
    env = {**os.environ, "FSMIG_PLAN": str(plan), "FSMIG_CACHE_DIR": str(cache), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.unit
def test_dag_file_parses_without_heavy_imports_cold_and_warm(tmp_path):
    cold = _parse_in_subprocess(DEMO, tmp_path / "cache")
    assert cold["errors"] == {}
    assert len(cold["dags"]) == 25
    assert cold["heavy"] == []
    warm = _parse_in_subprocess(DEMO, tmp_path / "cache")
    assert warm["heavy"] == [] and warm["dags"] == cold["dags"]
    one = _parse_in_subprocess(
        DEMO, tmp_path / "cache", {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "fsmig__user_profile__rollback"}
    )
    assert one["dags"] == ["fsmig__user_profile__rollback"]
    assets = _parse_in_subprocess(DEMO, tmp_path / "cache", {"FSMIG_SCHEDULE_ON_UPSTREAM": "true"})
    assert assets["errors"] == {} and assets["asset_scheduled"] == [
        "fsmig__fraud_decision_features__migrate",
        "fsmig__user_recs_affinity__migrate",
        "fsmig__user_risk_profile__migrate",
    ]


@pytest.mark.unit
def test_broken_plan_is_one_import_error_naming_file_and_line(tmp_path):
    plan = tmp_path / "plan"
    shutil.copytree(DEMO, plan)
    text = (plan / "plan.yaml").read_text()
    lines = text.splitlines()
    line_no = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("bake:"))
    (plan / "plan.yaml").write_text(text.replace("bake: 48h", "bake: 48 hours please"))
    result = _parse_in_subprocess(plan, tmp_path / "cache")
    assert result["dags"] == []
    assert list(result["errors"]) == [str(DAG_FILE)]
    message = result["errors"][str(DAG_FILE)]
    assert f"{plan / 'plan.yaml'}:{line_no}" in message
    assert "defaults.bake" in message
    assert "1 error" in message


@pytest.mark.unit
def test_plan_cache_invalidates_when_a_sql_file_changes(tmp_path, monkeypatch):
    from airflow_fsmigration.plan.cache import load_plan_cached

    monkeypatch.setenv("FSMIG_CACHE_DIR", str(tmp_path / "cache"))
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO, plan_dir)
    first = load_plan_cached(plan_dir, isolate=False)
    assert load_plan_cached(plan_dir, isolate=False) is first  # in-process memo
    sql = plan_dir / "sql" / "merchant_stats.sql"
    sql.write_text(sql.read_text() + "\n-- edited\n")
    os.utime(sql, ns=(sql.stat().st_atime_ns, sql.stat().st_mtime_ns + 10_000_000))
    second = load_plan_cached(plan_dir, isolate=False)
    assert second is not first
    assert second.groups.keys() == first.groups.keys()


@pytest.mark.unit
def test_an_invalid_plan_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    from airflow_fsmigration.plan import PlanError
    from airflow_fsmigration.plan.cache import load_plan_cached

    monkeypatch.setenv("FSMIG_CACHE_DIR", str(tmp_path / "cache"))
    plan_dir = tmp_path / "plan"
    shutil.copytree(DEMO, plan_dir)
    good = (plan_dir / "plan.yaml").read_text()
    (plan_dir / "plan.yaml").write_text(good.replace("keep_warm: 30d", "keep_warm: forever"))
    with pytest.raises(PlanError) as first:
        load_plan_cached(plan_dir)  # validated in a child process, which caches the error
    assert len(list((tmp_path / "cache").glob("plan-*.pickle"))) == 1
    with pytest.raises(PlanError) as second:
        load_plan_cached(plan_dir)  # from the cache
    assert str(second.value) == str(first.value) and "defaults.keep_warm" in str(first.value)
    (plan_dir / "plan.yaml").write_text(good)
    os.utime(plan_dir / "plan.yaml", ns=(0, (plan_dir / "plan.yaml").stat().st_mtime_ns + 10_000_000))
    assert len(load_plan_cached(plan_dir).groups) == 8
