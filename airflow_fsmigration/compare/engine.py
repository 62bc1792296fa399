"""The vectorised comparison engine: old vs new Arrow frames of one group, with tolerances.

Both sides are frames of the shape in :mod:`airflow_fsmigration.stores.frames` (``entity_id``,
one column per feature, ``_source_ts``). Rows are aligned by ``entity_id`` with one Arrow hash
lookup, each feature is compared with numpy over whole columns, and only the *mismatching* rows
are classified further (null vs zero, scale, offset, ...), so the cost is a few passes over
memory per feature and no Python loop per row.

A group of any size is compared in chunks through :class:`ComparisonAccumulator`, which keeps
only counts, small bounded counters and bounded samples: memory does not grow with the group.
The old store is the reference: tolerances are ``|new - old| <= atol + rtol * |old|``.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS

if TYPE_CHECKING:
    from airflow_fsmigration.compare.explain import Explanation
    from airflow_fsmigration.compare.noise import NoiseFloor
    from airflow_fsmigration.plan.model import Feature, FeatureGroup, Settings

#: Per-entity, per-feature status codes (kept for GX when flags are on).
MATCH, MISMATCH, LAGGING, MISSING_IN_NEW, MISSING_IN_OLD = 0, 1, 2, 3, 4
STATUS_NAMES = ("match", "mismatch", "lagging", "missing_in_new", "missing_in_old")

# Bounds on what one feature keeps, whatever the group size.
WORST_K = 10
SAMPLES_PER_CATEGORY = 5
DELTA_SAMPLE = 2000
COUNTER_CAP = 64
MISSING_SAMPLES = 20

# Ratios that are unit conversions rather than data errors (cents, ms, percent, minutes ...).
_UNITS = (10.0, 100.0, 1000.0, 1e4, 1e6, 1e9, 60.0, 3600.0, 86400.0, 1024.0)
UNIT_RATIOS: tuple[float, ...] = _UNITS + tuple(1.0 / r for r in _UNITS)


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


class BoundedCounter:
    """A counter of at most ``cap`` keys; what falls off is counted in ``overflow``, never lost."""

    def __init__(self, cap: int = COUNTER_CAP) -> None:
        self.cap = cap
        self.counts: Counter[float] = Counter()
        self.overflow = 0

    def add_array(self, values: np.ndarray) -> None:
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
    """

    name: str
    dtype: str
    atol: float = 0.0
    rtol: float = 0.0
    null_policy: str = "null_equals_null"
    compared: int = 0
    matched: int = 0
    lagging: int = 0
    mismatched: int = 0
    missing_in_new: int = 0
    missing_in_old: int = 0
    nulls_old: int = 0
    nulls_new: int = 0
    noise: bool = False
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
    def agreeing(self) -> int:
        """Values that count as agreeing: matches, lagging values, and mismatches within the noise floor."""
        return self.matched + self.lagging + (self.mismatched if self.noise else 0)

    @property
    def match_rate(self) -> float | None:
        return self.agreeing / self.total if self.total else None

    @property
    def raw_match_rate(self) -> float | None:
        return self.matched / self.total if self.total else None

    @property
    def mismatch_rate(self) -> float | None:
        """Real mismatches among values both sides have (what the noise floor is compared with)."""
        return self.mismatched / self.compared if self.compared else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["categories"] = {Category(k).name.lower(): v for k, v in self.categories.items()}
        data["params"] = {Category(k).name.lower(): c.to_dict() for k, c in self.params.items()}
        data["samples"] = {Category(k).name.lower(): v for k, v in self.samples.items()}
        data.update(total=self.total, match_rate=self.match_rate, mismatch_rate=self.mismatch_rate)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["categories"] = {int(Category[k.upper()]): v for k, v in data.get("categories", {}).items()}
        known["params"] = {
            int(Category[k.upper()]): BoundedCounter.from_dict(v) for k, v in data.get("params", {}).items()
        }
        known["samples"] = {int(Category[k.upper()]): v for k, v in data.get("samples", {}).items()}
        return cls(**known)


