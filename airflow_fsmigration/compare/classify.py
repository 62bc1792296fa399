"""Classify mismatching values: null vs zero, scale, time zone, off by one, duplicates, precision.

Runs only on the rows that mismatch (a few passes of numpy over them), puts each in exactly one
:class:`~airflow_fsmigration.compare.model.Category`, and keeps bounded evidence (counters of
parameters, sample ids, worst deltas) for the explanations.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_fsmigration.compare.model import (
    DELTA_SAMPLE,
    SAMPLES_PER_CATEGORY,
    WORST_K,
    BoundedCounter,
    Category,
    FeatureStats,
)

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import Feature

# Ratios that are unit conversions rather than data errors (cents, ms, percent, minutes ...).
_UNITS = (10.0, 100.0, 1000.0, 1e4, 1e6, 1e9, 60.0, 3600.0, 86400.0, 1024.0)
UNIT_RATIOS: tuple[float, ...] = _UNITS + tuple(1.0 / r for r in _UNITS)


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


def classify(
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
    forced: np.ndarray,
) -> None:
    """Give each mismatching value a category and keep bounded evidence for explanations.

    ``forced`` (one code per mismatching row, 0 = none) wins over the value-based categories.
    """
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
            free = forced[both] == 0  # undecodable / wrong-way lag rows keep their forced category
            if dtype == "timestamp":
                # a real zone offset: quarter hours, at most 14 h (a whole day is late data, not a zone)
                hit = free & (d != 0) & (np.mod(d, 900.0) == 0) & (np.abs(d) <= 14 * 3600)
                c[hit], free[hit] = Category.TZ_SHIFT, False
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(o != 0, nw / o, np.nan)
                for unit in UNIT_RATIOS if dtype == "float64" else ():  # no unit scale on a count
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

    hit = forced != 0
    cat[hit], par[hit] = forced[hit], np.nan

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
