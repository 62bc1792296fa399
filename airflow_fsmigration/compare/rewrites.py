"""Candidate fixes of a definition, made with sqlglot on the parsed SQL, for the diagnosis replay.

Each candidate is one change a port commonly gets wrong: a window bound inclusive instead of
exclusive, deduplication by the event id missing, the time column read in another zone, NULLs
coalesced to 0 inside aggregates, a different rounding, a unit scale. The diagnosis replays each
on the raw events for a sample of entities and keeps the ones that reproduce the legacy values
(:mod:`airflow_fsmigration.compare.diagnose`). A candidate is a transform of the syntax tree, so
two can be composed for a scenario with two defects.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup

_PLACEHOLDER = re.compile(r"(?<!:):as_of\b")
_MARK = "__fsmig_as_of__"
_MAX_SINGLE_BOUNDS = 12
#: Literal factors a unit conversion is written with (``/ 100``, ``* 1000``, ...).
SCALE_LITERALS = ("100", "1000", "100.0", "1000.0", "0.01")

Transform = Callable[[Any], Any]


@dataclass
class Candidate:
    """One rewrite: its cause kind, a sentence saying what it changes, and the tree transform."""

    kind: str
    description: str
    transform: Transform

    def then(self, other: Candidate) -> Candidate:
        """This rewrite followed by ``other`` (for two defects at once)."""
        first, second = self.transform, other.transform
        return Candidate(other.kind, other.description, lambda tree: second(first(tree)))


def parse(sql: str) -> Any:
    """The definition's tree, with ``:as_of`` held as a marker literal (a fresh copy each call)."""
    return _parsed(sql).copy()


@functools.lru_cache(maxsize=64)
def _parsed(sql: str) -> Any:
    # the diagnosis parses the same definition for every candidate; parsing costs ~50 ms
    import sqlglot

    return sqlglot.parse_one(_PLACEHOLDER.sub(f"'{_MARK}'", sql), read="postgres")


def render(tree: Any) -> str:
    """The tree back as definition SQL (pretty, ``:as_of`` restored)."""
    return tree.sql(dialect="postgres", pretty=True).replace(f"'{_MARK}'", ":as_of")


def snippet(node: Any) -> str:
    """A node as one line of SQL, for a sentence."""
    text = " ".join(render(node).split())
    return text.replace("( ", "(").replace(" )", ")")


def apply(sql: str, candidate: Candidate) -> str:
    return render(candidate.transform(parse(sql)))


def diff(sql: str, fixed: str) -> str:
    """A unified diff of the definition (both sides pretty-printed the same way), context 1."""
    before = render(parse(sql)).splitlines()
    return "\n".join(
        difflib.unified_diff(before, fixed.splitlines(), "definition", "fixed", n=1, lineterm="")
    )


def substitute_tables(sql: str, tables: dict[str, str]) -> str:
    """The definition reading ``tables`` (name -> replacement, e.g. a staged temporary copy)."""
    from sqlglot import exp

    tree = parse(sql)
    for node in list(tree.find_all(exp.Table)):
        name = f"{node.db}.{node.name}" if node.db else node.name
        target = tables.get(name) or tables.get(name.lower())
        if target is None:
            continue
        db, _, table = target.rpartition(".")
        alias = node.alias or node.name
        node.replace(exp.to_table(f"{db}.{table}" if db else table).as_(alias))
    return render(tree)


def has_mark(node: Any) -> bool:
    from sqlglot import exp

    return any(isinstance(n, exp.Literal) and n.this == _MARK for n in node.walk())


def _bounds(tree: Any) -> list[tuple[Any, str]]:
    """Window comparisons against ``:as_of``: (node, "lower" | "upper")."""
    from sqlglot import exp

    out = []
    for node in tree.find_all(exp.GT, exp.GTE, exp.LT, exp.LTE):
        left_mark, right_mark = has_mark(node.this), has_mark(node.expression)
        if left_mark == right_mark:
            continue
        column_on_left = right_mark
        greater = isinstance(node, exp.GT | exp.GTE)
        out.append((node, "lower" if greater == column_on_left else "upper"))
    return out


def _flip(node: Any) -> Any:
    from sqlglot import exp

    swap = {exp.GT: exp.GTE, exp.GTE: exp.GT, exp.LT: exp.LTE, exp.LTE: exp.LT}
    return swap[type(node)](this=node.this.copy(), expression=node.expression.copy())


def _flip_bounds(which: str | None, index: int | None = None) -> Transform:
    def run(tree: Any) -> Any:
        tree = tree.copy()
        for i, (node, side) in enumerate(_bounds(tree)):
            if (which is None or side == which) and (index is None or i == index):
                node.replace(_flip(node))
        return tree

    return run


