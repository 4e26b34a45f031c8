"""The package's import graph: no cycle between modules, no import from a layer above.

The graph is read from the source with ``ast`` (every ``import`` and ``from ... import``
anywhere in a module: at the top, inside functions, under ``if TYPE_CHECKING:``), so
a lazy import inside a function is an edge like any other. ``TYPE_CHECKING`` imports
count too: a type a module needs is a dependency even when only the type checker
follows it, and the way out of such a cycle is moving the type down into a leaf
module, not hiding the import.

A module's import of a submodule (``rankbias.analysis.layers``) is an edge to that
submodule only, not to its parent package: Python runs the parent's ``__init__``
first, but counting that would make every package that re-exports its submodules
(``analysis/__init__.py`` re-exports ``analysis.rank_table``, which imports
``analysis.layers``) a cycle. The parent's ``__init__`` importing its submodules is
an ordinary edge, so a submodule importing its own package (``import
rankbias.experiments as pkg`` inside ``experiments/registry.py``) is a cycle.

``LAYERS`` is the README's "How the code is organised" layering, as data, lowest
first: a module may import from its own layer and the layers below it. The README
states the same list (checked here), so the map and the rule cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import rankbias

ROOT = Path(rankbias.__file__).parent
REPO = ROOT.parent.parent

# lowest first; a module belongs to the entry with the longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("rankbias.errors", "rankbias._version", "rankbias._lazy")),
    ("foundations", ("rankbias.measures", "rankbias.framework")),
    (
        "building blocks",
        (
            "rankbias.data",
            "rankbias.models",
            "rankbias.overparam",
            "rankbias.verdicts",
            "rankbias.plots",
            "rankbias.intrinsic",
        ),
    ),
    ("trainers", ("rankbias.training", "rankbias.fit")),
    ("analysis", ("rankbias.analysis", "rankbias.io")),
    ("reports", ("rankbias.run_reports",)),
    ("experiments", ("rankbias.experiments",)),
    (
        "orchestration",
        ("rankbias.runner", "rankbias.sweep", "rankbias.plans", "rankbias.plan_runner"),
    ),
    ("command line", ("rankbias.cli", "rankbias.__main__")),
    ("public face", ("rankbias", "rankbias.papers")),  # nothing inside imports them
]


def module_files(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(node: ast.AST, package: str, modules: Mapping[str, object]) -> Iterable[str]:
    """The package's modules an import statement names (a name imported from a package
    that is itself a submodule is an edge to that submodule)."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the importing module's package upwards
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            name = ".".join(base + ([node.module] if node.module else []))
        else:
            name = node.module or ""
        for a in node.names:
            full = f"{name}.{a.name}"
            yield full if full in modules else name


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported module of the package: line of the first such import}."""
    modules = module_files(root)
    top = root.name
    graph: dict[str, dict[str, int]] = {}
    for mod, (path, is_pkg) in modules.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node, package, modules):
                if (target == top or target.startswith(top + ".")) and target != mod:
                    edges.setdefault(target, node.lineno)
        graph[mod] = edges
    return graph


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the entry with the longest prefix of ``module`` (None: none)."""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            match = module == p or (p != "rankbias" and module.startswith(p + "."))
            if match and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def upward_imports(graph: Mapping[str, Mapping[str, int]]) -> list[str]:
    """``a -> b (line n): layer x imports layer y`` for every import from a higher layer."""
    out = []
    for mod, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            lo, hi = layer_of(mod), layer_of(target)
            if lo is not None and hi is not None and hi > lo:
                out.append(
                    f"{mod} -> {target} (line {line}): {LAYERS[lo][0]!r} imports {LAYERS[hi][0]!r}"
                )
    return out


def test_every_module_has_a_layer():
    missing = [m for m in import_graph() if layer_of(m) is None]
    assert not missing, f"add these modules to LAYERS (and to the README's map): {missing}"


