"""The mechanical rewrite RisingWave needs for windows written as aggregate FILTER clauses.

A definition that counts several windows over one source in one pass::

    SELECT t.user_id,
           count(*) FILTER (WHERE t.event_ts > :as_of - interval '1 hour') AS n_1h,
           count(*)                                                       AS n_7d
    FROM raw.transactions AS t
    WHERE t.event_ts > :as_of - interval '7 days' AND t.event_ts <= :as_of
    GROUP BY t.user_id

holds ``:as_of`` (``NOW()`` in the live view) inside a FILTER, which RisingWave refuses. The
same rows come from one subquery per window, each with the window's bound added to the WHERE
as a temporal filter (AND-ed: both bounds stay temporal filters), left-joined on the group key
to the subquery of the outer window (the one whose groups are the original groups)::

    SELECT w0.user_id, COALESCE(w1.n_1h, 0) AS n_1h, w0.n_7d AS n_7d
    FROM (SELECT ... WHERE <outer window> GROUP BY t.user_id) AS w0
    LEFT JOIN (SELECT ... WHERE <outer window> AND t.event_ts > :as_of - interval '1 hour'
               GROUP BY t.user_id) AS w1 ON w1.user_id = w0.user_id

Why it is exact: each window's subquery aggregates exactly the rows its FILTER admitted, per
group; a group with no such rows is missing from it, where the FILTER form gave ``count`` 0
(hence the COALESCE) and every other aggregate NULL (what the LEFT JOIN gives). Group keys must
not be NULL (a NULL key does not join); the demo's entity keys never are.
"""

from __future__ import annotations

from typing import Any

from airflow_fsmigration.stores.risingwave_lint import (
    _MARKER_CALL,
    _is_now,
    _nows,
    _parse,
    temporal_filter_problem,
)


def _temporal(conjunct: Any) -> bool:
    from sqlglot import exp

    cmp = conjunct.unnest() if isinstance(conjunct, exp.Paren) else conjunct
    return (
        bool(_nows(cmp))
        and (type(cmp).__name__ in ("GT", "GTE", "LT", "LTE", "EQ") or isinstance(cmp, exp.Between))
        and temporal_filter_problem(cmp) is None
    )


def _aggregates(projection: Any) -> list[Any]:
    """The outermost aggregate calls of a projection, each with its FILTER wrapper when it has one."""
    from sqlglot import exp

    return [
        node
        for node in projection.walk()
        if (
            isinstance(node, exp.Filter)
            or (isinstance(node, exp.AggFunc) and not isinstance(node.parent, exp.Filter))
        )
        and node.find_ancestor(exp.Filter, exp.AggFunc) is None
    ]


