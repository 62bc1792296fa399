"""Draft a migration plan from a parsed Feast repository (:class:`~airflow_fsmigration.feast_import.FeastRepo`).

:func:`draft_plan` turns the repository into a plan a person completes: one group per feature
view, one model per feature service; SQL definitions are written as commented stubs and SLA and
QPS as ``TODO(fsmigrate)`` placeholders, which fail ``fsmigrate validate`` until filled, since
neither can be read from Feast and an invented value would be trusted later.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_fsmigration.feast_import import FeastField, FeastRepo, FeastSource, FeastView, plan_name

log = logging.getLogger("airflow_fsmigration.feast")

TODO = "TODO(fsmigrate)"
SUGGESTION_MARKER = "-- fsmigrate suggestion (Feast's semantics, from its batch source):"


def _q(value: Any) -> str:
    """A YAML scalar: JSON's quoting is valid YAML."""
    return json.dumps(value)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _from_clause(source: FeastSource | None) -> str:
    if source is None:
        return f"{TODO}: the raw events table"
    if source.table:
        return source.table
    if source.query:
        return f"(\n--   {source.query.strip()}\n-- ) AS src"
    return f"{TODO}: the raw events table"


def definition_stub(view: FeastView, group: str, entity_key: str, features: list[FeastField]) -> str:
    """A commented SQL stub: what Feast computes today, as a starting point, never active as-is."""
    src = view.source
    ts = src.timestamp_field if src else "event_ts"
    key_col = src.column_for(view.join_keys[0].name) if src else entity_key
    cols = [f"{key_col} AS {entity_key}" if key_col != entity_key else entity_key]
    for f in features:
        col = src.column_for(f.name) if src else f.name
        cols.append(f"{col} AS {plan_name(f.name)}" if col != plan_name(f.name) else col)
    cols.append(f"{ts} AS source_ts")
    order = f"{key_col}, {ts} DESC" + (
        f", {src.created_timestamp_column} DESC" if src and src.created_timestamp_column else ""
    )
    ttl = (
        f"\n--   AND {ts} >= :as_of - interval '{view.ttl_seconds} seconds'  -- Feast TTL {_duration(view.ttl_seconds)}"
        if view.ttl_seconds
        else ""
    )
    select = ",\n--   ".join(cols)
    return (
        f"-- {TODO}: write the new store's definition of group '{group}' (Feast feature view '{view.name}').\n"
        "-- It must be one SELECT with an :as_of parameter, selecting the entity key, every feature\n"
        "-- and source_ts. Feast computes nothing: it serves the latest row of its batch source\n"
        "-- within the TTL. The query below reproduces exactly that from the same source; replace\n"
        "-- it with the real computation from raw events (or keep it, for a like-for-like move),\n"
        "-- then delete these lines down to the marker and uncomment the query.\n"
        f"{SUGGESTION_MARKER}\n"
        f"-- SELECT DISTINCT ON ({key_col})\n"
        f"--   {select}\n"
        f"-- FROM {_from_clause(src)}\n"
        f"-- WHERE {ts} <= :as_of{ttl}\n"
        f"-- ORDER BY {order}\n"
    )


@dataclass
class Draft:
    """What :func:`draft_plan` wrote and what a person still has to fill in."""

    plan_path: Path
    sql_paths: list[Path]
    registry_path: Path
    todos: list[str]
    skipped: list[str]


def _feature_lines(features: list[FeastField]) -> list[str]:
    lines = []
    for f in features:
        extra = ""
        if f.value_type == "FLOAT":
            # Feast keeps FLOAT as float32: allow its rounding when the new store computes in float64.
            extra = ", rtol: 0.0000001"
        desc = f", description: {_q(f.description)}" if f.description else ""
        lines.append(f"      - {{name: {plan_name(f.name)}, dtype: {f.dtype}{extra}{desc}}}")
    return lines


