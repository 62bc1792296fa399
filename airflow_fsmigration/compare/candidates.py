"""Which rewrites the diagnosis replays for a definition (the transforms are in ``rewrites``).

Beyond the aggregation defects of :mod:`airflow_fsmigration.compare.rewrites` (zones, bounds,
dedup, NULLs, rounding, scale), this adds the defects that change *which* events or *which
unit* a definition reads: a unit column read as the base unit, a window end held back (lag),
and a row filter the legacy job did not have (late events, a day not yet loaded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_fsmigration.compare import rewrites as rw
from airflow_fsmigration.compare.rewrites import Candidate, Transform, has_mark, snippet

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup, MigrationPlan

#: Column-name suffixes that carry a unit, and the factor to the usual base unit.
UNIT_SUFFIXES = {"_cents": 100, "_pennies": 100, "_ms": 1000, "_millis": 1000, "_bps": 10000}
_MAX_FILTERS = 12
_LATE_HINTS = ("ingest", "arriv", "load", "received", "processed", "_at")


def _unit_column(name: str, factor: int) -> Transform:
    def run(tree: Any) -> Any:
        from sqlglot import exp

        tree = tree.copy()
        for col in list(tree.find_all(exp.Column)):
            if col.name != name:
                continue
            if isinstance(col.parent, exp.Alias) and col.parent.alias_or_name == name:
                continue  # a pass-through keeps its own unit
            if isinstance(col.parent, exp.Select):
                continue  # a bare projection passes the column on under its own name and unit
            scaled = exp.Div(this=col.copy(), expression=exp.Literal.number(f"{factor}.0"))
            col.replace(exp.Paren(this=scaled))
        return tree

    return run


def _scale_outputs(scales: dict[str, float]) -> Transform:
    def run(tree: Any) -> Any:
        from sqlglot import exp

        tree = tree.copy()
        for proj in tree.selects:
            ratio = scales.get(proj.alias_or_name)
            if ratio and isinstance(proj, exp.Alias):
                factor = exp.Literal.number(repr(1.0 / ratio))
                proj.set("this", exp.Mul(this=exp.Paren(this=proj.this.copy()), expression=factor))
        return tree

    return run


def unit_candidates(tree: Any, scales: dict[str, float]) -> list[Candidate]:
    """A unit column read where the base unit is meant; every feature with one ratio rescaled."""
    from sqlglot import exp

    out = []
    names = sorted({c.name for c in tree.find_all(exp.Column)})
    for name in names:
        for suffix, factor in UNIT_SUFFIXES.items():
            if name.endswith(suffix):
                out.append(
                    Candidate(
                        "unit_scale",
                        f"read {name} / {factor} (its unit is 1/{factor})",
                        _unit_column(name, factor),
                    )
                )
    by_ratio: dict[float, dict[str, float]] = {}
    for feature, ratio in scales.items():
        if ratio and ratio not in (0.0, 1.0):
            by_ratio.setdefault(ratio, {})[feature] = ratio
    for ratio, features in by_ratio.items():
        out.append(
            Candidate(
                "unit_scale",
                f"divide {', '.join(sorted(features))} by {ratio:g} (another unit)",
                _scale_outputs(features),
            )
        )
    return out


def _window_end(tree: Any) -> list[Any]:
    """``:as_of - <interval>`` expressions used as a window end (an upper bound)."""
    from sqlglot import exp

    ends = []
    for node in tree.find_all(exp.LT, exp.LTE, exp.GT, exp.GTE):
        column_on_left = has_mark(node.expression) and not has_mark(node.this)
        column_on_right = has_mark(node.this) and not has_mark(node.expression)
        upper = (isinstance(node, exp.LT | exp.LTE) and column_on_left) or (
            isinstance(node, exp.GT | exp.GTE) and column_on_right
        )
        side = node.expression if column_on_left else node.this
        if upper and isinstance(side, exp.Sub) and has_mark(side.this):
            ends.append(side)
    return ends


def _end_at_as_of(tree: Any) -> Any:
    tree = tree.copy()
    for sub in _window_end(tree):
        sub.replace(sub.this.copy())
    return tree


def lag_candidates(tree: Any) -> list[Candidate]:
    """The window end held back (``<= :as_of - interval``): the new store serves an older state."""
    ends = _window_end(tree)
    if not ends:
        return []
    return [
        Candidate(
            "lag",
            f"end the window at :as_of instead of `{snippet(ends[0])}` (the new store runs behind)",
            _end_at_as_of,
        )
    ]


def _conjuncts(where: Any) -> list[Any]:
    from sqlglot import exp

    node = where.this
    out = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, exp.And):
            stack += [n.expression, n.this]
        elif isinstance(n, exp.Paren) and isinstance(n.this, exp.And):
            stack.append(n.this)
        else:
            out.append(n)
    return out


def _drop_conjunct(index: int) -> Transform:
    def run(tree: Any) -> Any:
        from sqlglot import exp

        tree = tree.copy()
        found = _filters(tree)
        if index < len(found):
            node = found[index]
            node.replace(exp.true())
        return tree

    return run


def _filters(tree: Any) -> list[Any]:
    """Row filters that are not the window itself (no ``:as_of`` in them), in SELECTs over tables."""
    from sqlglot import exp

    out = []
    for select in tree.find_all(exp.Select):
        where = select.args.get("where")
        if where is None or not any(True for _ in select.find_all(exp.Table)):
            continue
        for c in _conjuncts(where):
            if not has_mark(c) or any(
                True for _ in c.find_all(exp.Anonymous, exp.DateTrunc, exp.TimestampTrunc)
            ):
                out.append(c)
    return out[:_MAX_FILTERS]


def filter_candidates(tree: Any, group: FeatureGroup) -> list[Candidate]:
    """Drop one row filter: a filter the legacy job did not have drops events (late ones, a day)."""
    from sqlglot import exp

    times = {s.time_column for s in group.event_sources}
    out = []
    for i, node in enumerate(_filters(tree)):
        cols = {c.name for c in node.find_all(exp.Column)}
        text = snippet(node)
        late = bool(cols & times) or any(h in c.lower() for c in cols for h in _LATE_HINTS)
        kind = "late_events" if late else "filter"
        what = "events arriving late or not yet loaded" if late else "rows the legacy job kept"
        out.append(Candidate(kind, f"drop the filter `{text}` (it drops {what})", _drop_conjunct(i)))
    return out


def candidates(
    sql: str,
    plan: MigrationPlan,
    group: FeatureGroup,
    *,
    offsets: list[int] | None = None,
    scales: dict[str, float] | None = None,
) -> list[Candidate]:
    """Every rewrite worth replaying for this definition.

    :param offsets: time offsets (new - old, seconds) seen on timestamp features; real zone
        offsets only (the caller filters).
    :param scales: per feature, the ratio new/old seen on it (a unit scale candidate divides by it).
    """
    from sqlglot import exp

    tree = rw.parse(sql)
    out = rw.zone_candidates(tree, group, offsets or [])
    out += rw.bound_candidates(tree)
    if any(s.id_column for s in group.event_sources):
        out.append(Candidate("deduplication", "deduplicate raw events by their id column", rw.dedup(group)))
    if any(c.find_ancestor(exp.AggFunc) is not None for c in tree.find_all(exp.Coalesce)):
        out.append(
            Candidate(
                "null_handling",
                "let aggregates skip NULLs: drop COALESCE(..., 0) inside them",
                rw.strip_coalesce_in_aggregates,
            )
        )
    if any(True for _ in tree.find_all(exp.Avg, exp.Sum)):
        out.append(
            Candidate(
                "null_handling", "count NULLs as 0 inside avg/sum: COALESCE(x, 0)", rw.coalesce_aggregates
            )
        )
    rounds = list(tree.find_all(exp.Round))
    if rounds:
        out.append(Candidate("rounding", "drop ROUND(...): keep full precision", rw.rounding(None)))
        for d in range(0, 5):
            out.append(Candidate("rounding", f"round to {d} decimal places", rw.rounding(d)))
    if any(
        isinstance(n.expression, exp.Literal) and n.expression.this in rw.SCALE_LITERALS
        for n in tree.find_all(exp.Div, exp.Mul)
    ):
        out.append(Candidate("unit_scale", "drop the scale factor (/100, *100, /1000)", rw.unscale))
    out += unit_candidates(tree, scales or {})
    out += lag_candidates(tree)
    out += filter_candidates(tree, group)
    return out
