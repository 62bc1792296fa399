"""The shape of the house: no import circle, no oversized room, Airflow only at its faces, a clean wheel.

These read the source with :mod:`ast` (nothing is imported), so they are cheap and see every
module, including ones no test happens to import. Module-level imports are what runs when a
module is imported, so they decide whether an import circle can fail and whether importing a
module loads Airflow; imports inside functions and under ``if TYPE_CHECKING:`` count only for
the stricter circle test, which draws the graph as issue 14 did.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "airflow_fsmigration"
MAX_LINES = 500

# Modules still over MAX_LINES while other helpers split them (issue 14, deliverable 4). The lead
# empties this set when the splits are in; an entry that is gone or back under the limit fails
# the test, so the set cannot go stale silently.
ALLOWED_OVER_500: set[str] = set()

# The Airflow faces: the only modules that may import ``airflow`` when they are imported. Every
# other module (the core) imports Airflow, if at all, inside the function that needs it, so that
# the CLI, serving and the reports work without loading Airflow.
AIRFLOW_FACES = (
    f"{PACKAGE}.hooks",
    f"{PACKAGE}.operators",
    f"{PACKAGE}.sensors",
    f"{PACKAGE}.triggers",
    f"{PACKAGE}.plugins",
    f"{PACKAGE}.links",
)

# Paths that belong to the checkout (demo, embedded servers, test data, benchmarks), never the wheel.
NOT_IN_WHEEL = ("fsmig_dev", "devservices", "synthetic", "demo", "bench")
# Build output and local artefacts (all git-ignored) are not copied into the wheel's build tree.
SKIP_COPY = ("build", "dist", "reports_out")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.Module, *, functions: bool = False, type_checking: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module.

    By default those that run when the module is imported: at top level, in class bodies and in
    ``if``/``try``/``with`` blocks, not in functions and not under ``if TYPE_CHECKING:``.
    ``functions`` adds the imports inside functions, ``type_checking`` those for the type checker.
    """
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not functions:
                continue
            elif isinstance(child, ast.If) and _is_type_checking(child.test) and not type_checking:
                for other in child.orelse:
                    walk(other)
            else:
                walk(child)

    walk(tree)
    return found


def _imported_names(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The absolute dotted names an import statement brings in (``from a import b`` -> ``a.b``, ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(*, functions: bool = False, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (which imports count: see :func:`_imports`)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        for node in _imports(tree, functions=functions, type_checking=type_checking):
            names = _imported_names(module, path, node)
            if isinstance(node, ast.ImportFrom):
                # ``from a import b``: the submodule a.b when there is one, else the module a.
                subs = [n for n in names[:-1] if n in files]
                edges.update(subs or ([names[-1]] if names[-1] in files else []))
            else:
                edges.update(n for n in names if n in files)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def line_counts() -> dict[str, int]:
    return {m: len(p.read_text().splitlines()) for m, p in module_files().items()}


def _is_face(module: str) -> bool:
    return any(module == face or module.startswith(face + ".") for face in AIRFLOW_FACES)


def test_the_graph_reader_sees_real_edges():
    """Guard against a reader that finds nothing (and so no circle): known arrows must be there."""
    graph = import_graph()
    assert len(graph) > 50
    assert f"{PACKAGE}.dag_context" in graph[f"{PACKAGE}.dag_factory"]
    assert f"{PACKAGE}.serving.loadgen" in graph[f"{PACKAGE}.serving.loadtest"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert f"{PACKAGE}.operators.base" in airflow_importers()
    assert f"{PACKAGE}.dag_factory" not in airflow_importers()  # it imports Airflow inside functions


def test_no_import_cycle_among_package_modules():
    """Module-level imports only: a circle here can fail an import, depending on which module goes first."""
    found = cycles(import_graph())
    assert not found, "module-level import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycle_even_counting_function_and_type_checking_imports():
    """The graph as issue 14 drew it: every import, also those in functions and for the type checker.

    These circles cannot fail at import time, but they mean two modules each know the other's
    insides (on the tree before the split: compare.engine <-> explain <-> noise, and
    registry.routing <-> mirror).
    """
    found = cycles(import_graph(functions=True, type_checking=True))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_500_lines():
    counts = line_counts()
    over = {m for m, n in counts.items() if n > MAX_LINES}
    unexpected = sorted(over - ALLOWED_OVER_500)
    assert not unexpected, "modules over 500 lines: " + ", ".join(f"{m} ({counts[m]})" for m in unexpected)
    stale = sorted(ALLOWED_OVER_500 - over)
    assert not stale, (
        "ALLOWED_OVER_500 lists modules that are gone or no longer over 500 lines (remove them): "
        + ", ".join(f"{m} ({counts.get(m, 'gone')})" for m in stale)
    )


def airflow_importers() -> dict[str, str]:
    """Module -> its first module-level import of Airflow, for the modules that have one."""
    out = {}
    for module, path in module_files().items():
        for node in _imports(ast.parse(path.read_text(), str(path))):
            names = _imported_names(module, path, node)
            # ``from airflow.sdk import DAG`` imports the module airflow.sdk (the last name).
            modules = names[-1:] if isinstance(node, ast.ImportFrom) else names
            airflow = [n for n in modules if n == "airflow" or n.startswith("airflow.")]
            if airflow:
                out[module] = f"line {node.lineno} imports {airflow[0]}"
                break
    return out


def test_only_the_airflow_faces_import_airflow_at_module_level():
    offenders = [f"{m}: {why}" for m, why in sorted(airflow_importers().items()) if not _is_face(m)]
    assert not offenders, "core modules importing Airflow at module level:\n" + "\n".join(offenders)


def test_importing_a_core_module_never_loads_airflow():
    """Not even through another module: follow module-level imports and the parent packages."""
    graph = import_graph()
    loads_airflow = set(airflow_importers())
    offenders = []
    for module in sorted(graph):
        if _is_face(module):
            continue
        seen, todo = {module}, [module]
        while todo:
            current = todo.pop()
            parents = [".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 1)]
            for dep in [*graph.get(current, ()), *parents]:
                if dep in graph and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        if seen & loads_airflow:
            offenders.append(f"{module} -> {', '.join(sorted(seen & loads_airflow))}")
    assert not offenders, "core modules that load Airflow when imported:\n" + "\n".join(offenders)


def test_the_wheel_holds_only_the_provider(tmp_path):
    """Build the wheel from a copy of the tree (a stale ``build/`` in the checkout would leak into it)."""
    src = tmp_path / "src"
    src.mkdir()
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in SKIP_COPY or entry.name.endswith(".egg-info"):
            continue
        if entry.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "results")
            shutil.copytree(entry, src / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, src / entry.name)
    out = tmp_path / "out"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            ".",
        ],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{PACKAGE}/dag_factory.py" in names and f"{PACKAGE}/py.typed" in names
    tops = {n.split("/")[0] for n in names}
    assert tops == {PACKAGE, next(t for t in tops if t.endswith(".dist-info"))}, tops
    leaked = [n for n in names if any(word in n.lower() for word in NOT_IN_WHEEL)]
    assert not leaked, f"demo, embedded-server or benchmark files in the wheel: {leaked}"
    # A shipped module that imports the checkout-only code would break on a pip install.
    with zipfile.ZipFile(wheel) as zf:
        needs_checkout = [
            n
            for n in names
            if n.endswith(".py")
            and re.search(r"^\s*(from|import)\s+(fsmig_dev|bench)\b", zf.read(n).decode(), re.M)
        ]
    assert not needs_checkout, f"shipped modules importing fsmig_dev or bench: {needs_checkout}"
