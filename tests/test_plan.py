"""The plan loader: strict validation with file and line, waves, cycles, SQL-inferred dependencies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from airflow_fsmigration.plan import PlanError, compute_waves, load_plan
from airflow_fsmigration.plan.definitions import (
    dependency_findings,
    inferred_dependencies,
    output_columns,
    referenced_tables,
    render_as_of,
    render_live,
)
from airflow_fsmigration.plan.durations import format_duration, parse_duration

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "include" / "demo_plan"

pytestmark = pytest.mark.unit


def _copy_demo(tmp_path: Path) -> Path:
    target = tmp_path / "plan"
    shutil.copytree(DEMO, target)
    return target


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count))


def _line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_demo_plan_shape() -> None:
    plan = load_plan(DEMO)
    assert len(plan.groups) >= 6
    assert sum(len(g.features) for g in plan.groups.values()) >= 40
    waves = compute_waves(plan)
    assert len(waves.waves) == 3
    assert waves.waves[2] == ("fraud_decision_features",)
    # every group's upstreams sit in earlier waves
    for name, group in plan.groups.items():
        for up in group.depends_on:
            assert waves.wave_of(up) < waves.wave_of(name)
    # low- and high-traffic groups both present
    assert any(plan.is_high_traffic(g) for g in plan.groups.values())
    assert any(not plan.is_high_traffic(g) for g in plan.groups.values())


def test_playbook_defaults_and_overrides() -> None:
    plan = load_plan(DEMO)
    d = plan.defaults
    assert d.consistency_threshold == 0.995
    assert d.shadow_soak == timedelta(days=14)
    assert d.ramp_steps == (5, 50, 100)
    assert d.bake == timedelta(hours=48)
    assert d.rollback_triggers.auc_drop_pct == 0.5
    assert d.rollback_triggers.p99_latency_increase_ms == 20
    assert d.rollback_triggers.error_rate_pct == 0.1
    assert d.load_test_multiplier == 2.0
    assert d.keep_warm == timedelta(days=30)
    special = plan.settings_for("fraud_decision_features")
    assert special.consistency_threshold == 0.999
    assert special.ramp_steps == (1, 5, 25, 50, 100)
    assert special.bake == d.bake  # not overridden
    assert plan.settings_for("merchant_stats") == d


def test_waves_order_lowest_blast_radius_first() -> None:
    plan = load_plan(DEMO)
    first = compute_waves(plan).waves[0]
    assert first[0] == "merchant_stats"  # low criticality, one model, 40 QPS
    assert first[-1] == "user_txn_stats"  # critical, two models, 12k QPS


def test_misspelt_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    groups = plan_dir / "groups_fraud.yaml"
    _edit(groups, "    backfill_window: 30d\n", "    backfil_window: 30d\n")
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    [issue] = exc.value.issues
    assert issue.file == str(groups)
    assert issue.line == _line_of(groups, "backfil_window")
    assert issue.path == "groups.merchant_stats.backfil_window"
    assert "unknown key 'backfil_window'" in issue.message
    assert "did you mean 'backfill_window'" in issue.message


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    fraud = plan_dir / "groups_fraud.yaml"
    main = plan_dir / "plan.yaml"
    _edit(main, "consistency_threshold: 0.995", "consistency_threshold: 1.5")
    _edit(main, "bake: 48h", "bake: 48 hours please")
    _edit(
        plan_dir / "groups_recs.yaml",
        "qps: {peak: 25000, average: 9000}",
        "qps: {peak: 25000, average: fast}",
    )
    _edit(fraud, "depends_on: [user_risk_profile]", "depends_on: [user_risk_profil]")
    _edit(fraud, "definition: sql/merchant_stats.sql", "definition: sql/nope.sql")
    _edit(fraud, "- {name: kyc_level, dtype: int64}", "- {name: kyc_level, dtype: int32}")
    _edit(fraud, "models: [merchant_risk_v2]", "models: [merchant_risk_v9]")
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    by_path = {i.path: i for i in exc.value.issues}
    assert set(by_path) == {
        "defaults.consistency_threshold",
        "defaults.bake",
        "groups.item_popularity.qps.average",
        "groups.fraud_decision_features.depends_on[0]",
        "groups.merchant_stats.definition",
        "groups.user_profile.features.3.dtype",
        "groups.merchant_stats.models[0]",
    }
    assert by_path["defaults.bake"].line == _line_of(main, "bake: 48 hours")
    assert "bad duration" in by_path["defaults.bake"].message
    assert by_path["defaults.consistency_threshold"].file == str(main)
    assert (
        "did you mean 'user_risk_profile'" in by_path["groups.fraud_decision_features.depends_on[0]"].message
    )
    assert by_path["groups.merchant_stats.definition"].line == _line_of(fraud, "sql/nope.sql")
    assert "not found" in by_path["groups.merchant_stats.definition"].message
    assert by_path["groups.user_profile.features.3.dtype"].line == _line_of(fraud, "dtype: int32")
    assert "unknown model 'merchant_risk_v9'" in by_path["groups.merchant_stats.models[0]"].message
    assert str(exc.value).startswith("the migration plan has 7 errors:")


def test_cycle_reports_whole_path(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    fraud = plan_dir / "groups_fraud.yaml"
    # user_txn_stats -> fraud_decision_features closes the loop through user_risk_profile.
    _edit(
        fraud,
        "    criticality: critical\n\n  user_profile:",
        "    criticality: critical\n    depends_on: [fraud_decision_features]\n\n  user_profile:",
    )
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    [issue] = [i for i in exc.value.issues if "cycle" in i.message]
    assert (
        "fraud_decision_features -> user_risk_profile -> user_txn_stats -> fraud_decision_features"
        in issue.message
    )


def test_duplicate_group_across_files_and_duplicate_feature(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    recs = plan_dir / "groups_recs.yaml"
    text = recs.read_text()
    block = text[text.index("  user_recs_affinity:") :]
    (plan_dir / "more.yaml").write_text("groups:\n" + block)
    _edit(recs, "- {name: sessions_7d, dtype: int64}", "- {name: sessions_24h, dtype: int64}")
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    messages = {i.path: i.message for i in exc.value.issues}
    assert "defined twice (first in" in messages["groups.user_recs_affinity"]
    assert messages["groups.user_session_stats.features[1].name"] == "duplicate feature 'sessions_24h'"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text("name: x\nconnections: {legacy_online: a\n groups: [\n")
    with pytest.raises(PlanError) as exc:
        load_plan(bad)
    [issue] = exc.value.issues
    assert issue.file == str(bad) and issue.line is not None
    assert "not valid YAML" in issue.message


def test_definition_must_select_declared_features(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    _edit(plan_dir / "sql" / "merchant_stats.sql", "0)     AS merchant_refund_count_7d", "0) AS refunds_7d")
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    [issue] = exc.value.issues
    assert "does not select merchant_refund_count_7d" in issue.message


def test_sql_inferred_dependencies_and_findings(tmp_path: Path) -> None:
    plan = load_plan(DEMO)
    inferred = inferred_dependencies(plan)
    assert inferred["user_risk_profile"] == {"user_txn_stats", "user_profile"}
    assert inferred["user_txn_stats"] == set()
    assert dependency_findings(plan) == []

    plan_dir = _copy_demo(tmp_path)
    fraud = plan_dir / "groups_fraud.yaml"
    _edit(fraud, "depends_on: [user_txn_stats, user_profile]", "depends_on: [user_txn_stats, merchant_stats]")
    findings = dependency_findings(load_plan(plan_dir))
    assert len(findings) == 2
    assert findings[0].startswith(
        "group 'user_risk_profile' reads features.user_profile but does not declare"
    )
    assert findings[1].startswith("group 'user_risk_profile' declares depends_on 'merchant_stats'")


def test_definition_rendering() -> None:
    plan = load_plan(DEMO)
    sql = plan.definition_sql("user_txn_stats")
    assert ":as_of" not in render_live(sql) and "now() - interval '1 hour'" in render_live(sql)
    as_of = render_as_of(plan, "user_txn_stats")
    assert as_of.count("%(as_of)s") == sql.count(":as_of")
    derived = render_as_of(plan, "fraud_decision_features")
    # upstream views are inlined as subqueries, recursively, so no view of "now" is read
    assert "features." not in derived
    assert "raw.transactions" in derived and "raw.users" in derived
    assert referenced_tables(sql) == {"raw.transactions"}
    assert output_columns("SELECT a, b AS c FROM t") == ["a", "c"]
    assert output_columns("SELECT * FROM t") is None


def test_durations() -> None:
    assert parse_duration("14d") == timedelta(days=14)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration(90) == timedelta(seconds=90)
    assert format_duration(timedelta(hours=48)) == "2d"
    for bad in ("", "5 parsecs", "-3h", True, "99999999999999d", float("inf"), float("nan"), 10**20):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "airflow_fsmigration.cli", "validate", str(DEMO)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK: plan 'fraud_recs_platform': 8 groups, 52 features, 3 waves")
    assert "wave 3: fraud_decision_features" in ok.stdout

    plan_dir = _copy_demo(tmp_path)
    _edit(plan_dir / "groups_fraud.yaml", "    backfill_window: 30d\n", "    backfil_window: 30d\n")
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_fsmigration.cli", "validate", str(plan_dir)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    line = _line_of(plan_dir / "groups_fraud.yaml", "backfil_window")
    assert f"groups_fraud.yaml:{line}: groups.merchant_stats.backfil_window: unknown key" in bad.stderr


def test_draft_stub_definition_is_named(tmp_path: Path) -> None:
    plan_dir = _copy_demo(tmp_path)
    (plan_dir / "sql" / "merchant_stats.sql").write_text("-- TODO(fsmigrate): write the new store's SELECT\n")
    with pytest.raises(PlanError) as exc:
        load_plan(plan_dir)
    [issue] = exc.value.issues
    assert issue.path == "groups.merchant_stats.definition"
    assert "merchant_stats.sql is still a draft stub (TODO(fsmigrate))" in issue.message


@pytest.mark.unit
def test_key_template_is_validated_with_the_meaning_readers_use() -> None:
    """Escaped braces are literal; a template whose only {entity} is escaped is rejected at load."""
    from airflow_fsmigration.plan.model import LegacyOnline

    assert LegacyOnline(key_template="fs:{{v2}}:{entity}").key_template == "fs:{{v2}}:{entity}"
    for bad, says in (("fs:{{entity}}", "exactly once, found 0"), ("fs:{entity}:{x}", "found '{x}'")):
        with pytest.raises(ValueError, match=re.escape(says)):
            LegacyOnline(key_template=bad)
