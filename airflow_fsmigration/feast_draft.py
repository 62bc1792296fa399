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
from dataclasses import dataclass, field
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
    todos: list[str]
    skipped: list[str]
    # Feature services that lose features to a skipped view or feature: said loudly, never silently.
    incomplete_models: list[str] = field(default_factory=list)


def _feature_lines(features: list[FeastField]) -> list[str]:
    lines = []
    for f in features:
        extra = ""
        if f.value_type == "FLOAT":
            # Feast keeps FLOAT as float32: allow its rounding when the new store computes in float64.
            extra = ", rtol: 0.0000001"
        elif f.value_type == "UNIX_TIMESTAMP":
            # Feast's online store keeps UnixTimestamp features in whole seconds (it truncates).
            extra = ", atol: 1"
        desc = f", description: {_q(f.description)}" if f.description else ""
        lines.append(f"      - {{name: {plan_name(f.name)}, dtype: {f.dtype}{extra}{desc}}}")
    return lines


def _drafted(view: FeastView) -> tuple[list[FeastField], str | None]:
    """The features of ``view`` the draft can hold, and why the whole view is skipped (or None)."""
    if len(view.join_keys) != 1:
        return [], (
            f"{len(view.join_keys)} join keys ({', '.join(k.name for k in view.join_keys) or 'none'}); "
            "the plan holds one entity key per group (composite keys are not supported yet)"
        )
    if view.join_keys[0].value_type not in ("INT64", "INT32", "STRING"):
        return [], f"join key type {view.join_keys[0].value_type} is not supported"
    features = [f for f in view.features if f.dtype is not None]
    if not features:
        return [], "no feature with a supported type"
    return features, None


def _flow(items: dict[str, Any]) -> str:
    """A YAML flow mapping of the non-empty items (JSON-quoted scalars, nested mappings)."""
    parts = []
    for k, v in items.items():
        if v is None or v == {}:
            continue
        if isinstance(v, dict):
            v = "{" + ", ".join(f"{_q(a)}: {_q(b)}" for a, b in v.items()) + "}"
        elif not isinstance(v, int) or isinstance(v, bool):
            v = _q(v)
        parts.append(f"{k}: {v}")
    return "{" + ", ".join(parts) + "}"


def _model_lines(
    repo: FeastRepo, kept: dict[str, set[str]], why: dict[str, str]
) -> tuple[list[str], list[str]]:
    """One model per feature service, with the features it reads; and the services that lose some."""
    lines: list[str] = []
    incomplete: list[str] = []
    for svc in repo.services:
        name = plan_name(svc["name"])
        uses, lost = [], []
        for proj in svc["views"]:
            view = repo.views.get(proj["view"])
            names = proj["features"] or ([f.name for f in view.features] if view else [])
            for feat in names:
                if feat in kept.get(proj["view"], set()):
                    uses.append(f"{plan_name(proj['view'])}.{plan_name(feat)}")
                else:
                    reason = why.get(f"{proj['view']}:{feat}") or why.get(proj["view"], "not drafted")
                    lost.append(f"{proj['view']}:{feat} ({reason})")
        desc = svc.get("description") or f"Feast feature service '{svc['name']}'"
        if lost:
            desc = f"INCOMPLETE: {len(lost)} of {len(lost) + len(uses)} features not migrated. {desc}"
            incomplete.append(f"model '{name}' (feature service '{svc['name']}') loses " + "; ".join(lost))
        lines.append(f"  {name}:")
        lines.append(f"    description: {_q(desc)}")
        if svc.get("owner"):
            lines.append(f"    owner: {_q(svc['owner'])}")
        if svc.get("tags"):
            lines.append(f"    # Feast tags: {_q(svc['tags'])}")
        lines.append(f"    # reads ({len(uses)}): {', '.join(uses) or 'nothing that was drafted'}")
        for item in lost:
            lines.append(f"    # WARNING(fsmigrate): NOT MIGRATED, the model loses {item}")
    return lines, incomplete


