"""Read a Feast repository and draft a migration plan from it, without importing Feast here.

Feast pins ``pandas<3`` and cannot share the main virtualenv with Airflow 3.3, so everything
that needs Feast itself runs in a separate interpreter (``.venv-feast`` by default, or
``$FSMIG_FEAST_PYTHON``) through :func:`run_in_feast`: a script on stdin, JSON in and out.
The repository is parsed the way ``feast plan`` parses it (``feast.repo_operations.parse_repo``:
it imports the repo's Python definitions but touches no store), and dumped to plain JSON that
:class:`FeastRepo` loads. The direct store readers (:mod:`airflow_fsmigration.stores.feast_online`,
:mod:`airflow_fsmigration.stores.feast_offline`) need only that JSON, never Feast.

:func:`draft_plan` turns the repository into a plan a person completes: one group per feature
view, one model per feature service; SQL definitions are written as commented stubs and SLA and
QPS as ``TODO(fsmigrate)`` placeholders, which fail ``fsmigrate validate`` until filled, since
neither can be read from Feast and an invented value would be trusted later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("airflow_fsmigration.feast")

FEAST_PYTHON_ENV = "FSMIG_FEAST_PYTHON"
FEAST_VENV = ".venv-feast"
TODO = "TODO(fsmigrate)"
SUGGESTION_MARKER = "-- fsmigrate suggestion (Feast's semantics, from its batch source):"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Feast ValueType name -> plan dtype. Lists, maps, bytes and structs have no plan dtype.
VALUE_TYPE_DTYPES = {
    "INT32": "int64",
    "INT64": "int64",
    "FLOAT": "float64",
    "DOUBLE": "float64",
    "STRING": "string",
    "JSON": "string",
    "UUID": "string",
    "TIME_UUID": "string",
    "DECIMAL": "string",
    "BOOL": "bool",
    "UNIX_TIMESTAMP": "timestamp",
}


class FeastUnavailable(RuntimeError):
    """No interpreter with Feast installed was found, or the Feast-side script failed."""


def feast_python(explicit: str | os.PathLike[str] | None = None) -> str:
    """The interpreter that has Feast: ``explicit``, ``$FSMIG_FEAST_PYTHON``, ``.venv-feast``, or this one."""
    candidates = [explicit, os.environ.get(FEAST_PYTHON_ENV)]
    candidates += [Path.cwd() / FEAST_VENV / "bin" / "python", PROJECT_ROOT / FEAST_VENV / "bin" / "python"]
    for cand in candidates:
        if cand and Path(cand).exists():
            return str(cand)
    import importlib.util

    if importlib.util.find_spec("feast") is not None:
        return sys.executable
    raise FeastUnavailable(
        f"no Python with Feast found: create {FEAST_VENV} (`make feast-venv`), or set {FEAST_PYTHON_ENV} "
        "to an interpreter that has `feast[redis,postgres]` installed"
    )


def run_in_feast(
    script: str,
    payload: Any = None,
    *,
    python: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 900,
) -> Any:
    """Run ``script`` in the Feast interpreter; it reads ``PAYLOAD`` and sets ``RESULT`` (both JSON).

    The script sees ``PAYLOAD`` as a global; whatever it assigns to ``RESULT`` comes back. Its
    own prints go to stderr so they cannot corrupt the JSON on stdout.
    """
    exe = feast_python(python)
    wrapper = (
        "import json, sys\n"
        "_out = sys.stdout\n"
        "sys.stdout = sys.stderr\n"
        "PAYLOAD = json.loads(sys.stdin.readline())\n"
        "RESULT = None\n"
        f"exec(compile({script!r}, '<fsmigrate-feast>', 'exec'))\n"
        "_out.write(json.dumps(RESULT, default=str))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FEAST_USAGE": "False"}
    try:
        proc = subprocess.run(
            [exe, "-c", wrapper],
            input=json.dumps(payload, default=str) + "\n",
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        raise FeastUnavailable(f"the Feast script did not finish within {timeout:.0f} s ({exe})") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise FeastUnavailable(f"the Feast script failed in {exe} (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


# Runs inside the Feast venv: parse the repo like `feast plan` and dump what the migration needs.
DUMP_SCRIPT = r"""
import os
from pathlib import Path
from feast.repo_config import load_repo_config
from feast.repo_operations import parse_repo
from feast.value_type import ValueType

repo_path = Path(PAYLOAD["repo"]).resolve()
fs_yaml = repo_path / PAYLOAD.get("fs_yaml", "feature_store.yaml")
config = load_repo_config(repo_path, fs_yaml)
os.chdir(repo_path)
contents = parse_repo(repo_path)

