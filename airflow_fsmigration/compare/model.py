"""The comparison's vocabulary: verdicts, categories, status codes and what is kept per feature.

Plain data classes only, importing nothing else of :mod:`airflow_fsmigration.compare`, so the
engine, the explanations, the noise floor, the reports and the gates can all share them without
an import circle. :class:`~airflow_fsmigration.compare.result.ComparisonResult` builds on them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

#: Per-entity, per-feature status codes (kept for GX when flags are on).
MATCH, MISMATCH, LAGGING, MISSING_IN_NEW, MISSING_IN_OLD = 0, 1, 2, 3, 4
STATUS_NAMES = ("match", "mismatch", "lagging", "missing_in_new", "missing_in_old")

# Bounds on what one feature keeps, whatever the group size.
WORST_K = 10
SAMPLES_PER_CATEGORY = 5
DELTA_SAMPLE = 2000
COUNTER_CAP = 64
MISSING_SAMPLES = 20


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Category(IntEnum):
    """What a single mismatching value looks like; explanations aggregate these."""

    NULL_OLD_ZERO_NEW = 1
    ZERO_OLD_NULL_NEW = 2
    NULL_OLD = 3
    NULL_NEW = 4
    BOTH_NULL = 5
    SCALE = 6
    TZ_SHIFT = 7
    OFF_BY_ONE = 8
    DUPLICATE = 9
    PRECISION = 10
    STRING_FORMAT = 11
    OTHER = 12
    UNDECODABLE = 13  # the old store holds a value its plan dtype/encoding cannot decode
    LAG_WRONG_WAY = 14  # source times within the SLA, but the older side is ahead: not lag


class Kind(StrEnum):
    """The kinds of explanation (see :mod:`airflow_fsmigration.compare.explain`)."""

    MISSING_IN_NEW = "missing_in_new"
    MISSING_IN_OLD = "missing_in_old"
    DUPLICATE_IDS = "duplicate_ids"
    UNDECODABLE = "undecodable"
    NULL_VS_ZERO = "null_vs_zero"
    NULL_VS_VALUE = "null_vs_value"
    TIMEZONE_SHIFT = "timezone_shift"
    CONSTANT_OFFSET = "constant_offset"
    SCALE_FACTOR = "scale_factor"
    OFF_BY_ONE = "off_by_one"
    DUPLICATE_INFLATION = "duplicate_inflation"
    PRECISION = "precision"
    STRING_FORMAT = "string_format"
    LAGGING = "streaming_lag"
    LAG_WRONG_WAY = "lag_wrong_direction"
    NOISE = "noise"
    UNEXPLAINED = "unexplained"


@dataclass
class Explanation:
    """One systematic pattern: which feature, how many rows, what share, why we think so, what to do."""

    kind: Kind
    feature: str | None
    rows: int
    share: float
    evidence: str
    fix: str
    samples: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "feature": self.feature,
            "rows": self.rows,
            "share": self.share,
            "evidence": self.evidence,
            "fix": self.fix,
            "samples": list(self.samples),
            "params": dict(self.params),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        return cls(
            kind=Kind(data["kind"]),
            feature=data.get("feature"),
            rows=int(data["rows"]),
            share=float(data["share"]),
            evidence=data.get("evidence", ""),
            fix=data.get("fix", ""),
            samples=list(data.get("samples", [])),
            params=dict(data.get("params", {})),
        )


class BoundedCounter:
    """A counter of at most ``cap`` keys; what falls off is counted in ``overflow``, never lost."""

    def __init__(self, cap: int = COUNTER_CAP) -> None:
        self.cap = cap
        self.counts: Counter[float] = Counter()
        self.overflow = 0

    def add_array(self, values: np.ndarray) -> None:
        import numpy as np

        if values.size == 0:
            return
        keys, counts = np.unique(values, return_counts=True)
        if len(keys) > self.cap:  # only the most frequent can survive the trim: skip the long tail now
            top = np.argpartition(-counts, self.cap)[: self.cap]
            self.overflow += int(counts.sum() - counts[top].sum())
            keys, counts = keys[top], counts[top]
        for key, count in zip(keys.tolist(), counts.tolist(), strict=True):
            self.counts[float(key)] += int(count)
        self._trim()

    def merge(self, other: BoundedCounter) -> None:
        self.counts.update(other.counts)
        self.overflow += other.overflow
        self._trim()

    def _trim(self) -> None:
        if len(self.counts) > self.cap:
            keep = self.counts.most_common(self.cap)
            self.overflow += sum(self.counts.values()) - sum(c for _, c in keep)
            self.counts = Counter(dict(keep))

    def most_common(self, n: int | None = None) -> list[tuple[float, int]]:
        return self.counts.most_common(n)

    def total(self) -> int:
        return sum(self.counts.values()) + self.overflow

    def to_dict(self) -> dict[str, Any]:
        return {"counts": [[k, v] for k, v in self.counts.most_common()], "overflow": self.overflow}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoundedCounter:
        c = cls()
        c.counts = Counter({float(k): int(v) for k, v in data.get("counts", [])})
        c.overflow = int(data.get("overflow", 0))
        return c


@dataclass
class FeatureStats:
    """Everything kept about one feature: counts, bounded counters and bounded samples.

    ``total`` counts every entity either side has (a missing entity is a missing value);
    ``compared`` only those both sides have. ``matched + lagging + mismatched == compared``.
    ``noise_excused`` of the mismatches are the old store's expected churn, subtracted from the
    mismatch rate (never more than the churn, never an undecodable value); the raw rate stays.
    """

    name: str
    dtype: str
    atol: float = 0.0
    rtol: float = 0.0
    null_policy: str = "null_equals_null"
    old_encoding: str | None = None
    compared: int = 0
    matched: int = 0
    lagging: int = 0
    mismatched: int = 0
    missing_in_new: int = 0
    missing_in_old: int = 0
    nulls_old: int = 0
    nulls_new: int = 0
    undecodable: int = 0
    noise_excused: int = 0
    churn: float | None = None
    categories: dict[int, int] = field(default_factory=dict)
    params: dict[int, BoundedCounter] = field(default_factory=dict)
    samples: dict[int, list[str]] = field(default_factory=dict)
    positive: int = 0  # OTHER mismatches with new > old
    negative: int = 0
    worst: list[dict[str, Any]] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.compared + self.missing_in_new + self.missing_in_old

    @property
    def noise(self) -> bool:
        """Whether any mismatch was subtracted as expected churn."""
        return self.noise_excused > 0

    @property
    def agreeing(self) -> int:
        """Values that count as agreeing: matches, lagging values, and the expected churn."""
        return self.matched + self.lagging + self.noise_excused

    @property
    def match_rate(self) -> float | None:
        """The rate the verdict uses: expected churn subtracted (see :attr:`raw_mismatch_rate`)."""
        return self.agreeing / self.total if self.total else None

    @property
    def raw_match_rate(self) -> float | None:
        return self.matched / self.total if self.total else None

    @property
    def mismatch_rate(self) -> float | None:
        """Real mismatches among values both sides have, before subtracting churn (= raw)."""
        return self.mismatched / self.compared if self.compared else None

    @property
    def raw_mismatch_rate(self) -> float | None:
        return self.mismatch_rate

    @property
    def adjusted_mismatch_rate(self) -> float | None:
        """``max(0, raw mismatch rate - expected churn)``, in whole values."""
        return (self.mismatched - self.noise_excused) / self.compared if self.compared else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["categories"] = {Category(k).name.lower(): v for k, v in self.categories.items()}
        data["params"] = {Category(k).name.lower(): c.to_dict() for k, c in self.params.items()}
        data["samples"] = {Category(k).name.lower(): v for k, v in self.samples.items()}
        data.update(
            total=self.total,
            match_rate=self.match_rate,
            mismatch_rate=self.mismatch_rate,
            raw_mismatch_rate=self.raw_mismatch_rate,
            adjusted_mismatch_rate=self.adjusted_mismatch_rate,
            noise=self.noise,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "noise_excused" not in data and data.get("noise"):
            known["noise_excused"] = int(data.get("mismatched", 0))  # recorded before churn was subtracted
        known["categories"] = {int(Category[k.upper()]): v for k, v in data.get("categories", {}).items()}
        known["params"] = {
            int(Category[k.upper()]): BoundedCounter.from_dict(v) for k, v in data.get("params", {}).items()
        }
        known["samples"] = {int(Category[k.upper()]): v for k, v in data.get("samples", {}).items()}
        return cls(**known)


@dataclass
class NoiseFloor:
    """Per-feature churn: the share of values that changed between two reads of the old store.

    The churn is *subtracted* from a feature's mismatch rate (adjusted = max(0, raw - churn)):
    a feature that churns 1% and mismatches 1.2% still shows 0.2% of real mismatches, and the
    raw rate stays in the result. ``margin`` (default 0) widens the churn if wanted.
    """

    group: str
    churn: dict[str, float]
    compared: int
    interval_s: float
    measured_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    margin: float = 0.0

    def expected(self, feature: str) -> float:
        """The share of ``feature``'s compared values expected to differ by churn alone."""
        return max(0.0, self.churn.get(feature, 0.0)) * (1 + self.margin)

    def apply(self, stats: FeatureStats) -> None:
        """Subtract the expected churn of ``stats`` from its mismatches (in whole values)."""
        stats.churn = self.churn.get(stats.name)
        expected = int(self.expected(stats.name) * stats.compared + 1e-9)
        excusable = (
            stats.mismatched - stats.undecodable - stats.categories.get(int(Category.LAG_WRONG_WAY), 0)
        )
        stats.noise_excused = max(0, min(expected, excusable))

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "churn": dict(self.churn),
            "compared": self.compared,
            "interval_s": self.interval_s,
            "measured_at": self.measured_at.isoformat(),
            "margin": self.margin,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseFloor:
        return cls(
            group=data["group"],
            churn={k: float(v) for k, v in data["churn"].items()},
            compared=int(data["compared"]),
            interval_s=float(data["interval_s"]),
            measured_at=datetime.fromisoformat(data["measured_at"]),
            margin=float(data.get("margin", 0.0)),
        )
