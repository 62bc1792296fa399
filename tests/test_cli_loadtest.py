"""``fsmigrate loadtest`` on a small generated demo world: real Redis ids, real new-store reads."""

from __future__ import annotations

import re

import pytest

from airflow_fsmigration.cli import main
from fsmig_dev.demo.data import generate_demo

pytestmark = pytest.mark.integration


@pytest.fixture
def world(pg_url, redis_url, demo_plan, tmp_path, monkeypatch):
    env = generate_demo(
        pg_url, pg_url, pg_url, redis_url, demo_plan, entities=200, days=10, history_entities=20,
        plan_dir=tmp_path / "plan", deploy=True,
    )  # fmt: skip
    for key, value in env.conn_env.items():
        monkeypatch.setenv(key, value)
    return env


def _set_group(plan_file, group: str, old: str, new: str) -> None:
    text = plan_file.read_text()
    start = text.index(f"  {group}:")
    end = text.find("\n  ", text.index("criticality", start))
    block = text[start:end]
    assert old in block
    plan_file.write_text(text[:start] + block.replace(old, new) + text[end:])


def test_loadtest_passes_at_plan_rate_and_is_inconclusive_when_unreachable(world, capsys) -> None:
    groups = world.plan_dir / "groups_fraud.yaml"
    # merchant_stats peaks at 40 QPS, so the plan's 2x is 80 QPS; a generous SLA keeps this VM's noise out.
    _set_group(groups, "merchant_stats", "p99_ms: 25", "p99_ms: 5000")
    code = main(["loadtest", str(world.plan_dir), "merchant_stats", "--duration", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"target 80(\.0)? QPS", out), out

    # A rate no single generator reaches on this machine must not pass.
    _set_group(groups, "merchant_stats", "qps: {peak: 40, average: 5}", "qps: {peak: 500000, average: 5}")
    code = main(["loadtest", str(world.plan_dir), "merchant_stats", "--duration", "1"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert "inconclusive" in out.lower()


def test_loadtest_unknown_group_is_bad_input(world, capsys) -> None:
    assert main(["loadtest", str(world.plan_dir), "nope"]) == 2
    assert "has no group 'nope'" in capsys.readouterr().out
