"""Load a plan from one YAML file or a folder of them, with every error tied to file and line.

ruamel.yaml keeps line numbers on each mapping and sequence; pydantic validates types and
unknown keys; the errors pydantic reports by field path are mapped back through the raw YAML
to the line a person must edit. Cross-field rules (upstream groups, model names, SQL files,
cycles, definition columns) are checked here, over the whole plan, so one run lists all errors.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airflow_fsmigration.plan.errors import (
    MAX_DEPTH,
    MAX_PLAN_BYTES,
    MAX_SQL_BYTES,
    InputRefused,
    PlanError,
    PlanIssue,
    bounded_composer,
    read_text_file,
)
from airflow_fsmigration.plan.model import Connections, FeatureGroup, MigrationPlan, Settings

MERGED_SECTIONS = ("groups", "models")
# Left by `fsmigrate import-feast` where a person must fill something in.
DRAFT_MARKER = "TODO(fsmigrate)"
SINGLE_SECTIONS = tuple(k for k in MigrationPlan.model_fields if k not in (*MERGED_SECTIONS, "source_dir"))


@dataclass
class _Origin:
    """Where each part of the merged plan came from, for error locations."""

    file_of: dict[tuple[str, ...], str] = field(default_factory=dict)
    node_of: dict[tuple[str, ...], Any] = field(default_factory=dict)
    # The line of each top-level key and merged item, for values that carry no position (scalars).
    line_of: dict[tuple[str, ...], int] = field(default_factory=dict)
    main_file: str | None = None
    first_file: str | None = None


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.max_depth = MAX_DEPTH
    yaml.Composer = bounded_composer()
    return yaml


def _plain(node: Any) -> Any:
    """Strip ruamel's round-trip types so strict validation sees plain dicts, lists and scalars."""
    from ruamel.yaml.scalarfloat import ScalarFloat
    from ruamel.yaml.scalarint import ScalarInt
    from ruamel.yaml.scalarstring import ScalarString

    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, ScalarInt):
        return int(node)
    if isinstance(node, ScalarFloat):
        return float(node)
    if isinstance(node, ScalarString):
        return str(node)
    return node


def _lc(node: Any) -> Any:
    """ruamel's line/column record of a mapping or sequence."""
    return node.lc


def _line_of(node: Any, path: tuple[Any, ...]) -> int | None:
    """Follow ``path`` through ruamel nodes; return the 1-based line of the deepest part found."""
    line = None
    if hasattr(node, "lc") and node.lc.line is not None:
        line = node.lc.line + 1
    for part in path:
        try:
            if isinstance(node, dict) and part in node:
                line = _lc(node).key(part)[0] + 1
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                line = _lc(node).item(part)[0] + 1
                node = node[part]
            else:
                break
        except (AttributeError, KeyError, TypeError):
            break
    return line


def plan_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
        if not files:
            raise PlanError([PlanIssue(str(path), None, "", "the folder holds no .yaml or .yml plan files")])
        return files
    if not path.exists():
        raise PlanError([PlanIssue(str(path), None, "", "no such plan file or folder")])
    if not path.is_file():  # a FIFO or device would block or never end
        raise PlanError([PlanIssue(str(path), None, "", "not a regular file: give a plan file or folder")])
    return [path]


