"""From attributed sample values to RootCauses: value patterns, scaling, evidence and fixes.

The diagnosis (:mod:`airflow_fsmigration.compare.diagnose`) decides which cause each sampled
mismatching value has; this module turns that into what the user reads: one RootCause per kind
with every feature it explains, figures scaled from the sample to the population (differing
values and missing keys each at their own sampling rate), the evidence sentence and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.causes import DIAGNOSIS_SAMPLE, Rewrite, RootCause
from airflow_fsmigration.compare.model import Kind

if TYPE_CHECKING:
    from airflow_fsmigration.compare.result import ComparisonResult

Pairs = set[tuple[str, str]]

_FIX = {
    "time_zone": "read the event time column in the zone the source writes it (TIMESTAMPTZ, or the "
    "right AT TIME ZONE): the change below reproduces the legacy values",
    "window_bound": "make the window bound match the legacy job (inclusive vs exclusive): the change "
    "below reproduces the legacy values",
    "deduplication": "deduplicate re-delivered events by their id before aggregating, as the legacy job did",
    "null_handling": "treat NULL inputs as the legacy job did (skip them, or count them as 0)",
    "rounding": "round as the legacy job did (or not at all)",
    "unit_scale": "convert to the legacy unit (e.g. cents vs currency units)",
    "lag": "no definition change: the new store's ingestion is behind; check its lag and watermark",
    "transient": "no action unless it persists: the values changed between two reads moments apart",
    "late_events": "the definition drops events the legacy job counts (late arrivals, a day not yet "
    "loaded): remove or widen the filter shown below",
    "filter": "the definition filters out rows the legacy job keeps: remove the filter shown below",
    "missing_in_new": "align the entity filter (WHERE/HAVING, window start) and the key TTL with the legacy job",
    "missing_in_old": "align the entity filter (WHERE/HAVING, window start) and the key TTL with the legacy job",
    "unexplained": "no candidate rewrite reproduces these values: compare the definition with the "
    "legacy job by hand, starting from the sample entities",
}
_KIND_TO_CAUSE = {
    Kind.TIMEZONE_SHIFT: "time_zone",
    Kind.OFF_BY_ONE: "window_bound",
    Kind.DUPLICATE_INFLATION: "deduplication",
    Kind.NULL_VS_ZERO: "null_handling",
    Kind.NULL_VS_VALUE: "null_handling",
    Kind.PRECISION: "rounding",
    Kind.SCALE_FACTOR: "unit_scale",
    Kind.LAGGING: "lag",
    Kind.UNDECODABLE: "unexplained",
    Kind.LAG_WRONG_WAY: "unexplained",
}


def patterns(
    result: ComparisonResult, left: Pairs, attributed: dict[str, Pairs], missing: dict[str, str]
) -> None:
    """Unproven causes: each feature's leftover values go to its dominant value pattern.

    A time-zone offset on a timestamp feature names the cause of every mismatching feature of
    the same entities (one shifted time column moves counts, sums and averages too).
    """
    by_feature: dict[str, Kind] = {}
    for e in result.explanations:
        if e.feature and e.kind in _KIND_TO_CAUSE and e.feature not in by_feature:
            by_feature[e.feature] = e.kind
    zone_entities = {eid for eid, f in left if by_feature.get(f) is Kind.TIMEZONE_SHIFT}
    for eid, f in left:
        if eid in missing:
            attributed.setdefault(f"~{missing[eid]}", set()).add((eid, f))
            continue
        if eid in zone_entities:
            kind = "time_zone"
        else:
            k = by_feature.get(f)
            kind = _KIND_TO_CAUSE.get(k, "unexplained") if k is not None else "unexplained"
            if kind == "unit_scale" and result.features[f].dtype != "float64":
                kind = "unexplained"  # no unit scale on an integer count
            if kind in attributed:
                kind = "unexplained"  # a replay proved this kind elsewhere; these values it did not fix
        attributed.setdefault(f"~{kind}", set()).add((eid, f))


def missing_causes(result: ComparisonResult) -> list[RootCause]:
    out = []
    for kind, n, samples, side in (
        ("missing_in_new", result.missing_in_new, result.missing_in_new_samples, "new"),
        ("missing_in_old", result.missing_in_old, result.missing_in_old_samples, "old"),
    ):
        if not n:
            continue
        feats = {f: n for f in result.features}
        shares = {f: n / max(1, _mismatches(result, f)) for f in result.features}
        other = "old" if side == "new" else "new"
        out.append(
            RootCause(
                kind=kind,
                entities=n,
                features=feats,
                shares=shares,
                evidence=f"{n} entities exist in the {other} store but not in the {side} store",
                fix="align the entity filter (WHERE/HAVING, window start) and the key TTL with the legacy job",
                samples=list(samples[:5]),
            )
        )
    return out


def _mismatches(result: ComparisonResult, feature: str) -> int:
    """Values of ``feature`` that differ: mismatched, lagging (excused, but not equal) and missing."""
    f = result.features[feature]
    return f.mismatched + f.lagging + f.missing_in_new + f.missing_in_old


def _with_lagging(result: ComparisonResult, causes: list[RootCause]) -> list[RootCause]:
    """Values the comparison already excused as lag belong to the lag cause (made if needed)."""
    lagging = {n: f.lagging for n, f in result.features.items() if f.lagging}
    if not lagging:
        return causes
    lag = next((c for c in causes if c.kind == "lag"), None)
    if lag is None:
        lag = RootCause(
            kind="lag",
            entities=max(lagging.values()),
            features={},
            shares={},
            evidence="differing values whose newer side is past the other store's watermark, within the "
            "staleness SLA: the lagging store had not yet seen the newest events",
            fix=_FIX["lag"],
        )
        causes.append(lag)
    for name in result.features:
        if name in lagging:
            lag.features[name] = lag.features.get(name, 0) + lagging[name]
    lag.features = {n: lag.features[n] for n in result.features if n in lag.features}
    lag.shares = {n: v / max(1, _mismatches(result, n)) for n, v in lag.features.items()}
    return causes


def summarise(
    result: ComparisonResult,
    values: dict[str, list[str]],
    missing: dict[str, str],
    attributed: dict[str, Pairs],
    proofs: dict[str, Rewrite],
) -> list[RootCause]:
    """Scale each cause's sampled values to the population, one RootCause per kind.

    Differing values and missing keys are sampled at different rates (every missing key up to
    a few dozen), so each is scaled by its own rate.
    """
    sampled_per_feature: dict[str, int] = {}
    for names in values.values():
        for f in names:
            sampled_per_feature[f] = sampled_per_feature.get(f, 0) + 1
    per_side = {k: sum(1 for v in missing.values() if v == k) for k in ("missing_in_new", "missing_in_old")}
    population = {"missing_in_new": result.missing_in_new, "missing_in_old": result.missing_in_old}
    total_entities = _mismatching_entities(result, values)
    out = []
    for key, pairs in attributed.items():
        if not pairs:
            continue
        proven = not key.startswith("~")
        kind = key.lstrip("~")
        feats: dict[str, int] = {}
        shares: dict[str, float] = {}
        for f in _ordered(result.features, (f for _, f in pairs)):
            est = 0.0
            n_values = sum(1 for e, g in pairs if g == f and e not in missing)
            if n_values:
                est += n_values * result.features[f].mismatched / max(1, sampled_per_feature.get(f, n_values))
            for side, n_side in per_side.items():
                n = sum(1 for e, g in pairs if g == f and missing.get(e) == side)
                if n:
                    est += n * population[side] / max(1, n_side)
            feats[f] = max(1, min(_mismatches(result, f), round(est)))
            shares[f] = feats[f] / max(1, _mismatches(result, f))
        ents = {e for e, _ in pairs}
        n_value_ents = len(ents - set(missing))
        entities = round(n_value_ents * total_entities / max(1, len(values)))
        for side, n_side in per_side.items():
            n = sum(1 for e in ents if missing.get(e) == side)
            entities += round(n * population[side] / max(1, n_side))
        rw = proofs.get(kind) if proven else None
        out.append(
            RootCause(
                kind=kind,
                entities=entities,
                features=feats,
                shares=shares,
                evidence=_evidence(kind, proven, rw, pairs, result),
                fix=_FIX.get(kind, _FIX["unexplained"]),
                proven=proven and kind not in ("transient", "unexplained"),
                rewrite=rw if rw is not None and rw.diff else None,
                samples=sorted(ents)[:5],
            )
        )
    return _with_lagging(result, out)


def _ordered(features: dict[str, Any], names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [f for f in features if f in wanted]


def _mismatching_entities(result: ComparisonResult, sample: dict[str, list[str]]) -> int:
    """Mismatching entities in the population (estimated from the sample when it is partial)."""
    if len(sample) < DIAGNOSIS_SAMPLE:  # the sample holds every mismatching entity
        return len(sample)
    per_entity = sum(len(v) for v in sample.values()) / max(1, len(sample))
    return round(sum(f.mismatched for f in result.features.values()) / max(per_entity, 1.0))


def _evidence(kind: str, proven: bool, rw: Rewrite | None, pairs: Pairs, result: ComparisonResult) -> str:
    n_ent = len({e for e, _ in pairs})
    feats = sorted({f for _, f in pairs})
    if kind == "transient":
        return f"{len(pairs)} sampled values of {n_ent} entities matched when read again moments later"
    if rw is not None and proven and kind == "lag":
        return (
            f"{rw.description} for {len(pairs)} values of {n_ent} entities: the new store has not caught up"
        )
    if rw is not None and proven:
        return (
            f"replaying the definition with this change ({rw.description}) turns {len(pairs)} of "
            f"{rw.sampled} sampled mismatching values into the legacy values ({n_ent} entities; "
            f"{', '.join(feats)}) and changes {rw.control_changed} of {rw.control} matching control entities"
        )
    patterns = [
        e.evidence for e in result.explanations if e.feature in feats and _KIND_TO_CAUSE.get(e.kind) == kind
    ]
    lead = f"value pattern over {len(pairs)} sampled values of {n_ent} entities ({', '.join(feats)})"
    return lead + (f": {patterns[0]}" if patterns else "; no rewrite reproduces them")
