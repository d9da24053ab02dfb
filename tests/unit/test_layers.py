"""The import layering docs/internals/architecture.md states: a package or module imports only those
below it in the table (within one row, modules import each other freely), and no import
cycle.  Checked on the source with an AST walk of every import, at module and function level."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "desi_loader"


def _layers() -> list:
    """The first column of the package table, top to bottom: one set of names per row."""
    text = (ROOT / "docs" / "internals" / "architecture.md").read_text()
    table = text[text.index("| package / module |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        names = {re.sub(r"\.py$|/$", "", n) for n in re.findall(r"`([^`]+)`", first)}
        names = {n for n in names if not n.startswith(("tests/", "scripts/"))}
        if names:
            rows.append(names)
    return rows


def _unit(module: str) -> str:
    """The row name of a module: its sub-package, or the top-level module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        pkg_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg_parts[: len(pkg_parts) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("desi_loader"):       # from PKG import module, or a name of PKG
                    for a in node.names:
                        cand = f"{target}.{a.name}"
                        found.add(cand if (PKG.parent / (cand.replace(".", "/") + ".py")).exists()
                                  or (PKG.parent / cand.replace(".", "/")).is_dir() else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("desi_loader"))
        out[module] = found
    return out


def test_architecture_table_covers_every_package_and_module():
    units = {_unit(m) for m in _imports()} - {"__init__", "__main__"}
    listed = set().union(*_layers())
    assert units <= listed, f"not in docs/internals/architecture.md's table: {sorted(units - listed)}"


def test_imports_point_down_the_table():
    rank = {name: i for i, row in enumerate(_layers()) for name in row}
    wrong = []
    for module, targets in _imports().items():
        a = _unit(module)
        if a not in rank:
            continue                              # the package __init__ (lazy api import) and __main__
        for t in targets:
            b = _unit(t)
            if b in rank and b != a and rank[b] < rank[a]:
                wrong.append(f"{module} imports {t} ({b} is above {a})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = _imports()
    modules = set(graph)

    def resolve(t):
        return t if t in modules else t.rsplit(".", 1)[0] if t.rsplit(".", 1)[0] in modules else None

    edges = {m: {resolve(t) for t in ts} - {None, m} for m, ts in graph.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        if state.get(m) == "active":
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        state[m] = "active"
        for n in edges.get(m, ()):
            if not (n == "desi_loader" or m == "desi_loader"):    # the package's lazy attribute hook
                visit(n, path + [m])
        state[m] = "done"

    for m in sorted(modules):
        visit(m, [])


@pytest.mark.parametrize("row", [0, -1])
def test_table_is_read(row):
    assert _layers()[row]


SERVER_FIXTURES = {"pg_uri", "pg15_uri", "db", "schema", "loaded", "tap", "cluster"}


def test_unit_tests_ask_for_no_server():
    """tests/unit is the pure layer: none of its tests takes a fixture that starts a server."""
    wrong = []
    for path in sorted((ROOT / "tests" / "unit").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                used = {a.arg for a in node.args.args} & SERVER_FIXTURES
                if used:
                    wrong.append(f"{path.name}::{node.name} takes {sorted(used)}")
    assert not wrong, wrong