def vt(value_type):
    return ValueType(value_type).name if not isinstance(value_type, ValueType) else value_type.name

def source_dict(src):
    if src is None:
        return None
    out = {
        "name": src.name,
        "kind": type(src).__name__,
        "timestamp_field": src.timestamp_field,
        "created_timestamp_column": src.created_timestamp_column or None,
        "field_mapping": dict(src.field_mapping or {}),
        "table": None,
        "query": None,
    }
    opts = getattr(src, "_postgres_options", None)
    if opts is not None:
        out["table"] = opts._table or None
        out["query"] = opts._query or None
    elif hasattr(src, "path"):
        out["table"] = src.path
    return out

entities = {e.name: e for e in contents.entities}
views = []
for fv in contents.feature_views:
    # entity_columns is filled by `feast apply` (inference); a parsed repo has only entity names.
    join_keys = [{"name": c.name, "value_type": vt(c.dtype.to_value_type())} for c in fv.entity_columns]
    if not join_keys:
        declared = {f.name: f for f in fv.schema} if getattr(fv, "schema", None) else {}
        for ename in fv.entities:
            ent = entities.get(ename)
            if ent is None or ename == "__dummy":
                continue
            value_type = vt(ent.value_type)
            if value_type == "UNKNOWN" and ent.join_key in declared:
                value_type = vt(declared[ent.join_key].dtype.to_value_type())
            join_keys.append({"name": ent.join_key, "value_type": value_type})
    views.append({
        "name": fv.name,
        "entities": list(fv.entities),
        "join_keys": join_keys,
        "features": [{"name": f.name, "value_type": vt(f.dtype.to_value_type()), "description": f.description or None}
                     for f in fv.features],
        "ttl_seconds": int(fv.ttl.total_seconds()) if fv.ttl else 0,
        "online": bool(fv.online),
        "source": source_dict(fv.batch_source),
        "description": fv.description or None,
        "owner": fv.owner or None,
        "tags": dict(fv.tags or {}),
    })
services = []
for fs in contents.feature_services:
    services.append({
        "name": fs.name,
        "description": fs.description or None,
        "owner": fs.owner or None,
        "views": [{"name": p.name_to_use(), "view": p.name, "features": [f.name for f in p.features]}
                  for p in fs.feature_view_projections],
    })
online = config.online_store
offline = config.offline_store
def store_dict(store):
    keep = ("type", "connection_string", "key_ttl_seconds", "redis_type", "host", "port", "database", "db_schema")
    return {k: getattr(store, k) for k in keep if getattr(store, k, None) is not None} if store else None
RESULT = {
    "repo": str(repo_path),
    "project": config.project,
    "entity_key_serialization_version": config.entity_key_serialization_version,
    "online_versioning": bool(getattr(config.registry, "enable_online_feature_view_versioning", False)),
    "online_store": store_dict(online),
    "offline_store": store_dict(offline),
    "entities": [{"name": e.name, "join_key": e.join_key, "value_type": vt(e.value_type),
                  "description": e.description or None, "owner": e.owner or None} for e in contents.entities],
    "feature_views": views,
    "feature_services": services,
    "skipped": {
        "on_demand_feature_views": [v.name for v in contents.on_demand_feature_views],
        "stream_feature_views": [v.name for v in contents.stream_feature_views],
    },
}
"""


@dataclass(frozen=True)
class FeastField:
    """A join key or feature with Feast's value type (``INT64``, ``FLOAT``, ...)."""

    name: str
    value_type: str
    description: str | None = None

    @property
    def dtype(self) -> str | None:
        """The plan dtype, or None when the plan cannot hold this Feast type (lists, maps, bytes)."""
        return VALUE_TYPE_DTYPES.get(self.value_type)


@dataclass(frozen=True)
class FeastSource:
    """A feature view's batch source: a table or a query, its timestamps and column renames."""

    name: str | None
    kind: str
    timestamp_field: str
    created_timestamp_column: str | None = None
    field_mapping: dict[str, str] = field(default_factory=dict)
    table: str | None = None
    query: str | None = None

    def column_for(self, name: str) -> str:
        """The source column behind a feature or join key name (``field_mapping`` maps column -> name)."""
        for column, mapped in self.field_mapping.items():
            if mapped == name:
                return column
        return name


@dataclass(frozen=True)
class FeastView:
    """One Feast feature view: what the direct readers need to find and decode it."""

    name: str
    join_keys: tuple[FeastField, ...]
    features: tuple[FeastField, ...]
    ttl_seconds: int = 0
    source: FeastSource | None = None
    entities: tuple[str, ...] = ()
    online: bool = True
    description: str | None = None
    owner: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def feature(self, name: str) -> FeastField:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"Feast feature view '{self.name}' has no feature '{name}'")