def test_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    detail = [
        " <-> ".join(c)
        + ": "
        + "; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in c for b in c if b in graph[a])
        for c in found
    ]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_no_upward_import():
    found = upward_imports(import_graph())
    assert not found, "imports from a layer above:\n" + "\n".join(found)


def _readme_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## How the code is organised", 1)[1].split("\n## ", 1)[0]


def readme_layers(section: str) -> list[tuple[str, tuple[str, ...]]]:
    """The README's numbered layer list (``3. building blocks: data/, verdicts.py``) as LAYERS."""
    out = []
    for line in section.splitlines():
        m = re.fullmatch(r"(\d+)\. ([a-z ]+): (.+)", line.strip())
        if m:
            assert int(m.group(1)) == len(out) + 1, (
                f"the README's layer list skips a number: {line!r}"
            )
            paths = [p.strip().removesuffix("/").removesuffix(".py") for p in m.group(3).split(",")]
            out.append(
                (
                    m.group(2),
                    tuple("rankbias" if p == "__init__" else f"rankbias.{p}" for p in paths),
                )
            )
    return out


def test_the_readme_states_exactly_these_layers():
    assert readme_layers(_readme_section()) == LAYERS


def test_the_readme_map_names_every_top_level_module():
    section = _readme_section()
    tops = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("__")
    }
    missing = sorted(n for n in tops if n not in section)
    assert not missing, f"the README's 'How the code is organised' does not mention {missing}"


# The checks themselves, on a tiny package written here: each finds what it should.
def _tiny(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "rankbias"
    for rel, src in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
    return root


def test_the_graph_sees_lazy_type_checking_and_relative_imports(tmp_path):
    root = _tiny(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "measures/__init__.py": "from .spec import X\n",
            "measures/spec.py": "X = 1\n",
            "data/__init__.py": "",
            "data/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from rankbias.data.b import T\n",
            "data/b.py": "def f():\n    import rankbias.data.a\n",
            "fit/__init__.py": "",
            "fit/x.py": "from ..measures import X\nfrom rankbias.measures import spec\n",
        },
    )
    g = import_graph(root)
    assert g["rankbias.data.a"] == {"rankbias.data.b": 3}
    assert g["rankbias.data.b"] == {"rankbias.data.a": 2}
    assert g["rankbias.fit.x"] == {"rankbias.measures": 1, "rankbias.measures.spec": 2}
    assert g["rankbias.measures"] == {"rankbias.measures.spec": 1}
    assert cycles(g) == [["rankbias.data.a", "rankbias.data.b"]]


def test_an_upward_import_and_a_self_import_of_the_package_are_found(tmp_path):
    root = _tiny(
        tmp_path,
        {
            "__init__.py": "",
            "models/__init__.py": "",
            "models/m.py": "def f():\n    from rankbias.fit.t import g\n",
            "fit/__init__.py": "",
            "fit/t.py": "from rankbias.models.m import f\n",
            "experiments/__init__.py": "from rankbias.experiments.registry import r\n",
            "experiments/registry.py": "def r():\n    import rankbias.experiments as pkg\n",
        },
    )
    g = import_graph(root)
    assert upward_imports(g) == [
        "rankbias.models.m -> rankbias.fit.t (line 2): 'building blocks' imports 'trainers'"
    ]
    assert cycles(g) == [
        ["rankbias.experiments", "rankbias.experiments.registry"],
        ["rankbias.fit.t", "rankbias.models.m"],
    ]


@pytest.mark.parametrize(
    "module, layer",
    [
        ("rankbias", "public face"),
        ("rankbias.errors", "errors"),
        ("rankbias.measures.spec", "foundations"),
        ("rankbias.fit.deep_linear", "trainers"),
        ("rankbias.analysis.outputs", "analysis"),
        ("rankbias.run_reports", "reports"),
        ("rankbias.plan_runner", "orchestration"),
    ],
)
def test_layer_of_takes_the_longest_prefix(module, layer):
    assert LAYERS[layer_of(module)][0] == layer
