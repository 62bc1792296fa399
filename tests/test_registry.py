"""Routing registry: legal transitions, CAS versions, audit log, racing writers (real Postgres and Redis)."""

from __future__ import annotations

import itertools
import random
import threading
from datetime import timedelta

import pytest

from airflow_fsmigration.registry.mirror import RoutingMirror
from airflow_fsmigration.registry.model import (
    LEGAL,
    SERVING_PHASES,
    Backend,
    DagRunRef,
    IllegalTransition,
    Phase,
    UnknownGroup,
    VersionConflict,
    rollback_command,
)
from airflow_fsmigration.registry.routing import Registry

GROUP = "user_txn_stats"  # ramp_steps 5, 50, 100 in the demo plan


@pytest.fixture
def registry(pg_url, redis_client, demo_plan):
    reg = Registry(pg_url, RoutingMirror(redis_client), plan=demo_plan)
    reg.ensure_schema()
    reg.register_plan(demo_plan)
    yield reg
    reg.close()


def _to_ramping(reg: Registry, group: str = GROUP, pct: float = 5) -> None:
    reg.transition(group, "shadow", actor="t", reason="start shadow")
    reg.ramp(group, pct, actor="t", reason="soak green", soak_passed=True)


@pytest.mark.unit
def test_state_machine_table_is_closed():
    # Every phase can be entered from somewhere except the start, and rollback covers every serving phase.
    assert set(LEGAL) == set(Phase)
    assert LEGAL[Phase.ROLLED_BACK] == SERVING_PHASES
    assert Phase.DECOMMISSIONED not in SERVING_PHASES
    assert Phase.SHADOW in LEGAL[Phase.RAMPING]
    assert Phase.ROLLED_BACK not in LEGAL[Phase.RAMPING]


@pytest.mark.unit
def test_rollback_command_quotes_for_the_shell():
    assert rollback_command("include/demo_plan", GROUP) == (
        "fsmigrate rollback include/demo_plan user_txn_stats --reason '...'"
    )
    assert (
        rollback_command("my plans/p.yaml", "g;rm")
        == "fsmigrate rollback 'my plans/p.yaml' 'g;rm' --reason '...'"
    )


@pytest.mark.integration
def test_register_plan_is_idempotent_and_audited(registry, demo_plan, redis_client):
    assert registry.register_plan(demo_plan) == []
    states = registry.states()
    assert sorted(states) == sorted(demo_plan.groups)
    assert {s.phase for s in states.values()} == {Phase.PLANNED}
    assert {s.version for s in states.values()} == {1}
    assert {s.active_backend for s in states.values()} == {Backend.OLD}
    assert len(registry.audit(GROUP)) == 1
    assert len(list(redis_client.scan_iter(match="fsmig:routing:*"))) == len(demo_plan.groups)


@pytest.mark.integration
def test_full_forward_path_records_every_step(registry):
    run = DagRunRef("fsmig__user_txn_stats__migrate", "manual__1")
    registry.transition(GROUP, "shadow", actor="dag", reason="deployed", dag_run=run)
    s = registry.ramp(GROUP, 5, actor="dag", reason="soak green", soak_passed=True, dag_run=run)
    assert (s.phase, s.ramp_pct, s.active_backend, s.version) == (Phase.RAMPING, 5.0, Backend.NEW, 3)
    s = registry.ramp(GROUP, 50, actor="dag", reason="bake passed", expected_version=s.version)
    s = registry.ramp(GROUP, 100, actor="dag", reason="bake passed", expected_version=s.version)
    assert (s.phase, s.ramp_pct) == (Phase.CUTOVER, 100.0)
    s = registry.transition(GROUP, "warm", actor="dag", reason="bake passed")
    assert (s.phase, s.ramp_pct, s.version) == (Phase.WARM, 100.0, 6)
    audit = registry.audit(GROUP)
    assert [a.version for a in audit] == [1, 2, 3, 4, 5, 6]
    assert [a.to_phase for a in audit] == [
        Phase.PLANNED,
        Phase.SHADOW,
        Phase.RAMPING,
        Phase.RAMPING,
        Phase.CUTOVER,
        Phase.WARM,
    ]
    assert [(a.from_pct, a.to_pct) for a in audit[2:5]] == [(0, 5), (5, 50), (50, 100)]
    assert audit[2].dag_id == "fsmig__user_txn_stats__migrate" and audit[2].run_id == "manual__1"
    assert audit[2].evidence == {"soak_passed": True}
    assert audit[3].reason == "bake passed" and audit[3].actor == "dag"