@dataclass
class ComparisonResult:
    """One shadow comparison of a group; JSON-serialisable via :meth:`to_dict`."""

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

    @property
    def entities_compared(self) -> int:
        """Entities at least one side has: the population the verdict speaks for."""
        return self.entities_both + self.missing_in_new + self.missing_in_old

    @property
    def match_rate(self) -> float | None:
        total = sum(f.total for f in self.features.values())
        return sum(f.agreeing for f in self.features.values()) / total if total else None

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
            "entities_requested": self.entities_requested,
            "entities_compared": self.entities_compared,
            "entities_old": self.entities_old,
            "entities_new": self.entities_new,
            "entities_both": self.entities_both,
            "missing_in_new": self.missing_in_new,
            "missing_in_old": self.missing_in_old,
            "missing_in_new_samples": list(self.missing_in_new_samples),
            "missing_in_old_samples": list(self.missing_in_old_samples),
            "features": {k: v.to_dict() for k, v in self.features.items()},
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
        from airflow_fsmigration.compare.explain import Explanation

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
            explanations=[Explanation.from_dict(e) for e in data.get("explanations", [])],
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
        for reason in self.reasons:
            lines.append(f"  reason: {reason}")
        for name, f in self.features.items():
            r = f.match_rate
            note = " (within noise floor)" if f.noise else ""
            lines.append(
                f"  {name:<32} {'n/a' if r is None else f'{r:8.4%}'}  mismatched {f.mismatched}"
                f"  lagging {f.lagging}{note}"
            )
        for e in self.explanations:
            lines.append(f"  - [{e.kind}] {e.feature or '*'}: {e.rows} rows ({e.share:.0%}): {e.evidence}")
            lines.append(f"      fix: {e.fix}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- column helpers


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)


def _numeric(arr: pa.Array, dtype: str) -> np.ndarray:
    """Values as numpy with nulls filled (the null mask is kept separately)."""
    if dtype == "timestamp":
        arr = arr.cast(pa.timestamp("us", tz="UTC")) if arr.type != pa.timestamp("us", tz="UTC") else arr
        ints = pc.fill_null(arr.cast(pa.int64()), 0)
        return ints.to_numpy(zero_copy_only=False)
    if dtype == "int64":
        return pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    if dtype == "bool":
        return np.asarray(
            pc.fill_null(arr.cast(pa.bool_()), False).to_numpy(zero_copy_only=False), dtype=bool
        )
    return pc.fill_null(arr.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)


def _py(value: Any) -> Any:
    """A JSON-friendly scalar."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _significant(x: np.ndarray, digits: int = 9) -> np.ndarray:
    """``x`` rounded to ``digits`` significant digits (vectorised), for counting repeated values."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        mag = np.where(x != 0, np.floor(np.log10(np.abs(x))), 0.0)
        scale = 10.0 ** (digits - 1 - mag)
        out = np.round(x * scale) / scale
    return np.where(np.isfinite(out), out, x)


