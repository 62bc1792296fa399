"""A parsed-plan cache keyed on file mtimes, so DAG parsing does not re-validate YAML every few seconds.

Airflow re-parses the DAG file continuously. Loading a plan (ruamel round-trip YAML, pydantic,
sqlglot checks of every SQL definition) costs seconds for a 200-group plan, far over the parse
budget, yet the plan only changes when someone edits it. The cache stores the validated
:class:`~airflow_fsmigration.plan.model.MigrationPlan` as a pickle together with the size and
mtime of every file it was read from (the YAML files and each group's SQL definition); a hit
needs one ``stat`` per file and an unpickle.

On a miss the plan is validated in a child process (``python -m airflow_fsmigration.plan.cache``),
so the parsing process never imports the loader's heavy dependencies (sqlglot); the child's
plan errors come back as JSON and are raised here as the same :class:`PlanError`, naming file
and line. The cache directory is local and written only by this module (atomic replace).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_fsmigration.plan.errors import PlanError, PlanIssue

if TYPE_CHECKING:
    from airflow_fsmigration.plan.model import MigrationPlan

log = logging.getLogger("airflow_fsmigration.plan")

# 3: routing_mirror, ramp approvals and the Feast layout in the plan model (revalidated once)
CACHE_FORMAT = 3
_MEMO: dict[str, tuple[tuple[Any, ...], MigrationPlan]] = {}


def cache_dir() -> Path:
    """``$FSMIG_CACHE_DIR``, else ``$XDG_CACHE_HOME/airflow-fsmigration``, else ``~/.cache/...``."""
    explicit = os.environ.get("FSMIG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "airflow-fsmigration"


def _yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    return [path]


def _stamp(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            out.append((str(f), -1, -1))
        else:
            out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _cache_file(path: Path) -> Path:
    from airflow_fsmigration import __version__

    digest = hashlib.sha256(f"{path}|{__version__}|{CACHE_FORMAT}".encode()).hexdigest()[:24]
    return cache_dir() / f"plan-{digest}.pickle"


def _dependencies(plan: MigrationPlan, path: Path) -> list[Path]:
    files = _yaml_files(path)
    files += sorted({plan.definition_path(g) for g in plan.groups})
    return files


def _error_dependencies(path: Path) -> list[Path]:
    """What an invalid plan may depend on: its YAML files and every SQL file beside them."""
    root = path if path.is_dir() else path.parent
    return [*_yaml_files(path), *sorted(root.rglob("*.sql"))]


def _read_cached(path: Path) -> MigrationPlan | None:
    """The cached plan, or None when missing or stale; a cached invalid plan raises its PlanError."""
    file = _cache_file(path)
    try:
        with file.open("rb") as fh:
            entry = pickle.load(fh)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
        return None
    yaml_now = [str(f) for f in _yaml_files(path)]
    if yaml_now != entry["yaml_files"]:
        return None
    if _stamp([Path(f) for f, _, _ in entry["stamp"]]) != entry["stamp"]:
        return None
    if "issues" in entry:
        if [str(f) for f in _error_dependencies(path)] != [f for f, _, _ in entry["stamp"]]:
            return None  # a SQL file was added or removed
        raise PlanError([PlanIssue(**i) for i in entry["issues"]])
    return entry["plan"]


def write_cache(plan: MigrationPlan | PlanError, path: str | Path) -> Path:
    """Store a validated plan for ``path`` (or its PlanError, so an invalid plan is not re-validated
    on every parse until a file changes); returns the cache file (written atomically)."""
    path = Path(path).resolve()
    entry: dict[str, Any] = {"format": CACHE_FORMAT, "yaml_files": [str(f) for f in _yaml_files(path)]}
    if isinstance(plan, PlanError):
        entry["stamp"] = _stamp(_error_dependencies(path))
        entry["issues"] = [vars(i) for i in plan.issues]
    else:
        entry["stamp"] = _stamp(_dependencies(plan, path))
        entry["plan"] = plan
    target = _cache_file(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".plan-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump(entry, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _load_in_child(path: Path) -> None:
    """Validate and cache the plan in a child process; raise its PlanError here."""
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_fsmigration.plan.cache", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode == 0:
        return
    if proc.returncode == 2:
        issues = [PlanIssue(**i) for i in json.loads(proc.stdout)["issues"]]
        raise PlanError(issues)
    # Anything else (no writable cache dir, a broken interpreter): validate in this process instead.
    log.warning(
        "validating the plan %s in a child process failed (exit %s), loading it here: %s",
        path,
        proc.returncode,
        proc.stderr[-2000:],
    )


def load_plan_cached(path: str | Path, *, isolate: bool = True) -> MigrationPlan:
    """The validated plan at ``path``, from the cache when no plan or SQL file changed.

    :param path: plan file or folder.
    :param isolate: validate a changed plan in a child process (keeps sqlglot out of the DAG
        parser); ``False`` validates in this process, e.g. in a worker that needs it anyway.
    :raises PlanError: the plan is invalid (file, line and what to fix).
    """
    path = Path(path).resolve()
    key = str(path)
    memo = _MEMO.get(key)
    if (
        memo is not None
        and _stamp(list(_yaml_files(path))) == memo[0][0]
        and _stamp(memo[0][1]) == memo[0][2]
    ):
        return memo[1]
    plan = _read_cached(path)
    if plan is None:
        if isolate:
            _load_in_child(path)
            plan = _read_cached(path)
        if plan is None:
            from airflow_fsmigration.plan.loader import load_plan

            plan = load_plan(path)
            try:
                write_cache(plan, path)
            except OSError as exc:
                log.warning("could not write the plan cache in %s: %s", cache_dir(), exc)
    deps = _dependencies(plan, path)
    _MEMO[key] = ((_stamp(_yaml_files(path)), deps, _stamp(deps)), plan)
    return plan


def _main(argv: list[str]) -> int:
    from airflow_fsmigration.plan.loader import load_plan

    path = Path(argv[0]).resolve()
    try:
        plan = load_plan(path)
    except PlanError as exc:
        print(json.dumps({"issues": [vars(i) for i in exc.issues]}))
        with contextlib.suppress(OSError):  # the parent still gets the issues on stdout
            write_cache(exc, path)
        return 2
    write_cache(plan, path)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