@pytest.mark.integration
def test_ramp_before_soak_is_refused_with_reason(registry):
    registry.transition(GROUP, "shadow", actor="t", reason="deployed")
    with pytest.raises(IllegalTransition) as exc:
        registry.ramp(GROUP, 5, actor="t", reason="eager")
    msg = str(exc.value)
    assert "user_txn_stats" in msg and "shadow soak has passed" in msg and "soak_passed" in msg
    with pytest.raises(IllegalTransition, match="soak"):
        registry.ramp(GROUP, 5, actor="t", reason="eager", soak_passed=False)
    assert registry.state(GROUP).version == 2  # nothing written
    assert len(registry.audit(GROUP)) == 2


@pytest.mark.integration
def test_soak_status_is_the_evidence(registry):
    from airflow_fsmigration.compare.results import SoakStatus

    registry.transition(GROUP, "shadow", actor="t", reason="deployed")
    red = SoakStatus(GROUP, timedelta(days=14), timedelta(days=3), False, "green for 3d of the 14d soak")
    with pytest.raises(IllegalTransition, match="soak_passed was False: green for 3d of the 14d soak"):
        registry.ramp(GROUP, 5, actor="t", reason="eager", soak_passed=red)
    other = SoakStatus("user_profile", timedelta(days=14), timedelta(days=14), True, "green")
    with pytest.raises(ValueError, match="soak evidence passed is for group 'user_profile'"):
        registry.ramp(GROUP, 5, actor="t", reason="mixup", soak_passed=other)
    green = SoakStatus(GROUP, timedelta(days=14), timedelta(days=15), True, "green for 15d")
    s = registry.ramp(GROUP, 5, actor="t", reason="soak green", soak_passed=green)
    assert s.phase is Phase.RAMPING
    evidence = registry.audit(GROUP)[-1].evidence
    assert evidence["soak_passed"] is True and evidence["soak"]["green_s"] == 15 * 86400


@pytest.mark.integration
def test_illegal_moves_say_why_and_what_next(registry):
    with pytest.raises(
        IllegalTransition, match=r"can only be entered from .*ramping.*Next: start the shadow"
    ):
        registry.transition(GROUP, "cutover", actor="t", reason="skip everything")
    _to_ramping(registry)
    with pytest.raises(IllegalTransition, match=r"skips the 50% step .*ramp_steps \[5, 50, 100\]"):
        registry.ramp(GROUP, 100, actor="t", reason="yolo")
    with pytest.raises(IllegalTransition, match="ready_to_decommission can only be entered from warm"):
        registry.transition(GROUP, "ready_to_decommission", actor="t", reason="x")
    registry.rollback(GROUP, reason="p99 breach", actor="oncall")
    with pytest.raises(
        IllegalTransition, match="rolled back; traffic may only move again after a fresh shadow soak"
    ):
        registry.ramp(GROUP, 5, actor="t", reason="again", soak_passed=True)
    with pytest.raises(UnknownGroup, match="not in the routing registry"):
        registry.rollback("nope", reason="x", actor="t")
    with pytest.raises(ValueError, match="unknown phase 'live'; phases are planned, shadow, ramping"):
        registry.transition(GROUP, "live", actor="t", reason="x")
    with pytest.raises(ValueError, match="needs a reason"):
        registry.rollback(GROUP, reason=" ", actor="t")


@pytest.mark.integration
def test_expected_version_conflict(registry):
    _to_ramping(registry)
    seen = registry.state(GROUP)
    registry.ramp(GROUP, 50, actor="a", reason="bake passed", expected_version=seen.version)
    with pytest.raises(
        VersionConflict, match=f"expected routing version {seen.version} but it is {seen.version + 1}"
    ):
        registry.ramp(GROUP, 50, actor="b", reason="bake passed", expected_version=seen.version)
    assert registry.state(GROUP).version == seen.version + 1


@pytest.mark.integration
def test_lost_race_to_the_same_target_is_a_no_op(registry):
    _to_ramping(registry)
    first = registry.ramp(GROUP, 50, actor="a", reason="bake passed")
    again = registry.ramp(GROUP, 50, actor="b", reason="bake passed (retried task)")
    assert (first.changed, again.changed, again.version) == (True, False, first.version)
    assert len(registry.audit(GROUP)) == first.version


@pytest.mark.integration
def test_rollback_wins_over_a_ramp_that_read_before_it(pg_url, registry, redis_client, demo_plan):
    _to_ramping(registry)
    ramper = Registry(pg_url, RoutingMirror(redis_client), plan=demo_plan)
    read_state = ramper.state
    fired: list[int] = []

    def state_then_rollback(group: str):
        s = read_state(group)
        if not fired:  # the ramp has read and validated version N; a rollback commits before its CAS
            fired.append(s.version)
            registry.rollback(group, reason="AUC drop", actor="oncall")
        return s

    ramper.state = state_then_rollback  # type: ignore[method-assign]
    with pytest.raises(IllegalTransition, match="rolled back"):
        ramper.ramp(GROUP, 50, actor="dag", reason="bake passed")
    ramper.close()
    final = registry.state(GROUP)
    assert (final.phase, final.ramp_pct, final.version) == (Phase.ROLLED_BACK, 0.0, fired[0] + 1)
    assert [a.to_phase for a in registry.audit(GROUP)][-1] is Phase.ROLLED_BACK


