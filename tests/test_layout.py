"""The import drawing between frankeneval's packages: no circle, and the lower layers import nothing above them.

Every module of the installed package is parsed with ``ast`` (the package folder and the repo folders pyproject
installs inside it: tasks/, lm_eval_tasks/, model_wrappers/, merges/), and every import of a frankeneval module --
at the top or inside a function, which is where the old circle hid -- is an edge between two parts: the
sub-package it is in (``core``, ``engine``, ``weights``, ``localization``, ...). The top-level modules belong to a
part too: ``errors`` and the package root (``__version__``) to ``core``, ``cli`` and ``__main__`` to the command
line (``commands``), ``models`` (the lmms-eval manifest) to ``model_wrappers``.

Layers, bottom up: ``core`` (imports no other part) < ``weights`` < ``engine`` < the analyses (localization,
characterization, transferability, necessity) < the rest (reports, miniature, tasks, wrappers, commands); the
evaluation protocol (``evaluation``: data, probes, prompts, answer checks, the judge) imports only ``core``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tomllib
from conftest import REPO_ROOT

ANALYSES = ("localization", "characterization", "transferability", "necessity")
ABOVE_ANALYSES = ("reports", "miniature", "commands", "tasks", "lm_eval_tasks", "model_wrappers", "merges")
# what each lower part may import (besides itself)
MAY_IMPORT: dict[str, set[str]] = {
    "core": set(),
    "weights": {"core"},
    "engine": {"core", "weights"},
    "evaluation": {"core"},
}
# what each analysis may not import
MAY_NOT_IMPORT: dict[str, set[str]] = {a: set(ABOVE_ANALYSES) for a in ANALYSES}
# the top-level modules of frankeneval/: the part each belongs to
TOP_LEVEL = {"errors": "core", "cli": "commands", "__main__": "commands", "models": "model_wrappers"}


def package_folders(root: Path) -> dict[str, Path]:
    """Package name -> folder, from pyproject's ``[tool.setuptools] package-dir``."""
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: root / folder for pkg, folder in setup["package-dir"].items()}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the installed packages."""
    out = {}
    for pkg, folder in package_folders(root).items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def part_of(module: str) -> str:
    """The part a dotted frankeneval module (or an attribute imported from the package root) belongs to."""
    rest = module.split(".")[1:]
    if not rest:
        return "core"  # the package root: __version__
    return TOP_LEVEL.get(rest[0], rest[0])


def imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """``(line, imported frankeneval module)`` for every import statement of the module (relative ones resolved)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from frankeneval import errors`` / ``from frankeneval.miniature import world``: the submodule
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            found += [(node.lineno, m) for m in subs] or [(node.lineno, mod)]
    return [(line, m) for line, m in found if m == "frankeneval" or m.startswith("frankeneval.")]


def import_graph(root: Path) -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) -> ``file:line: module`` of each such import, between different parts."""
    mods = modules(root)
    known = set(mods)
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, path in mods.items():
        src = part_of(name)
        for line, target in imports(name, path, known):
            dst = part_of(target)
            if dst != src:
                edges[(src, dst)].append(f"{path.relative_to(root)}:{line}: imports {target}")
    return dict(edges)


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one part (each holds a circle), parts sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph[b]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_circles(edges: dict[tuple[str, str], list[str]], comp: list[str]) -> list[list[str]]:
    """For each part of a strongly connected component, the shortest circle through it (``[a, ..., a]``; each circle
    once)."""
    nxt: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(edges):
        if a in comp and b in comp:
            nxt[a].append(b)
    seen, out = set(), []
    for start in comp:
        paths = {start: [start]}
        frontier = [start]
        circle = None
        while frontier and circle is None:
            step = []
            for v in frontier:
                for w in nxt[v]:
                    if w == start:
                        circle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        step.append(w)
                if circle:
                    break
            frontier = step
        if circle and frozenset(zip(circle, circle[1:])) not in seen:
            seen.add(frozenset(zip(circle, circle[1:])))
            out.append(circle)
    return out


def layout_problems(root: Path = REPO_ROOT) -> list[str]:
    """Every breach of the layout rules (module docstring), each with the import that makes it."""
    edges = import_graph(root)
    problems = []
    for comp in cycles(edges):
        for circle in shortest_circles(edges, comp):
            hops = [f"  {a} -> {b}: {edges[(a, b)][0]}"
                    + (f" (+{len(edges[(a, b)]) - 1} more)" if len(edges[(a, b)]) > 1 else "")
                    for a, b in zip(circle, circle[1:])]
            problems.append(f"import circle {' -> '.join(circle)}:\n" + "\n".join(hops))
    for (a, b), where in sorted(edges.items()):
        if a in MAY_IMPORT and b not in MAY_IMPORT[a]:
            allowed = ", ".join(sorted(MAY_IMPORT[a])) or "nothing else"
            problems += [f"{a} may import only {allowed}; {w}" for w in where]
        if b in MAY_NOT_IMPORT.get(a, ()):
            problems += [f"{a} (an analysis) imports {b}, a layer above it: {w}" for w in where]
    return problems


def test_the_layout_has_its_parts():
    """The check is not vacuous: the parts it rules on exist and import each other as expected."""
    edges = import_graph(REPO_ROOT)
    parts = {p for e in edges for p in e}
    assert {"core", "engine", "weights", "commands", "tasks", *ANALYSES} <= parts, parts
    assert ("engine", "weights") in edges and ("weights", "core") in edges and ("localization", "engine") in edges


def test_no_import_circle_and_no_upward_import():
    problems = layout_problems(REPO_ROOT)
    for p in problems:
        print(p)
    assert not problems, f"{len(problems)} layout problem(s):\n" + "\n".join(problems)