def _read_all(path: Path) -> tuple[dict[str, Any], _Origin, list[PlanIssue]]:
    """Parse and merge the plan files; ``groups`` and ``models`` may be split over files."""
    from ruamel.yaml.composer import MaxDepthExceededError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    merged: dict[str, Any] = {}
    origin = _Origin()
    issues: list[PlanIssue] = []
    yaml = _yaml()
    for file in plan_files(path):
        name = str(file)
        origin.first_file = origin.first_file or name
        text = ""
        try:
            text = read_text_file(file, MAX_PLAN_BYTES, "plan file", "FSMIG_PLAN_MAX_BYTES")
            doc: Any = yaml.load(text)
        except InputRefused as exc:
            issues.append(PlanIssue(name, exc.line, "", exc.message))
            continue
        except MaxDepthExceededError as exc:
            line = exc.problem_mark.line + 1 if exc.problem_mark else None
            issues.append(
                PlanIssue(name, line, "", f"values nest deeper than {MAX_DEPTH} levels; a plan needs about 6")
            )
            continue
        except MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            issues.append(PlanIssue(name, line, "", f"not valid YAML: {exc.problem or exc}"))
            continue
        except YAMLError as exc:  # reader errors: control characters
            position = getattr(exc, "position", None)
            line = text.count("\n", 0, position) + 1 if isinstance(position, int) else 1
            issues.append(PlanIssue(name, line, "", f"not valid YAML: {exc}".splitlines()[0]))
            continue
        if doc is None:
            continue
        if not isinstance(doc, dict):
            issues.append(
                PlanIssue(
                    name, 1, "", "a plan file must be a mapping of sections (name, connections, groups, ...)"
                )
            )
            continue
        for key, value in doc.items():
            line = _lc(doc).key(key)[0] + 1
            key = str(key)
            if key in MERGED_SECTIONS:
                if not isinstance(value, dict):
                    issues.append(
                        PlanIssue(name, line, key, f"'{key}' must be a mapping of name -> definition")
                    )
                    continue
                section = merged.setdefault(key, {})
                for raw_item, spec in value.items():
                    item = str(raw_item)
                    item_line = _lc(value).key(raw_item)[0] + 1
                    if item in section:
                        first = origin.file_of[(key, item)]
                        issues.append(
                            PlanIssue(
                                name,
                                item_line,
                                f"{key}.{item}",
                                f"defined twice (first in {first})",
                            )
                        )
                        continue
                    section[item] = spec
                    origin.file_of[(key, item)] = name
                    origin.node_of[(key, item)] = spec
                    origin.line_of[(key, item)] = item_line
            else:
                if key in merged:
                    first = origin.file_of[(key,)]
                    issues.append(PlanIssue(name, line, key, f"section defined twice (first in {first})"))
                    continue
                merged[key] = value
                origin.file_of[(key,)] = name
                origin.node_of[(key,)] = value
                origin.line_of[(key,)] = line
                if key in ("version", "name", "connections") and origin.main_file is None:
                    origin.main_file = name
        origin.node_of.setdefault(("__doc__", name), doc)
    return merged, origin, issues


def _locate(origin: _Origin, loc: tuple[Any, ...], fallback: str) -> tuple[str, int | None]:
    """File and line for a pydantic error location in the merged plan."""
    key: tuple[Any, ...]
    if len(loc) >= 2 and loc[0] in MERGED_SECTIONS and (loc[0], loc[1]) in origin.file_of:
        key = (loc[0], loc[1])
    elif loc and (loc[0],) in origin.file_of:
        key = (loc[0],)
    else:
        # A missing top-level section: the file that holds the plan's name and connections.
        file = origin.main_file or origin.first_file
        return (file, 1) if file else (fallback, None)
    line = _line_of(origin.node_of[key], loc[len(key) :])
    return origin.file_of[key], line or origin.line_of.get(key)


