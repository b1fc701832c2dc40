"""The shape of the code: the import graph of the four packages (no circles, data flowing
profiler -> pruner -> service, the pruner's algorithm packages independent, bench reaching
only public names), functions a screen long, and the tree as ruff lints and formats it."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("profiler", "pruner", "kernels", "service")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of the four packages ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    assert "pruner.depth.select" in GRAPH["pruner.depth"]
    assert (
        "profiler.compare" in GRAPH["pruner.methods.state"]
        or "profiler" in GRAPH["pruner.methods.state"]
    )


def test_no_import_circle():
    assert _cycles(GRAPH) == []
    # The detector sees one when there is one.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("profiler", ("pruner", "service")),
        ("kernels", ("pruner", "service")),
        ("pruner", ("service",)),
    ],
)
def test_data_flows_profiler_pruner_service(source, forbidden):
    bad = sorted(
        (m, t) for m, ts in GRAPH.items() if _top(m) == source for t in ts if _top(t) in forbidden
    )
    assert bad == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("pruner.depth", ("pruner.width", "pruner.methods", "pruner.skeleton")),
        ("pruner.width", ("pruner.depth", "pruner.methods", "pruner.skeleton")),
        ("pruner.methods", ("pruner.skeleton",)),
    ],
)
def test_algorithm_packages_import_neither_the_skeleton_nor_each_other(package, forbidden):
    bad = sorted(
        (m, t)
        for m, ts in GRAPH.items()
        if m == package or m.startswith(package + ".")
        for t in ts
        if any(t == f or t.startswith(f + ".") for f in forbidden)
    )
    assert bad == []


def assert_light(code: str) -> None:
    """``code`` runs in a fresh interpreter without loading torch, numba or numpy."""
    code += (
        "\nimport sys\n"
        "heavy = [m for m in ('torch', 'numba', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_names_for_the_protocol_cost_no_torch():
    assert_light(
        "from pruner.config import DATASETS, METHODS\n"
        "import service.protocol as p\n"
        "assert p.PRUNE_METHODS == METHODS and p.BUILTIN_DATASETS == DATASETS\n"
    )


def test_the_command_line_parses_without_torch():
    # A client command (submit, jobs, watch, cancel, keys) and every --help start in a
    # fraction of a second: only a command that runs a model loads torch.
    assert_light(
        "from service.cli import build_parser\n"
        "build_parser().parse_args(['jobs', '--connect', 'tcp://127.0.0.1:1'])\n"
        "from service.commands.weights import resolve_weights\n"
    )


def _public(module: str) -> set[str]:
    """``__all__`` of a package, or, without one, its top-level names not starting with _."""
    tree = ast.parse(MODULES[module].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            if isinstance(node.value, ast.Call):  # __all__ = sorted(_LAZY): ask the package
                return set(importlib.import_module(module).__all__)
            return {ast.literal_eval(e) for e in node.value.elts}  # type: ignore[attr-defined]
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def _bench_scripts() -> list[Path]:
    """The bench scripts in the repository (a script still being written joins once committed)."""
    listed = subprocess.run(
        ["git", "ls-files", "bench/*.py"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    return [ROOT / p for p in listed] or sorted((ROOT / "bench").glob("*.py"))


# What a model costs, what is removed from it and the fused kernels are used through the
# public names. (The GPU tuning benchmarks also count tuning events inside kernels.conv_bn_relu
# on purpose, by module import, which this check does not cover.)
BENCH_PACKAGES = ("profiler", "pruner", "kernels")


@pytest.mark.parametrize("path", _bench_scripts(), ids=lambda p: p.name)
def test_bench_imports_public_names_only(path):
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and _top(node.module or "") in BENCH_PACKAGES:
            public = _public(node.module) if node.module in MODULES else set()
            is_package = MODULES.get(node.module, Path()).name == "__init__.py"
            bad += [
                f"{node.module}.{a.name}"
                for a in node.names
                if not is_package or a.name not in public
            ]
        elif isinstance(node, ast.Import):
            bad += [
                a.name for a in node.names if a.name.count(".") and _top(a.name) in BENCH_PACKAGES
            ]
    assert bad == []


SCREEN = 60  # lines of code a function may span, from its first statement to its last


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end: the signature and
    the docstring document, they are not what has to be read at once."""
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_fit_a_screen(module):
    """No function of the four packages spans more than a screen of code: split it in two."""
    long = [
        (node.name, _code_lines(node))
        for node in ast.walk(ast.parse(MODULES[module].read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > SCREEN
    ]
    assert long == []


def test_the_screen_rule_counts_code_not_its_docstring():
    (fn,) = ast.parse(
        'def f(\n    a,\n):\n    """Doc.\n\n    More.\n    """\n    x = 1\n    return x\n'
    ).body
    assert _code_lines(fn) == 2


@pytest.mark.parametrize("package", ["profiler", "pruner", "kernels", "service"])
def test_public_names_stay_themselves_once_every_submodule_is_imported(package):
    """Importing ``pkg.x`` sets the attribute ``pkg.x`` to the module: a lazily exported
    function ``x`` would then be hidden (``from pruner import finetune`` giving a module)."""
    import pkgutil
    import types

    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
    hidden = [
        n for n in getattr(pkg, "__all__", ()) if isinstance(getattr(pkg, n), types.ModuleType)
    ]
    assert not hidden


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_the_tree_passes_ruff(args):
    """The README's lint command, in the tests so CI runs it: ``ruff check . && ruff format
    --check .`` (ruff comes with the ``test`` extra)."""
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip(f"ruff is not installed beside {sys.executable}: pip install -e '.[test]'")
    done = subprocess.run([str(ruff), *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
