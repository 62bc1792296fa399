"""Read a Feast repository into plain data, without importing Feast here.

Feast pins ``pandas<3`` and cannot share the main virtualenv with Airflow 3.3, so everything
that needs Feast itself runs in a separate interpreter (``.venv-feast`` by default, or
``$FSMIG_FEAST_PYTHON``) through :func:`run_in_feast`: a script on stdin, JSON in and out.
The repository is parsed the way ``feast plan`` parses it (``feast.repo_operations.parse_repo``:
it imports the repo's Python definitions but touches no store), and dumped to plain JSON that
:class:`FeastRepo` loads. The direct store readers (:mod:`airflow_fsmigration.stores.feast_online`,
:mod:`airflow_fsmigration.stores.feast_offline`) need only that JSON, never Feast.

Drafting a plan from the repository is :mod:`airflow_fsmigration.feast_draft`; the demo Feast
repository of the tests and the benchmark is ``fsmig_dev.feast_demo`` (checkout only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("airflow_fsmigration.feast")

FEAST_PYTHON_ENV = "FSMIG_FEAST_PYTHON"
FEAST_VENV = ".venv-feast"
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
        "tags": dict(fs.tags or {}),
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
    # Plan group -> view, when the repo was built from a plan's ``layout: feast`` groups.
    groups: dict[str, str] = field(default_factory=dict)

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
        """Plan group name -> Feast view name: the plan's own, or as ``draft_plan`` names the groups."""
        return dict(self.groups) if self.groups else {plan_name(v): v for v in self.views}

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
    renamed = getattr(group.legacy_online, "feature_names", None) or {}
    out = []
    for f in group.features:
        feast_name = renamed.get(f.name) or (f.name if f.name in names else by_plan.get(f.name))
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


def plan_name(name: str) -> str:
    """A Feast name as a plan identifier (lower case, ``[a-z0-9_]``, starting with a letter)."""
    out = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "unnamed"
    return out if re.match(r"[a-z_]", out) else f"f_{out}"


# Plan dtype -> the Feast value type a synthesized view declares (only names and keys are read).
_DTYPE_VALUE_TYPES = {
    "int64": "INT64",
    "float64": "DOUBLE",
    "string": "STRING",
    "bool": "BOOL",
    "timestamp": "UNIX_TIMESTAMP",
}


def view_from_group(group: Any) -> FeastView:
    """The Feast view behind a ``layout: feast`` group, from the plan's fields alone."""
    lo, lof = group.legacy_online, group.legacy_offline
    join_key = lo.join_key or group.entity_key
    key_type = lo.join_key_type or ("INT64" if str(group.entity_dtype) == "int64" else "STRING")
    features = tuple(
        FeastField(lo.feature_names.get(f.name, f.name), _DTYPE_VALUE_TYPES.get(str(f.dtype), "UNKNOWN"))
        for f in group.features
    )
    source = None
    if getattr(lof, "layout", "plain") == "feast":
        mapping = {col: lo.feature_names.get(name, name) for name, col in lof.columns.items()}
        if lof.entity_column and lof.entity_column != join_key:
            mapping[lof.entity_column] = join_key
        is_query = lof.table.startswith("feast_query:")
        source = FeastSource(
            name=lof.table.removeprefix("feast_query:") if is_query else None,
            kind="PostgreSQLSource",
            timestamp_field=lof.event_time_column,
            created_timestamp_column=lof.created_timestamp_column,
            field_mapping=mapping,
            table=None if is_query else lof.table,
            query=lof.query if is_query else None,
        )
    ttl = group.ttl
    return FeastView(
        name=lo.view or group.name,
        join_keys=(FeastField(join_key, key_type),),
        features=features,
        ttl_seconds=int(ttl.total_seconds()) if ttl else 0,
        source=source,
        description=group.description,
        owner=group.owner,
    )


def repo_from_plan(plan: Any) -> FeastRepo | None:
    """The Feast definitions of a plan's ``layout: feast`` groups, or None when it has none."""
    groups = [g for g in plan.groups.values() if getattr(g.legacy_online, "layout", "plain") == "feast"]
    groups += [
        g
        for g in plan.groups.values()
        if g not in groups and getattr(g.legacy_offline, "layout", "plain") == "feast"
    ]
    if not groups:
        return None
    projects = sorted({g.legacy_online.project for g in groups if g.legacy_online.project})
    if len(projects) > 1:
        raise ValueError(
            f"plan '{plan.name}': groups name {len(projects)} Feast projects ({', '.join(projects)}); "
            "the Feast readers read one project per plan: split the plan"
        )
    views = {}
    mapping = {}
    for g in groups:
        view = view_from_group(g)
        views[view.name] = view
        mapping[g.name] = view.name
    return FeastRepo(project=projects[0] if projects else "", views=views, groups=mapping)


def find_feast_repo(plan: Any) -> FeastRepo | None:
    """The plan's Feast definitions: its ``layout: feast`` groups, else a ``*.feast.json`` beside it.

    The side file is how plans drafted before ``layout: feast`` said "my stores are Feast's"; it
    is still read, with a deprecation notice, so those plans keep working.
    """
    from_plan = repo_from_plan(plan)
    if from_plan is not None:
        return from_plan
    found = sorted(Path(plan.source_dir).glob("*.feast.json"))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(
            f"{plan.source_dir} holds {len(found)} Feast definition files ({', '.join(p.name for p in found)}); "
            "keep the one of this plan"
        )
    log.warning(
        "plan '%s': reading Feast's layout from %s is deprecated; put it in the plan "
        "(legacy_online: {layout: feast, project: ...}: run `fsmigrate import-feast` again)",
        plan.name,
        found[0],
    )
    return FeastRepo.from_json(found[0])
