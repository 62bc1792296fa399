"""Explanations, not just counts: systematic mismatch patterns with evidence and a fix.

Runs only on what the engine keeps per feature (category counts, bounded parameter counters
and samples), never on the data itself, so it costs the same for 1k or 10M entities. The
engine has already put every mismatching value in exactly one category, so the rows of the
explanations of one feature never overlap and always add up to its mismatches. The old store's
expected churn (the noise floor) is subtracted from a feature's rate, never forgives the whole
feature; as an explanation it covers all the mismatches when the churn accounts for every one
of them, and otherwise only those that no pattern explains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare.model import Category, Explanation, FeatureStats, Kind

if TYPE_CHECKING:
    from airflow_fsmigration.compare.result import ComparisonResult

# A parameter value (an offset, a ratio) is systematic when it covers this share of its category.
MIN_SHARE = 0.05
# A repeated plain difference is a constant offset only when it is this concentrated.
OFFSET_MIN_ROWS, OFFSET_MIN_SHARE = 3, 0.2
# "new > old" on counts and sums suggests duplicates when this one-sided.
INFLATION_MIN_ROWS, INFLATION_MIN_SHARE = 3, 0.9


def _fmt_num(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


def _hours(seconds: float) -> str:
    sign = "+" if seconds > 0 else "-"
    h = abs(seconds) / 3600
    return f"{sign}{_fmt_num(h)}h"


def _ratio(r: float) -> str:
    return f"x{_fmt_num(r)}" if r >= 1 else f"/{_fmt_num(round(1 / r, 6))}"


def explain(result: ComparisonResult) -> list[Explanation]:
    """All explanations of a result, biggest first within each feature; missing keys first."""
    out: list[Explanation] = []
    n_features = max(1, len(result.features))
    all_mismatches = max(1, result.mismatched_values)
    for kind, rows, samples, fix in (
        (
            Kind.MISSING_IN_NEW,
            result.missing_in_new,
            result.missing_in_new_samples,
            "the new definition drops entities the old store serves: check its WHERE/HAVING filters and "
            "window start, and that the backfill covered them",
        ),
        (
            Kind.MISSING_IN_OLD,
            result.missing_in_old,
            result.missing_in_old_samples,
            "the new definition produces entities the old store never wrote (a wider window, a missing "
            "activity filter) or the old store expired them (key TTL): align the entity filter",
        ),
    ):
        if rows:
            side = "new" if kind is Kind.MISSING_IN_NEW else "old"
            other = "old" if side == "new" else "new"
            out.append(
                Explanation(
                    kind=kind,
                    feature=None,
                    rows=rows,
                    share=min(1.0, rows * n_features / all_mismatches),
                    evidence=f"{rows} of {result.entities_compared} entities exist in the {other} store "
                    f"but not in the {side} store",
                    fix=fix,
                    samples=list(samples[:5]),
                )
            )
    dup = result.duplicates_old + result.duplicates_new
    if dup:
        out.append(
            Explanation(
                kind=Kind.DUPLICATE_IDS,
                feature=None,
                rows=dup,
                share=min(1.0, dup * n_features / all_mismatches),
                evidence=f"{result.duplicates_old} entity ids came back more than once from the old store and "
                f"{result.duplicates_new} from the new store; their rows were left out of the comparison",
                fix="the new definition must return one row per entity (GROUP BY the entity key, or DISTINCT ON "
                "it); a duplicated old-store id means two keys map to one entity",
                samples=list((result.duplicates_old_samples + result.duplicates_new_samples)[:5]),
            )
        )
    for stats in result.features.values():
        out.extend(explain_feature(stats))
    return out


def explain_feature(f: FeatureStats) -> list[Explanation]:
    """Explanations of one feature's mismatches (and its lagging values) from its aggregates."""
    out: list[Explanation] = []
    if f.lagging:
        out.append(
            Explanation(
                kind=Kind.LAGGING,
                feature=f.name,
                rows=f.lagging,
                share=f.lagging / max(1, f.lagging + f.mismatched),
                evidence=f"{f.lagging} differing values have source times apart by no more than the staleness SLA: "
                "one side had not yet seen the newest events",
                fix="counted as lagging, not mismatched; if it persists, check the new store's ingestion lag",
            )
        )
    if not f.mismatched:
        return out
    total = f.mismatched
    cats = f.categories

    def rows_of(*codes: Category) -> int:
        return sum(cats.get(int(c), 0) for c in codes)

    def samples_of(*codes: Category) -> list[str]:
        s: list[str] = []
        for c in codes:
            s.extend(f.samples.get(int(c), []))
        return s[:5]

    def add(kind: Kind, rows: int, evidence: str, fix: str, samples: list[str], **params: Any) -> None:
        out.append(
            Explanation(
                kind=kind,
                feature=f.name,
                rows=rows,
                share=rows / total,
                evidence=evidence,
                fix=fix,
                samples=samples,
                params=params,
            )
        )

    explained = 0
    n = rows_of(Category.UNDECODABLE)
    if n:
        add(
            Kind.UNDECODABLE,
            n,
            f"{n} of {total} old-store values of {f.name} could not be decoded as {f.dtype}"
            + (f" ({f.old_encoding})" if f.old_encoding else ""),
            f"check the dtype and old_encoding of {f.name} in the plan against what the old writer stores "
            "(sample keys below); an unreadable value never counts as a match",
            samples_of(Category.UNDECODABLE),
        )
        explained += n
    n = rows_of(Category.LAG_WRONG_WAY)
    if n:
        add(
            Kind.LAG_WRONG_WAY,
            n,
            f"{n} of {total} mismatches have source times within the staleness SLA, but the side with the "
            f"older source time is ahead (or holds a value the newer side lost): {f.name} only grows, so "
            "this is not lag",
            f"treat as a real defect of {f.name}: look for lost or double-counted events on the newer side",
            samples_of(Category.LAG_WRONG_WAY),
        )
        explained += n

    excusable = total - explained
    if f.noise_excused and f.noise_excused >= excusable:  # the churn accounts for every other mismatch
        add(
            Kind.NOISE,
            excusable,
            f"mismatch rate {f.mismatch_rate:.4%} is within the old store's own churn between two reads "
            f"({(f.churn or 0):.4%}): subtracted, adjusted rate {(f.adjusted_mismatch_rate or 0):.4%}",
            "no action: the feature changes this much between reads; compare at a fixed as-of time to tighten",
            samples_of(*Category),
            churn=f.churn,
            excused=f.noise_excused,
        )
        return out

    n = rows_of(Category.NULL_OLD_ZERO_NEW, Category.ZERO_OLD_NULL_NEW)
    if n:
        a, b = rows_of(Category.NULL_OLD_ZERO_NEW), rows_of(Category.ZERO_OLD_NULL_NEW)
        add(
            Kind.NULL_VS_ZERO,
            n,
            f"{a} values are null in the old store and 0 in the new one, {b} are 0 in the old and null in the new",
            f"one side writes null where the other writes 0 (coalesce in the new definition of {f.name}, or the "
            f"old writer skipping empty fields): make them agree, or set null_policy: null_equals_zero",
            samples_of(Category.NULL_OLD_ZERO_NEW, Category.ZERO_OLD_NULL_NEW),
            null_old_zero_new=a,
            zero_old_null_new=b,
        )
        explained += n
    n = rows_of(Category.NULL_OLD, Category.NULL_NEW, Category.BOTH_NULL)
    if n:
        a, b, c = rows_of(Category.NULL_OLD), rows_of(Category.NULL_NEW), rows_of(Category.BOTH_NULL)
        add(
            Kind.NULL_VS_VALUE,
            n,
            f"{a} values are null only in the old store, {b} only in the new store"
            + (f", {c} null in both (null_policy: {f.null_policy})" if c else ""),
            f"check how each side handles an empty window for {f.name} (no events -> null or a default)",
            samples_of(Category.NULL_OLD, Category.NULL_NEW, Category.BOTH_NULL),
            null_old=a,
            null_new=b,
            both_null=c,
        )
        explained += n

    for code, kind in ((Category.TZ_SHIFT, Kind.TIMEZONE_SHIFT), (Category.SCALE, Kind.SCALE_FACTOR)):
        counter = f.params.get(int(code))
        if counter is None:
            continue
        cat_rows = rows_of(code)
        for value, rows in counter.most_common():
            if rows < max(1, MIN_SHARE * cat_rows):
                continue
            if kind is Kind.TIMEZONE_SHIFT:
                add(
                    kind,
                    rows,
                    f"{rows} of {total} mismatches are shifted by exactly {_hours(value)} (new - old = {value:g} s)",
                    f"new store is {_hours(value)}: check the time zone of {f.name} (timestamp without time zone, "
                    "the session TimeZone, AT TIME ZONE in the definition, or how the old writer serialised it)",
                    samples_of(code),
                    offset_seconds=value,
                )
            else:
                add(
                    kind,
                    rows,
                    f"{rows} of {total} mismatches have new = old {_ratio(value)}",
                    f"units differ between the stores for {f.name} (e.g. cents vs currency units, ms vs s, % vs "
                    f"fraction): convert by {_ratio(1 / value)} in the new definition or fix the old writer",
                    samples_of(code),
                    ratio=value,
                )
            explained += rows

    n = rows_of(Category.OFF_BY_ONE)
    if n:
        counter = f.params.get(int(Category.OFF_BY_ONE))
        plus = counter.counts.get(1.0, 0) if counter else 0
        minus = counter.counts.get(-1.0, 0) if counter else 0
        add(
            Kind.OFF_BY_ONE,
            n,
            f"{n} of {total} mismatches differ by exactly one (new = old +1: {plus}, -1: {minus}), "
            "as a window that includes or excludes the events exactly on its edge would",
            f"compare the window bounds of {f.name}: inclusive vs exclusive (> vs >=, < vs <=) at the start "
            "and end of the window",
            samples_of(Category.OFF_BY_ONE),
            plus_one=plus,
            minus_one=minus,
        )
        explained += n

    n = rows_of(Category.DUPLICATE)
    if n:
        counter = f.params.get(int(Category.DUPLICATE))
        top = counter.most_common(3) if counter else []
        ks = ", ".join(f"x{int(k)}: {c}" for k, c in top)
        add(
            Kind.DUPLICATE_INFLATION,
            n,
            f"{n} of {total} mismatches have new = k x old with a small integer k ({ks}): "
            "the same events counted more than once",
            f"deduplicate the events feeding {f.name} in the new store (distinct on event id, or an "
            "idempotent sink), or check for an at-least-once replay",
            samples_of(Category.DUPLICATE),
            factors={str(int(k)): c for k, c in top},
        )
        explained += n

    n = rows_of(Category.PRECISION)
    if n:
        counter = f.params.get(int(Category.PRECISION))
        k = int(counter.most_common(1)[0][0]) if counter and counter.counts else 0
        if k == 15:
            what, fix = (
                "relative differences below 1e-9 (floating point summation order)",
                f"set rtol: 1e-9 on {f.name}",
            )
        elif k == 7:
            what, fix = (
                "one side holds float32 (single precision) values",
                f"store {f.name} as double precision on both sides",
            )
        else:
            what, fix = (
                f"|new - old| < 1e-{k}: one side keeps only {k} decimals (rounded or truncated)",
                f"keep full precision for {f.name} (numeric scale, round() in the definition) or set atol: "
                f"{0.5 * 10.0**-k:g} if {k} decimals are enough",
            )
        add(
            Kind.PRECISION,
            n,
            f"{n} of {total} mismatches: {what}",
            fix,
            samples_of(Category.PRECISION),
            decimals=k,
        )
        explained += n

    n = rows_of(Category.STRING_FORMAT)
    if n:
        add(
            Kind.STRING_FORMAT,
            n,
            f"{n} of {total} mismatches differ only in letter case or surrounding whitespace",
            f"normalise {f.name} the same way on both sides (lower/trim)",
            samples_of(Category.STRING_FORMAT),
        )
        explained += n

    other = rows_of(Category.OTHER)
    counter = f.params.get(int(Category.OTHER))
    if other and counter and counter.counts:
        value, rows = counter.most_common(1)[0]
        if value != 0 and rows >= OFFSET_MIN_ROWS and rows >= OFFSET_MIN_SHARE * other:
            unit = " s" if f.dtype == "timestamp" else ""
            add(
                Kind.CONSTANT_OFFSET,
                rows,
                f"{rows} of {total} mismatches have the same difference new - old = {value:+g}{unit}",
                f"a constant is added or lost in one definition of {f.name}"
                + (" (clock skew, or event time vs processing time)" if f.dtype == "timestamp" else "")
                + ": diff the two computations",
                samples_of(Category.OTHER),
                offset=value,
            )
            explained += rows
            other -= rows
    if (
        other
        and f.dtype in ("int64", "float64")
        and f.positive >= INFLATION_MIN_ROWS
        and f.positive >= INFLATION_MIN_SHARE * (f.positive + f.negative)
        and f.positive <= other
        and any(w in f.name for w in ("count", "sum", "total", "num"))
    ):
        add(
            Kind.DUPLICATE_INFLATION,
            f.positive,
            f"{f.positive} of {total} mismatches of this count/sum are higher in the new store "
            f"(only {f.negative} lower): consistent with duplicate events",
            f"deduplicate the events feeding {f.name} in the new store (distinct on event id)",
            samples_of(Category.OTHER),
            higher=f.positive,
            lower=f.negative,
        )
        explained += f.positive
        other -= f.positive
    rest = total - explained
    noise_rows = min(f.noise_excused, max(0, rest))
    if noise_rows:  # churn can excuse only what no pattern explains: the rows still add up to the mismatches
        add(
            Kind.NOISE,
            noise_rows,
            f"{f.noise_excused} of {total} mismatches are within the old store's own churn between two reads "
            f"({(f.churn or 0):.4%} of values) and are subtracted from the rate: raw {f.mismatch_rate:.4%}, "
            f"adjusted {(f.adjusted_mismatch_rate or 0):.4%}",
            "no action for the churn itself (compare at a fixed as-of time to tighten); the rest are real",
            samples_of(Category.OTHER),
            churn=f.churn,
            excused=f.noise_excused,
        )
        rest -= noise_rows
    if rest > 0:
        add(
            Kind.UNEXPLAINED,
            rest,
            f"{rest} of {total} mismatches follow no pattern we recognise",
            f"inspect the sample entities' inputs for {f.name} on both sides",
            samples_of(Category.OTHER, Category.BOTH_NULL),
        )
    return out
