"""Every public top-level function of graphpart (each function in `graphpart.__all__`, and the
public methods of its classes `Run.evaluate` and `Run.predict`) has a docstring example, and
every example in the docstrings of `graphpart.__all__`'s objects runs and prints what it shows
(doctest, in a temporary working folder: the training examples write runs/ there; small models,
one epoch, one process)."""

from __future__ import annotations

import doctest
import inspect

import pytest

import graphpart as gp

# methods users call that must carry an example (classes' own docstrings may be prose)
METHODS = ("Run.evaluate", "Run.predict")


def _tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in gp.__all__:
        obj = getattr(gp, name)
        module = inspect.getmodule(obj)
        tests += finder.find(obj, f"graphpart.{name}", module=module)
    return [t for t in tests if t.examples]


TESTS = _tests()


def test_every_public_function_has_an_example():
    with_examples = {t.name.removeprefix("graphpart.") for t in TESTS}
    functions = [n for n in gp.__all__ if inspect.isfunction(getattr(gp, n))]
    assert set(functions) >= {"mlp", "init_params", "partition", "forward", "value_and_grad"}
    assert set(functions) >= {"train", "load"}
    missing = sorted(set(functions) - with_examples) + [
        m for m in METHODS if m not in with_examples
    ]
    assert not missing, f"public functions without a docstring example: {missing}"


@pytest.mark.slow  # in process, but a second or more: the slow lane
@pytest.mark.parametrize("test", TESTS, ids=[t.name.removeprefix("graphpart.") for t in TESTS])
def test_docstring_examples_run(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the training examples write runs/ in the working folder
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.attempted == len(test.examples) > 0
    assert result.failed == 0, f"{test.name}: {result.failed} example(s) failed (output above)"
