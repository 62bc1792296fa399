"""Root causes: one defect per mismatching entity, reported once with every feature it moves.

Plain data classes (the contract the reports, the CLI, the task messages and the diagnosis
corpus read). A cause is *proven* when a rewrite of the group's definition, replayed on the raw
events for a sample of the mismatching entities, reproduces the legacy values and leaves a
sample of matching entities unchanged; otherwise it is a value pattern, said to be one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Entities kept per comparison for the diagnosis: mismatching ones, and matching controls.
DIAGNOSIS_SAMPLE = 300

#: The vocabulary of causes (``RootCause.kind`` and ``Rewrite.kind``).
CAUSE_KINDS = (
    "time_zone",
    "window_bound",
    "deduplication",
    "null_handling",
    "rounding",
    "unit_scale",
    "lag",
    "late_events",
    "filter",
    "missing_in_new",
    "missing_in_old",
    "transient",
    "unexplained",
)


@dataclass
class Rewrite:
    """A change to the definition and what replaying it did to the sampled entities."""

    kind: str
    description: str
    diff: str
    fixed: int = 0  # mismatching (entity, feature) values of the sample it fixes
    sampled: int = 0  # mismatching values in the replay sample
    control_changed: int = 0  # control entities whose values it changes
    control: int = 0
    sql: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "description": self.description,
            "diff": self.diff,
            "fixed": self.fixed,
            "sampled": self.sampled,
            "control_changed": self.control_changed,
            "control": self.control,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rewrite:
        return cls(
            kind=data["kind"],
            description=data.get("description", ""),
            diff=data.get("diff", ""),
            fixed=int(data.get("fixed", 0)),
            sampled=int(data.get("sampled", 0)),
            control_changed=int(data.get("control_changed", 0)),
            control=int(data.get("control", 0)),
        )


@dataclass
class RootCause:
    """One defect, the entities it explains and its share of each feature's mismatches."""

    kind: str
    entities: int
    features: dict[str, int]
    shares: dict[str, float]
    evidence: str
    fix: str
    proven: bool = False
    rewrite: Rewrite | None = None
    samples: list[str] = field(default_factory=list)

    def headline(self) -> str:
        """One line: the cause, the features it moves, the proof."""
        feats = ", ".join(f"{f} {self.shares.get(f, 0):.0%}" for f in self.features)
        proof = "proven by replay" if self.proven else "value pattern, not proven"
        return f"{self.kind} ({self.entities} entities; {feats}; {proof}): {self.evidence}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "entities": self.entities,
            "features": dict(self.features),
            "shares": dict(self.shares),
            "evidence": self.evidence,
            "fix": self.fix,
            "proven": self.proven,
            "rewrite": self.rewrite.to_dict() if self.rewrite else None,
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RootCause:
        rw = data.get("rewrite")
        return cls(
            kind=data["kind"],
            entities=int(data.get("entities", 0)),
            features={k: int(v) for k, v in (data.get("features") or {}).items()},
            shares={k: float(v) for k, v in (data.get("shares") or {}).items()},
            evidence=data.get("evidence", ""),
            fix=data.get("fix", ""),
            proven=bool(data.get("proven", False)),
            rewrite=Rewrite.from_dict(rw) if rw else None,
            samples=list(data.get("samples", [])),
        )