@dataclass(frozen=True)
class FeastRepo:
    """A parsed Feast repository (the JSON of :data:`DUMP_SCRIPT`)."""

    project: str
    views: dict[str, FeastView]
    entities: list[dict[str, Any]] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    entity_key_serialization_version: int = 3
    online_store: dict[str, Any] | None = None
    offline_store: dict[str, Any] | None = None
    skipped: dict[str, list[str]] = field(default_factory=dict)
    repo: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeastRepo:
        if data.get("online_versioning"):
            raise ValueError(
                f"Feast project '{data['project']}' enables online feature view versioning (names with "
                "a _vN suffix in Redis), which the direct readers do not support yet"
            )
        version = int(data.get("entity_key_serialization_version", 3))
        if version != 3:
            raise ValueError(
                f"Feast project '{data['project']}' uses entity key serialization v{version}; the direct "
                "readers implement v3 (Feast's only supported version since 0.38): re-serialize the online "
                "store as Feast documents, or compare through get_online_features"
            )
        views = {}
        for v in data["feature_views"]:
            src = v.get("source")
            views[v["name"]] = FeastView(
                name=v["name"],
                join_keys=tuple(FeastField(k["name"], k["value_type"]) for k in v["join_keys"]),
                features=tuple(
                    FeastField(f["name"], f["value_type"], f.get("description")) for f in v["features"]
                ),
                ttl_seconds=int(v.get("ttl_seconds") or 0),
                source=FeastSource(**src) if src else None,
                entities=tuple(v.get("entities", ())),
                online=bool(v.get("online", True)),
                description=v.get("description"),
                owner=v.get("owner"),
                tags=dict(v.get("tags") or {}),
            )
        return cls(
            project=data["project"],
            views=views,
            entities=list(data.get("entities", [])),
            services=list(data.get("feature_services", [])),
            entity_key_serialization_version=int(data.get("entity_key_serialization_version", 3)),
            online_store=data.get("online_store"),
            offline_store=data.get("offline_store"),
            skipped=dict(data.get("skipped") or {}),
            repo=data.get("repo"),
            raw=data,
        )

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> FeastRepo:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def view(self, name: str) -> FeastView:
        try:
            return self.views[name]
        except KeyError:
            raise KeyError(
                f"Feast project '{self.project}' has no feature view '{name}' "
                f"(it has: {', '.join(sorted(self.views)) or 'none'})"
            ) from None

    def default_mapping(self) -> dict[str, str]:
        """Plan group name -> Feast view name, as ``draft_plan`` names the groups."""
        return {plan_name(v): v for v in self.views}

    def view_for_group(self, mapping: dict[str, str], group: str) -> FeastView:
        """The Feast view behind a plan group, or an error naming the group and what is mapped."""
        name = mapping.get(group)
        if name is None:
            raise KeyError(
                f"group '{group}' is not mapped to a Feast feature view of project '{self.project}' "
                f"(mapped groups: {', '.join(sorted(mapping)) or 'none'})"
            )
        return self.view(name)


def feast_feature_names(view: FeastView, group: Any) -> list[str]:
    """The Feast feature behind each feature of a plan group, in the group's order."""
    by_plan = {plan_name(f.name): f.name for f in view.features}
    names = {f.name for f in view.features}
    out = []
    for f in group.features:
        feast_name = f.name if f.name in names else by_plan.get(f.name)
        if feast_name is None:
            raise KeyError(
                f"group '{group.name}': feature '{f.name}' is not in Feast view '{view.name}' "
                f"(it has {', '.join(x.name for x in view.features)})"
            )
        out.append(feast_name)
    return out


def dump_feast_repo(repo_path: str | os.PathLike[str], *, python: str | None = None) -> dict[str, Any]:
    """Parse a Feast repo in the Feast interpreter (like ``feast plan``) and return its JSON dump."""
    repo = Path(repo_path).resolve()
    if not (repo / "feature_store.yaml").is_file():
        raise FileNotFoundError(f"{repo} is not a Feast repository: it has no feature_store.yaml")
    return run_in_feast(DUMP_SCRIPT, {"repo": str(repo)}, python=python, cwd=repo)


def load_feast_repo(repo_path: str | os.PathLike[str], *, python: str | None = None) -> FeastRepo:
    return FeastRepo.from_dict(dump_feast_repo(repo_path, python=python))


# ----------------------------------------------------------------------------- plan drafting


