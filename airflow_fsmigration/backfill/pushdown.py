"""Push a label's entity filter into a definition, and only down chains where that stays exact.

Postgres does not push a lateral join condition into a grouped subquery or a CTE, so a
per-label evaluation would compute every entity for every label. We add ``<key> = <entity>``
ourselves, but a filter is sound only where no row of another entity can reach the entity's
output. A SELECT judged alone cannot tell: a CTE grouped by the key is safe to filter on its own,
yet wrong to filter when its consumer computes across entities (``n / sum(n) OVER ()``,
``percent_rank() OVER (ORDER BY n)``, a join on another column, a scalar subquery over the CTE).

So the analysis walks from the definition's output down to its sources and filters a SELECT only
when every step above it passes the key through unchanged: a row-wise SELECT (no LIMIT/OFFSET,
no subquery in its expressions, no LATERAL), windows only when PARTITION BY the key, aggregates
only when GROUP BY the key, DISTINCT ON only when it includes the key. From a filtered SELECT the
filter goes into the source that provides the key and into sources joined to it on the key
(``x.col = <key source>.<key>``); a CTE is filtered only when every reference to it asks for the
same filter. Anything else stops the descent: that part is evaluated unfiltered and the caller's
final ``<key> = <entity>`` filter keeps the result exact. When unsure, it does not push.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

AS_OF_MARK = "%(__fsmig_as_of__)s"
ENTITY_MARK = "__fsmig_entity__"
_AS_OF_LITERAL = "'__fsmig_as_of__'"


def entity_filtered_sql(
    plan: MigrationPlan,
    group: str,
    as_of_ref: str,
    entity_ref: str,
    *,
    sql: str | None = None,
    op: str = "=",
) -> str:
    """The as-of definition with ``<key> = entity_ref`` added wherever it keeps the output exact.

    The caller still filters the result on the key: a SELECT left unfiltered costs time, never
    correctness. ``sql`` replaces the group's definition text (see ``render_as_of``); ``op``
    ``"= ANY"`` makes ``entity_ref`` an array of keys.
    """
    import sqlglot
    from sqlglot import exp

    from airflow_fsmigration.plan.definitions import render_as_of

    key = plan.groups[group].entity_key
    text = render_as_of(plan, group, param=AS_OF_MARK, sql=sql)
    tree = sqlglot.parse_one(text.replace("%%", "%").replace(AS_OF_MARK, _AS_OF_LITERAL), read="postgres")
    for select, target in pushdown_targets(tree, key):
        select.where(exp.EQ(this=target.copy(), expression=exp.Literal.string(ENTITY_MARK)), copy=False)
    rendered = tree.sql(dialect="postgres").replace("%", "%%")
    rendered = rendered.replace(_AS_OF_LITERAL, as_of_ref)
    return rendered.replace(f"= '{ENTITY_MARK}'", f"{op} {entity_ref}").replace(
        f"'{ENTITY_MARK}'", entity_ref
    )


def pushdown_targets(tree: Any, key: str) -> list[tuple[Any, Any]]:
    """(SELECT, key expression) pairs where ``key expression = <entity>`` may be added to WHERE."""
    return _Pushdown(tree).run(key)


def filter_reaches_tables(plan: MigrationPlan, group: str) -> bool:
    """Whether the entity filter lands on a SELECT that reads a table (so an index can serve a label).

    When it does not (the definition computes across entities at its top), a per-label evaluation
    computes the whole definition once per label, and one evaluation per timestamp is far cheaper.
    """
    import sqlglot
    from sqlglot import exp

    from airflow_fsmigration.plan.definitions import render_as_of

    text = render_as_of(plan, group, param=AS_OF_MARK)
    tree = sqlglot.parse_one(text.replace("%%", "%").replace(AS_OF_MARK, _AS_OF_LITERAL), read="postgres")
    analysis = _Pushdown(tree)
    targets = analysis.run(plan.groups[group].entity_key)
    for select, _ in targets:
        for node in (_sources(select) or {}).values():
            if isinstance(node, exp.Table) and id(node) not in analysis.cte_of:
                return True
    return False


def _norm(ident: Any) -> str:
    """Postgres folds unquoted identifiers to lower case."""
    from sqlglot import exp

    if isinstance(ident, exp.Identifier):
        return ident.this if ident.quoted else ident.this.lower()
    return str(ident).lower()


def _arg(node: Any, name: str) -> Any:
    # sqlglot 26+ spells some arg keys with a trailing underscore (``from_``, ``with_``)
    value = node.args.get(f"{name}_")
    return value if value is not None else node.args.get(name)


class _Pushdown:
    """One analysis of one parsed definition: CTE references first, then the descent."""

    def __init__(self, tree: Any) -> None:
        self.tree = tree
        self.cte_of: dict[int, Any] = {}  # id(Table reference) -> the CTE it names
        self.refs: dict[int, list[Any]] = {}  # id(CTE) -> its references
        self.inside: dict[int, Any] = {}  # id(Table reference) -> innermost CTE whose body holds it
        self.ctes: list[Any] = []
        self.never: set[int] = set()  # CTEs that are never filtered (recursive, column lists)
        self.demand: dict[int, str] = {}  # id(Table reference) -> key column asked of that source
        self.targets: list[tuple[Any, Any]] = []

    # -- CTE resolution ------------------------------------------------------------------------

    def _resolve(self, node: Any, env: dict[str, Any], cte: Any) -> None:
        from sqlglot import exp

        with_ = _arg(node, "with") if isinstance(node, exp.Query) else None
        if with_ is not None:
            inner = dict(env)
            recursive = bool(with_.args.get("recursive"))
            for c in with_.expressions:
                name = _norm(c.args["alias"].this)
                self.ctes.append(c)
                self.refs.setdefault(id(c), [])
                if recursive or c.args["alias"].columns:
                    self.never.add(id(c))
                if recursive:
                    inner[name] = c
                self._resolve(c.this, inner, c)
                inner[name] = c
            env = inner
        if isinstance(node, exp.Table) and not node.args.get("db") and not node.args.get("catalog"):
            target = env.get(_norm(node.this))
            if target is not None:
                self.cte_of[id(node)] = target
                self.refs[id(target)].append(node)
                self.inside[id(node)] = cte
        for child in node.iter_expressions():
            if child is with_:
                continue
            self._resolve(child, env, cte)

    # -- the descent ---------------------------------------------------------------------------

    def run(self, key: str) -> list[tuple[Any, Any]]:
        self._resolve(self.tree, {}, None)
        self._push(self.tree, key)
        decided: set[int] = set()
        progress = True
        while progress:
            progress = False
            for c in self.ctes:
                if id(c) in decided:
                    continue
                refs = self.refs[id(c)]
                holders = [self.inside.get(id(r)) for r in refs]
                if any(h is not None and id(h) not in decided for h in holders):
                    continue  # a reference sits in a CTE not yet decided: its demand is not known yet
                decided.add(id(c))
                progress = True
                # filtered only when every reference asks for the same key column
                wanted = {self.demand.get(id(r)) for r in refs}
                col = wanted.pop() if len(wanted) == 1 else None
                if col is not None and id(c) not in self.never:
                    self._push(c.this, col)
        return self.targets

    def _push(self, query: Any, col: str) -> None:
        from sqlglot import exp

        if isinstance(query, exp.Subquery):
            if any(query.args.get(a) for a in ("limit", "offset", "sample")):
                return
            self._push(query.this, col)
        elif isinstance(query, exp.Union):
            self._push_union(query, col)
        elif isinstance(query, exp.Select):
            self._push_select(query, col)

    def _push_union(self, union: Any, col: str) -> None:
        """UNION [ALL] keeps rows whole: the key's position is filtered in every branch."""
        if any(union.args.get(a) for a in ("limit", "offset", "fetch")):
            return
        names = _output_names(union)
        if names is None or names.count(col) != 1:
            return
        pos = names.index(col)
        for branch in (union.this, union.expression):
            branch_names = _output_names(branch)
            if branch_names is None or len(branch_names) <= pos:
                return
        for branch in (union.this, union.expression):
            self._push(branch, _output_names(branch)[pos])  # type: ignore[index]

    def _push_select(self, select: Any, col: str) -> None:
        from sqlglot import exp

        named = [p for p in select.selects if not _is_star(p) and p.alias_or_name == col]
        if len(named) > 1:
            return
        if named:
            target = named[0].this if isinstance(named[0], exp.Alias) else named[0]
        else:
            target = self._star_column(select, col)
            if target is None:
                return
        if not _select_safe(select, target, col):
            return
        self.targets.append((select, target))
        if not isinstance(target, exp.Column) or isinstance(target.this, exp.Star):
            return
        sources = _sources(select)
        if sources is None:
            return
        keysrc = _norm(target.args["table"]) if target.args.get("table") else None
        if keysrc is None:
            if len(sources) != 1:
                return
            keysrc = next(iter(sources))
        if keysrc not in sources:
            return
        keycol = target.name
        equal = {(keysrc, keycol)}
        self._push_source(sources[keysrc], keycol)
        for join in select.args.get("joins") or []:
            alias = _source_alias(join.this)
            if alias is None or alias == keysrc:
                continue
            c = _join_key_column(join, alias, equal)
            if c is not None:
                equal.add((alias, c))
                self._push_source(join.this, c)

    def _star_column(self, select: Any, col: str) -> Any:
        """The key as a column of the one source a ``*`` / ``src.*`` projection passes through."""
        from sqlglot import exp

        stars = [p for p in select.selects if _is_star(p)]
        if len(stars) != 1:
            return None
        sources = _sources(select)
        if not sources:
            return None
        star = stars[0]
        if isinstance(star, exp.Column) and star.args.get("table"):
            src = _norm(star.args["table"])
        elif len(sources) == 1:
            src = next(iter(sources))
        else:
            return None
        node = sources.get(src)
        if node is None:
            return None
        if not isinstance(node, exp.Table) or id(node) in self.cte_of:
            body = node.this if isinstance(node, exp.Subquery) else self.cte_of[id(node)].this
            names = _output_names(body)
            if names is None or col not in names:
                return None
        return exp.column(col, table=src)

    def _push_source(self, node: Any, col: str) -> None:
        from sqlglot import exp

        if isinstance(node, exp.Table):
            if id(node) in self.cte_of:
                self.demand[id(node)] = col
            # a base table: the filter on the SELECT reading it is the pushdown
        elif isinstance(node, exp.Subquery):
            alias = node.args.get("alias")
            if alias is not None and alias.columns:
                return  # renamed columns: not followed
            self._push(node.this, col)


