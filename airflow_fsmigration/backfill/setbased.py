"""Set-based spine evaluation: one range join of the labels with the events, grouped once.

Per-label evaluation (``lateral``) runs the definition once per label with the label's entity
pushed in. For the commonest definition shape (one SELECT over one raw table, grouped by the
entity key: windows ending at ``:as_of``) the same rows are produced by *lifting* the label into
the query instead: the table is joined with the chunk's distinct (entity, time) labels on the
key, ``:as_of`` becomes the label's time, and the label is added to the GROUP BY. Each label
group then sees exactly the rows the per-label evaluation sees (the same WHERE, now per label),
and aggregates them with the same aggregate calls, so the values are the same; with
``enable_presorted_aggregate = off`` (see :func:`airflow_fsmigration.backfill.strategy.session_settings`)
each group's rows reach the aggregates in index order on both paths, which makes even float
sums agree bit for bit.

The shape is checked on the parsed SQL (sqlglot); anything else (CTEs, joins, windows,
subqueries, ``DISTINCT ON``, a star, a key that is not a column) is not lifted and
:func:`set_shape` names why, so the caller evaluates per label or per timestamp instead. The
lifted SQL renders for Postgres, and for DuckDB (the benchmark's reference runs the same text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_fsmigration.backfill.pushdown import AS_OF_MARK

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

__all__ = ["LABELS_MARK", "lifted_sql", "set_shape"]

LABELS_MARK = "fsmig_labels_relation"  # replaced by the caller with its (entity, time) label relation
_AS_OF_LITERAL = "__fsmig_as_of__"


def _parsed(plan: MigrationPlan, group: str) -> Any:
    import sqlglot

    from airflow_fsmigration.plan.definitions import render_as_of

    text = render_as_of(plan, group, param=AS_OF_MARK)
    return sqlglot.parse_one(
        text.replace("%%", "%").replace(AS_OF_MARK, f"'{_AS_OF_LITERAL}'"), read="postgres"
    )


def _shape(tree: Any, key: str) -> tuple[list[tuple[Any, Any, Any, list[Any]]], str]:
    """The lift plan, or ([], why): per SELECT its key column, its label source (None: a table
    joined with the labels) and the (join, alias) of lifted relations joined to it on the key.

    Every SELECT of the definition must be a pushdown target (the entity filter is exact
    there); each takes its label from the source that provides its key: a table (joined with
    the labels) or a lifted CTE or subquery (whose label columns it passes up). A lifted source
    other than the key's must be joined to it on the key.
    """
    from sqlglot import exp

    from airflow_fsmigration.backfill.pushdown import (
        _join_key_column,
        _norm,
        _Pushdown,
        _source_alias,
        _sources,
    )

    if not isinstance(tree, exp.Select):
        return [], "the definition is not a SELECT (a set operation, or VALUES)"
    if any(True for _ in tree.find_all(exp.Union)):
        return [], "the definition has UNION/INTERSECT/EXCEPT"
    analysis = _Pushdown(tree)
    targets = analysis.run(key)
    keyed = {id(sel): target for sel, target in targets}
    selects = list(tree.find_all(exp.Select))
    for sel in selects:
        if id(sel) not in keyed:
            return [], "part of the definition reads other entities' rows (the entity filter stops above it)"
    plan: list[tuple[Any, Any, Any, list[Any]]] = []
    for sel in selects:
        target = keyed[id(sel)]
        if not isinstance(target, exp.Column) or isinstance(target.this, exp.Star):
            return [], f"the entity key {key} is not a plain column in every SELECT"
        if any(
            isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
            for p in sel.selects
        ):
            return [], "the definition selects *"
        if any(p.alias_or_name.startswith("fsmig_") for p in sel.selects):
            return [], "the definition selects a column named fsmig_*"
        sources = _sources(sel)
        if not sources:
            return [], "a SELECT of the definition reads no table or reads a LATERAL item"

        def lifted(node: Any) -> bool:
            if isinstance(node, exp.Subquery):
                return id(node.this) in keyed
            cte = analysis.cte_of.get(id(node))
            return cte is not None and id(cte.this) in keyed

        keysrc = _norm(target.args["table"]) if target.args.get("table") else next(iter(sources))
        if keysrc not in sources or (not target.args.get("table") and len(sources) != 1):
            return [], f"cannot tell which relation provides {key}"
        keynode = sources[keysrc]
        if isinstance(keynode, exp.Table) and id(keynode) not in analysis.cte_of:
            label = None  # a table: the labels are joined to it
        elif lifted(keynode):
            label = keysrc
        else:
            return [], f"the relation providing {key} is not lifted"
        equal = {(keysrc, target.name)}
        label_joins = []
        for join in sel.args.get("joins") or []:
            alias = _source_alias(join.this)
            if alias is None or alias == keysrc or not lifted(join.this):
                continue
            if (
                _join_key_column(join, alias, equal) is None
                or join.args.get("using")
                or join.args.get("on") is None
            ):
                return [], f"{alias} is joined on something other than {key}"
            label_joins.append((join, alias))
        plan.append((sel, target, label, label_joins))
    return plan, ""


def set_shape(plan: MigrationPlan, group: str) -> str:
    """ "" when the group's definition can be evaluated as a set, else why it cannot (for the log)."""
    _, why = _shape(_parsed(plan, group), plan.groups[group].entity_key)
    return why


