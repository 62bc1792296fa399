"""Root causes of a failed comparison, proven by replaying the definition on the raw events.

A migration engineer acts on the first explanation they read, so a cause is named only with
evidence. For a bounded sample of mismatching entities (and a sample of matching ones as a
control) both stores are read again after a short delay: what matches now was *transient*. The
group's definition is then replayed on the raw events as of the time the new store describes:

- the replay reproduces the legacy values: the definition is right and the new store has not
  caught up (*lag*; the values it holds predate its watermark);
- the replay reproduces the new store: the definition is the defect. Each candidate rewrite
  (:mod:`airflow_fsmigration.compare.rewrites`) is replayed; one that turns mismatching values
  into legacy values and changes no control entity *explains* them. Causes are picked greedily
  (the rewrite explaining most values first), then composed pairwise for entities that carry
  two defects. Each mismatching value is attributed to one cause, and each cause is reported
  once with every feature it explains.

What no rewrite explains keeps its value-pattern evidence (the per-feature explanations) and is
said to be unproven. Figures for the whole population are the sample's shares scaled to each
feature's mismatch count (exact when the sample holds every mismatching entity).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.causes import Rewrite, RootCause
from airflow_fsmigration.compare.model import MISMATCH, MISSING_IN_NEW, MISSING_IN_OLD, Kind

if TYPE_CHECKING:
    import pyarrow as pa

    from airflow_fsmigration.compare.result import ComparisonResult
    from airflow_fsmigration.compare.rewrites import Candidate
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

log = logging.getLogger("airflow_fsmigration.compare")

#: A rewrite may change at most this share of the control entities (and at least one may move).
CONTROL_TOLERANCE = 0.01
#: A cause must explain at least this many sampled values (and this share of what is left).
MIN_VALUES, MIN_SHARE = 2, 0.05
MAX_CAUSES = 4

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


def mismatching_pairs(group: FeatureGroup, old: pa.Table, new: pa.Table) -> tuple[Pairs, set[str]]:
    """(entity, feature) values that differ (exactly as the comparison judges them), and all ids."""
    from datetime import timedelta

    from airflow_fsmigration.compare.engine import compare_tables

    r = compare_tables(group, old, new, staleness=timedelta(0))
    flags = r.flags or {}
    ids = [str(x) for x in flags.get("entity_id", []).to_pylist()] if flags else []
    out: Pairs = set()
    for f in group.features:
        status = flags.get(f.name)
        if status is None:
            continue
        for eid, s in zip(ids, status.tolist(), strict=True):
            if s in (MISMATCH, MISSING_IN_NEW, MISSING_IN_OLD):
                out.add((eid, f.name))
    return out, set(ids)


def _zone_offsets(result: ComparisonResult) -> list[int]:
    """Real zone offsets (whole, half or quarter hours up to 14 h) seen on timestamp features."""
    seen: list[int] = []
    for e in result.explanations:
        if e.kind is Kind.TIMEZONE_SHIFT:
            off = e.params.get("offset_seconds")
            if off and abs(off) <= 14 * 3600 and off % 900 == 0 and int(off) not in seen:
                seen.append(int(off))
    return seen


def _scales(result: ComparisonResult) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in result.explanations:
        if e.kind is Kind.SCALE_FACTOR and e.feature and result.features[e.feature].dtype == "float64":
            ratio = e.params.get("ratio")
            if ratio:
                out[e.feature] = float(ratio)
    return out


class _Replayer:
    """Replays definition texts for the sample and remembers which values each reproduces."""

    def __init__(self, store: Any, group: FeatureGroup, legacy: pa.Table, ids: list[str], as_of: datetime):
        self.store, self.group, self.legacy, self.ids, self.as_of = store, group, legacy, ids, as_of
        self.queries = 0

    def wrong(self, sql: str) -> Pairs | None:
        """Values the replay of ``sql`` gets wrong against the legacy store (None: it failed)."""
        self.queries += 1
        try:
            table = self.store.replay(self.group, sql, self.ids, self.as_of)
        except Exception as exc:  # a rewrite that does not run is simply not the fix
            log.debug("replay of a rewrite failed: %s", exc)
            return None
        return mismatching_pairs(self.group, self.legacy, table)[0]


def diagnose(
    plan: MigrationPlan,
    group: FeatureGroup,
    result: ComparisonResult,
    old_source: Any,
    new_source: Any,
    *,
    read: Callable[[Any, list[str]], pa.Table] | None = None,
    reread_delay_s: float = 0.0,
    as_of: datetime | None = None,
) -> list[RootCause]:
    """Root causes of ``result``'s mismatches (biggest first); [] when nothing mismatched.

    ``read(source, ids)`` reads a side as the comparison did (default ``source.read``); ``as_of``
    is the time the comparison describes (default: the new store's clock).
    """
    from airflow_fsmigration.compare.candidates import candidates

    values = dict(result.mismatch_sample)
    if not values:
        return _missing_causes(result)
    # entities on one side only are symptoms too: replayed with the others, linked to their cause
    missing = {e: "missing_in_new" for e in result.missing_in_new_samples}
    missing.update({e: "missing_in_old" for e in result.missing_in_old_samples})
    sample = {**values, **{e: list(result.features) for e in missing}}
    started = time.monotonic()
    if reread_delay_s > 0:
        time.sleep(reread_delay_s)
    ids = sorted(sample)
    control = sorted(result.control_sample)
    everyone = ids + control
    if read is None:
        read = lambda source, chunk: source.read(group, chunk)  # noqa: E731
    legacy = read(old_source, everyone)
    persistent, _ = mismatching_pairs(group, legacy, read(new_source, everyone))
    persistent = {p for p in persistent if p[0] in sample}
    first_run = {(e, f) for e, feats in sample.items() for f in feats}
    transient = first_run - persistent
    attributed: dict[str, Pairs] = {}
    if transient:
        attributed["transient"] = transient

    proofs: dict[str, Rewrite] = {}
    remaining = set(persistent)
    replay = getattr(new_source, "replay", None)
    if replay is not None and remaining:
        sql = plan.definition_sql(group.name)
        when = as_of or _clock(new_source)
        rp = _Replayer(new_source, group, legacy, everyone, when)
        base = rp.wrong(sql)
        if base is not None:
            control_ids = set(control)
            lag = remaining - base  # the definition, replayed now, gives the legacy value
            if lag:
                attributed["lag"] = lag
                proofs["lag"] = Rewrite(
                    "lag",
                    f"the unchanged definition replayed as of {when.isoformat()} reproduces these legacy values",
                    "",
                    fixed=len(lag),
                    sampled=len(persistent),
                )
                remaining -= lag
            pool = candidates(sql, plan, group, offsets=_zone_offsets(result), scales=_scales(result))
            _greedy(rp, sql, pool, base, remaining, control_ids, attributed, proofs)
            remaining = persistent - set().union(*attributed.values())
        else:
            log.info("diagnosis of %s: the definition could not be replayed; value patterns only", group.name)
    if remaining:
        _patterns(result, remaining, attributed, missing)
    causes = _summarise(result, values, missing, attributed, proofs)
    log.info(
        "diagnosis of %s: %d causes from %d sampled mismatching entities in %.1f s",
        group.name,
        len(causes),
        len(sample),
        time.monotonic() - started,
    )
    return sorted(causes, key=lambda c: (-sum(c.features.values()), c.kind))


def _clock(store: Any) -> datetime:
    from datetime import UTC

    clock = getattr(store, "clock", None)
    return clock() if clock is not None else datetime.now(UTC)


def _greedy(
    rp: _Replayer,
    sql: str,
    pool: list[Candidate],
    base: Pairs,
    remaining: Pairs,
    control: set[str],
    attributed: dict[str, Pairs],
    proofs: dict[str, Rewrite],
) -> list[Candidate]:
    """Pick rewrites explaining the most remaining values; compose with what was picked."""
    from airflow_fsmigration.compare import rewrites

    allowed = max(1, int(CONTROL_TOLERANCE * len(control)))
    chosen: list[Candidate] = []
    tried: dict[str, tuple[Pairs, int, str]] = {}

    def evaluate(c: Candidate) -> tuple[Pairs, int, str] | None:
        try:
            text = rewrites.apply(sql, c)
        except Exception as exc:  # a transform that does not fit this definition
            log.debug("rewrite %s did not apply: %s", c.description, exc)
            return None
        if text in tried:
            return tried[text]
        wrong = rp.wrong(text)
        if wrong is None:
            return None
        fixed = base - wrong
        broken = {e for e, _ in wrong - base if e in control}
        tried[text] = (fixed, len(broken), text)
        return tried[text]

    left = set(remaining)
    for _ in range(MAX_CAUSES):
        if not left:
            break
        options = list(pool)
        options += [prev.then(c) for prev in chosen for c in pool if c.kind != prev.kind]
        best: tuple[int, Candidate, Pairs, int, str] | None = None
        for c in options:
            got = evaluate(c)
            if got is None:
                continue
            fixed, broken, text = got
            gain = len(fixed & left)
            if broken > allowed or gain < max(MIN_VALUES, MIN_SHARE * len(left)):
                continue
            if best is None or gain > best[0]:
                best = (gain, c, fixed & left, broken, text)
        if best is None:
            break
        gain, c, fixed, broken, text = best
        attributed.setdefault(c.kind, set()).update(fixed)
        left -= fixed
        proof = proofs.get(c.kind)
        if proof is None:
            proofs[c.kind] = Rewrite(
                c.kind,
                c.description,
                rewrites.diff(sql, text),
                fixed=gain,
                sampled=len(remaining),
                control_changed=broken,
                control=len(control),
                sql=text,
            )
        else:
            proof.fixed += gain
        chosen.append(c)
    return chosen


def _patterns(
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


def _missing_causes(result: ComparisonResult) -> list[RootCause]:
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
    f = result.features[feature]
    return f.mismatched + f.missing_in_new + f.missing_in_old


def _summarise(
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
    return out


def _ordered(features: dict[str, Any], names: Iterable[str]) -> list[str]:
    wanted = set(names)
    return [f for f in features if f in wanted]


def _mismatching_entities(result: ComparisonResult, sample: dict[str, list[str]]) -> int:
    """Mismatching entities in the population (estimated from the sample when it is partial)."""
    if len(sample) < len(result.mismatch_sample) or len(sample) < 300:
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
