"""House style, checked in CI: `ruff check` passes, and the examples in the core modules'
docstrings run (doctest) and print what they say."""

from __future__ import annotations

import doctest
import importlib
import shutil
import subprocess
import sys

import pytest

from pali3_edu.course import ROOT

# Modules whose docstring examples are runnable (a module without examples passes trivially).
DOCTEST_MODULES = [
    "pali3_edu.cache", "pali3_edu.config", "pali3_edu.encdec", "pali3_edu.generate", "pali3_edu.metrics",
    "pali3_edu.ablation", "pali3_edu.pali3", "pali3_edu.probe", "pali3_edu.recipes",
    "pali3_edu.recipes.pali3", "pali3_edu.data.shapesworld", "pali3_edu.data.tasks", "pali3_edu.tokens",
    "pali3_edu.train", "pali3_edu.ul2",
]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) in {name} fail (run python -m doctest -v)"


def test_ruff_passes():
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    try:
        out = subprocess.run([*cmd, "check", "pali3_edu", "tests"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    except FileNotFoundError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert out.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{out.stdout[-3000:]}"