def draft_plan(
    repo: FeastRepo,
    out: str | os.PathLike[str],
    *,
    online_conn: str = "feast_online",
    offline_conn: str = "feast_offline",
) -> Draft:
    """Write a draft plan (YAML), SQL stubs (``sql/<group>.sql``) and the Feast dump beside it.

    Nothing that Feast does not know is invented: SLA, QPS and the SQL definitions are left as
    ``TODO(fsmigrate)`` markers that fail validation with the marker text until a person fills them.
    """
    out = Path(out)
    plan_dir = out.parent
    sql_dir = plan_dir / "sql"
    sql_dir.mkdir(parents=True, exist_ok=True)
    todos: list[str] = []
    skipped: list[str] = []
    registry_path = plan_dir / f"{out.stem}.feast.json"
    registry_path.write_text(json.dumps(repo.raw or {}, indent=2, default=str) + "\n")

    used_by: dict[str, list[str]] = {}
    for svc in repo.services:
        for proj in svc["views"]:
            used_by.setdefault(proj["view"], []).append(plan_name(svc["name"]))

    online = repo.online_store or {}
    offline = repo.offline_store or {}
    lines = [
        f"# Draft migration plan for Feast project '{repo.project}', written by `fsmigrate import-feast`",
        f"# from {repo.repo or 'a Feast repository'} on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"# Fill in every {TODO} (here and in sql/*.sql), then run `fsmigrate validate {out.name}`:",
        "# it fails, naming each field still to fill, until all are done. SLA and QPS come from your",
        "# serving metrics; Feast does not know them, so they are not guessed.",
        f"# Feast's own definitions are kept in {registry_path.name}, which the Feast readers use.",
        "version: 1",
        f"name: {plan_name(repo.project)}",
        f"description: {_q(f'Move Feast project {repo.project} to the new store')}",
        "connections:",
        f"  legacy_online: {online_conn}    # Feast online store: {online.get('type', '?')} "
        f"{online.get('connection_string', '')}".rstrip(),
        f"  legacy_offline: {offline_conn}  # Feast offline store: {offline.get('type', '?')} "
        f"{offline.get('host', '')}/{offline.get('database', '')}".rstrip("/ "),
        f"  event_log: {offline_conn}       # where the raw events live (change if not the offline store)",
        "  new_store: new_store",
        "  registry: fsmig_registry",
        "  model_metrics: model_metrics",
    ]
    if repo.services:
        lines.append("models:")
        for svc in repo.services:
            lines.append(f"  {plan_name(svc['name'])}:")
            desc = svc.get("description") or f"Feast feature service '{svc['name']}'"
            lines.append(f"    description: {_q(desc)}")
            if svc.get("owner"):
                lines.append(f"    owner: {_q(svc['owner'])}")
    else:
        lines.append("models: {}")
    lines.append("groups:")
    sql_paths = []
    for view in repo.views.values():
        group = plan_name(view.name)
        if len(view.join_keys) != 1:
            skipped.append(
                f"feature view '{view.name}': {len(view.join_keys)} join keys "
                f"({', '.join(k.name for k in view.join_keys) or 'none'}); the plan holds one entity key per group"
            )
            continue
        key = view.join_keys[0]
        key_dtype = key.dtype if key.dtype in ("int64", "string") else None
        if key_dtype is None:
            skipped.append(f"feature view '{view.name}': join key type {key.value_type} is not supported")
            continue
        features = [f for f in view.features if f.dtype is not None]
        for f in view.features:
            if f.dtype is None:
                skipped.append(f"feature '{view.name}:{f.name}': Feast type {f.value_type} has no plan dtype")
        if not features:
            skipped.append(f"feature view '{view.name}': no feature with a supported type")
            continue
        src = view.source
        sql_path = sql_dir / f"{group}.sql"
        sql_path.write_text(definition_stub(view, group, plan_name(key.name), features))
        sql_paths.append(sql_path)
        todos.append(f"{sql_path.relative_to(plan_dir)}: write the SELECT for group '{group}'")
        ttl_note = f"Feast TTL {_duration(view.ttl_seconds)}" if view.ttl_seconds else "Feast view has no TTL"
        fill = f"{TODO}: fill in"
        lines += [
            f"  {group}:",
            f"    description: {_q(view.description or f'Feast feature view {view.name}')}",
        ]
        if view.owner:
            lines.append(f"    owner: {_q(view.owner)}")
        lines += [
            f"    entity_key: {plan_name(key.name)}",
            f"    entity_dtype: {key_dtype}",
            f"    definition: sql/{group}.sql",
            "    features:",
            *_feature_lines(features),
            f"    # Feast layout (project '{repo.project}', view '{view.name}'): read by FeastRedisOnlineSource",
            f"    legacy_online: {{key_template: {_q(f'feast:{repo.project}:{view.name}:{{entity}}')}, "
            f"encoding: string, timestamp_field: {_q(f'_ts:{view.name}')}}}",
        ]
        if src and src.table:
            lines.append(
                f"    legacy_offline: {{table: {_q(src.table)}, event_time_column: {_q(src.timestamp_field)}, "
                f"entity_column: {_q(src.column_for(key.name))}}}"
            )
        else:
            # A query source has no table: FeastPostgresOfflineSource runs the query from the .feast.json.
            label = f"feast_query:{src.name if src and src.name else view.name}"
            lines.append(
                f"    legacy_offline: {{table: {_q(label)}, "
                f"event_time_column: {_q(src.timestamp_field if src else 'event_ts')}}}  # Feast query source"
            )
        if src and src.table:
            lines.append(
                f"    # event_sources: [{{table: {src.table}, time_column: {src.timestamp_field}, "
                "retention: <how long raw events are kept>}]"
            )
        if used_by.get(view.name):
            lines.append(f"    models: [{', '.join(sorted(set(used_by[view.name])))}]")
        lines += [
            f"    sla:  # {ttl_note}",
            f"      p99_ms: {_q(fill + ': serving p99 latency in ms')}",
            f"      max_staleness: {_q(fill + ': e.g. 5m or 1h')}",
            "    qps:",
            f"      peak: {_q(fill + ': peak reads per second')}",
            f"      average: {_q(fill + ': average reads per second')}",
        ]
        todos += [f"groups.{group}.sla", f"groups.{group}.qps"]
    for kind, names in repo.skipped.items():
        for name in names:
            skipped.append(f"{kind.replace('_', ' ')[:-1]} '{name}': not migrated by this draft")
    if skipped:
        lines.append("# Not drafted (add by hand if needed):")
        lines += [f"#   - {s}" for s in skipped]
    out.write_text("\n".join(lines) + "\n")
    log.info(
        "drafted %s: %d groups, %d fields to fill, %d skipped", out, len(sql_paths), len(todos), len(skipped)
    )
    return Draft(
        plan_path=out, sql_paths=sql_paths, registry_path=registry_path, todos=todos, skipped=skipped
    )