@pytest.mark.integration
def test_rollback_and_freeze_semantics(registry):
    # Rollback of a group that only serves the old store is a no-op, not an error.
    s = registry.rollback(GROUP, reason="precaution", actor="t")
    assert (s.changed, s.phase, s.version) == (False, Phase.PLANNED, 1)
    _to_ramping(registry)
    registry.ramp(GROUP, 50, actor="t", reason="bake ok")
    f = registry.freeze(GROUP, reason="new store costs spiking, hold", actor="oncall")
    assert (f.phase, f.ramp_pct, f.active_backend) == (Phase.FROZEN, 50.0, Backend.NEW)
    assert registry.freeze(GROUP, reason="again", actor="oncall").changed is False
    r = registry.ramp(GROUP, 100, actor="t", reason="resume after freeze")
    assert (r.phase, r.ramp_pct) == (Phase.CUTOVER, 100.0)
    rb = registry.rollback(GROUP, reason="errors", actor="oncall")
    assert (rb.phase, rb.ramp_pct, rb.active_backend, rb.changed) == (
        Phase.ROLLED_BACK,
        0.0,
        Backend.OLD,
        True,
    )
    again = registry.rollback(GROUP, reason="errors", actor="oncall")
    assert (again.changed, again.version) == (False, rb.version)
    # Back through a fresh soak.
    registry.transition(GROUP, "shadow", actor="t", reason="fixed the window boundary")
    assert registry.ramp(GROUP, 5, actor="t", reason="soak green", soak_passed=True).phase is Phase.RAMPING


@pytest.mark.integration
def test_twenty_concurrent_writers_lose_no_update(pg_url, registry, redis_client, demo_plan):
    _to_ramping(registry)
    start_version = registry.state(GROUP).version
    n_threads, iterations = 20, 12
    successes: list[tuple[int, str]] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def writer(i: int) -> None:
        rng = random.Random(i)
        reg = Registry(pg_url, RoutingMirror(redis_client), plan=demo_plan)
        is_rollbacker = i % 5 == 0  # 4 rollback writers, 16 ramp writers
        try:
            barrier.wait()
            for _ in range(iterations):
                try:
                    if is_rollbacker:
                        s = reg.rollback(GROUP, reason=f"writer {i}", actor=f"w{i}")
                    else:
                        cur = reg.state(GROUP)
                        if cur.phase is Phase.ROLLED_BACK:
                            s = reg.transition(
                                GROUP,
                                "shadow",
                                actor=f"w{i}",
                                reason="re-shadow",
                                expected_version=cur.version,
                            )
                        elif cur.phase is Phase.SHADOW:
                            s = reg.ramp(
                                GROUP,
                                5,
                                actor=f"w{i}",
                                reason="soak",
                                soak_passed=True,
                                expected_version=cur.version,
                            )
                        else:
                            nxt = {5.0: 50, 50.0: 100, 100.0: 50}[cur.ramp_pct]
                            s = reg.ramp(
                                GROUP, nxt, actor=f"w{i}", reason="step", expected_version=cur.version
                            )
                    if s.changed:
                        with lock:
                            successes.append((s.version, s.phase.value))
                except (VersionConflict, IllegalTransition) as exc:
                    with lock:
                        refused.append(type(exc).__name__)
                if rng.random() < 0.3:
                    threading.Event().wait(rng.uniform(0, 0.003))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(refused) > 0  # the writers really raced (CAS conflicts and refusals happened)
    final = registry.state(GROUP)
    versions = sorted(v for v, _ in successes)
    # Every successful transition got its own version; no version was skipped or reused.
    assert versions == list(range(start_version + 1, final.version + 1))
    assert len(versions) == final.version - start_version
    assert sum(1 for _, p in successes if p == "rolled_back") > 0
    assert sum(1 for _, p in successes if p in ("ramping", "cutover")) > 0
    # The audit log holds exactly one row per version, and each row starts where the previous ended.
    audit = registry.audit(GROUP)
    assert [a.version for a in audit] == list(range(1, final.version + 1))
    for prev, cur in itertools.pairwise(audit):
        assert (cur.from_phase, cur.from_pct) == (prev.to_phase, prev.to_pct), (prev, cur)
        if prev.to_phase is Phase.ROLLED_BACK:
            assert cur.to_phase is Phase.SHADOW  # nothing ever ramped on top of a rollback
    assert (audit[-1].to_phase, audit[-1].to_pct) == (final.phase, final.ramp_pct)
    # Out-of-order publishes never moved the mirror backwards.
    mirrored = RoutingMirror(redis_client).read(GROUP)
    assert mirrored is not None and mirrored["version"] == final.version
    assert mirrored["phase"] == final.phase.value
