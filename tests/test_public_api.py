"""The public face: ``rankbias.__all__`` is small and clean, and every public function and
class (of ``rankbias`` and of ``rankbias.papers``) is fully annotated, has a numpy-doc
docstring, and its examples run. (That ``import rankbias`` stays light is
tests/test_framework.py::test_importing_measures_pulls_no_plotting_or_cli.)"""

from __future__ import annotations

import ast
import doctest
import inspect
import typing

import pytest

import rankbias
import rankbias.papers

SECTIONS = ("Parameters", "Returns", "Raises", "Examples")
# numpy-doc: a class documents its __init__ under Parameters and its state under
# Attributes; it has no Returns.
CLASS_SECTIONS = ("Parameters", "Attributes", "Raises", "Examples")
# The tracker's methods a training loop calls.
METHODS = {"RankTracker": ("step", "plot", "close")}


def _public() -> list[tuple[str, object]]:
    found = []
    for mod in (rankbias, rankbias.papers):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found.append((f"{mod.__name__}.{name}", obj))
                for meth in METHODS.get(name, ()):
                    found.append((f"{mod.__name__}.{name}.{meth}", getattr(obj, meth)))
    return found


PUBLIC = _public()
IDS = [name for name, _ in PUBLIC]


def _type_checking_names(module) -> dict[str, object]:
    """The names a module imports under ``if TYPE_CHECKING:`` (kept out of its import to
    keep ``import rankbias`` light), imported here so that its annotations resolve."""
    names: dict[str, object] = {}
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            body = ast.Module(
                body=[n for n in node.body if isinstance(n, ast.Import | ast.ImportFrom)],
                type_ignores=[],
            )
            exec(compile(body, module.__name__, "exec"), names)
    names.pop("__builtins__", None)
    return names


def test_all_is_small_resolvable_and_public():
    names = rankbias.__all__
    assert len(names) <= 25, names
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(rankbias, name) is not None, name
        assert not name.startswith("_") or name == "__version__", name
    for name in rankbias.papers.__all__:
        assert not name.startswith("_"), name
        assert getattr(rankbias.papers, name) is not None, name
    # the collection below is not vacuous: the measures, the tracker and the papers' trainers
    assert {
        "rankbias.effective_rank",
        "rankbias.RankTracker.step",
        "rankbias.papers.fit_deep_linear",
    } <= set(IDS)


@pytest.mark.parametrize("name, obj", PUBLIC, ids=IDS)
def test_fully_annotated(name, obj):
    func = obj.__init__ if inspect.isclass(obj) else obj
    module = inspect.getmodule(inspect.unwrap(func))
    hints = typing.get_type_hints(func, localns=_type_checking_names(module))
    params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
    missing = [p for p in params if p not in hints]
    assert not missing, f"{name}: parameters without an annotation: {missing}"
    assert "return" in hints, f"{name}: no return annotation"


@pytest.mark.parametrize("name, obj", PUBLIC, ids=IDS)
def test_numpydoc_sections(name, obj):
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    headers = [a for a, b in zip(lines, lines[1:]) if b.strip() and set(b.strip()) == {"-"}]
    wanted = CLASS_SECTIONS if inspect.isclass(obj) else SECTIONS
    func = obj.__init__ if inspect.isclass(obj) else obj
    if not [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]:
        wanted = tuple(s for s in wanted if s != "Parameters")  # numpy-doc: none to list
    missing = [s for s in wanted if s not in headers]
    assert not missing, f"{name}: docstring lacks the section(s) {missing}"
    assert [h for h in headers if h in wanted] == list(wanted), (
        f"{name}: sections out of order {headers}"
    )


@pytest.mark.parametrize("name, obj", PUBLIC, ids=IDS)
def test_examples_run(name, obj):
    finder = doctest.DocTestFinder(recurse=False)
    tests = finder.find(obj, name, globs={"__name__": "doctest"})
    assert sum(len(t.examples) for t in tests) >= 1, f"{name}: no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} example(s) failed (see the output above)"
