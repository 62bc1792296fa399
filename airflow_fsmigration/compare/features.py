"""One feature of one chunk, compared over whole columns: equality, null policy, lag, undecodable.

The tolerance rule and the null policy come from :mod:`airflow_fsmigration.semantics` (the one
place the router, keep-warm and the reports use too), so the engine and the serving path agree
by construction. What this module adds is what only a comparison of two stores needs:

- **Undecodable old values.** The old-store reader turns a value it cannot decode into a null
  and flags it in a ``_undecodable.<feature>`` column; every flagged value is a mismatch of its
  own category, whatever the null policy, and neither lag nor the noise floor excuses it.
- **Lag, in the right direction only.** A differing value counts as *lagging* when the two
  source times differ by no more than the staleness SLA; the side with the older source time is
  the one behind. For a feature that only grows (:func:`grows_only`), the older side must then
  not be ahead: an older side holding the larger value (or a value where the newer side has
  none) is a real defect (``LAG_WRONG_WAY``), not lag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_fsmigration.compare.classify import classify
from airflow_fsmigration.compare.model import LAGGING, MATCH, MISMATCH, Category, FeatureStats
from airflow_fsmigration.semantics import null_policy_match, values_equal

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import Feature

# Name tokens of features that only grow over time, and tokens that say they do not (a window,
# an average, a minimum ...): "event_count" grows, "txn_count_24h" (a sliding window) does not.
_GROWING = frozenset({"count", "cnt", "num", "total", "sum", "max", "clicks", "views", "events", "lifetime"})
_NOT_GROWING = frozenset({"avg", "mean", "min", "ratio", "rate", "pct", "share", "delta", "diff", "balance"})
_WINDOW = re.compile(r"^\d+(s|m|h|d|w|mo|y)$|^(hourly|daily|weekly|monthly|recent|window)$")


def grows_only(feature: Feature) -> bool:
    """Whether ``feature`` can only grow as events arrive, so a lagging side can only be behind.

    Timestamps (last seen, last event: a time never moves back); int64/float64 features whose name
    says a lifetime count, sum or maximum (a token ``count``/``cnt``/``num``/``total``/``sum``/
    ``max``/...) and no window or average (``_24h``, ``_7d``, ``avg``, ``ratio``, ...). For numbers
    the check also needs both values non-negative (a negative total is a signed sum that shrinks).
    """
    dtype = str(feature.dtype)
    if dtype == "timestamp":
        return True
    if dtype not in ("int64", "float64"):
        return False
    tokens = set(feature.name.lower().split("_"))
    if tokens & _NOT_GROWING or any(_WINDOW.match(t) for t in tokens):
        return False
    return bool(tokens & _GROWING)


@dataclass
class Lag:
    """Per-row lag facts of one chunk: which rows are within the SLA, and which side is older."""

    rows: np.ndarray  # both source times known, different, and at most the staleness SLA apart
    old_older: np.ndarray  # the old store's source time is the older one


# --------------------------------------------------------------------------- column helpers


def column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def valid(arr: pa.Array) -> np.ndarray:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return np.asarray(pc.is_valid(arr).to_numpy(zero_copy_only=False), dtype=bool)


def numeric(arr: pa.Array, dtype: str) -> np.ndarray:
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


def _bools(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


# --------------------------------------------------------------------------- lag


def lag_consistent(
    av: np.ndarray, bv: np.ndarray, a_ok: np.ndarray, b_ok: np.ndarray, old_older: np.ndarray, dtype: str
) -> np.ndarray:
    """Rows of a growing feature where the older side is not ahead of the newer one."""
    older_v, newer_v = np.where(old_older, av, bv), np.where(old_older, bv, av)
    older_ok, newer_ok = np.where(old_older, a_ok, b_ok), np.where(old_older, b_ok, a_ok)
    ok = older_v <= newer_v
    if dtype != "timestamp":  # a signed sum can shrink: only judge non-negative pairs
        ok |= (older_v < 0) | (newer_v < 0)
    both = older_ok & newer_ok
    # a value on the older side only: the newer side lost it (a growing feature never empties)
    return np.where(both, ok, ~(older_ok & ~newer_ok))


# --------------------------------------------------------------------------- one feature


def compare_feature(
    feature: Feature,
    stats: FeatureStats,
    a: pa.Array,
    b: pa.Array,
    ids: pa.Array,
    lag: Lag | None,
    undecodable: pa.Array | None = None,
) -> np.ndarray:
    """Compare one feature of a chunk (``a`` old, ``b`` new, aligned); returns per-row status codes."""
    dtype = str(feature.dtype)
    n = len(a)
    a_ok, b_ok = valid(a), valid(b)
    stats.compared += n
    stats.nulls_old += int(n - a_ok.sum())
    stats.nulls_new += int(n - b_ok.sum())
    if dtype == "string":
        av, bv = a, b
        eq = _bools(pc.equal(a, b))
        a_zero, b_zero = _bools(pc.equal(a, "")), _bools(pc.equal(b, ""))
    else:
        av, bv = numeric(a, dtype), numeric(b, dtype)
        a_zero, b_zero = a_ok & (av == 0), b_ok & (bv == 0)
        eq = values_equal(av, bv, dtype, atol=feature.atol, rtol=feature.rtol)
    match = null_policy_match(eq, a_ok, b_ok, a_zero, b_zero, str(feature.null_policy))
    und = _bools(undecodable) if undecodable is not None and undecodable.true_count else None
    if und is not None:
        match &= ~und  # whatever the null policy: an unreadable old value agrees with nothing
        stats.undecodable += int(und.sum())
    status = np.where(match, MATCH, MISMATCH).astype(np.int8)
    mismatch = ~match
    wrong = None
    n_lag = 0
    if lag is not None:
        candidate = mismatch & lag.rows
        if und is not None:
            candidate &= ~und
        if candidate.any():
            if grows_only(feature) and dtype != "string":
                ok = lag_consistent(av, bv, a_ok, b_ok, lag.old_older, dtype)
                wrong = candidate & ~ok
                candidate &= ok
            status[candidate] = LAGGING
            n_lag = int(candidate.sum())
            mismatch &= ~candidate
    n_mm = int(mismatch.sum())
    stats.lagging += n_lag
    stats.mismatched += n_mm
    stats.matched += n - n_lag - n_mm
    if n_mm:
        idx = np.flatnonzero(mismatch)
        forced = np.zeros(len(idx), dtype=np.int8)
        if wrong is not None:
            forced[wrong[idx]] = Category.LAG_WRONG_WAY
        if und is not None:
            forced[und[idx]] = Category.UNDECODABLE
        classify(feature, stats, idx, av, bv, a_ok, b_ok, a_zero, b_zero, ids, forced)
    return status
