"""Ground truth of a scenario, computed from the raw data and the injected defects alone.

The correct definition and the defective one are each run as of the same fixed time straight on
the raw tables (``:as_of`` replaced by a literal, no view, no product code), and their values
compared per entity and feature with the plan's own rule: ints and timestamps equal, floats
within ``|a - b| <= atol + rtol * max(|a|, |b|)``, NULL equal to NULL and to nothing else. An
entity only the correct side has is a missing value of every feature in the new store.

Attribution: in a single-defect scenario every changed value is that defect's. In a mix, each
defect is also run alone; a changed value belongs to every defect that changes it alone, or to
all of the mix's defects when only their combination changes it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.diagnosis_corpus.generator import AS_OF
from bench.diagnosis_corpus.scenarios import ATOL, DEFECTS, FEATURES, FLOATS, RTOL, Scenario, definition_sql

_PLACEHOLDER = re.compile(r"(?<![:\w]):as_of\b")
Values = dict[str, tuple[Any, ...]]


def bind(sql: str, as_of: datetime = AS_OF) -> str:
    """The definition as of a literal time (independent of the product's own rendering)."""
    return _PLACEHOLDER.sub(f"CAST('{as_of.isoformat()}' AS timestamptz)", sql)


def compute(conn: Any, defects: tuple[str, ...] | frozenset[str] = (), variant: str = "exact") -> Values:
    """Entity -> feature values (in ``FEATURES`` order, plus source_ts last) of a definition."""
    cols = ", ".join(["v.user_id", *(f"v.{f}" for f in FEATURES), "v.source_ts"])
    sql = f"SELECT {cols} FROM (\n{bind(definition_sql(tuple(sorted(defects)), variant))}\n) AS v"
    return {row[0]: tuple(row[1:]) for row in conn.execute(sql).fetchall()}


def same(a: Any, b: Any, feature: str) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if feature in FLOATS:
        return abs(float(a) - float(b)) <= ATOL + RTOL * max(abs(float(a)), abs(float(b)))
    return bool(a == b)


def changed(correct: Values, other: Values) -> dict[str, dict[str, str]]:
    """Feature -> {entity: "differ" | "missing_in_new" | "missing_in_old"} for the values that change."""
    out: dict[str, dict[str, str]] = {f: {} for f in FEATURES}
    for entity in correct.keys() | other.keys():
        a, b = correct.get(entity), other.get(entity)
        for i, f in enumerate(FEATURES):
            if b is None:
                out[f][entity] = "missing_in_new"
            elif a is None:
                out[f][entity] = "missing_in_old"
            elif not same(a[i], b[i], f):
                out[f][entity] = "differ"
    return out


@dataclass
class FeatureTruth:
    """What the defect does to one feature: counts by status, and values per root-cause kind."""

    differ: int = 0
    missing_in_new: int = 0
    missing_in_old: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # a value two defects change counts for both
    only: dict[str, int] = field(default_factory=dict)  # values that kind alone changes
    interaction: int = 0  # values only the combination of a mix changes

    @property
    def total(self) -> int:
        return self.differ + self.missing_in_new + self.missing_in_old

    @property
    def dominant(self) -> list[str]:
        """The kind(s) explaining the most values (ties kept)."""
        if not self.kinds:
            return []
        top = max(self.kinds.values())
        return sorted(k for k, v in self.kinds.items() if v == top)

    def to_dict(self) -> dict[str, Any]:
        return {
            "differ": self.differ,
            "missing_in_new": self.missing_in_new,
            "missing_in_old": self.missing_in_old,
            "total": self.total,
            "kinds": dict(self.kinds),
            "only": dict(self.only),
            "dominant": self.dominant,
            "interaction": self.interaction,
        }


@dataclass
class Truth:
    scenario: str
    entities_correct: int
    entities_defective: int
    features: dict[str, FeatureTruth]
    entities_changed: int

    @property
    def verdict(self) -> str:
        """Every value must agree (the corpus plan's threshold is 1.0)."""
        return "fail" if any(f.total for f in self.features.values()) else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "verdict": self.verdict,
            "entities_correct": self.entities_correct,
            "entities_defective": self.entities_defective,
            "entities_changed": self.entities_changed,
            "features": {k: v.to_dict() for k, v in self.features.items()},
        }


def ground_truth(conn: Any, scenario: Scenario, correct: Values | None = None) -> Truth:
    """The scenario's truth: which values its defects change, and which defect changes each."""
    correct = correct if correct is not None else compute(conn)
    mixed = compute(conn, scenario.defects, scenario.variant)
    effect = changed(correct, mixed)
    alone: dict[str, dict[str, dict[str, str]]] = {}
    if len(scenario.defects) > 1:
        alone = {d: changed(correct, compute(conn, (d,))) for d in scenario.defects}
    features: dict[str, FeatureTruth] = {}
    touched: set[str] = set()
    for f in FEATURES:
        ft = FeatureTruth()
        kinds: Counter[str] = Counter()
        only: Counter[str] = Counter()
        for entity, status in effect[f].items():
            setattr(ft, status, getattr(ft, status) + 1)
            touched.add(entity)
            causes = [d for d in scenario.defects if not alone or entity in alone[d][f]]
            if not causes:
                ft.interaction += 1
                causes = list(scenario.defects)
            value_kinds = {DEFECTS[d][0] for d in causes}
            for kind in value_kinds:
                kinds[kind] += 1
            if len(value_kinds) == 1:
                only[next(iter(value_kinds))] += 1
        ft.kinds, ft.only = dict(kinds), dict(only)
        features[f] = ft
    return Truth(scenario.name, len(correct), len(mixed), features, len(touched))
