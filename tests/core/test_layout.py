"""The package's layout: every module lives in a phase folder, imports point one way
(core < models < data < evaluate, release, demo < train, and the command on top of them all),
and no module imports itself back through others. Imports inside functions count too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "llamantino"
# Phase folder -> rank: a module imports from its own folder and from lower ranks only.
RANKS = {"core": 0, "models": 1, "data": 2, "demo": 3, "evaluate": 3, "release": 3, "train": 4}
TOP = {"__init__", "__main__", "cli", "doctor"}  # the command and its machine report, above every phase


def modules(package: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_edges(package: Path) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every import of the package by itself;
    a relative import is reported as imported module "(relative)"."""
    mods = modules(package)

    def resolve(dotted):
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted

    edges = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                edges.append((mod, "(relative)", node.lineno))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package.name:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges.append((mod, full if full in mods else resolve(node.module), node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(mod, resolve(a.name), node.lineno) for a in node.names
                          if a.name.split(".")[0] == package.name]
    return edges


def phase(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"  # the package itself (__version__)
    if parts[1] in RANKS:
        return parts[1]
    return "top" if len(parts) == 2 and parts[1] in TOP else "unplaced"


def wrong_way(package: Path) -> list[str]:
    rank = {**RANKS, "root": -1, "top": 99}
    out = []
    for importer, imported, line in import_edges(package):
        if imported == "(relative)":
            out.append(f"{importer}:{line}: a relative import; write the module's full name")
            continue
        a, b = phase(importer), phase(imported)
        if a == b or b == "root" or "unplaced" in (a, b):
            continue
        if rank[b] >= rank[a]:
            out.append(f"{importer}:{line} imports {imported}: {a}/ may not import {b}/")
    return out


def cycles(package: Path) -> list[list[str]]:
    """Groups of modules that import one another, directly or through others (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(package)}
    for importer, imported, _ in import_edges(package):
        if imported in graph and imported != importer:
            graph[importer].add(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_lives_in_a_phase_folder():
    unplaced = [m for m in modules(PACKAGE) if phase(m) == "unplaced"]
    assert not unplaced, f"modules outside the phase folders: {unplaced}"
    assert set(RANKS) <= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def test_imports_point_down_the_phases():
    assert not wrong_way(PACKAGE), "\n".join(wrong_way(PACKAGE))


def test_no_import_cycle():
    assert not cycles(PACKAGE), cycles(PACKAGE)


def test_the_checks_catch_upward_and_sideways_imports_and_cycles(tmp_path):
    files = {
        "__init__.py": "",
        "cli.py": "from llamantino.train import b\n",
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from llamantino.train.b import g\n",      # upward, inside a function
        "core/e.py": "import llamantino.core.f\n",
        "core/f.py": "from llamantino.core import e\n",                             # a cycle within a folder
        "train/__init__.py": "",
        "train/b.py": "from llamantino.core.e import x\nfrom . import c\n",       # down: fine; relative: not
        "evaluate/__init__.py": "",
        "evaluate/c.py": "from llamantino.release import d\n",                      # sideways
        "release/__init__.py": "",
        "release/d.py": "from llamantino import __version__\n",
    }
    for name, text in files.items():
        (tmp_path / "llamantino" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "llamantino" / name).write_text(text)
    found = wrong_way(tmp_path / "llamantino")
    assert found == ["llamantino.core.a:2 imports llamantino.train.b: core/ may not import train/",
                     "llamantino.evaluate.c:1 imports llamantino.release.d: evaluate/ may not import release/",
                     "llamantino.train.b:2: a relative import; write the module's full name"]
    assert cycles(tmp_path / "llamantino") == [["llamantino.core.e", "llamantino.core.f"]]
