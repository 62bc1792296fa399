"""The vectorised comparison engine: old vs new Arrow frames of one group, chunk by chunk.

Both sides are frames of the shape in :mod:`airflow_fsmigration.stores.frames` (``entity_id``,
one column per feature, ``_source_ts``, and from the old-store reader optional
``_undecodable.<feature>`` flags, which are never compared as features). Rows are aligned by
``entity_id`` with one Arrow hash lookup, each feature is compared with numpy over whole columns
(:mod:`~airflow_fsmigration.compare.features`), and only the *mismatching* rows are classified
further (:mod:`~airflow_fsmigration.compare.classify`), so the cost is a few passes over memory
per feature and no Python loop per row.

A group of any size is compared in chunks through :class:`ComparisonAccumulator`, which keeps
only counts, small bounded counters and bounded samples: memory does not grow with the group.
Tolerances are symmetric, ``|new - old| <= atol + rtol * max(|old|, |new|)`` (integers and
timestamps exactly, in integer arithmetic; ``atol`` of a timestamp in seconds), the same rule
and null policy the serving router applies. An entity id that a side returns more than once in
one chunk is never aligned to one of its rows: it is left out and reported (see
:func:`~airflow_fsmigration.compare.result.verdict_of`).

The data classes live in :mod:`~airflow_fsmigration.compare.model` and
:mod:`~airflow_fsmigration.compare.result`; they are re-exported here for callers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_fsmigration.compare.causes import DIAGNOSIS_SAMPLE
from airflow_fsmigration.compare.classify import UNIT_RATIOS
from airflow_fsmigration.compare.features import Lag, column, compare_feature, numeric, valid
from airflow_fsmigration.compare.model import (
    COUNTER_CAP,
    DELTA_SAMPLE,
    LAGGING,
    MATCH,
    MISMATCH,
    MISSING_IN_NEW,
    MISSING_IN_OLD,
    MISSING_SAMPLES,
    SAMPLES_PER_CATEGORY,
    STATUS_NAMES,
    WORST_K,
    BoundedCounter,
    Category,
    FeatureStats,
    NoiseFloor,
    Verdict,
)
from airflow_fsmigration.compare.result import ComparisonResult, verdict_of
from airflow_fsmigration.stores.frames import ENTITY, SOURCE_TS, UNDECODABLE_PREFIX

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, Settings

__all__ = [
    "COUNTER_CAP",
    "DELTA_SAMPLE",
    "LAGGING",
    "MATCH",
    "MISMATCH",
    "MISSING_IN_NEW",
    "MISSING_IN_OLD",
    "SAMPLES_PER_CATEGORY",
    "STATUS_NAMES",
    "UNIT_RATIOS",
    "WORST_K",
    "BoundedCounter",
    "Category",
    "ComparisonAccumulator",
    "ComparisonResult",
    "FeatureStats",
    "NoiseFloor",
    "Verdict",
    "compare_tables",
]


def _duplicated(ids: pa.Array) -> pa.Array | None:
    """The ids that occur more than once in ``ids`` (None when all are unique: the common case)."""
    if len(ids) < 2 or len(pc.unique(ids)) == len(ids):
        return None
    counts = pc.value_counts(ids)
    values, n = counts.field("values"), counts.field("counts")
    return values.filter(pc.greater(n, 1))


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
        legacy = getattr(group, "legacy_online", None)
        encoding = str(legacy.encoding) if legacy is not None else None
        self.features = {
            f.name: FeatureStats(
                name=f.name,
                dtype=str(f.dtype),
                atol=f.atol,
                rtol=f.rtol,
                null_policy=str(f.null_policy),
                old_encoding=encoding,
            )
            for f in group.features
        }
        self.entities_old = self.entities_new = self.entities_both = 0
        # each store's watermark: the newest source time it has shown so far (µs), for lag
        self._watermark_old: int | None = None
        self._watermark_new: int | None = None
        # bounded samples for the diagnosis: entities with a mismatch, and all-matching controls
        self.mismatch_sample: dict[str, list[str]] = {}  # entity -> its mismatching features
        self.control_sample: list[str] = []
        self.missing_in_new = self.missing_in_old = 0
        self.missing_in_new_samples: list[str] = []
        self.missing_in_old_samples: list[str] = []
        self.duplicates = {"old": 0, "new": 0}
        self.duplicate_samples: dict[str, list[str]] = {"old": [], "new": []}
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

    def _note_duplicates(self, side: str, dup_ids: pa.Array) -> None:
        self.duplicates[side] += len(dup_ids)
        kept = self.duplicate_samples[side]
        if len(kept) < MISSING_SAMPLES:
            kept.extend(dup_ids.slice(0, MISSING_SAMPLES - len(kept)).to_pylist())

    def add(self, old: pa.Table, new: pa.Table) -> None:
        """Compare one chunk: the same requested entities, as each side returned them.

        An id a side returns twice is left out of both sides (with all its rows) and counted as
        a duplicate of that side: which of its rows a store serves is undefined.
        """
        self.entities_old += old.num_rows
        self.entities_new += new.num_rows
        old_ids = column(old, ENTITY)
        new_ids = column(new, ENTITY)
        same = len(old_ids) == len(new_ids) and (len(old_ids) == 0 or old_ids.equals(new_ids))
        dup_old = _duplicated(old_ids)
        dup_new = dup_old if same else _duplicated(new_ids)
        if dup_old is not None or dup_new is not None:
            if dup_old is not None:
                self._note_duplicates("old", dup_old)
            if dup_new is not None:
                self._note_duplicates("new", dup_new)
            either = pa.concat_arrays([d for d in (dup_old, dup_new) if d is not None])
            old = old.filter(pc.invert(pc.is_in(column(old, ENTITY), value_set=either)))
            new = new.filter(pc.invert(pc.is_in(column(new, ENTITY), value_set=either)))
            old_ids, new_ids = column(old, ENTITY), column(new, ENTITY)
            same = len(old_ids) == len(new_ids) and (len(old_ids) == 0 or old_ids.equals(new_ids))

        if same:
            old_take = new_take = None  # same ids in the same order: no join needed
            both = len(old_ids)
            old_missing_mask = np.zeros(len(old_ids), dtype=bool)
            new_missing_mask = np.zeros(len(new_ids), dtype=bool)
        else:
            pos = pc.index_in(new_ids, value_set=old_ids)  # position in old of each new row
            in_old = valid(pos)
            new_take = np.flatnonzero(in_old)
            old_take = (
                pos.to_numpy(zero_copy_only=False)[new_take].astype(np.int64)
                if len(new_take)
                else np.empty(0, dtype=np.int64)
            )
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
            col = column(table, name)
            return col if take is None else col.take(pa.array(take, type=pa.int64()))

        ids = aligned(new, ENTITY, new_take)
        lag = self._lag(old, new, old_take, new_take, both)

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

        statuses: list[np.ndarray] = []
        for feature in self.group.features:
            stats = self.features[feature.name]
            stats.missing_in_new += n_missing_new
            stats.missing_in_old += n_missing_old
            a = aligned(old, feature.name, old_take)
            b = aligned(new, feature.name, new_take)
            flag = UNDECODABLE_PREFIX + feature.name
            und = aligned(old, flag, old_take) if flag in old.column_names else None
            status = compare_feature(feature, stats, a, b, ids, lag, und)
            statuses.append(status == MISMATCH)
            if keep:
                self._flags[feature.name].append(status)
                if n_missing_new:
                    self._flags[feature.name].append(np.full(n_missing_new, MISSING_IN_NEW, dtype=np.int8))
                if n_missing_old:
                    self._flags[feature.name].append(np.full(n_missing_old, MISSING_IN_OLD, dtype=np.int8))
        self._sample(ids, statuses)

    def _sample(self, ids: pa.Array, statuses: list[np.ndarray]) -> None:
        """Keep the first DIAGNOSIS_SAMPLE mismatching entities (with their features) and controls."""
        if not statuses or not len(ids):
            return
        matrix = np.vstack(statuses)  # features x rows
        mismatch = matrix.any(axis=0)
        room = DIAGNOSIS_SAMPLE - len(self.mismatch_sample)
        if room > 0 and mismatch.any():
            rows = np.flatnonzero(mismatch)[:room]
            names = [f.name for f in self.group.features]
            for row, eid in zip(rows.tolist(), ids.take(pa.array(rows)).to_pylist(), strict=True):
                self.mismatch_sample[eid] = [n for n, hit in zip(names, matrix[:, row], strict=True) if hit]
        room = DIAGNOSIS_SAMPLE - len(self.control_sample)
        if room > 0 and (~mismatch).any():
            self.control_sample.extend(ids.take(pa.array(np.flatnonzero(~mismatch)[:room])).to_pylist())

    def _lag(
        self,
        old: pa.Table,
        new: pa.Table,
        old_take: np.ndarray | None,
        new_take: np.ndarray | None,
        both: int,
    ) -> Lag | None:
        """Rows whose two source times differ, by no more than the staleness SLA, and which is older.

        Equal source times mean both sides saw the same events, so a difference there is real;
        no source time on a side means lag cannot be claimed. Close timestamps are not enough: a
        row lags only when the leading side's source time is newer than everything the lagging
        store has shown (its watermark, the newest source time over the rows compared so far).
        An event older than that watermark has already been processed by the lagging store, so a
        value still missing it is a defect (a shifted time column moves every source time back by
        the same offset; the rows it leaves "close" are almost all behind the watermark).
        """
        if SOURCE_TS not in old.column_names or SOURCE_TS not in new.column_names or not both:
            return None
        a = column(old, SOURCE_TS)
        b = column(new, SOURCE_TS)
        if old_take is not None:
            a = a.take(pa.array(old_take, type=pa.int64()))
            b = b.take(pa.array(new_take, type=pa.int64()))
        ok = valid(a) & valid(b)
        if not ok.any():
            return None
        ta, tb = numeric(a, "timestamp"), numeric(b, "timestamp")
        wm_a = _newest(ta, valid(a), self._watermark_old)
        wm_b = _newest(tb, valid(b), self._watermark_new)
        self._watermark_old, self._watermark_new = wm_a, wm_b
        gap = np.abs(tb - ta)
        limit = int(self.staleness.total_seconds() * 1_000_000)
        old_older = ta < tb
        # the leading side saw an event the lagging store has not reached yet
        beyond = np.where(
            old_older, tb > (wm_a if wm_a is not None else 0), ta > (wm_b if wm_b is not None else 0)
        )
        return Lag(rows=ok & (gap > 0) & (gap <= limit) & beyond, old_older=old_older)

    # -- output

    def status_flags(self) -> dict[str, object] | None:
        """Per-entity status codes per feature (``entity_id`` -> Arrow array), if they were kept."""
        if not self.keep_flags:
            return None
        ids = pa.concat_arrays(self._flag_ids) if self._flag_ids else pa.array([], pa.string())
        out: dict[str, object] = {ENTITY: ids}
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
            duplicates_old=self.duplicates["old"],
            duplicates_new=self.duplicates["new"],
            duplicates_old_samples=self.duplicate_samples["old"],
            duplicates_new_samples=self.duplicate_samples["new"],
            errors=list(self.errors),
            staleness_s=self.staleness.total_seconds(),
            logical_time=logical_time,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            shard=shard,
            flags=self.status_flags(),
            mismatch_sample=dict(self.mismatch_sample),
            control_sample=list(self.control_sample),
        )
        result.explanations = explain(result)
        result.verdict, result.reasons = verdict_of(result)
        return result


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


def _newest(values: np.ndarray, ok: np.ndarray, before: int | None) -> int | None:
    """The running maximum of the valid source times (µs), or ``before`` when none is valid."""
    if not ok.any():
        return before
    top = int(values[ok].max())
    return top if before is None else max(before, top)
