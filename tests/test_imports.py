"""Import circles among instatag's modules, read from the source (``ast``), so that a circle cannot come
back unnoticed: none among module-level imports, and among all imports (those inside functions too)
none but the known ones, which issue #20 removes on other branches."""

from __future__ import annotations

import ast
from pathlib import Path

import instatag

PACKAGE = Path(instatag.__file__).parent
MODULES = {p.stem for p in PACKAGE.glob("*.py")}
#: circles through imports inside functions still allowed: none left (suggest <-> vocab went with the
#: CLI registration moving to cli.py)
KNOWN: set[frozenset] = set()


def imports(tree: ast.AST, module_level: bool) -> set[str]:
    """instatag modules a module's source imports (only at module level, or anywhere)."""
    out: set[str] = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                parts = (child.module or "").split(".")
                if child.level == 1 or parts[0] == "instatag":
                    name = parts[0] if child.level == 1 else (parts[1] if len(parts) > 1 else "")
                    out.update({name} if name else {a.name for a in child.names})
            elif isinstance(child, ast.Import):
                out.update(a.name.split(".")[1] for a in child.names if a.name.startswith("instatag."))
            visit(child)

    visit(tree)
    return out & MODULES


def graph(module_level: bool) -> dict[str, set[str]]:
    return {m: imports(ast.parse((PACKAGE / f"{m}.py").read_text()), module_level) - {m} for m in MODULES}


def circles(g: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return found


def test_the_detector_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    tree = ast.parse("from . import db\nfrom .evaluate import x\ndef f():\n    from . import promote\n")
    assert imports(tree, True) == {"db", "evaluate"} and imports(tree, False) == {"db", "evaluate", "promote"}


def test_no_module_level_import_circle():
    assert circles(graph(module_level=True)) == set()


def test_no_new_import_circle_and_evaluate_no_longer_imports_promote():
    g = graph(module_level=False)
    assert circles(g) <= KNOWN
    assert "promote" not in g["evaluate"] and "evaluate" in g["promote"]