def _suggest(bad: str, model_fields: list[str]) -> str:
    close = difflib.get_close_matches(bad, model_fields, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Known keys of the mapping that holds ``loc[-1]`` (for 'did you mean')."""
    from pydantic import BaseModel

    from airflow_fsmigration.plan.model import Model

    model: Any = MigrationPlan
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if model is MigrationPlan and part in MERGED_SECTIONS:
            model = FeatureGroup if part == "groups" else Model
            if parts:
                parts.pop(0)  # the group or model name
            continue
        if isinstance(part, int):
            continue
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            break
        candidates = [info.annotation, *getattr(info.annotation, "__args__", ())]
        nested = [c for c in candidates for c in (c, *getattr(c, "__args__", ()))]
        model = next((c for c in nested if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            break
    fields = getattr(model, "model_fields", {})
    return [*fields, *(f.alias for f in fields.values() if f.alias)]


def _pydantic_issues(exc: ValidationError, origin: _Origin, fallback: str) -> list[PlanIssue]:
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        file, line = _locate(origin, loc, fallback)
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'{_suggest(str(loc[-1]), _fields_at(loc))}"
        elif err["type"] == "missing":
            msg = "required field is missing"
            if len(loc) > 1:
                file, line = _locate(origin, loc[:-1], fallback)
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list) and "got " not in msg:
                got = repr(err["input"])
                msg += f" (got {got if len(got) <= 80 else got[:77] + '...'})"
        issues.append(PlanIssue(file, line, path, msg))
    return issues


def _cross_checks(
    plan: MigrationPlan, origin: _Origin, *, known_groups: set[str], known_models: set[str]
) -> list[PlanIssue]:
    """Rules that need the whole plan: references, files, cycles, definition columns."""
    from sqlglot.errors import SqlglotError

    from airflow_fsmigration.plan.definitions import DefinitionError, output_columns
    from airflow_fsmigration.plan.graph import find_cycle

    issues: list[PlanIssue] = []

    def at(group: str, *path: Any) -> tuple[str, int | None]:
        return _locate(origin, ("groups", group, *path), "plan")

    for gname, group in plan.groups.items():
        seen: dict[str, int] = {}
        for i, feat in enumerate(group.features):
            if feat.name in seen:
                file, line = at(gname, "features", i, "name")
                issues.append(
                    PlanIssue(
                        file, line, f"groups.{gname}.features[{i}].name", f"duplicate feature '{feat.name}'"
                    )
                )
            seen.setdefault(feat.name, i)
            if feat.name == group.entity_key:
                file, line = at(gname, "features", i, "name")
                issues.append(
                    PlanIssue(
                        file,
                        line,
                        f"groups.{gname}.features[{i}].name",
                        "a feature may not share the entity key's name",
                    )
                )
        for i, up in enumerate(group.depends_on):
            if up not in known_groups:
                file, line = at(gname, "depends_on", i)
                hint = difflib.get_close_matches(up, sorted(known_groups), n=1)
                tip = (
                    f"; did you mean '{hint[0]}'?"
                    if hint
                    else f"; known groups: {', '.join(sorted(plan.groups))}"
                )
                issues.append(
                    PlanIssue(
                        file, line, f"groups.{gname}.depends_on[{i}]", f"unknown upstream group '{up}'{tip}"
                    )
                )
            elif up == gname:
                file, line = at(gname, "depends_on", i)
                issues.append(
                    PlanIssue(
                        file, line, f"groups.{gname}.depends_on[{i}]", "a group cannot depend on itself"
                    )
                )
        for i, model in enumerate(group.models):
            if model not in known_models:
                file, line = at(gname, "models", i)
                issues.append(
                    PlanIssue(
                        file,
                        line,
                        f"groups.{gname}.models[{i}]",
                        f"unknown model '{model}': add it under 'models:'",
                    )
                )
        sql_path = plan.definition_path(group)
        sql_text: str | None = None
        if not sql_path.is_file():
            file, line = at(gname, "definition")
            issues.append(
                PlanIssue(
                    file, line, f"groups.{gname}.definition", f"SQL definition file not found: {sql_path}"
                )
            )
        else:
            try:
                sql_text = read_text_file(
                    sql_path, MAX_SQL_BYTES, f"SQL definition {sql_path.name}", "FSMIG_SQL_MAX_BYTES"
                )
            except InputRefused as exc:
                file, line = at(gname, "definition")
                where = f" (line {exc.line} of {sql_path.name})" if exc.line else ""
                issues.append(PlanIssue(file, line, f"groups.{gname}.definition", exc.message + where))
        if sql_text is not None and DRAFT_MARKER in sql_text:
            file, line = at(gname, "definition")
            issues.append(
                PlanIssue(
                    file,
                    line,
                    f"groups.{gname}.definition",
                    f"{sql_path.name} is still a draft stub ({DRAFT_MARKER}): write the new store's SELECT "
                    "with an :as_of parameter and remove the marker",
                )
            )
        elif sql_text is not None:
            try:
                columns = output_columns(sql_text)
            except (DefinitionError, SqlglotError, RecursionError) as exc:
                # sqlglot raises TokenError (not only ParseError) and may recurse on deep nesting.
                file, line = at(gname, "definition")
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if not isinstance(exc, DefinitionError):
                    detail = f"SQL does not parse: {detail}"
                issues.append(
                    PlanIssue(file, line, f"groups.{gname}.definition", f"{sql_path.name}: {detail}")
                )
                columns = None
            if columns is not None:
                missing = [c for c in [group.entity_key, *group.feature_names] if c not in columns]
                if missing:
                    file, line = at(gname, "definition")
                    issues.append(
                        PlanIssue(
                            file,
                            line,
                            f"groups.{gname}.definition",
                            f"{sql_path.name} does not select {', '.join(missing)} (it selects {', '.join(columns)})",
                        )
                    )
        if group.overrides.ramp_steps is not None:
            try:
                Settings.model_validate(
                    {**plan.defaults.model_dump(), "ramp_steps": group.overrides.ramp_steps}, strict=False
                )
            except ValidationError as exc:
                file, line = at(gname, "overrides", "ramp_steps")
                issues.append(
                    PlanIssue(file, line, f"groups.{gname}.overrides.ramp_steps", exc.errors()[0]["msg"])
                )
    cycle = find_cycle({g: list(spec.depends_on) for g, spec in plan.groups.items()})
    if cycle:
        file, line = at(cycle[0], "depends_on")
        issues.append(
            PlanIssue(
                file,
                line,
                f"groups.{cycle[0]}.depends_on",
                f"dependency cycle (each group depends on the next): {' -> '.join(cycle)}",
            )
        )
    return issues


def load_plan(path: str | Path) -> MigrationPlan:
    """Load and validate a plan; raise :class:`PlanError` listing every problem with file and line."""
    path = Path(path)
    raw, origin, issues = _read_all(path)
    if any(not i.path for i in issues):
        # A file that could not be read at all (syntax, binary, too big or deep): missing-section
        # errors after it would only be noise.
        raise PlanError(issues)
    fallback = str(path)
    data = _plain(raw)
    for gname, spec in (data.get("groups") or {}).items():
        if isinstance(spec, dict):
            if "name" in spec and spec["name"] != gname:
                file, line = _locate(origin, ("groups", gname, "name"), fallback)
                issues.append(
                    PlanIssue(
                        file, line, f"groups.{gname}.name", f"name '{spec['name']}' differs from its key"
                    )
                )
            spec["name"] = gname
    data["source_dir"] = path if path.is_dir() else path.parent
    plan: MigrationPlan | None = None
    try:
        plan = _validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc, origin, fallback))
        # Still check references and files in the parts that did validate.
        plan = _partial_plan(data, [tuple(e["loc"]) for e in exc.errors()])
    if plan is not None:
        known = set(data.get("groups") or {}) | set(plan.groups)
        issues.extend(
            _cross_checks(plan, origin, known_groups=known, known_models=set(data.get("models") or {}))
        )
    if issues:
        raise PlanError(issues)
    assert plan is not None
    return plan


def _validate(data: dict[str, Any], model: Any = MigrationPlan) -> Any:
    """Validate strictly as JSON would be: YAML's own types must match (no "5" for 5), enums by value."""
    return model.model_validate_json(json.dumps(data, default=str))


def _partial_plan(data: dict[str, Any], errors: list[tuple[Any, ...]]) -> MigrationPlan | None:
    """The valid part of an invalid plan, so cross-checks still run on what did validate.

    Invalid top-level sections fall back to their defaults (required ones to placeholders),
    invalid models to empty specs and invalid groups are left out; references to them are
    still known names (see ``_cross_checks``), so no error is reported twice.
    """
    bad_sections = {loc[0] for loc in errors if loc and loc[0] not in MERGED_SECTIONS}
    bad_items = {(loc[0], loc[1]) for loc in errors if len(loc) >= 2 and loc[0] in MERGED_SECTIONS}
    probe: dict[str, Any] = {k: v for k, v in data.items() if k not in bad_sections}
    probe.setdefault("name", "unnamed")
    if "connections" in bad_sections or "connections" not in probe:
        probe["connections"] = {k: "unset" for k, f in Connections.model_fields.items() if f.is_required()}
    probe["models"] = {
        m: ({} if ("models", m) in bad_items else spec) for m, spec in (data.get("models") or {}).items()
    }
    probe["groups"] = {
        g: spec for g, spec in (data.get("groups") or {}).items() if ("groups", g) not in bad_items
    }
    try:
        return _validate(probe)
    except ValidationError:
        return None