def _is_star(p: Any) -> bool:
    from sqlglot import exp

    return isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))


def _output_names(query: Any) -> list[str] | None:
    from sqlglot import exp

    if isinstance(query, exp.Subquery):
        return _output_names(query.this)
    if isinstance(query, exp.Union):
        return _output_names(query.this)
    if isinstance(query, exp.Select):
        if any(_is_star(p) for p in query.selects):
            return None
        return [p.alias_or_name for p in query.selects]
    return None


def _source_alias(node: Any) -> str | None:
    from sqlglot import exp

    if isinstance(node, exp.Table):
        alias = node.args.get("alias")
        return _norm(alias.this) if alias is not None and alias.this else _norm(node.this)
    if isinstance(node, exp.Subquery):
        alias = node.args.get("alias")
        return _norm(alias.this) if alias is not None and alias.this else None
    return None


def _sources(select: Any) -> dict[str, Any] | None:
    """alias -> FROM item of ``select``; None when one is LATERAL or otherwise not followed."""
    from sqlglot import exp

    from_ = _arg(select, "from")
    if from_ is None:
        return {}
    items = [from_.this, *(j.this for j in select.args.get("joins") or [])]
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, exp.Table | exp.Subquery):
            return None
        alias = _source_alias(item)
        if alias is None or alias in out:
            return None
        out[alias] = item
    return out


