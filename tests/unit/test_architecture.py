"""The map of the code in README.md ("Architecture"), checked against the imports the sources make.

The import graph is read from the sources with :mod:`ast`, nothing is imported: every ``import``
and ``from ... import`` at module level, inside a function or under ``TYPE_CHECKING`` (a type a
module names is a dependency too), and ``importlib.import_module``/``__import__`` of a literal
name. ``from X import Y`` is an edge to ``X.Y`` when that is a module. A package's ``__init__``
is a node of its own, so ``from d4p_hpc import schedulers`` depends on the registry, not on every
scheduler. Only ``d4p_hpc.*`` modules are nodes; other packages are kept by their top-level name.

Each rule below is one sentence of the README; its failure names the file, the line and the
import that break it. The base layer is the modules at the top of d4p_hpc/. The last test holds
the README's tree of folders to the checkout, so the map is redrawn when the code moves.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "d4p_hpc"

#: the parts of d4p_hpc/ that only the commands use; the runtime never imports them
SUBMISSION_ONLY = ("cli", "api", "submission", "schedulers", "jobs", "report", "__main__")
RUNTIME = "d4p_hpc.mappings"
#: all the submission side (d4p_hpc/ outside mappings/) imports from the runtime, and why
ALLOWED_FROM_RUNTIME = {
    "d4p_hpc.mappings": "the registry: names, launch kinds, process counts, needs, the Redis entry points",
    "d4p_hpc.mappings.runtime.prepare": "`d4p-hpc run` and `graph`: load, plan and check a run",
    "d4p_hpc.mappings.runtime.plan": "drawing a graph with its plan",
    "d4p_hpc.mappings.checkpoint.store": "resume's check that a checkpoint can be continued",
}
#: never imported by the submission side, at any level: a login node may have none of them
HEAVY = ("mpi4py", "redis", "numpy")
#: commands the schedulers, launchers and the runtime run; the CLI asks the library instead
COMMANDS = ("sbatch", "squeue", "scancel", "sacct", "scontrol", "srun", "salloc", "qsub", "qstat", "qdel",
            "pbsnodes", "tracejob", "mpiexec", "mpirun", "redis-server", "redis-cli", "bash", "dot")
#: what starts a process: the CLI starts none of its own
PROCESS_MODULES = ("subprocess", "multiprocessing", "pty")
PROCESS_CALLS = re.compile(r"os\.(system|popen|exec\w*|spawn\w*|fork\w*|posix_spawn\w*)")
DOTTED = re.compile(r"d4p_hpc(\.[A-Za-z_]\w*)+")


@dataclass(frozen=True)
class Import:
    """One import statement (or literal module name) of one module."""

    importer: str
    #: a d4p_hpc module, or the top-level name of another package
    imported: str
    path: str
    line: int
    statement: str
    type_only: bool = False
    #: a string holding a module's dotted name (a command line), not an import
    named: bool = False

    def __str__(self) -> str:
        how = " (under TYPE_CHECKING)" if self.type_only else " (a module named in a string)" if self.named else ""
        return f"{self.path}:{self.line}: {self.statement}{how}"


@cache
def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name, found by walking d4p_hpc/ through its links
    (d4p_hpc/mappings -> mappings/, d4p_hpc/templates -> templates/)."""
    found = {}
    top = REPO / PACKAGE
    for folder, dirs, files in os.walk(top, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        parts = Path(folder).relative_to(top.parent).parts
        for name in files:
            if name.endswith(".py"):
                stem = name[:-3]
                found[".".join(parts if stem == "__init__" else (*parts, stem))] = Path(folder) / name
    return found


def statement(lines: list[str], node: ast.stmt | ast.expr) -> str:
    """The source lines of ``node``, on one line."""
    return " ".join(" ".join(lines[node.lineno - 1:node.end_lineno]).split())


class _Reader(ast.NodeVisitor):
    """Collects the imports of one module."""

    def __init__(self, module: str, path: Path, source: str, modules: set[str]) -> None:
        self.module, self.lines, self.modules = module, source.splitlines(), modules
        self.shown = str(path.resolve().relative_to(REPO))
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.type_only = False
        self.found: list[Import] = []

    def add(self, node: ast.stmt | ast.expr, imported: str, named: bool = False) -> None:
        if imported.startswith(PACKAGE + ".") or imported == PACKAGE:
            # the longest prefix that is a module: `import d4p_hpc.x.y` where y is a name in x
            while imported not in self.modules and "." in imported:
                imported = imported.rpartition(".")[0]
        else:
            imported = imported.partition(".")[0]
        self.found.append(Import(self.module, imported, self.shown, node.lineno, statement(self.lines, node),
                                 self.type_only, named))

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            outer, self.type_only = self.type_only, True
            for child in node.body:
                self.visit(child)
            self.type_only = outer
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        if origin == "__future__":
            return
        for alias in node.names:
            candidate = f"{origin}.{alias.name}"
            self.add(node, candidate if candidate in self.modules else origin)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0] if node.args else None
        if (name in ("import_module", "__import__") and isinstance(first, ast.Constant)
                and isinstance(first.value, str)):
            self.add(node, first.value)
            for child in (func, *node.args[1:], *node.keywords):  # the name is an import, not a string too
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            self.add(node, node.value, named=True)