def plan_name(name: str) -> str:
    """A Feast name as a plan identifier (lower case, ``[a-z0-9_]``, starting with a letter)."""
    out = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "unnamed"
    return out if re.match(r"[a-z_]", out) else f"f_{out}"


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


# ----------------------------------------------------------------------------- demo repository

DEMO_PROJECT = "fsmig_demo"

DEMO_DEFINITIONS = '''"""A small Feast repo for fsmigrate's tests, benchmark and demo: two views, one service."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Bool, Float32, Float64, Int32, Int64, String, UnixTimestamp

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64, description="A driver")
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)

driver_stats_source = PostgreSQLSource(
    name="driver_stats_source",
    table="public.driver_stats",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)
customer_source = PostgreSQLSource(
    name="customer_source",
    query="SELECT customer_id, ltv, segment, event_timestamp FROM public.customers",
    timestamp_field="event_timestamp",
)

driver_hourly_stats = FeatureView(
    name="driver_hourly_stats",
    entities=[driver],
    ttl=timedelta(days=1),
    schema=[
        Field(name="conv_rate", dtype=Float32, description="Conversion rate"),
        Field(name="acc_rate", dtype=Float64),
        Field(name="avg_daily_trips", dtype=Int64),
        Field(name="rating", dtype=Int32),
        Field(name="is_active", dtype=Bool),
        Field(name="city", dtype=String),
        Field(name="last_trip_ts", dtype=UnixTimestamp),
    ],
    source=driver_stats_source,
    online=True,
    owner="mobility-ml@example.com",
    description="Hourly driver statistics",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    ttl=timedelta(seconds=0),
    schema=[Field(name="ltv", dtype=Float64), Field(name="segment", dtype=String)],
    source=customer_source,
    online=True,
)

driver_activity = FeatureService(
    name="driver_activity",
    features=[driver_hourly_stats, customer_profile[["ltv"]]],
    description="Features of the ETA model",
)
'''


def demo_feature_store_yaml(pg_url: str, redis_url: str, project: str = DEMO_PROJECT) -> str:
    """``feature_store.yaml`` pointing Feast at our Postgres (offline) and Redis (online)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    pg = urlsplit(pg_url)
    query = parse_qs(pg.query)
    host = query.get("host", [pg.hostname or "localhost"])[0]
    rd = urlsplit(redis_url)
    db = (rd.path or "/0").lstrip("/") or "0"
    return (
        f"project: {project}\n"
        "provider: local\n"
        "registry: data/registry.db\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{rd.hostname}:{rd.port or 6379},db={db}"\n'
        "offline_store:\n"
        "  type: postgres\n"
        f'  host: "{host}"\n'
        f"  port: {pg.port or int(query.get('port', ['5432'])[0])}\n"
        f'  database: "{pg.path.lstrip("/")}"\n'
        "  db_schema: public\n"
        f'  user: "{unquote(pg.username or "postgres")}"\n'
        f'  password: "{unquote(pg.password or "")}"\n'
        "  sslmode: disable\n"
    )


def write_demo_repo(path: str | os.PathLike[str], pg_url: str, redis_url: str) -> Path:
    """Write the demo Feast repo (definitions and config) to ``path``."""
    repo = Path(path)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(demo_feature_store_yaml(pg_url, redis_url))
    (repo / "definitions.py").write_text(DEMO_DEFINITIONS)
    return repo


def load_demo_data(
    pg_url: str, *, drivers: int = 300, customers: int = 50, now: datetime | None = None
) -> dict:
    """Fill ``public.driver_stats`` and ``public.customers`` with deterministic rows; returns counts.

    Drivers ``1..drivers`` each have 1-3 rows. Every 7th driver's newest row is 3 days old, past
    the view's 1-day TTL (stale in the online store once materialized); every 11th has NULL
    ``conv_rate`` and ``city`` in its newest row; every 13th has a duplicate event time whose
    later ``created`` wins. Rows in the future (every 17th driver) are not materialized.
    """
    from datetime import timedelta

    import psycopg

    now = now or datetime.now(UTC).replace(microsecond=0)
    cities = ["Lisbon", "Porto", "Faro", "Braga"]
    rows: list[tuple[Any, ...]] = []
    for d in range(1, drivers + 1):
        n = 1 + d % 3
        newest = now - (timedelta(days=3) if d % 7 == 0 else timedelta(minutes=10 + d % 50))
        for k in range(n):
            ts = newest - timedelta(hours=5 * k)
            null = d % 11 == 0 and k == 0
            rows.append(
                (
                    d,
                    ts,
                    ts + timedelta(seconds=1),
                    None if null else round(0.01 * (d % 97) + 0.001 * k, 3),
                    0.5 + (d % 13) / 100 + k / 1000,
                    (d * 7 + k) % 40,
                    d % 5 + 1,
                    d % 2 == 0,
                    None if null else cities[(d + k) % 4],
                    ts - timedelta(minutes=d % 90),
                )
            )
        if d % 13 == 0:
            # Same event time, created later: Feast keeps this one.
            r: list[Any] = list(rows[-n])
            r[2] = r[2] + timedelta(seconds=5)
            r[5] = 999
            rows.append(tuple(r))
        if d % 17 == 0:
            rows.append((d, now + timedelta(days=1), now, 0.99, 0.99, 1, 1, True, "Future", now))
    customers_rows: list[tuple[Any, ...]] = [
        (
            f"c{c:04d}",
            float(c) * 12.5 if c % 9 else None,
            ["gold", "silver", "bronze"][c % 3],
            now - timedelta(days=c),
        )
        for c in range(1, customers + 1)
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS public.driver_stats, public.customers")
        conn.execute(
            "CREATE TABLE public.driver_stats (driver_id bigint, event_timestamp timestamptz, created timestamptz, "
            "conv_rate real, acc_rate double precision, avg_daily_trips bigint, rating integer, "
            "is_active boolean, city text, last_trip_ts timestamptz)"
        )
        conn.execute(
            "CREATE TABLE public.customers (customer_id text, ltv double precision, segment text, "
            "event_timestamp timestamptz)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY public.driver_stats FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cur.copy("COPY public.customers FROM STDIN") as copy:
                for row in customers_rows:
                    copy.write_row(row)
    return {"driver_rows": len(rows), "customer_rows": len(customers_rows), "now": now.isoformat()}


# Runs inside the Feast venv: `feast apply` and materialize a window into the online store.
APPLY_AND_MATERIALIZE_SCRIPT = r"""
import os
from datetime import datetime
from pathlib import Path
from feast import FeatureStore
from feast.repo_config import load_repo_config
from feast.repo_operations import apply_total