def bound_candidates(tree: Any) -> list[Candidate]:
    bounds = _bounds(tree)
    out: list[Candidate] = []
    for side in ("lower", "upper"):
        n = sum(1 for _, s in bounds if s == side)
        if n:
            op = "exclusive/inclusive" if side == "lower" else "inclusive/exclusive"
            out.append(
                Candidate("window_bound", f"flip every {side} window bound ({n}) {op}", _flip_bounds(side))
            )
    if len(bounds) > 1:
        for i, (node, _side) in enumerate(bounds[:_MAX_SINGLE_BOUNDS]):
            text = snippet(node)
            out.append(Candidate("window_bound", f"flip the bound `{text}`", _flip_bounds(None, i)))
    return out


def _drop_zone_conversions(tree: Any) -> Any:
    from sqlglot import exp

    tree = tree.copy()
    for node in list(tree.find_all(exp.AtTimeZone)):
        if node.find_ancestor(exp.AtTimeZone) is not None:
            continue
        inner = node.this
        while isinstance(inner, exp.AtTimeZone | exp.Paren):
            inner = inner.this
        node.replace(inner.copy())
    return tree


def _time_columns(tree: Any, group: FeatureGroup) -> list[Any]:
    """References to an event source's time column in the SELECTs that read that source."""
    from sqlglot import exp

    sources = {s.table.lower(): s.time_column for s in group.event_sources}
    refs = []
    for table in tree.find_all(exp.Table):
        name = f"{table.db}.{table.name}".lower() if table.db else table.name.lower()
        column = sources.get(name)
        select = table.find_ancestor(exp.Select)
        if column is None or select is None:
            continue
        alias = table.alias_or_name
        for col in select.find_all(exp.Column):
            if col.name == column and col.table in ("", alias) and col.find_ancestor(exp.Select) is select:
                refs.append(col)
    return refs


def _shift_time(group: FeatureGroup, seconds: int) -> Transform:
    def run(tree: Any) -> Any:
        from sqlglot import exp

        tree = tree.copy()
        for col in _time_columns(tree, group):
            shifted = exp.Add(
                this=col.copy(), expression=exp.Interval(this=exp.Literal.string(f"{seconds} seconds"))
            )
            col.replace(exp.Paren(this=shifted))
        return tree

    return run


def zone_candidates(tree: Any, group: FeatureGroup, offsets: list[int]) -> list[Candidate]:
    from sqlglot import exp

    out = []
    zones = [snippet(n) for n in tree.find_all(exp.AtTimeZone) if n.find_ancestor(exp.AtTimeZone) is None]
    if zones:
        out.append(
            Candidate(
                "time_zone", f"read the time column as stored: drop `{zones[0]}`", _drop_zone_conversions
            )
        )
    if _time_columns(tree, group):
        for off in offsets:
            hours = -off / 3600
            out.append(
                Candidate(
                    "time_zone",
                    f"read the event time {hours:+g} h (the new store's times are {off / 3600:+g} h off)",
                    _shift_time(group, -off),
                )
            )
    return out


def dedup(group: FeatureGroup) -> Transform:
    def run(tree: Any) -> Any:
        import sqlglot
        from sqlglot import exp

        tree = tree.copy()
        ids = {s.table.lower(): s.id_column for s in group.event_sources if s.id_column}
        for table in list(tree.find_all(exp.Table)):
            name = f"{table.db}.{table.name}".lower() if table.db else table.name.lower()
            if name not in ids:
                continue
            key = ids[name]
            sub = sqlglot.parse_one(
                f"SELECT DISTINCT ON ({key}) * FROM {name} ORDER BY {key}", read="postgres"
            )
            table.replace(
                exp.Subquery(this=sub, alias=exp.TableAlias(this=exp.to_identifier(table.alias_or_name)))
            )
        return tree

    return run


def strip_coalesce_in_aggregates(tree: Any) -> Any:
    from sqlglot import exp

    tree = tree.copy()
    for node in list(tree.find_all(exp.Coalesce)):
        if node.find_ancestor(exp.AggFunc) is not None:
            node.replace(node.this.copy())
    return tree


def coalesce_aggregates(tree: Any) -> Any:
    from sqlglot import exp

    tree = tree.copy()
    for agg in list(tree.find_all(exp.Avg, exp.Sum)):
        arg = agg.this
        if isinstance(arg, exp.Coalesce | exp.Star):
            continue
        arg.replace(exp.Coalesce(this=arg.copy(), expressions=[exp.Literal.number(0)]))
    return tree


def rounding(digits: int | None) -> Transform:
    def run(tree: Any) -> Any:
        from sqlglot import exp

        tree = tree.copy()
        for node in list(tree.find_all(exp.Round)):
            if digits is None:
                node.replace(node.this.copy())
            else:
                node.set("decimals", exp.Literal.number(digits))
        return tree

    return run


def unscale(tree: Any) -> Any:
    from sqlglot import exp

    tree = tree.copy()
    for node in list(tree.find_all(exp.Div, exp.Mul)):
        lit = node.expression
        if isinstance(lit, exp.Literal) and not lit.is_string and lit.this in SCALE_LITERALS:
            node.replace(exp.Paren(this=node.this.copy()))
    return tree