@cache
def graph() -> dict[str, tuple[Import, ...]]:
    """Module name -> what it imports (and the module names its strings hold)."""
    files = module_files()
    names = set(files)
    edges = {}
    for module, path in files.items():
        source = path.read_text()
        reader = _Reader(module, path, source, names)
        reader.visit(ast.parse(source, str(path)))
        edges[module] = tuple(reader.found)
    return edges


def imports(where: Iterable[str] | None = None, *, names: bool = False) -> Iterator[Import]:
    """The imports of the modules ``where`` (all by default), with the strings naming modules if ``names``."""
    chosen = set(graph()) if where is None else set(where)
    for module in sorted(chosen):
        for found in graph()[module]:
            if names or not found.named:
                yield found


def within(module: str, *packages: str) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def submodules(*packages: str) -> set[str]:
    """The modules of ``packages``, the packages' own ``__init__`` included."""
    return {m for m in graph() if within(m, *packages)}


def base_layer() -> set[str]:
    """The modules at the top of d4p_hpc/ (errors, supervisor, results, ...), which both sides use;
    ``python -m d4p_hpc`` is the command line, and ``d4p_hpc/__init__.py`` the public facade
    (:data:`FACADE`), not among them."""
    return {m for m in graph() if m.count(".") == 1 and m != f"{PACKAGE}.__main__"
            and module_files()[m].parent == REPO / PACKAGE}


#: ``d4p_hpc/__init__.py``: ``__version__``, and the Python API's names, imported from
#: ``d4p_hpc.api`` on their first use (PEP 562), never when ``d4p_hpc`` is imported
FACADE = PACKAGE
API = f"{PACKAGE}.api"
#: what the CLI modules import of d4p_hpc, with what is inside these packages: the API, and helpers
#: that take no decision about a job (errors and their exit codes, units for printing, the
#: settings' option checks)
CLI_MAY_IMPORT = (API, f"{PACKAGE}.cli", f"{PACKAGE}.errors", f"{PACKAGE}.units", f"{PACKAGE}.settings")
#: ... and these modules alone: the registry of mapping names (help texts), the version
CLI_MAY_ALSO_IMPORT = (RUNTIME, FACADE)


def lazy(found: Import) -> bool:
    """An import of the facade's that runs on first use of a name, not when d4p_hpc is imported."""
    return found.importer == FACADE and within(found.imported, API)


def submission_side() -> set[str]:
    """d4p_hpc/ outside mappings/: what the ``d4p-hpc`` commands import (the base layer too)."""
    return {m for m in graph() if not within(m, RUNTIME)}


def failures(found: Iterable[Import], rule: str) -> None:
    """Fail with every import that breaks ``rule``, one a line."""
    lines = sorted({str(f) for f in found})
    if lines:
        pytest.fail(f"{rule}; broken by:\n  " + "\n  ".join(lines), pytrace=False)


def test_the_graph_reads_the_whole_package():
    """The walk went through the links: the runtime and its registry are there, with their imports."""
    modules = set(graph())
    assert {"d4p_hpc.cli", "d4p_hpc.mappings", "d4p_hpc.schedulers.base"} <= modules
    assert any(m.startswith("d4p_hpc.mappings.redis.") for m in modules), sorted(modules)
    assert any(f.imported == "d4p_hpc.errors" for f in imports(["d4p_hpc.mappings"]))


def test_no_import_cycle():
    """No module imports, however indirectly, a module that imports it (a package's __init__ is a
    module of its own). A cycle means two parts that cannot be read, tested or moved apart."""
    edges = {m: sorted({f.imported for f in imports([m]) if f.imported in graph() and f.imported != m
                        and not lazy(f)}) for m in graph()}
    cycles = []
    for component in _strongly_connected(edges):
        if len(component) > 1:
            cycle = _cycle_in(component, edges)
            steps = [next(f for f in imports([a]) if f.imported == b) for a, b in pairwise(cycle)]
            cycles.append(" -> ".join(cycle) + "\n    " + "\n    ".join(map(str, steps)))
    if cycles:
        pytest.fail("no module imports, however indirectly, a module that imports it (README, Architecture); "
                    "import cycles:\n  " + "\n  ".join(cycles), pytrace=False)


