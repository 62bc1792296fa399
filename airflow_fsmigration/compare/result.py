"""One shadow comparison's outcome, JSON round-trippable, and the rule that gives its verdict.

Built on :mod:`airflow_fsmigration.compare.model` only (no engine, no explanations), so the
result store, the reports and the gates read results without importing the comparison itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_fsmigration.compare.causes import RootCause
from airflow_fsmigration.compare.model import Explanation, FeatureStats, Verdict


@dataclass
class ComparisonResult:
    """One shadow comparison of a group; JSON-serialisable via :meth:`to_dict`.

    ``duplicates_old`` / ``duplicates_new`` count entity ids that came back more than once
    within one chunk of a side; their rows are left out of the comparison (never aligned to an
    arbitrary one of them) and the verdict cannot pass.
    """

    group: str
    verdict: Verdict
    threshold: float
    features: dict[str, FeatureStats]
    entities_requested: int | None = None
    entities_old: int = 0
    entities_new: int = 0
    entities_both: int = 0
    missing_in_new: int = 0
    missing_in_old: int = 0
    missing_in_new_samples: list[str] = field(default_factory=list)
    missing_in_old_samples: list[str] = field(default_factory=list)
    duplicates_old: int = 0
    duplicates_new: int = 0
    duplicates_old_samples: list[str] = field(default_factory=list)
    duplicates_new_samples: list[str] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    staleness_s: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    logical_time: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    shard: str | None = None
    flags: Any = field(default=None, repr=False)  # pandas-free: dict of numpy arrays, or None
    causes: list[RootCause] = field(default_factory=list)
    # the entities the diagnosis replays (bounded; see compare.causes.DIAGNOSIS_SAMPLE)
    mismatch_sample: dict[str, list[str]] = field(default_factory=dict, repr=False)
    control_sample: list[str] = field(default_factory=list, repr=False)

    @property
    def entities_compared(self) -> int:
        """Entities at least one side has: the population the verdict speaks for."""
        return self.entities_both + self.missing_in_new + self.missing_in_old

    @property
    def match_rate(self) -> float | None:
        total = sum(f.total for f in self.features.values())
        return sum(f.agreeing for f in self.features.values()) / total if total else None

    @property
    def raw_match_rate(self) -> float | None:
        """The overall rate before the expected churn is subtracted (lagging values still agree)."""
        total = sum(f.total for f in self.features.values())
        return sum(f.matched + f.lagging for f in self.features.values()) / total if total else None

    @property
    def mismatched_values(self) -> int:
        return sum(f.mismatched + f.missing_in_new + f.missing_in_old for f in self.features.values())

    def feature_rates(self) -> dict[str, float | None]:
        return {name: f.match_rate for name, f in self.features.items()}

    def to_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "group": self.group,
            "run_id": self.run_id,
            "verdict": str(self.verdict),
            "threshold": self.threshold,
            "match_rate": self.match_rate,
            "raw_match_rate": self.raw_match_rate,
            "entities_requested": self.entities_requested,
            "entities_compared": self.entities_compared,
            "entities_old": self.entities_old,
            "entities_new": self.entities_new,
            "entities_both": self.entities_both,
            "missing_in_new": self.missing_in_new,
            "missing_in_old": self.missing_in_old,
            "missing_in_new_samples": list(self.missing_in_new_samples),
            "missing_in_old_samples": list(self.missing_in_old_samples),
            "duplicates_old": self.duplicates_old,
            "duplicates_new": self.duplicates_new,
            "duplicates_old_samples": list(self.duplicates_old_samples),
            "duplicates_new_samples": list(self.duplicates_new_samples),
            "features": {k: v.to_dict() for k, v in self.features.items()},
            "causes": [c.to_dict() for c in self.causes],
            "explanations": [e.to_dict() for e in self.explanations],
            "reasons": list(self.reasons),
            "errors": list(self.errors),
            "staleness_s": self.staleness_s,
            "logical_time": iso(self.logical_time),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "shard": self.shard,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComparisonResult:
        def ts(v: str | None) -> datetime | None:
            return datetime.fromisoformat(v) if v else None

        return cls(
            group=data["group"],
            verdict=Verdict(data["verdict"]),
            threshold=float(data["threshold"]),
            features={k: FeatureStats.from_dict(v) for k, v in data.get("features", {}).items()},
            entities_requested=data.get("entities_requested"),
            entities_old=data.get("entities_old", 0),
            entities_new=data.get("entities_new", 0),
            entities_both=data.get("entities_both", 0),
            missing_in_new=data.get("missing_in_new", 0),
            missing_in_old=data.get("missing_in_old", 0),
            missing_in_new_samples=data.get("missing_in_new_samples", []),
            missing_in_old_samples=data.get("missing_in_old_samples", []),
            duplicates_old=data.get("duplicates_old", 0),
            duplicates_new=data.get("duplicates_new", 0),
            duplicates_old_samples=data.get("duplicates_old_samples", []),
            duplicates_new_samples=data.get("duplicates_new_samples", []),
            explanations=[Explanation.from_dict(e) for e in data.get("explanations", [])],
            causes=[RootCause.from_dict(c) for c in data.get("causes", [])],
            reasons=data.get("reasons", []),
            errors=data.get("errors", []),
            staleness_s=data.get("staleness_s"),
            run_id=data.get("run_id") or uuid.uuid4().hex,
            logical_time=ts(data.get("logical_time")),
            started_at=ts(data.get("started_at")),
            finished_at=ts(data.get("finished_at")),
            shard=data.get("shard"),
        )

    def summary(self) -> str:
        """A few human lines: verdict, overall and per-feature rates, explanations."""
        rate = self.match_rate
        lines = [
            f"group {self.group}: {self.verdict.upper()}  match rate "
            f"{'n/a' if rate is None else f'{rate:.4%}'} (threshold {self.threshold:.2%}), "
            f"{self.entities_compared} entities compared"
            + (f" of {self.entities_requested} requested" if self.entities_requested is not None else "")
        ]
        for c in self.causes:
            lines.append(f"  cause: {c.headline()}")
            lines.append(f"      fix: {c.fix}")
            if c.rewrite is not None and c.rewrite.diff:
                lines.extend("      " + d for d in c.rewrite.diff.splitlines())
        for reason in self.reasons:
            lines.append(f"  reason: {reason}")
        for name, f in self.features.items():
            r = f.match_rate
            note = ""
            if f.noise:
                note = (
                    f" (raw mismatch {f.raw_mismatch_rate:.4%}, churn {(f.churn or 0):.4%} subtracted:"
                    f" {f.adjusted_mismatch_rate:.4%})"
                )
            lines.append(
                f"  {name:<32} {'n/a' if r is None else f'{r:8.4%}'}  mismatched {f.mismatched}"
                f"  lagging {f.lagging}{note}"
            )
        for e in self.explanations:
            lines.append(f"  - [{e.kind}] {e.feature or '*'}: {e.rows} rows ({e.share:.0%}): {e.evidence}")
            lines.append(f"      fix: {e.fix}")
        return "\n".join(lines)


def verdict_of(result: ComparisonResult) -> tuple[Verdict, list[str]]:
    """Pass only when everything ran, enough entities were compared and every rate clears the bar.

    Duplicate entity ids in the new store fail the run (the store would serve one of several
    rows); duplicates only in the old store leave it inconclusive (the reference is ambiguous).
    """
    reasons: list[str] = []
    if result.errors:
        return Verdict.INCONCLUSIVE, [*result.errors, "a side could not be read: never a pass"]
    dup_reasons = [
        f"{n} entity id(s) appear more than once in the {side} store's rows "
        f"(e.g. {', '.join(samples[:3])}): their rows were not compared"
        for side, n, samples in (
            ("new", result.duplicates_new, result.duplicates_new_samples),
            ("old", result.duplicates_old, result.duplicates_old_samples),
        )
        if n
    ]
    if result.duplicates_new:
        reasons.extend(dup_reasons)
    elif result.duplicates_old:
        return Verdict.INCONCLUSIVE, dup_reasons
    if result.entities_compared == 0:
        return (Verdict.FAIL if reasons else Verdict.INCONCLUSIVE), [
            *reasons,
            "no entities were compared: neither store returned any of them",
        ]
    if result.entities_requested is not None and result.entities_compared < result.entities_requested:
        short = (
            f"only {result.entities_compared} of {result.entities_requested} requested entities were compared"
        )
        return (Verdict.FAIL if reasons else Verdict.INCONCLUSIVE), [*reasons, short]
    rate = result.match_rate
    assert rate is not None
    if rate < result.threshold:
        reasons.append(f"overall match rate {rate:.4%} is below the threshold {result.threshold:.2%}")
    for name, stats in result.features.items():
        r = stats.match_rate
        if r is not None and r < result.threshold:
            reasons.append(
                f"feature {name}: match rate {r:.4%} is below the threshold {result.threshold:.2%}"
            )
    return (Verdict.FAIL if reasons else Verdict.PASS), reasons