repo = Path(PAYLOAD["repo"]).resolve()
os.chdir(repo)
config = load_repo_config(repo, repo / "feature_store.yaml")
apply_total(config, repo, skip_source_validation=True)
store = FeatureStore(repo_path=str(repo))
start = datetime.fromisoformat(PAYLOAD["start"])
end = datetime.fromisoformat(PAYLOAD["end"])
store.materialize(start_date=start, end_date=end)
RESULT = {"views": [fv.name for fv in store.list_feature_views()]}
"""


def apply_and_materialize(
    repo_path: str | os.PathLike[str], start: datetime, end: datetime, *, python: str | None = None
) -> dict:
    """``feast apply`` the repo and materialize ``[start, end]`` (in the Feast interpreter)."""
    return run_in_feast(
        APPLY_AND_MATERIALIZE_SCRIPT,
        {"repo": str(Path(repo_path).resolve()), "start": start.isoformat(), "end": end.isoformat()},
        python=python,
        cwd=repo_path,
    )


def ensure_feast_venv(path: str | os.PathLike[str] | None = None, *, python: str | None = None) -> str:
    """The Feast interpreter of ``path`` (default ``<project>/.venv-feast``), created when missing.

    Creating it installs ``requirements-feast.txt`` (about a minute here); an existing one is reused.
    """
    venv = Path(path) if path else PROJECT_ROOT / FEAST_VENV
    exe = venv / "bin" / "python"
    if exe.exists():
        return str(exe)
    reqs = PROJECT_ROOT / "requirements-feast.txt"
    spec = ["-r", str(reqs)] if reqs.is_file() else ["feast[redis,postgres]==0.67.0"]
    log.info("creating %s with Feast (%s)", venv, " ".join(spec))
    base = python or sys.executable
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(exe), "-m", "pip", "install", "-q", *spec], check=True, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as exc:
        raise FeastUnavailable(
            f"could not create {venv}: {' '.join(map(str, exc.cmd))} failed:\n{(exc.stderr or '')[-2000:]}"
        ) from exc
    return str(exe)


def find_feast_repo(plan: Any) -> FeastRepo | None:
    """The Feast definitions beside a plan (the ``*.feast.json`` import-feast wrote), or None.

    This is how a plan says "my legacy stores are Feast's" until the plan model has a field for it.
    """
    found = sorted(Path(plan.source_dir).glob("*.feast.json"))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"{plan.source_dir} holds {len(found)} Feast definition files ({', '.join(p.name for p in found)}); "
            "keep the one of this plan"
        )
    return FeastRepo.from_json(found[0])