def _rewrite_select(select: Any) -> Any | None:
    """The windowed form of one SELECT, or None when it does not have the shape (or needs nothing)."""
    from sqlglot import exp

    group = select.args.get("group")
    if group is None or select.args.get("having") or select.args.get("distinct"):
        return None
    if select.args.get("order") or select.args.get("limit") or select.find(exp.Window):
        return None
    keys = list(group.expressions)
    if any(isinstance(k, exp.Literal) for k in keys):
        return None  # GROUP BY 1: positions would point at other columns in the subqueries
    key_sql = [k.sql() for k in keys]
    projections = [p.copy() for p in select.expressions]
    windows: dict[tuple[str, ...], list[tuple[str, Any]]] = {(): []}
    window_conjuncts: dict[tuple[str, ...], list[Any]] = {(): []}
    replace: dict[int, tuple[tuple[str, ...], str, bool]] = {}
    used: set[str] = set()
    key_names = []
    for i, k in enumerate(keys):
        name = k.name if isinstance(k, exp.Column) and k.name not in used else f"k{i}"
        used.add(name)
        key_names.append(name)
    needed = False
    for p in projections:
        inner = p.this if isinstance(p, exp.Alias) else p
        aggs = _aggregates(inner)
        if not aggs:
            if inner.sql() not in key_sql:
                return None  # a non-aggregate projection that is not a group key
            continue
        for n, agg in enumerate(aggs):
            conjuncts: list[Any] = []
            call = agg
            if isinstance(agg, exp.Filter):
                where = agg.expression
                parts = list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
                conjuncts = [c for c in parts if _nows(c)]
                if any(not _temporal(c) for c in conjuncts):
                    return None
                rest = [c for c in parts if not _nows(c)]
                call = agg.this.copy()
                if rest:
                    call = exp.Filter(
                        this=call, expression=exp.Where(this=exp.and_(*[r.copy() for r in rest]))
                    )
            elif _nows(agg):
                return None
            key = tuple(c.sql() for c in conjuncts)
            needed = needed or bool(key)
            base = p.alias_or_name if len(aggs) == 1 and inner is agg else f"{p.alias_or_name}_{n}"
            name = base if base not in used else f"{base}_{len(used)}"
            used.add(name)
            windows.setdefault(key, []).append((name, call))
            window_conjuncts.setdefault(key, [c.copy() for c in conjuncts])
            replace[id(agg)] = (
                key,
                name,
                isinstance(agg.this if isinstance(agg, exp.Filter) else agg, exp.Count),
            )
    if not needed:
        return None
    aliases = {key: f"w{i}" for i, key in enumerate(windows)}

    def subquery(key: tuple[str, ...]) -> Any:
        cols = [exp.alias_(k.copy(), n) for k, n in zip(keys, key_names, strict=True)]
        cols += [exp.alias_(call, name) for name, call in windows[key]]
        sub = exp.Select(expressions=cols)
        sub.set("from_", select.args["from_"].copy())
        if select.args.get("joins"):
            sub.set("joins", [j.copy() for j in select.args["joins"]])
        conds = ([select.args["where"].this.copy()] if select.args.get("where") else []) + window_conjuncts[
            key
        ]
        if conds:
            sub.set("where", exp.Where(this=exp.and_(*conds)))
        sub.set("group", group.copy())
        return exp.Subquery(this=sub, alias=exp.TableAlias(this=exp.to_identifier(aliases[key])))

    def ref(alias: str, name: str) -> Any:
        return exp.column(name, table=alias)

    def swap(node: Any) -> Any:
        if id(node) in replace:
            key, name, is_count = replace[id(node)]
            col = ref(aliases[key], name)
            return exp.func("COALESCE", col, exp.Literal.number(0)) if is_count and key else col
        if node.sql() in key_sql and not isinstance(node, exp.Alias):
            return ref("w0", key_names[key_sql.index(node.sql())])
        return node

    outer_cols = []
    for p in projections:
        name = p.alias_or_name
        inner = p.this if isinstance(p, exp.Alias) else p
        new = inner.transform(swap, copy=False)
        outer_cols.append(exp.alias_(new, name))
    out = exp.Select(expressions=outer_cols)
    out.set("from_", exp.From(this=subquery(())))
    joins = []
    for key in windows:
        if not key:
            continue
        on = exp.and_(*[exp.EQ(this=ref(aliases[key], n), expression=ref("w0", n)) for n in key_names])
        joins.append(exp.Join(this=subquery(key), side="LEFT", on=on))
    out.set("joins", joins)
    if select.args.get("with_"):
        out.set("with_", select.args["with_"].copy())
    return out


def rewrite_windows(sql: str) -> str | None:
    """The definition with every FILTER window turned into a temporal-filtered subquery, or None.

    None when no SELECT of the definition has windows in FILTER clauses, or one that has them is
    not of the shape this rewrite is exact for (HAVING, DISTINCT, ORDER BY/LIMIT, window
    functions, a projection that is neither a group key nor built from aggregates).
    """
    from sqlglot import exp

    tree = _parse(sql)
    changed = False
    for select in list(tree.find_all(exp.Select))[::-1]:  # innermost first
        if not any(_is_now(n) for f in select.find_all(exp.Filter) for n in f.walk()):
            continue
        new = _rewrite_select(select)
        if new is None:
            return None
        select.replace(new)
        if select is tree:
            tree = new
        changed = True
    if not changed:
        return None
    text = tree.sql(dialect="postgres", pretty=True)
    return _MARKER_CALL.sub(":as_of", text) + "\n"


__all__ = ["rewrite_windows"]
