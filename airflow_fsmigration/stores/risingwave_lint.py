"""What RisingWave refuses, or handles badly, in a definition deployed as a streaming view.

A definition's ``:as_of`` becomes ``NOW()`` in the live view. RisingWave accepts ``NOW()`` in a
materialized view only as a *temporal filter*: a comparison, in a query's ``WHERE`` or
``HAVING``, of a time expression of the relation's columns with a non-decreasing expression
holding exactly one ``NOW()``; temporal filters may not be joined by ``OR``
(https://docs.risingwave.com/processing/sql/temporal-filters). ``NOW()`` in a ``SELECT`` list is
refused or crashes the compute node (risingwavelabs/risingwave#21949, #23466), and an aggregate
``FILTER (WHERE ...)`` is not a query's ``WHERE``. The checks here parse the definition with
sqlglot, so each finding names the line of the ``:as_of`` it is about.

Where a mechanical rewrite exists it is offered
(:func:`~airflow_fsmigration.stores.risingwave_rewrite.rewrite_windows`): several windows over
one source, written as aggregates with ``FILTER (WHERE ts > :as_of - interval ...)``, become one
temporal-filtered subquery per window joined on the group key: the same rows as of every time
(``tests/test_risingwave_lint.py`` runs both forms on Postgres).

No Airflow import: ``fsmigrate validate`` and the deploy use it alike.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.plan.definitions import DefinitionError

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

_AS_OF = re.compile(r"(?<![:\w]):as_of\b")
_MARKER = "fsmig_as_of"
_MARKER_CALL = re.compile(rf"\b{_MARKER}\(\)", re.IGNORECASE)
DOCS = "https://docs.risingwave.com/processing/sql/temporal-filters"
SELECT_LIST = ":as_of in the SELECT list"


@dataclass(frozen=True)
class Finding:
    """One construct RisingWave refuses (``error``) or handles badly (``warning``) in a definition."""

    group: str
    file: str
    line: int | None
    severity: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: groups.{self.group}.definition: {self.message}"


def _parse(sql: str) -> Any:
    import sqlglot
    from sqlglot.errors import ParseError

    try:
        return sqlglot.parse_one(_AS_OF.sub(f"{_MARKER}()", sql), read="postgres")
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        raise DefinitionError(f"SQL does not parse: {first.get('description', exc)}") from None


def _is_now(node: Any) -> bool:
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return str(node.name).lower() == _MARKER
    return isinstance(node, exp.CurrentTimestamp | exp.CurrentDate | exp.CurrentTime)


def _nows(node: Any) -> list[Any]:
    return [n for n in node.walk() if _is_now(n)]


def _line(node: Any) -> int | None:
    for n in (node, *node.walk()):
        line = (getattr(n, "meta", None) or {}).get("line")
        if line:
            return int(line)
    parent = node.parent
    while parent is not None:
        line = (parent.meta or {}).get("line")
        if line:
            return int(line)
        parent = parent.parent
    return None


def _columns(node: Any) -> list[Any]:
    from sqlglot import exp

    return list(node.find_all(exp.Column))


_COMPARISONS = ("GT", "GTE", "LT", "LTE", "EQ")


def _non_decreasing(side: Any) -> bool:
    """``NOW()``, ``NOW() +/- constant``, ``date_trunc(unit, NOW())`` and nestings of those."""
    from sqlglot import exp

    if _is_now(side):
        return True
    if isinstance(side, exp.Paren):
        return _non_decreasing(side.this)
    if isinstance(side, exp.Add | exp.Sub):
        left, right = side.this, side.expression
        if _nows(left) and not _nows(right) and not _columns(right):
            return _non_decreasing(left)
        if isinstance(side, exp.Add) and _nows(right) and not _nows(left) and not _columns(left):
            return _non_decreasing(right)
        return False
    if isinstance(side, exp.TimestampTrunc | exp.DateTrunc) or (
        isinstance(side, exp.Anonymous) and str(side.name).lower() == "date_trunc"
    ):
        inner = [a for a in side.args.values() if isinstance(a, exp.Expression) and _nows(a)]
        return len(inner) == 1 and _non_decreasing(inner[0])
    if isinstance(side, exp.Cast):
        return _non_decreasing(side.this)
    return False


def temporal_filter_problem(cmp: Any) -> str | None:
    """Why a comparison holding ``NOW()`` is not a temporal filter RisingWave accepts, or None."""
    from sqlglot import exp

    if isinstance(cmp, exp.Between):
        sides_now = [cmp.args.get("low"), cmp.args.get("high")]
        column_side = cmp.this
        if _nows(column_side) or not _columns(column_side):
            return "BETWEEN must compare a time column with NOW() bounds"
        if not all(s is not None and len(_nows(s)) == 1 and _non_decreasing(s) for s in sides_now):
            return "each BETWEEN bound must be a non-decreasing expression with exactly one NOW()"
        return None
    left, right = cmp.this, cmp.expression
    now_side, col_side = (left, right) if _nows(left) else (right, left)
    if _nows(col_side):
        return "NOW() on both sides of one comparison"
    if not _columns(col_side):
        return "the other side of the comparison holds no column of the relation"
    if len(_nows(now_side)) != 1 or _columns(now_side):
        return "the NOW() side must hold exactly one NOW() and no column"
    if not _non_decreasing(now_side):
        return "the NOW() side must be non-decreasing (NOW() +/- an interval, or date_trunc of it)"
    return None


def _feature_of(node: Any) -> str | None:
    from sqlglot import exp

    while node is not None and not isinstance(node, exp.Select):
        if isinstance(node.parent, exp.Select) and node.arg_key == "expressions":
            return str(node.alias_or_name) or None
        node = node.parent
    return None


def _context(now: Any) -> tuple[str, Any]:
    """Where a NOW() sits: ('filter'|'select'|'where'|'having'|'on'|'other', the clause's root)."""
    from sqlglot import exp

    child, node = now, now.parent
    while node is not None:
        if isinstance(node, exp.Filter) and child.arg_key == "expression":
            return "filter", node
        if isinstance(node, exp.Join) and child.arg_key == "on":
            return "on", child
        if isinstance(node, exp.Where) and isinstance(node.parent, exp.Filter):
            return "filter", node.parent
        if isinstance(node, exp.Where | exp.Having):
            return ("where" if isinstance(node, exp.Where) else "having"), node
        if isinstance(node, exp.Select):
            return ("select" if child.arg_key == "expressions" else "other"), child
        child, node = node, node.parent
    return "other", now


def _comparison_of(now: Any, clause: Any) -> tuple[Any | None, bool]:
    """The comparison a NOW() belongs to inside WHERE/HAVING, and whether only AND/OR lead there."""
    from sqlglot import exp

    node = now.parent
    cmp = None
    while node is not None and node is not clause:
        if cmp is None and (type(node).__name__ in _COMPARISONS or isinstance(node, exp.Between)):
            cmp = node
        elif cmp is not None and not isinstance(node, exp.And | exp.Or | exp.Paren):
            return cmp, False
        node = node.parent
    return cmp, True


def lint_sql(sql: str, entity_key: str | None = None) -> list[tuple[int | None, str, str]]:
    """(line, severity, message) for each problem of one definition in a RisingWave streaming view."""
    return list(_lint_sql(sql, entity_key))


@functools.lru_cache(maxsize=256)
def _lint_sql(sql: str, entity_key: str | None) -> tuple[tuple[int | None, str, str], ...]:
    # cached: validate, the deploy and read_time_groups ask this of the same few definitions
    from sqlglot import exp

    tree = _parse(sql)
    out: list[tuple[int | None, str, str]] = []
    filtered_windows = 0
    for now in _nows(tree):
        line = _line(now)
        where, clause = _context(now)
        feature = _feature_of(now)
        named = f" (column '{feature}')" if feature else ""
        if where == "filter":
            filtered_windows += 1
            out.append(
                (
                    line,
                    "error",
                    f":as_of inside an aggregate FILTER (WHERE ...){named}: RisingWave accepts NOW() only in "
                    "temporal filters in WHERE/HAVING; write one temporal-filtered subquery per window, "
                    "joined on the group key",
                )
            )
        elif where == "select":
            out.append(
                (
                    line,
                    "warning",
                    f"{SELECT_LIST}{named}: RisingWave refuses NOW() there in a materialized view (a value that "
                    "moves with the clock has no streaming form), so this group and every group reading it "
                    "is deployed as a plain view computed at read time: check its latency with fsmigrate "
                    "loadtest, or compute the value where it is read",
                )
            )
        elif where in ("where", "having"):
            cmp, plain = _comparison_of(now, clause)
            problem = (
                "it is not a comparison" if cmp is None else temporal_filter_problem(cmp) if plain else None
            )
            if cmp is not None and not plain:
                problem = "the comparison sits under NOT, CASE or a function, not directly under AND/OR"
            if problem:
                out.append(
                    (
                        line,
                        "error",
                        f":as_of in {where.upper()} is not a temporal filter RisingWave accepts: {problem}; "
                        "compare a time column with :as_of +/- an interval",
                    )
                )
        elif where == "on":
            out.append(
                (
                    line,
                    "warning",
                    ":as_of in a JOIN ... ON condition: RisingWave documents temporal filters in "
                    "WHERE/HAVING only; move it into the WHERE of the joined subquery",
                )
            )
        else:
            out.append(
                (
                    line,
                    "error",
                    ":as_of outside WHERE/HAVING (GROUP BY, ORDER BY or a FROM function): RisingWave accepts "
                    "NOW() only in temporal filters",
                )
            )
    for clause in tree.find_all(exp.Where, exp.Having):
        for disj in clause.find_all(exp.Or):
            if isinstance(disj.parent, exp.Or | exp.Paren) and disj.find_ancestor(exp.Or) is not None:
                continue  # report the outermost OR once
            temporal = [c for c in disj.flatten() if _nows(c)]
            if len(temporal) >= 2 or any(
                isinstance(c, exp.And | exp.Paren) and len(_nows(c)) >= 2 for c in temporal
            ):
                out.append(
                    (
                        _line(disj),
                        "error",
                        "temporal filters joined by OR: RisingWave refuses it; split the query into one "
                        "subquery per branch combined with UNION ALL, or keep one temporal filter per OR",
                    )
                )
    for win in tree.find_all(exp.Window):
        if not win.args.get("partition_by"):
            out.append(
                (
                    _line(win),
                    "warning",
                    "a window function without PARTITION BY: RisingWave requires one in streaming "
                    "queries (docs: value expressions, window function calls)",
                )
            )
    if entity_key and entity_key_leads_pk(sql, entity_key) is False:
        group = tree.args.get("group")
        out.append(
            (
                _line(group),
                "warning",
                f"the outermost GROUP BY does not lead with the entity key '{entity_key}', so it is not the "
                "view's primary-key prefix: point lookups need the index the deploy creates on it",
            )
        )
    return tuple(out)


def entity_key_leads_pk(sql: str, entity_key: str) -> bool | None:
    """Whether the entity key leads the view's primary key, as far as the SQL says.

    RisingWave keys an aggregation's output by its group key: True when the outermost query
    groups by the entity key first, False when it groups by other columns first, None when the
    SQL does not say (the key comes from upstream tables and joins). Unless True, the deploy
    creates an index on the entity key (:meth:`~.dialect.StoreDialect.entity_index`).
    """
    from sqlglot import exp

    tree = _parse(sql)
    if not isinstance(tree, exp.Select):
        return None
    group = tree.args.get("group")
    keys = list(group.expressions) if group is not None else []
    if not keys:
        return None
    return isinstance(keys[0], exp.Column) and keys[0].name == entity_key


def clock_dependent(sql: str) -> bool:
    """Whether the definition selects a value computed from :as_of (it cannot be materialized)."""
    return any(msg.startswith(SELECT_LIST) for _, _, msg in lint_sql(sql))


def read_time_groups(plan: MigrationPlan) -> set[str]:
    """Groups deployed on RisingWave as plain views, evaluated at read time.

    A group whose definition selects a value computed from ``:as_of`` (``account_age_days`` from
    ``:as_of - created_at``) has no materialized form, and neither has a group that reads its
    view: a materialized view over it would carry the ``NOW()`` into its own SELECT list.
    """
    from airflow_fsmigration.plan.definitions import groups_reading, referenced_tables
    from airflow_fsmigration.plan.graph import compute_waves

    out: set[str] = set()
    for name in compute_waves(plan).order:  # upstream first
        sql = plan.definition_sql(name)
        upstream = groups_reading(referenced_tables(sql), plan) | set(plan.groups[name].depends_on)
        if upstream & out or clock_dependent(sql):
            out.add(name)
    return out


def lint_plan(plan: MigrationPlan) -> list[Finding]:
    """Every finding of every group's definition, in file order, for ``fsmigrate validate``."""
    findings = []
    try:
        read_time = read_time_groups(plan)
    except DefinitionError:
        read_time = set()
    for name, group in plan.groups.items():
        path = plan.definition_path(name)
        try:
            shown = str(path.relative_to(Path.cwd()))
        except ValueError:
            shown = str(path)
        try:
            problems = lint_sql(plan.definition_sql(name), group.entity_key)
        except DefinitionError as exc:
            findings.append(Finding(name, shown, None, "error", str(exc)))
            continue
        findings += [Finding(name, shown, line, sev, msg) for line, sev, msg in problems]
        if name in read_time and not any(msg.startswith(SELECT_LIST) for _, _, msg in problems):
            findings.append(
                Finding(
                    name,
                    shown,
                    None,
                    "warning",
                    "reads a group computed at read time on RisingWave, so it is a plain view too "
                    "(no incremental maintenance): check its latency with fsmigrate loadtest",
                )
            )
    return sorted(findings, key=lambda f: (f.file, f.line or 0))


__all__ = [
    "DOCS",
    "SELECT_LIST",
    "Finding",
    "clock_dependent",
    "entity_key_leads_pk",
    "lint_plan",
    "lint_sql",
    "read_time_groups",
]