def lifted_sql(
    plan: MigrationPlan, group: str, *, dialect: str = "postgres", found: bool = False
) -> str | None:
    """The definition lifted over a label relation, or None when its shape does not allow it.

    The result selects the definition's columns plus ``fsmig_e`` and ``fsmig_ts`` (the label's
    entity and time; ``fsmig_found`` too with ``found``). Every table that provides the key is
    joined with ``LABELS_MARK AS fsmig_lN``, a relation of distinct ``(fsmig_e, fsmig_ts)`` the
    caller substitutes. For Postgres, ``%`` is escaped for psycopg.
    """
    from sqlglot import exp

    tree = _parsed(plan, group)
    lift, _ = _shape(tree, plan.groups[group].entity_key)
    if not lift:
        return None
    for n, (sel, target, label, label_joins) in enumerate(lift):
        src = f"fsmig_l{n}" if label is None else label
        label_e, label_ts = exp.column("fsmig_e", table=src), exp.column("fsmig_ts", table=src)
        for lit in list(sel.find_all(exp.Literal)):
            if lit.is_string and lit.this == _AS_OF_LITERAL and lit.find_ancestor(exp.Select) is sel:
                lit.replace(label_ts.copy())
        if label is None:  # first among the joins: the ON of a lifted relation may name its label
            join = exp.Join(
                this=exp.Table(
                    this=exp.to_identifier(LABELS_MARK), alias=exp.TableAlias(this=exp.to_identifier(src))
                ),
                on=exp.EQ(this=target.copy(), expression=label_e.copy()),
                kind="INNER",
            )
            sel.set("joins", [join, *(sel.args.get("joins") or [])])
        for join, alias in label_joins:  # a lifted relation joined on the key joins on the label too
            on = join.args["on"]
            for col in ("fsmig_e", "fsmig_ts"):
                on = exp.and_(
                    on, exp.EQ(this=exp.column(col, table=alias), expression=exp.column(col, table=src))
                )
            join.set("on", on)
        extra = [exp.alias_(label_e.copy(), "fsmig_e"), exp.alias_(label_ts.copy(), "fsmig_ts")]
        if found and sel is tree:
            extra.append(exp.alias_(exp.true(), "fsmig_found"))
        sel.select(*extra, copy=False)
        group_by = sel.args.get("group")
        if group_by is not None:
            group_by.set("expressions", [*group_by.expressions, label_e.copy(), label_ts.copy()])
        for window in sel.find_all(exp.Window):
            if window.find_ancestor(exp.Select) is sel:
                window.set(
                    "partition_by",
                    [*(window.args.get("partition_by") or []), label_e.copy(), label_ts.copy()],
                )
        distinct = sel.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            on_list = distinct.args["on"]
            on_list.set("expressions", [*on_list.expressions, label_e.copy(), label_ts.copy()])
        sel.set("order", None)  # an ORDER BY orders nothing a backfill keeps (LIMIT is never lifted)
    rendered = tree.sql(dialect=dialect)
    return rendered.replace("%", "%%") if dialect == "postgres" else rendered