def _join_key_column(join: Any, alias: str, equal: set[tuple[str, str]]) -> str | None:
    """The column of ``alias`` that the join's ON (or USING) equates with the key, if any."""
    from sqlglot import exp

    if join.args.get("method") or join.args.get("kind") in ("SEMI", "ANTI"):
        return None
    for ident in join.args.get("using") or []:
        name = ident.name
        if any(col == name for _, col in equal):
            return name
    on = join.args.get("on")
    if on is None:
        return None
    for conj in on.flatten() if isinstance(on, exp.And) else [on]:
        if not isinstance(conj, exp.EQ):
            continue
        a, b = conj.this, conj.expression
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            continue
        if not (a.args.get("table") and b.args.get("table")):
            continue
        ta, ca, tb, cb = _norm(a.args["table"]), a.name, _norm(b.args["table"]), b.name
        if ta == alias and (tb, cb) in equal:
            return ca
        if tb == alias and (ta, ca) in equal:
            return cb
    return None


def _owned(select: Any, node: Any) -> bool:
    """True when ``node`` belongs to ``select`` itself, not to a query nested in it."""
    from sqlglot import exp

    return node.find_ancestor(exp.Select, exp.Union) is select


def _select_safe(select: Any, target: Any, col: str) -> bool:
    """Whether filtering ``select``'s input rows on the key gives exactly the key's output rows."""
    from sqlglot import exp

    if any(select.args.get(a) for a in ("limit", "offset", "fetch", "qualify", "windows", "sample")):
        return False
    if any(True for _ in target.find_all(exp.AggFunc, exp.Window, exp.Query, exp.Subquery)):
        return False
    # any query nested in the select's own expressions (scalar, IN, EXISTS, ...) or in a join
    # condition: it may read other entities' rows, so nothing below this SELECT is followed
    skip = {"from", "from_", "with", "with_", "joins"}
    parts = [v for k, v in select.args.items() if k not in skip and v is not None]
    parts += [j.args.get("on") for j in select.args.get("joins") or [] if j.args.get("on") is not None]
    for part in parts:
        for value in part if isinstance(part, list) else [part]:
            if isinstance(value, exp.Expression) and (
                isinstance(value, exp.Query) or value.find(exp.Query) is not None
            ):
                return False
    key_sql = target.sql()
    distinct = select.args.get("distinct")
    on = distinct.args.get("on") if distinct is not None else None
    if on is not None and key_sql not in {e.sql() for e in on.expressions}:
        return False
    for window in select.find_all(exp.Window):
        if not _owned(select, window):
            continue
        if key_sql not in {e.sql() for e in window.args.get("partition_by") or []}:
            return False
    group = select.args.get("group")
    if group is not None:
        if any(group.args.get(a) for a in ("grouping_sets", "cube", "rollup", "totals")):
            return False
        if any(True for _ in group.find_all(exp.GroupingSets, exp.Cube, exp.Rollup)):
            return False
        keys = set()
        for e in group.expressions:
            if isinstance(e, exp.Literal) and not e.is_string and e.this.isdigit():
                n = int(e.this)
                if 1 <= n <= len(select.selects):
                    p = select.selects[n - 1]
                    keys.add((p.this if isinstance(p, exp.Alias) else p).sql())
            else:
                keys.add(e.sql())
        by_name = isinstance(target, exp.Column) and target.name == col and col in keys
        return key_sql in keys or by_name
    if select.args.get("having") is not None:
        return False
    return not any(_owned(select, a) and not _window_call(a) for a in select.find_all(exp.AggFunc))


def _window_call(agg: Any) -> bool:
    """``count(*) OVER (...)``: an aggregate used as a window function (judged as a window)."""
    from sqlglot import exp

    parent = agg.parent
    if isinstance(parent, exp.Filter):
        parent = parent.parent
    return isinstance(parent, exp.Window) and parent.this in (agg, agg.parent)
