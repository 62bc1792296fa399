"""One definition, three uses: a group's SQL with an ``:as_of`` parameter.

The same text becomes the live view in the new store (``:as_of`` -> ``now()``), the as-of query
for backfills and point-in-time checks (``:as_of`` -> a bound parameter), and the input of
dependency inference. Parsing uses sqlglot, a maintained SQL parser, rather than regexes, so
CTEs, subqueries and quoted names are handled the way the database would.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

AS_OF = "as_of"
_PLACEHOLDER = re.compile(r"(?<![:\w]):as_of\b")


class DefinitionError(ValueError):
    """A group's SQL definition cannot be parsed or used."""


def _parse(sql: str, dialect: str = "postgres") -> Any:
    import sqlglot
    from sqlglot.errors import ParseError

    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" at line {first.get('line')}" if first.get("line") else ""
        raise DefinitionError(f"SQL does not parse{where}: {first.get('description', exc)}") from None
    if len(statements) != 1:
        raise DefinitionError(f"a definition must be exactly one SELECT statement, found {len(statements)}")
    return statements[0]


def has_as_of(sql: str) -> bool:
    return bool(_PLACEHOLDER.search(sql))


def output_columns(sql: str) -> list[str] | None:
    """Names the definition selects, or None when it selects ``*`` (cannot be known statically)."""
    names = _output_columns(sql)
    return None if names is None else list(names)


@functools.lru_cache(maxsize=256)
def _output_columns(sql: str) -> tuple[str, ...] | None:
    # cached: the diagnosis asks this of the same few definitions for every replay
    from sqlglot import exp

    tree = _parse(sql)
    if not isinstance(tree, exp.Query):
        raise DefinitionError(f"a definition must be a SELECT, not {tree.key.upper()}")
    names = []
    for projection in tree.selects:
        if isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and projection.is_star):
            return None
        names.append(projection.alias_or_name)
    return tuple(names)


def referenced_tables(sql: str) -> set[str]:
    """Relations the definition reads, as ``schema.name`` (or ``name``), excluding its own CTEs."""
    from sqlglot import exp

    tree = _parse(sql)
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    tables = set()
    for table in tree.find_all(exp.Table):
        if not table.db and table.name in ctes:
            continue
        tables.add(f"{table.db}.{table.name}" if table.db else table.name)
    return tables


def inferred_dependencies(plan: MigrationPlan) -> dict[str, set[str]]:
    """For each group, the other groups whose new-store view its SQL reads."""
    views = {plan.view_name(g): g for g in plan.groups}
    result: dict[str, set[str]] = {}
    for name in plan.groups:
        tables = referenced_tables(plan.definition_sql(name))
        result[name] = {views[t] for t in tables if t in views and views[t] != name}
    return result


def dependency_findings(plan: MigrationPlan) -> list[str]:
    """Disagreements between declared ``depends_on`` and what the SQL reads, as sentences."""
    findings = []
    inferred = inferred_dependencies(plan)
    for name, group in plan.groups.items():
        declared = set(group.depends_on)
        for up in sorted(inferred[name] - declared):
            findings.append(
                f"group '{name}' reads {plan.view_name(up)} but does not declare depends_on: [{up}]: "
                f"add it, or '{up}' may be cut over after '{name}'"
            )
        for up in sorted(declared - inferred[name]):
            findings.append(
                f"group '{name}' declares depends_on '{up}' but its SQL never reads {plan.view_name(up)}: "
                "remove it if the dependency is gone, or keep it if it is deliberate ordering"
            )
    return findings


def render_live(sql: str) -> str:
    """The live definition: as-of is the current time, in the store's own clock."""
    return _PLACEHOLDER.sub("now()", sql)


def render_as_of(plan: MigrationPlan, group: str, param: str = "%(as_of)s", *, sql: str | None = None) -> str:
    """The definition as of a bound time; upstream group views are inlined at the same time.

    Inlining is what keeps a derived group point-in-time correct: its upstream's *view* only
    knows "now", so each reference to ``schema.upstream`` becomes that upstream's own
    definition as a subquery, rendered as of the same parameter.
    ``sql`` replaces the group's own definition text (a rewrite the diagnosis replays).
    """
    return _render_as_of(plan, group, param, stack=(), sql=sql)


def _render_as_of(
    plan: MigrationPlan, group: str, param: str, stack: tuple[str, ...], sql: str | None = None
) -> str:
    if group in stack:
        raise DefinitionError(f"definitions read each other in a cycle: {' -> '.join((*stack, group))}")
    sql = plan.definition_sql(group) if sql is None else sql
    views = {plan.view_name(g): g for g in plan.groups if g != group}
    upstream = {t for t in referenced_tables(sql) if t in views}
    if not upstream:
        return _bind(sql, param)
    from sqlglot import exp

    marker = "__fsmig_as_of__"
    tree = _parse(_PLACEHOLDER.sub(f"'{marker}'", sql))

    def inline(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and f"{node.db}.{node.name}" in views:
            up = views[f"{node.db}.{node.name}"]
            inner = _parse(_PLACEHOLDER.sub(f"'{marker}'", _unbound(plan, up, (*stack, group))))
            return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(node.alias_or_name)))
        return node

    rendered = tree.transform(inline).sql(dialect="postgres")
    return (
        rendered.replace("%", "%%").replace(f"'{marker}'", param)
        if "%" in param
        else rendered.replace(f"'{marker}'", param)
    )


def _unbound(plan: MigrationPlan, group: str, stack: tuple[str, ...]) -> str:
    """An upstream's as-of SQL with the placeholder kept, for inlining into a downstream query."""
    return _render_as_of(plan, group, ":as_of", stack)


def _bind(sql: str, param: str) -> str:
    if "%" in param:
        sql = sql.replace("%", "%%")
    return _PLACEHOLDER.sub(param, sql)


def groups_reading(tables: Iterable[str], plan: MigrationPlan) -> set[str]:
    views = {plan.view_name(g): g for g in plan.groups}
    return {views[t] for t in tables if t in views}