def _precision_digits(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """For each pair, the decimals k at which one side looks like the other rounded or truncated.

    -1 = not a precision effect; 15 = float noise below 1e-9 relative; 7 = a float32 round trip
    (checked before the decimals 1..6, which need exactly one side to have at most k decimals).
    """
    out = np.full(old.shape, -1, dtype=np.int64)
    delta = np.abs(new - old)
    scale = np.maximum(np.abs(old), np.abs(new))
    with np.errstate(invalid="ignore", over="ignore"):
        out[(delta <= 1e-9 * scale) & (delta > 0)] = 15
        f32 = (new.astype(np.float32).astype(np.float64) == new) | (
            old.astype(np.float32).astype(np.float64) == old
        )
        out[(out < 0) & f32 & (delta <= 1e-6 * scale)] = 7
        for k in range(1, 7):
            s = 10.0**k

            def at_k(x: np.ndarray, s: float = s) -> np.ndarray:
                xs = x * s
                return np.abs(xs - np.rint(xs)) <= 1e-6 * np.maximum(1.0, np.abs(xs))

            new_k, old_k = at_k(new), at_k(old)
            # exactly one side has at most k decimals, and they are within one unit of the k-th decimal
            hit = (out < 0) & (new_k != old_k) & (delta < (10.0**-k) * (1 + 1e-9))
            out[hit] = k
    return out


# --------------------------------------------------------------------------- accumulator


class ComparisonAccumulator:
    """Compare a group chunk by chunk with bounded memory; :meth:`result` gives the verdict.

    Each ``add(old_chunk, new_chunk)`` must cover one set of entities (the same ids asked of
    both sides); an entity must not appear in two chunks. Keeps per-entity status flags only
    while the number of entities stays below ``flags_cap`` (they feed the GX validation).
    """

    def __init__(
        self,
        group: FeatureGroup,
        *,
        settings: Settings | None = None,
        threshold: float | None = None,
        staleness: timedelta | None = None,
        noise: NoiseFloor | None = None,
        requested: int | None = None,
        keep_flags: bool = True,
        flags_cap: int = 2_000_000,
    ) -> None:
        self.group = group
        if threshold is None:
            threshold = settings.consistency_threshold if settings is not None else 0.995
        self.threshold = float(threshold)
        self.staleness = staleness if staleness is not None else group.sla.max_staleness
        self.noise = noise
        self.requested = requested
        self.features = {
            f.name: FeatureStats(
                name=f.name,
                dtype=str(f.dtype),
                atol=f.atol,
                rtol=f.rtol,
                null_policy=str(f.null_policy),
            )
            for f in group.features
        }
        self.entities_old = self.entities_new = self.entities_both = 0
        self.missing_in_new = self.missing_in_old = 0
        self.missing_in_new_samples: list[str] = []
        self.missing_in_old_samples: list[str] = []
        self.errors: list[str] = []
        self.started_at = datetime.now(UTC)
        self.keep_flags = keep_flags
        self.flags_cap = flags_cap
        self._flag_ids: list[pa.Array] = []
        self._flags: dict[str, list[np.ndarray]] = {f.name: [] for f in group.features}

    # -- input

    def mark_unreadable(self, side: str, reason: str) -> None:
        """Record that a side could not be read: the verdict can then only be inconclusive."""
        self.errors.append(f"{side} store could not be read: {reason}")

    def add(self, old: pa.Table, new: pa.Table) -> None:
        """Compare one chunk: the same requested entities, as each side returned them."""
        old_ids = _column(old, ENTITY)
        new_ids = _column(new, ENTITY)
        self.entities_old += len(old_ids)
        self.entities_new += len(new_ids)

        if len(old_ids) == len(new_ids) and (len(old_ids) == 0 or old_ids.equals(new_ids)):
            old_take = new_take = None  # same ids in the same order: no join needed
            both = len(old_ids)
            old_missing_mask = np.zeros(len(old_ids), dtype=bool)
            new_missing_mask = np.zeros(len(new_ids), dtype=bool)
        else:
            pos = pc.index_in(new_ids, value_set=old_ids)  # position in old of each new row
            in_old = _valid(pos)
            new_take = np.flatnonzero(in_old)
            old_take = (
                pos.to_numpy(zero_copy_only=False)[new_take].astype(np.int64) if len(new_take) else None
            )
            if old_take is None:
                old_take = np.empty(0, dtype=np.int64)
            old_missing_mask = np.ones(len(old_ids), dtype=bool)
            old_missing_mask[old_take] = False
            new_missing_mask = ~in_old
            both = len(new_take)
        n_missing_new = int(old_missing_mask.sum())
        n_missing_old = int(new_missing_mask.sum())
        self.entities_both += both
        self.missing_in_new += n_missing_new
        self.missing_in_old += n_missing_old
        if n_missing_new and len(self.missing_in_new_samples) < MISSING_SAMPLES:
            ids = old_ids.filter(pa.array(old_missing_mask)).slice(0, MISSING_SAMPLES).to_pylist()
            self.missing_in_new_samples.extend(ids[: MISSING_SAMPLES - len(self.missing_in_new_samples)])
        if n_missing_old and len(self.missing_in_old_samples) < MISSING_SAMPLES:
            ids = new_ids.filter(pa.array(new_missing_mask)).slice(0, MISSING_SAMPLES).to_pylist()
            self.missing_in_old_samples.extend(ids[: MISSING_SAMPLES - len(self.missing_in_old_samples)])

        def aligned(table: pa.Table, name: str, take: np.ndarray | None) -> pa.Array:
            col = _column(table, name)
            return col if take is None else col.take(pa.array(take, type=pa.int64()))

        ids = aligned(new, ENTITY, new_take)
        lag = self._lag_mask(old, new, old_take, new_take, both)

        keep = (
            self.keep_flags
            and (self.entities_both + self.missing_in_new + self.missing_in_old) <= self.flags_cap
        )
        if keep:
            self._flag_ids += [ids]
            if n_missing_new:
                self._flag_ids.append(old_ids.filter(pa.array(old_missing_mask)))
            if n_missing_old:
                self._flag_ids.append(new_ids.filter(pa.array(new_missing_mask)))
        elif self.keep_flags:  # over the cap: drop what was kept, flags are all or nothing
            self._flag_ids, self._flags = [], {k: [] for k in self._flags}
            self.keep_flags = False

        for feature in self.group.features:
            stats = self.features[feature.name]
            stats.missing_in_new += n_missing_new
            stats.missing_in_old += n_missing_old
            a = aligned(old, feature.name, old_take)
            b = aligned(new, feature.name, new_take)
            status = self._compare_feature(feature, stats, a, b, ids, lag)
            if keep:
                self._flags[feature.name].append(status)
                if n_missing_new:
                    self._flags[feature.name].append(np.full(n_missing_new, MISSING_IN_NEW, dtype=np.int8))
                if n_missing_old:
                    self._flags[feature.name].append(np.full(n_missing_old, MISSING_IN_OLD, dtype=np.int8))

    def _lag_mask(
        self,
        old: pa.Table,
        new: pa.Table,
        old_take: np.ndarray | None,
        new_take: np.ndarray | None,
        both: int,
    ) -> np.ndarray | None:
        """Rows whose two source times differ, but by no more than the staleness SLA.

        Equal source times mean both sides saw the same events, so a difference there is real;
        no source time on a side means lag cannot be claimed.
        """
        if SOURCE_TS not in old.column_names or SOURCE_TS not in new.column_names or not both:
            return None
        a = _column(old, SOURCE_TS)
        b = _column(new, SOURCE_TS)
        if old_take is not None:
            a = a.take(pa.array(old_take, type=pa.int64()))
            b = b.take(pa.array(new_take, type=pa.int64()))
        valid = _valid(a) & _valid(b)
        if not valid.any():
            return None
        gap = np.abs(_numeric(b, "timestamp") - _numeric(a, "timestamp"))
        limit = int(self.staleness.total_seconds() * 1_000_000)
        return valid & (gap > 0) & (gap <= limit)

    def _compare_feature(
        self,
        feature: Feature,
        stats: FeatureStats,
        a: pa.Array,
        b: pa.Array,
        ids: pa.Array,
        lag: np.ndarray | None,
    ) -> np.ndarray:
        dtype = str(feature.dtype)
        n = len(a)
        a_ok, b_ok = _valid(a), _valid(b)
        stats.compared += n
        stats.nulls_old += int(n - a_ok.sum())
        stats.nulls_new += int(n - b_ok.sum())
        if dtype == "string":
            av, bv = a, b
            eq = np.asarray(pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False), dtype=bool)
            a_zero = np.asarray(
                pc.fill_null(pc.equal(a, ""), False).to_numpy(zero_copy_only=False), dtype=bool
            )
            b_zero = np.asarray(
                pc.fill_null(pc.equal(b, ""), False).to_numpy(zero_copy_only=False), dtype=bool
            )
        else:
            av, bv = _numeric(a, dtype), _numeric(b, dtype)
            a_zero, b_zero = a_ok & (av == 0), b_ok & (bv == 0)
            if dtype in ("bool",) or (feature.atol == 0 and feature.rtol == 0 and dtype != "float64"):
                eq = av == bv
            else:
                af, bf = av.astype(np.float64), bv.astype(np.float64)
                atol = feature.atol * (1_000_000 if dtype == "timestamp" else 1)
                with np.errstate(invalid="ignore"):
                    eq = (np.abs(bf - af) <= atol + feature.rtol * np.abs(af)) | (af == bf)
                if dtype == "float64":
                    eq |= np.isnan(af) & np.isnan(bf)
        both_ok = a_ok & b_ok
        both_null = ~a_ok & ~b_ok
        policy = feature.null_policy
        if policy == "nulls_never_match":
            match = both_ok & eq
        elif policy == "null_equals_zero":
            match = (both_ok & eq) | both_null | (~a_ok & b_zero) | (a_zero & ~b_ok)
        else:
            match = (both_ok & eq) | both_null
        status = np.where(match, MATCH, MISMATCH).astype(np.int8)
        mismatch = ~match
        if lag is not None:
            lagging = mismatch & lag
            status[lagging] = LAGGING
            n_lag = int(lagging.sum())
            mismatch &= ~lag
        else:
            n_lag = 0
        n_mm = int(mismatch.sum())
        stats.lagging += n_lag
        stats.mismatched += n_mm
        stats.matched += n - n_lag - n_mm
        if n_mm:
            idx = np.flatnonzero(mismatch)
            self._classify(feature, stats, idx, av, bv, a_ok, b_ok, a_zero, b_zero, ids)
        return status

    def _classify(
        self,
        feature: Feature,
        stats: FeatureStats,
        idx: np.ndarray,
        av: Any,
        bv: Any,
        a_ok: np.ndarray,
        b_ok: np.ndarray,
        a_zero: np.ndarray,
        b_zero: np.ndarray,
        ids: pa.Array,
    ) -> None:
        """Give each mismatching value a category and keep bounded evidence for explanations."""
        dtype = str(feature.dtype)
        m = len(idx)
        ao, bo, az, bz = a_ok[idx], b_ok[idx], a_zero[idx], b_zero[idx]
        cat = np.full(m, Category.OTHER, dtype=np.int8)
        par = np.full(m, np.nan)
        delta = np.full(m, np.nan)
        cat[~ao & ~bo] = Category.BOTH_NULL
        cat[~ao & bz] = Category.NULL_OLD_ZERO_NEW
        cat[~ao & bo & ~bz] = Category.NULL_OLD
        cat[az & ~bo] = Category.ZERO_OLD_NULL_NEW
        cat[ao & ~az & ~bo] = Category.NULL_NEW
        both = np.flatnonzero(ao & bo)
        old_vals = new_vals = None
        if len(both):
            sel = idx[both]
            if dtype == "string":
                sa, sb = av.take(pa.array(sel)), bv.take(pa.array(sel))
                norm_a = pc.utf8_lower(pc.utf8_trim_whitespace(sa))
                norm_b = pc.utf8_lower(pc.utf8_trim_whitespace(sb))
                fmt = np.asarray(pc.equal(norm_a, norm_b).to_numpy(zero_copy_only=False), dtype=bool)
                cat[both[fmt]] = Category.STRING_FORMAT
                old_vals, new_vals = sa.to_pylist(), sb.to_pylist()
            elif dtype == "bool":
                old_vals, new_vals = av[sel].tolist(), bv[sel].tolist()
            else:
                o = av[sel].astype(np.float64)
                nw = bv[sel].astype(np.float64)
                if dtype == "timestamp":
                    o, nw = o / 1e6, nw / 1e6
                d = nw - o
                delta[both] = d
                c = np.full(len(both), Category.OTHER, dtype=np.int8)
                p = _significant(d)  # float noise must not split one offset into many
                free = np.ones(len(both), dtype=bool)
                if dtype == "timestamp":
                    hit = (d != 0) & (np.mod(d, 900.0) == 0) & (np.abs(d) <= 26 * 3600)
                    c[hit], free[hit] = Category.TZ_SHIFT, False
                else:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = np.where(o != 0, nw / o, np.nan)
                    for unit in UNIT_RATIOS:
                        hit = free & np.isclose(ratio, unit, rtol=1e-6, atol=0.0)
                        c[hit], p[hit], free[hit] = Category.SCALE, unit, False
                    if dtype == "int64":
                        hit = free & (np.abs(d) == 1)
                        c[hit], free[hit] = Category.OFF_BY_ONE, False
                    k = np.rint(ratio)
                    with np.errstate(invalid="ignore"):
                        hit = free & (o > 0) & (k >= 2) & (k <= 10) & (np.abs(ratio - k) <= 1e-9 * np.abs(k))
                    c[hit], p[hit], free[hit] = Category.DUPLICATE, k[hit], False
                    if dtype == "float64":
                        digits = _precision_digits(o, nw)
                        hit = free & (digits >= 0)
                        c[hit], p[hit], free[hit] = Category.PRECISION, digits[hit], False
                rest = free & np.isfinite(d)
                stats.positive += int((rest & (d > 0)).sum())
                stats.negative += int((rest & (d < 0)).sum())
                cat[both], par[both] = c, p
                if dtype == "timestamp":
                    old_vals = av[sel].astype("datetime64[us]").astype(str).tolist()
                    new_vals = bv[sel].astype("datetime64[us]").astype(str).tolist()
                else:
                    old_vals, new_vals = av[sel].tolist(), bv[sel].tolist()

        # counts, parameters and samples per category
        codes, counts = np.unique(cat, return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            stats.categories[code] = stats.categories.get(code, 0) + int(count)
            rows = np.flatnonzero(cat == code)
            kept = stats.samples.setdefault(code, [])
            if len(kept) < SAMPLES_PER_CATEGORY:
                take = rows[: SAMPLES_PER_CATEGORY - len(kept)]
                kept.extend(ids.take(pa.array(idx[take])).to_pylist())
            values = par[rows]
            values = values[np.isfinite(values)]
            if values.size:
                stats.params.setdefault(code, BoundedCounter()).add_array(values)

        # worst deltas and a bounded delta sample (numeric), else first examples
        if len(both):
            finite = np.flatnonzero(np.isfinite(delta[both]))
            if finite.size:
                d = delta[both][finite]
                if len(stats.deltas) < DELTA_SAMPLE:
                    stats.deltas.extend(d[: DELTA_SAMPLE - len(stats.deltas)].tolist())
                top = finite[np.argsort(-np.abs(d), kind="stable")[:WORST_K]]
            else:
                top = np.arange(min(WORST_K, len(both)))
            top_ids = ids.take(pa.array(idx[both[top]])).to_pylist()
            for j, eid in zip(top.tolist(), top_ids, strict=True):
                dv = delta[both[j]]
                stats.worst.append(
                    {
                        "entity_id": eid,
                        "old": _py(old_vals[j]) if old_vals is not None else None,
                        "new": _py(new_vals[j]) if new_vals is not None else None,
                        "delta": None if not math.isfinite(dv) else float(dv),
                    }
                )
            stats.worst.sort(key=lambda w: -abs(w["delta"] or 0.0))
            del stats.worst[WORST_K:]

    # -- output

    def status_flags(self) -> dict[str, Any] | None:
        """Per-entity status codes per feature (``entity_id`` -> Arrow array), if they were kept."""
        if not self.keep_flags:
            return None
        ids = pa.concat_arrays(self._flag_ids) if self._flag_ids else pa.array([], pa.string())
        out: dict[str, Any] = {ENTITY: ids}
        for name, parts in self._flags.items():
            out[name] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int8)
        return out

    def result(self, *, logical_time: datetime | None = None, shard: str | None = None) -> ComparisonResult:
        from airflow_fsmigration.compare.explain import explain

        if self.noise is not None:
            for stats in self.features.values():
                self.noise.apply(stats)
        result = ComparisonResult(
            group=self.group.name,
            verdict=Verdict.INCONCLUSIVE,
            threshold=self.threshold,
            features=self.features,
            entities_requested=self.requested,
            entities_old=self.entities_old,
            entities_new=self.entities_new,
            entities_both=self.entities_both,
            missing_in_new=self.missing_in_new,
            missing_in_old=self.missing_in_old,
            missing_in_new_samples=self.missing_in_new_samples,
            missing_in_old_samples=self.missing_in_old_samples,
            errors=list(self.errors),
            staleness_s=self.staleness.total_seconds(),
            logical_time=logical_time,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            shard=shard,
            flags=self.status_flags(),
        )
        result.explanations = explain(result)
        result.verdict, result.reasons = _verdict(result)
        return result


