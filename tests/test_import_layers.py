"""The package layering (docs/architecture.md): ops <- model <- data_pipeline <- training <- evals <-
launch. No module imports a package above its own, and no modules import each other in a cycle.

Every import statement counts, including those inside functions (a lazy import is still a
dependency). Run against another checkout: `python tests/test_import_layers.py /path/to/repo`.
"""

import ast
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# Lowest first. data_pipeline sits below training: the trainer consumes streams, never the reverse.
LAYERS = ("ops", "model", "data_pipeline", "training", "evals", "launch")


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the layered packages under `root`."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def lazy_exports(path: Path) -> dict[str, str]:
    """{name: module} of a package __init__ that calls `export_lazily(__name__, {...})`
    (ops/lazy_package.py): `from package import name` depends on that module."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "export_lazily"
                and len(node.args) == 2):
            return ast.literal_eval(node.args[1])
    return {}


def imported_modules(module: str, path: Path, known: dict[str, Path],
                     exports: dict[str, dict[str, str]]) -> set[str]:
    """The known modules that `module` imports anywhere in its file (relative imports resolved;
    `from package import name` counts as importing `package.name` when that is a module, or the
    module a lazy package takes `name` from)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [exports.get(base, {}).get(alias.name, f"{base}.{alias.name}")
                       for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = package_modules(root)
    exports = {module: lazy_exports(path) for module, path in modules.items() if path.name == "__init__.py"}
    return {module: imported_modules(module, path, modules, exports) for module, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {package: index for index, package in enumerate(LAYERS)}
    return [f"{module} imports {target} ({target.split('.')[0]} is above {module.split('.')[0]})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if rank[target.split(".")[0]] > rank[module.split(".")[0]]]


def import_cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
    return cycles


def layering_problems(root: Path) -> list[str]:
    graph = import_graph(root)
    return upward_imports(graph) + [f"import cycle: {' <-> '.join(sorted(c))}"
                                    for c in import_cycles(graph)]


def test_no_upward_imports_and_no_cycles():
    problems = layering_problems(REPO_ROOT)
    assert not problems, "\n".join(problems)


def write_modules(root: Path, files: dict[str, str]) -> None:
    for package in LAYERS:
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)


@pytest.mark.parametrize("files, expected", [
    ({"model/a.py": "def f():\n    from launch.cli import main\n", "launch/cli.py": ""},
     "model.a imports launch.cli (launch is above model)"),
    ({"training/a.py": "from . import b\n", "training/b.py": "import training.a\n"},
     "import cycle: training.a <-> training.b"),
    ({"ops/a.py": "from ops.b import x\n", "ops/b.py": "def g():\n    from .a import y\n"},
     "import cycle: ops.a <-> ops.b"),
    ({"model/__init__.py": "__all__ = export_lazily(__name__, {'f': 'model.a'})\n",
      "model/a.py": "import model.b\n", "model/b.py": "from model import f\n"},
     "import cycle: model.a <-> model.b"),                 # through a lazy package's export
])
def test_checker_finds_function_level_upward_imports_and_cycles(tmp_path, files, expected):
    write_modules(tmp_path, files)
    assert expected in layering_problems(tmp_path)


def test_checker_accepts_downward_imports(tmp_path):
    write_modules(tmp_path, {"launch/a.py": "import ops\nfrom training import b\n",
                             "training/b.py": "from model import c\n", "model/c.py": "import ops\n"})
    assert layering_problems(tmp_path) == []


if __name__ == "__main__":
    found = layering_problems(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT)
    print("\n".join(found) or "no upward imports, no cycles")
    sys.exit(1 if found else 0)