def draft_plan(
    repo: FeastRepo,
    out: str | os.PathLike[str],
    *,
    online_conn: str = "feast_online",
    offline_conn: str = "feast_offline",
) -> Draft:
    """Write a draft plan (YAML) and SQL stubs (``sql/<group>.sql``).

    Every group says ``layout: feast`` with the project, view and key serialization, so the
    readers need nothing beside the plan. Nothing that Feast does not know is invented: SLA, QPS
    and the SQL definitions are left as ``TODO(fsmigrate)`` markers that fail validation with
    the marker text until a person fills them.
    """
    out = Path(out)
    plan_dir = out.parent
    sql_dir = plan_dir / "sql"
    sql_dir.mkdir(parents=True, exist_ok=True)
    todos: list[str] = []
    skipped: list[str] = []

    kept: dict[str, set[str]] = {}
    why: dict[str, str] = {}
    for view in repo.views.values():
        features, reason = _drafted(view)
        if reason:
            why[view.name] = reason
            skipped.append(f"feature view '{view.name}': {reason}")
        for f in view.features:
            if f.dtype is None:
                kind = (
                    "list features are not plan dtypes yet"
                    if f.value_type.endswith("_LIST")
                    else "no plan dtype"
                )
                why[f"{view.name}:{f.name}"] = f"Feast type {f.value_type}: {kind}"
                if not reason:
                    skipped.append(f"feature '{view.name}:{f.name}': Feast type {f.value_type}: {kind}")
        kept[view.name] = {f.name for f in features}
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
        "# serving metrics; Feast does not know them, so they are not guessed. Each group's",
        "# legacy_online/legacy_offline say `layout: feast`: the readers find Feast's data from the plan alone.",
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
    model_lines, incomplete = _model_lines(repo, kept, why)
    lines += ["models:", *model_lines] if model_lines else ["models: {}"]
    lines.append("groups:")
    sql_paths = []
    for view in repo.views.values():
        if view.name in why:
            continue
        group = plan_name(view.name)
        key = view.join_keys[0]
        features = [f for f in view.features if f.name in kept[view.name]]
        src = view.source
        sql_path = sql_dir / f"{group}.sql"
        sql_path.write_text(definition_stub(view, group, plan_name(key.name), features))
        sql_paths.append(sql_path)
        todos.append(f"{sql_path.relative_to(plan_dir)}: write the SELECT for group '{group}'")
        fill = f"{TODO}: fill in"
        lines += [
            f"  {group}:",
            f"    description: {_q(view.description or f'Feast feature view {view.name}')}",
        ]
        if view.owner:
            lines.append(f"    owner: {_q(view.owner)}")
        if view.tags:
            lines.append(f"    # Feast tags: {_q(view.tags)}")
        renamed = {plan_name(f.name): f.name for f in features if plan_name(f.name) != f.name}
        lines += [
            f"    entity_key: {plan_name(key.name)}",
            f"    entity_dtype: {'int64' if key.value_type in ('INT64', 'INT32') else 'string'}",
            f"    definition: sql/{group}.sql",
        ]
        if view.ttl_seconds:
            lines.append(
                f"    ttl: {_duration(view.ttl_seconds)}  # Feast's view TTL: older values are no values"
            )
        lines += [
            "    features:",
            *_feature_lines(features),
            "    legacy_online: "
            + _flow(
                {
                    "layout": "feast",
                    "project": repo.project,
                    "view": view.name,
                    "entity_key_serialization_version": repo.entity_key_serialization_version,
                    "join_key": key.name if plan_name(key.name) != key.name else None,
                    "join_key_type": key.value_type if key.value_type == "INT32" else None,
                    "feature_names": renamed,
                }
            ),
        ]
        if src is not None:
            columns = {plan_name(f.name): src.column_for(f.name) for f in features}
            offline_fields: dict[str, Any] = {
                "layout": "feast",
                "table": src.table or f"feast_query:{plan_name(src.name or view.name)}",
                "event_time_column": src.timestamp_field,
                "entity_column": src.column_for(key.name),
                "created_timestamp_column": src.created_timestamp_column,
                "columns": {k: v for k, v in columns.items() if k != v},
            }
            if not src.table:
                offline_fields["query"] = (src.query or "").strip()
            lines.append("    legacy_offline: " + _flow(offline_fields))
            if src.table:
                lines.append(
                    f"    # event_sources: [{{table: {src.table}, time_column: {src.timestamp_field}, "
                    "retention: <how long raw events are kept>}]"
                )
        else:
            lines.append(f"    legacy_offline: {{table: {_q(TODO + ': the offline table')}}}")
            todos.append(f"groups.{group}.legacy_offline")
        if used_by.get(view.name):
            lines.append(f"    models: [{', '.join(sorted(set(used_by[view.name])))}]")
        lines += [
            "    sla:",
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
    for item in incomplete:
        log.warning("import-feast: %s", item)
    return Draft(
        plan_path=out, sql_paths=sql_paths, todos=todos, skipped=skipped, incomplete_models=incomplete
    )
