"""The package's shape holds: imports go only where each subpackage's docstring allows, the
import graph has no circles, no product module grows past 700 lines, and what the image
installs (the wheel's packages) holds no demo or test code.

Each appliance/<pkg>/__init__.py says `Imports: appliance.x, appliance.y, fastpath.`; that
sentence is the rule this test enforces, so the docs and the check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

from conftest import ROOT

PRODUCT = ("appliance", "fastpath")
# Allowed from everywhere: the package root (its version) and the one error hierarchy.
BASE = {"appliance", "appliance.errors"}
MAX_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("appliance/**/*.py"), *ROOT.glob("fastpath/*.py"),
             *ROOT.glob("demoward/*.py")]
    return {_module_name(p): p for p in files}


def _imports(path: Path) -> set[str]:
    """Every absolute import in the file, lazy and type-checking ones included: a circle
    broken only by importing late is still a circle in the design."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _unit(module: str) -> str:
    """The unit an import rule speaks of: appliance.<pkg>, or a top-level package."""
    parts = module.split(".")
    if parts[0] == "appliance" and len(parts) > 1:
        return "appliance." + parts[1]
    return parts[0]


def _allowed(package_dir: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse((package_dir / "__init__.py").read_text())) or ""
    match = re.search(r"Imports:(.*?)(?:\.\s|\.$)", doc, re.S)
    assert match, f"{package_dir.name}/__init__.py: its docstring has no 'Imports:' sentence"
    allowed = set(re.findall(r"\b(appliance\.\w+|fastpath|demoward)\b", match.group(1)))
    if "appliance.*" in match.group(1):     # a tool on the product: any part but the CLI
        allowed.update(f"appliance.{d.name}" for d in (ROOT / "appliance").iterdir()
                       if (d / "__init__.py").exists() and d.name != "cli")
    return allowed


def _rules() -> dict[str, set[str]]:
    rules = {f"appliance.{d.name}": _allowed(d)
             for d in sorted((ROOT / "appliance").iterdir()) if (d / "__init__.py").exists()}
    rules["demoward"] = _allowed(ROOT / "demoward")
    rules["fastpath"] = set()
    return rules


def test_imports_go_only_where_each_package_allows() -> None:
    rules = _rules()
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        here = _unit(name)
        for target in _imports(path):
            there = _unit(target)
            if there not in rules or there == here or target in BASE or there in BASE:
                continue
            if there not in rules[here]:
                wrong.append(f"{path.relative_to(ROOT)}: imports {target} "
                             f"({here} may import: {', '.join(sorted(rules[here])) or '-'})")
    assert not wrong, "\n".join(wrong)


def test_the_allowed_directions_form_layers() -> None:
    """No two subpackages may import each other, directly or round a loop."""
    rules = _rules()
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(unit: str, path: list[str]) -> None:
        if state.get(unit) == 2:
            return
        assert state.get(unit) != 1, f"circle: {' -> '.join([*path, unit])}"
        state[unit] = 1
        for dep in sorted(rules.get(unit, ())):
            visit(dep, [*path, unit])
        state[unit] = 2
        order.append(unit)

    for unit in rules:
        visit(unit, [])
    assert order.index("appliance.common") < order.index("appliance.daemon")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_module_import_circles() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        graph[name]
        for target in _imports(path):
            while target and target not in modules:      # `from pkg.mod import name`
                target = target.rpartition(".")[0]
            # a package's __init__ importing its own modules, or a module its package, is
            # how packages are built, not a circle between parts
            if target and target != name and not name.startswith(target + ".") \
                    and not target.startswith(name + "."):
                graph[name].add(target)
    assert _cycles(graph) == []


def test_no_product_module_over_700_lines() -> None:
    """Python and the fast path's Cython sources alike (core.pyx and its included .pxi)."""
    sources = [*ROOT.glob("appliance/**/*.py"),
               *(p for ext in ("py", "pyx", "pxd", "pxi") for p in ROOT.glob(f"fastpath/*.{ext}"))]
    long = [f"{p.relative_to(ROOT)}: {n} lines"
            for p in sources
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_the_installed_packages_are_the_product_only() -> None:
    """The wheel the image installs takes the packages pyproject.toml's find rule selects:
    only appliance and fastpath, never demoward, tests or bench."""
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert packages and all(p.split(".")[0] in PRODUCT for p in packages), packages
    assert "appliance.cli" in packages and "fastpath" in packages
    product = [p for p in _modules() if p.split(".")[0] in PRODUCT]
    leaks = [f"{m} imports {t}" for m in product for t in _imports(_modules()[m])
             if t.split(".")[0] in ("demoward", "tests", "bench")
             and m != "appliance.cli.demo"]
    assert not leaks, leaks