def _strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_in(component: list[str], edges: dict[str, list[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component (breadth first)."""
    start, members = component[0], set(component)
    came_from = {start: ""}
    queue = [start]
    for node in queue:
        for child in edges[node]:
            if child == start:
                path = [node]
                while came_from[path[-1]]:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child in members and child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not strongly connected")


def test_the_base_layer_imports_only_the_base_layer():
    """Both sides use it, on login and compute nodes alike: the standard library and click only."""
    base = base_layer()
    assert {"d4p_hpc.errors", "d4p_hpc.supervisor", "d4p_hpc.results"} <= base, sorted(base)
    bad = (f for f in imports(base)
           if f.imported not in base and f.imported not in sys.stdlib_module_names and f.imported != "click")
    failures(bad, "the base layer (the modules at the top of d4p_hpc/: "
                  f"{', '.join(m.rpartition('.')[2] for m in sorted(base) if m != PACKAGE)}) imports only itself, "
                  "the standard library and click (README, Architecture)")


def test_the_facade_imports_the_api_only_when_a_name_of_it_is_used():
    """``import d4p_hpc`` (every command, every process of a run) loads nothing more: the facade
    imports only the standard library, and the API on first use (or for a type checker)."""
    bad = (f for f in imports([FACADE])
           if f.imported not in sys.stdlib_module_names and not within(f.imported, API))
    failures(bad, "d4p_hpc/__init__.py imports only the standard library and, on first use, d4p_hpc.api "
                  "(README, Architecture)")
    loaded = subprocess.run([sys.executable, "-c", "import d4p_hpc, sys; print(sorted(m for m in sys.modules "
                             "if m.startswith('d4p_hpc.')))"], capture_output=True, text=True, check=True,
                            cwd=REPO).stdout.strip()
    assert loaded == "[]", f"import d4p_hpc loaded {loaded}"


def test_the_cli_is_a_layer_over_the_api():
    """The commands take no decision of their own about a job or a run: what they print, they got
    from d4p_hpc.api, so a command and the Python API always decide the same way."""
    cli = submodules(f"{PACKAGE}.cli", f"{PACKAGE}.__main__")
    bad = (f for f in imports(cli) if within(f.imported, PACKAGE)
           and not within(f.imported, *CLI_MAY_IMPORT) and f.imported not in CLI_MAY_ALSO_IMPORT)
    failures(bad, "the CLI modules (d4p_hpc/cli/) import of d4p_hpc only the API (d4p_hpc.api) and "
                  "errors, units, settings, the mapping registry and the version (README, Architecture)")


def test_the_runtime_never_imports_the_submission_side():
    """A run on a compute node uses the base layer and the workflow API, never the commands."""
    forbidden = tuple(f"{PACKAGE}.{p}" for p in SUBMISSION_ONLY)
    bad = (f for f in imports(submodules(RUNTIME)) if within(f.imported, *forbidden))
    failures(bad, "the runtime (mappings/) never imports d4p_hpc.{" + ",".join(SUBMISSION_ONLY) + "}: a run "
                  "must not depend on how jobs are submitted (README, Architecture)")


def test_the_registries_import_only_the_base_layer():
    """``d4p_hpc.mappings`` and ``d4p_hpc.schedulers`` are read by everything: importing one must
    cost nothing and pull nothing in (the schedulers import themselves, by name)."""
    bad = (f for f in imports({RUNTIME, "d4p_hpc.schedulers"})
           if within(f.imported, PACKAGE) and f.imported not in base_layer() | {"d4p_hpc.schedulers.base"})
    failures(bad, "the registries d4p_hpc.mappings and d4p_hpc.schedulers import only the base layer "
                  "(and schedulers.base) (README, Architecture)")


def test_schedulers_import_only_the_base_layer_and_each_other():
    """A scheduler knows nothing of specs, rendering or jobs: what it needs of a job is a Submission."""
    bad = (f for f in imports(submodules("d4p_hpc.schedulers"))
           if within(f.imported, PACKAGE) and f.imported not in base_layer()
           and not within(f.imported, "d4p_hpc.schedulers"))
    failures(bad, "d4p_hpc/schedulers/ imports only the base layer and itself, so the registry is a leaf that "
                  "the spec, the renderer and the commands can all ask (README, Architecture)")


def test_the_submission_side_imports_from_the_runtime_only_the_allow_list():
    """Each entry of the allow-list is a door into the runtime that the README names, and why."""
    bad = (f for f in imports(submission_side())
           if within(f.imported, RUNTIME) and f.imported not in ALLOWED_FROM_RUNTIME)
    allowed = "\n    ".join(f"{m}: {why}" for m, why in ALLOWED_FROM_RUNTIME.items())
    failures(bad, "the submission side (d4p_hpc/ outside mappings/) imports from the runtime only:\n    "
                  f"{allowed}\n(README, Architecture)")


def test_the_submission_side_never_imports_mpi4py_redis_or_numpy():
    """Not at module level, nor in a function: only a run imports them, through its mapping."""
    bad = (f for f in imports(submission_side()) if f.imported in HEAVY)
    failures(bad, f"the submission side never imports {', '.join(HEAVY)}, at any level: a login node may have "
                  "none of them (README, Architecture)")


def test_the_cli_starts_no_process_and_runs_no_command_of_its_own():
    """The commands parse options and call the library: a process the CLI started itself, or a
    scheduler command it spelled, would be a second owner of what d4p_hpc/ owns."""
    cli = submodules("d4p_hpc.cli", "d4p_hpc.__main__")
    bad = [f for f in imports(cli) if f.imported in PROCESS_MODULES]
    for module in sorted(cli):
        path = module_files()[module]
        source = path.read_text()
        lines = source.splitlines()
        shown = str(path.resolve().relative_to(REPO))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and PROCESS_CALLS.fullmatch(ast.unparse(node.func)):
                bad.append(Import(module, "os", shown, node.lineno, statement(lines, node)))
            # a command as a word of its own ("sbatch", "squeue -h"), not a help text that mentions one
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and any(node.value == c or node.value.startswith(c + " -") for c in COMMANDS)):
                bad.append(Import(module, node.value, shown, node.lineno, statement(lines, node)))
    failures(bad, "the CLI modules (d4p_hpc/cli/) start no process and spell no scheduler or launcher command: "
                  "they parse options, call d4p_hpc and print (README, Architecture)")


def test_only_the_schedulers_name_a_scheduler():
    """Adding a scheduler touches d4p_hpc/schedulers/ and templates/<name>/ only: nothing else may
    import or name a concrete scheduler's module; everything asks the registry."""
    concrete = submodules("d4p_hpc.schedulers") - {"d4p_hpc.schedulers", "d4p_hpc.schedulers.base"}
    assert concrete, "no scheduler module found in d4p_hpc/schedulers/"
    outside = set(graph()) - submodules("d4p_hpc.schedulers")
    bad = (f for f in imports(outside, names=True) if f.imported in concrete)
    failures(bad, f"only d4p_hpc/schedulers/ names {', '.join(sorted(concrete))}; the rest asks the registry "
                  "(d4p_hpc.schedulers: scheduler_class, names, detect) (README, Architecture)")


def test_only_the_runtime_names_a_mapping():
    """Adding a mapping touches mappings/ only: nothing outside it imports or names a module of
    static/, dynamic/ or redis/; everything asks the registry (d4p_hpc.mappings)."""
    concrete = submodules(*(f"{RUNTIME}.{family}" for family in ("static", "dynamic", "redis")))
    assert concrete, "no mapping module found in mappings/static|dynamic|redis"
    bad = (f for f in imports(submission_side(), names=True)
           if f.imported in concrete and f.imported not in ALLOWED_FROM_RUNTIME)
    failures(bad, "only mappings/ names a module of mappings/{static,dynamic,redis}; the rest asks the registry "
                  "d4p_hpc.mappings (README, Architecture)")


def test_the_readme_draws_every_folder_and_base_module_and_nothing_else():
    """The tree in README.md ("Architecture") names every base module and every folder of d4p_hpc/
    and mappings/, and names no file or folder that is not there; its rules list the allow-list."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture\n"):]
    section = section[:section.index("\n## ")]
    tree = section.split("```\n")[1]
    top = {REPO / name for name in (PACKAGE, "mappings", "templates", "tests")}

    def inside(*bases: Path, pattern: str = "*") -> set[Path]:
        return {p for base in bases for p in base.glob(pattern) if p.name != "__pycache__" and not p.is_symlink()}

    # a new scheduler's or mapping's own files need no line of their own: "one folder per scheduler"
    drawn = {p for p in inside(REPO / PACKAGE, REPO / "mappings") if p.is_dir() or p.stem[0] != "_"}
    missing = sorted(f"{p.relative_to(REPO)}{'/' if p.is_dir() else ''}" for p in drawn
                     if not re.search(rf"(?<![\w/.]){re.escape(p.name)}{'/' if p.is_dir() else ''}", tree))
    there = {p.name for p in top | inside(*top) | inside(REPO / "templates", pattern="*/*")}
    stale = sorted(n for n in set(re.findall(r"(?<![\w/.])([\w-]+(?:/|\.py\b))", tree)) if n.rstrip("/") not in there)
    unlisted = sorted(m for m in ALLOWED_FROM_RUNTIME
                      if f"`{m if m == RUNTIME else m.removeprefix(PACKAGE + '.')}`" not in section)
    assert not (missing or stale or unlisted), (
        "README.md, Architecture, no longer draws the code: update its tree and rules\n"
        f"  not in the tree: {missing}\n  in the tree, not in the checkout: {stale}\n"
        f"  allowed imports from the runtime the rules do not list: {unlisted}")
