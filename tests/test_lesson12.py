"""Lesson 12 (the GPU-scale run) without executing it: its setup cell, its metadata, and the rules
that keep one notebook right on a CPU and on a GPU (nbval executes it in the suite)."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

LESSON = Path(__file__).resolve().parent.parent / "notebooks" / "12_gpu_scale_run.ipynb"


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(LESSON, as_version=4)


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_setup_cell_installs_this_release_on_colab(nb):
    from pali3_edu import env

    setup = _code(nb)[0]
    assert setup.startswith(env.COLAB_SETUP_CELL), "regenerate the setup cell from env.COLAB_SETUP_CELL"
    rest = setup[len(env.COLAB_SETUP_CELL):]
    assert "Restart the runtime if pip upgraded packages" in rest
    assert all(line.startswith("    ") for line in rest.splitlines() if line.strip()), \
        "the hint belongs to the except branch"


def test_metadata_is_what_jupyterlab_writes_and_no_stored_errors(nb):
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb.metadata
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5) and all("id" in c for c in nb.cells)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, f"stored outputs hold an error: {errors[0].get('ename')}: {errors[0].get('evalue')}"


def _guarded_by_gpu(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether ``node`` sits in the true branch of an ``if``/conditional expression on ON_GPU."""
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, (ast.If, ast.IfExp)) and "ON_GPU" in ast.unparse(parent.test):
            branch = parent.body if isinstance(parent, ast.If) else [parent.body]
            if any(child is b or child in ast.walk(b) for b in branch):
                return True
        child = parent
    return False


def test_compiling_runs_only_on_a_gpu(nb):
    """torch.compile takes minutes on a CPU: every --compile flag and compile= setting in the
    lesson's code is in the GPU branch of an `if ON_GPU`."""
    found = 0
    for source in _code(nb)[1:]:
        tree = ast.parse(source)
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            is_flag = isinstance(node, ast.Constant) and node.value == "--compile"
            is_setting = isinstance(node, ast.keyword) and node.arg == "compile"
            if is_flag or is_setting:
                found += 1
                assert _guarded_by_gpu(node, parents), f"compiling outside `if ON_GPU`:\n{source}"
    assert found >= 2  # the training command and the benchmark


def test_the_preset_is_smoke_without_a_gpu_and_recommended_with_one(nb):
    """Run the cell's PRESET rule on both kinds of machine (the rule is one expression)."""
    cell = next(s for s in _code(nb) if "PRESET =" in s)
    line = next(line for line in cell.splitlines() if line.startswith("PRESET ="))
    expr = line.split("=", 1)[1].strip()
    assert eval(expr, {"ON_GPU": False, "recommend_preset": lambda: "h100"}) == "smoke"  # noqa: S307
    assert eval(expr, {"ON_GPU": True, "recommend_preset": lambda: "h100"}) == "h100"  # noqa: S307


def test_torchrun_is_shown_not_run(nb):
    """No cell after the setup starts another process: no subprocess, os.system or shell line."""
    for source in _code(nb)[1:]:
        tree = ast.parse(source)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        assert not names & {"subprocess", "os", "multiprocessing"}, source
        assert not any(line.lstrip().startswith("!") for line in source.splitlines()), "no shell commands"


def test_says_gpu_figures_are_not_measured_and_ends_with_the_lesson_time(nb):
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Not measured yet" in text and "have not been measured" in text
    assert "## Questions" in text and "## More to try" in text
    assert _code(nb)[-1].startswith('print(f"lesson time:')
