"""No module of inferwatch imports one that imports it back, however late.

An import put under ``if TYPE_CHECKING:`` or into a function hides a cycle from the interpreter,
not from the reader: the two modules still are read, tested and changed as one. So every import
counts here, wherever it stands, and data flows one way (docs: STYLE.md).
"""

import ast
from collections.abc import Collection, Mapping
from pathlib import Path

import inferwatch

ALLOWED: set[frozenset[str]] = set()  # no cycle is allowed


def module_files(package: Path) -> dict[str, Path]:
    files = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported(name: str, path: Path, modules: Collection[str]) -> set[str]:
    """The ``modules`` that ``name`` imports anywhere: at the top, under ``if TYPE_CHECKING:``
    or in a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}:{node.lineno}: a relative import, not followed here"
            base = node.module or ""
            # `from package import module` imports the module; names that are no module drop out
            found.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    return {target for target in found if target in modules and target != name}


def import_graph(package: Path) -> dict[str, set[str]]:
    files = module_files(package)
    return {name: imported(name, path, files) for name, path in files.items()}


def cycles(graph: Mapping[str, Collection[str]]) -> set[frozenset[str]]:
    """The groups of modules that reach each other through their imports."""
    reach = {}
    for start in graph:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        reach[start] = seen
    return {frozenset({name, *(other for other in reach[name] if name in reach[other])})
            for name in graph if name in reach[name]}


def test_no_module_imports_one_that_imports_it_back() -> None:
    found = cycles(import_graph(Path(inferwatch.__file__).parent))
    assert found - ALLOWED == set()
    assert ALLOWED - found == set(), "no longer a cycle: remove it from ALLOWED"


def test_a_cycle_counts_however_late_its_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg.top import Top\n")
    (package / "top.py").write_text("from pkg import low\n\n\nclass Top:\n    pass\n")
    (package / "low.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.mid import Mid\n")
    (package / "mid.py").write_text("def build():\n    import pkg.low\n")
    assert import_graph(package) == {"pkg": {"pkg.top"}, "pkg.top": {"pkg", "pkg.low"},
                                     "pkg.low": {"pkg.mid"}, "pkg.mid": {"pkg.low"}}
    assert cycles(import_graph(package)) == {frozenset({"pkg", "pkg.top"}),
                                             frozenset({"pkg.low", "pkg.mid"})}
