"""RisingWave deploys of a :class:`~airflow_fsmigration.stores.new_store.NewStore`: refuse, build, swap, index.

- **Refuse before sending**: a definition the lint flags as an error (``:as_of`` in a FILTER, OR-ed
  temporal filters, ...) never reaches RisingWave, whose answer would not name the file and
  line, and which has crashed on ``NOW()`` it could not place (risingwavelabs/risingwave#21949).
- **Plain views**: a group whose values move with the clock (and every group reading it) is a
  plain view, evaluated at read time (:func:`~.risingwave_lint.read_time_groups`).
- **Background builds**: a materialized view is created with ``SET BACKGROUND_DDL = true``; the
  deploy returns the name to follow in ``rw_ddl_progress`` (:mod:`.risingwave_ddl`).
- **Blue/green**: ``redefine`` builds ``<group>__fsmig_build`` beside the live view; once built,
  ``SWAP WITH`` exchanges the names and the old definition stays as ``<group>__fsmig_previous``.
  Downstream materialized views keep reading the object they were created on (now the
  previous one) until they are redefined too: redefine downstream groups after their upstream.

No Airflow import; the deploy operator and ``fsmigrate deploy`` call it through NewStore.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.stores.dialect import build_name, index_name, previous_name

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import FeatureGroup

log = logging.getLogger("airflow_fsmigration.stores")


def unstreamable(store: Any, g: FeatureGroup) -> str | None:
    """Why RisingWave would refuse the group's materialized view, with file and line; None if it would not."""
    from airflow_fsmigration.stores.risingwave_lint import lint_sql

    if store.plain(g):
        return None  # a plain view is a batch query: NOW() may appear anywhere
    path = store.plan.definition_path(g.name)
    errors = [(line, msg) for line, sev, msg in lint_sql(store.plan.definition_sql(g.name)) if sev == "error"]
    if not errors:
        return None
    lines = "; ".join(f"{path}:{line or 1}: {msg}" for line, msg in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return (
        f"group '{g.name}': RisingWave would refuse this definition in a materialized view: {lines}{more}; "
        f"`fsmigrate validate {store.plan.source_dir} --rewrites DIR` writes the rewrites where one exists"
    )


def start_deploy(store: Any, g: FeatureGroup, *, redefine: bool = False) -> str | None:
    """Start what a deploy needs; the name of the background build to follow, or None when done.

    No live view: the live view itself is built in the background. A live view and
    ``redefine``: the new definition is built beside it while the live one keeps serving. A live
    view and no ``redefine``: nothing to do. A plain view is created (or replaced) at once.
    """
    from psycopg import sql

    body = store.dialect.live_sql(store.plan.definition_sql(g.name))
    store._refuse(g)
    with store._psycopg() as conn:
        store._prepare(conn, g)
        live = store._exists(conn, g.name)
        if store.plain(g):
            if not live:
                conn.execute(store.dialect.create_view(store.view(g), body, plain=True))
            elif redefine:
                for stmt in store.dialect.replace_view(store.view(g), body, plain=True):
                    conn.execute(stmt)
            return None
        if live and not redefine:
            return None
        target = build_name(g.name) if live else g.name
        if live:  # a half-built leftover of an earlier redefinition
            conn.execute(store.dialect.drop_view(store._named(target)))
        conn.execute(sql.SQL(store.dialect.background_ddl() or ""))
        conn.execute(store.dialect.create_build(store._named(target), body))
    log.info("group '%s': building %s.%s in the background", g.name, store.schema, target)
    return target


def finish_deploy(store: Any, g: FeatureGroup, target: str | None) -> None:
    """After the build of ``target``: swap a rebuilt view in (previous kept), then index and check."""
    if target == build_name(g.name):
        built, previous = store._named(target), previous_name(g.name)
        with store._psycopg() as conn:
            conn.execute(store.dialect.swap(store.view(g), built))
            # the build's name now holds the previous definition: keep it for rollback
            conn.execute(store.dialect.drop_view(store._named(previous)))
            conn.execute(store.dialect.rename(built, previous))
        log.info("group '%s': swapped the rebuilt view in; the previous one is kept as %s", g.name, previous)
    store._after_build(g)


def index_entity_key(store: Any, g: FeatureGroup) -> None:
    """Point lookups by entity key: index it unless the view's primary key leads with it."""
    from airflow_fsmigration.stores.risingwave_lint import entity_key_leads_pk

    if store.plain(g) or entity_key_leads_pk(store.plan.definition_sql(g.name), g.entity_key) is True:
        return
    stmt = store.dialect.entity_index(store.view(g), index_name(g.name, g.entity_key), g.entity_key)
    if stmt is not None:
        with store._psycopg() as conn:
            conn.execute(stmt)


__all__ = ["finish_deploy", "index_entity_key", "start_deploy", "unstreamable"]
