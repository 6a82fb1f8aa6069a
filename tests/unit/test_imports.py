"""Programs apart: read the package's imports (ast, nothing is imported) and check the layering of
docs/ARCHITECTURE.md.

- the shared core (``vigil/*.py``) and ``vigil.contracts`` import no program package;
- ``vigil.contracts`` imports nothing of Vigil outside itself;
- a program package imports the core, the contracts and itself, never another program.  The
  collector runs inside the manager process as one of its components, so the two count as one
  program (``manager`` may import ``collector`` and the collector the manager's component API);
- no import cycle between modules, counting imports made when a module loads (an import inside a
  function runs later and cannot deadlock a load; it still counts for the program rule).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[2] / "agents" / "vigil"
PROGRAMS = {"engine": "engine", "manager": "manager", "collector": "manager", "endpoint": "endpoint",
            "cli": "cli", "lab": "lab"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported vigil module, line, made when the module loads) for every import in ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    at_load: set[int] = set()

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.If) and _type_checking(child.test):
                inner = False                # only read by type checkers
            if top and isinstance(child, (ast.Import, ast.ImportFrom)):
                at_load.add(id(child))
            walk(child, inner)
    walk(tree, True)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from . import datapath`` imports the module vigil.engine.datapath
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == "vigil" or t.startswith("vigil."):
                out.append((t, node.lineno, id(node) in at_load))
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def program(name: str) -> str | None:
    parts = name.split(".")
    return PROGRAMS.get(parts[1]) if len(parts) > 1 else None


def test_programs_import_only_the_core_the_contracts_and_themselves():
    bad = []
    for name in sorted(MODULES):
        mine = program(name)
        for target, line, _ in imports(name):
            theirs = program(target)
            if theirs is not None and theirs != mine:
                who = f"program {mine}" if mine else "the shared core"
                bad.append(f"{name}:{line} imports {target} ({who} must not import program {theirs})")
    assert not bad, "\n".join(bad)


def test_contracts_import_nothing_of_vigil_but_themselves():
    bad = [f"{name}:{line} imports {target}"
           for name in sorted(MODULES) if name == "vigil.contracts" or name.startswith("vigil.contracts.")
           for target, line, _ in imports(name)
           if target != "vigil.contracts" and not target.startswith("vigil.contracts.")]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {name: sorted({t for t, _, at_load in imports(name) if at_load and t in MODULES and t != name})
             for name in MODULES}
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(comp)
    return out


def test_the_checker_sees_a_cross_program_import_and_a_cycle():
    """The rules above are only as good as the reader: it must see the imports it is meant to catch."""
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert sorted(map(sorted, (c for c in _strongly_connected(graph) if len(c) > 1))) == [["a", "b", "c"]]
    targets = {t for t, _, _ in imports("vigil.manager.config")}
    assert "vigil.manager.policy.config" in targets and "vigil.contracts.ids" in targets
    assert program("vigil.collector.component") == program("vigil.manager.api") == "manager"


def test_loading_the_managers_config_imports_no_policy_code():
    import subprocess
    import sys
    code = ("import sys, vigil.manager.config; "
            "print(' '.join(m for m in sys.modules if m.startswith('vigil.')))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert "vigil.manager.config" in loaded
    policy_stack = {"vigil.manager.policy.component", "vigil.manager.policy.decisions", "vigil.manager.policy.detections",
                    "vigil.manager.policy.fleet", "vigil.manager.policy.baselines", "vigil.manager.ingest.component"}
    assert not loaded & policy_stack, sorted(loaded & policy_stack)
