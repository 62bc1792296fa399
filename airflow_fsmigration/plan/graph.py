"""The dependency graph of feature groups: cycles, waves and blast-radius order.

Uses the standard library's :mod:`graphlib` (a maintained topological sorter whose
``CycleError`` carries the cycle path), so DAG parsing pays no import for a graph library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan


def find_cycle(edges: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one dependency cycle as a closed path in which each group depends on the next, or None.

    Edges point from a group to its upstream groups; unknown upstreams are ignored here
    (the loader reports them separately).
    """
    known = {g: [u for u in ups if u in edges] for g, ups in edges.items()}
    try:
        TopologicalSorter(known).prepare()
    except CycleError as exc:
        path = list(exc.args[1])
        # graphlib lists the cycle upstream -> downstream; reverse it so each name depends on
        # the next, and start from the smallest name so the message is stable.
        path = path[:-1][::-1]
        start = path.index(min(path))
        path = path[start:] + path[:start]
        return [*path, path[0]]
    return None


def blast_radius(group: FeatureGroup) -> tuple[int, int, float, str]:
    """Sort key, lowest risk first: criticality, then number of models, then peak QPS."""
    return (group.criticality.rank, len(group.models), group.qps.peak, group.name)


def risk_tier(plan: MigrationPlan, group: FeatureGroup) -> str:
    """``high`` / ``medium`` / ``low``: what a failed migration of this group would hurt.

    Points: criticality rank (0-3), +1 when high-traffic (load-tested), +1 when two or more
    models read it. Three points or more is high, two medium, fewer low.
    """
    points = group.criticality.rank + int(plan.is_high_traffic(group)) + int(len(group.models) >= 2)
    return "high" if points >= 3 else "medium" if points == 2 else "low"


@dataclass(frozen=True)
class Waves:
    """Topological levels of the plan: every group's upstreams are in earlier waves."""

    waves: tuple[tuple[str, ...], ...]

    def wave_of(self, group: str) -> int:
        for i, wave in enumerate(self.waves):
            if group in wave:
                return i + 1
        raise KeyError(group)

    @property
    def order(self) -> list[str]:
        return [g for wave in self.waves for g in wave]


def compute_waves(plan: MigrationPlan) -> Waves:
    """Group the plan into waves (topological levels), each ordered by blast radius, lowest first."""
    sorter = TopologicalSorter({name: list(g.depends_on) for name, g in plan.groups.items()})
    sorter.prepare()
    waves = []
    while sorter.is_active():
        ready = list(sorter.get_ready())
        ready.sort(key=lambda name: blast_radius(plan.groups[name]))
        waves.append(tuple(ready))
        sorter.done(*ready)
    return Waves(tuple(waves))


def downstream_of(plan: MigrationPlan, group: str) -> list[str]:
    """Groups that read ``group`` directly or transitively (what a rollback of it may affect)."""
    children: dict[str, list[str]] = {g: [] for g in plan.groups}
    for name, g in plan.groups.items():
        for up in g.depends_on:
            children.setdefault(up, []).append(name)
    seen: list[str] = []
    stack = list(children.get(group, []))
    while stack:
        child = stack.pop()
        if child not in seen:
            seen.append(child)
            stack.extend(children.get(child, []))
    return sorted(seen)