def _verdict(result: ComparisonResult) -> tuple[Verdict, list[str]]:
    """Pass only when everything ran, enough entities were compared and every rate clears the bar."""
    reasons: list[str] = []
    if result.errors:
        return Verdict.INCONCLUSIVE, [*result.errors, "a side could not be read: never a pass"]
    if result.entities_compared == 0:
        return Verdict.INCONCLUSIVE, ["no entities were compared: neither store returned any of them"]
    if result.entities_requested is not None and result.entities_compared < result.entities_requested:
        return Verdict.INCONCLUSIVE, [
            f"only {result.entities_compared} of {result.entities_requested} requested entities were compared"
        ]
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


def compare_tables(
    group: FeatureGroup,
    old: pa.Table | None,
    new: pa.Table | None,
    *,
    settings: Settings | None = None,
    staleness: timedelta | None = None,
    noise: NoiseFloor | None = None,
    requested: int | None = None,
    threshold: float | None = None,
    logical_time: datetime | None = None,
) -> ComparisonResult:
    """Compare two whole frames of ``group`` (old = legacy store, new = new store).

    ``None`` for a side means it could not be read: the result is inconclusive, never a pass.
    ``threshold`` defaults to ``settings.consistency_threshold`` (pass the plan's
    ``plan.settings_for(group)``), else 0.995.
    """
    acc = ComparisonAccumulator(
        group, settings=settings, threshold=threshold, staleness=staleness, noise=noise, requested=requested
    )
    if old is None or new is None:
        for side, table in (("old", old), ("new", new)):
            if table is None:
                acc.mark_unreadable(side, "no data")
    else:
        acc.add(old, new)
    return acc.result(logical_time=logical_time)
